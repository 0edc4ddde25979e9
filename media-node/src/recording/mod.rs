//! Call recordings: where they go (`destination`), how a finished recording becomes
//! durable (`store`: local spool first, then S3 or the local recordings root, retried
//! until it succeeds, also across restarts), the per-call writer (`writer`), and the
//! recordings a hard stop left unfinished, recovered at the next start (`recover`).
pub mod destination;
pub mod recover;
pub mod store;
pub mod writer;

pub use destination::{Destination, DestinationError};
pub use store::{RecordingStore, StoreConfig};
pub use writer::{RecordingJob, RecordingSpec, RecordingWriter};

/// Why StartRecording or StopRecording failed on a call, each with the status a caller
/// can act on (see `grpc::status`): the call's state is FAILED_PRECONDITION, a spool
/// the node cannot write is UNAVAILABLE (another node may take the call's next one),
/// a recording whose writing or finalising failed (what it kept is stored cut short)
/// is DATA_LOSS.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("a recording is already running on this call")]
    AlreadyRunning,
    #[error("no recording is running on this call")]
    NotRunning,
    #[error("the recording spool cannot be written: {0}")]
    Spool(std::io::Error),
    #[error("the recording failed after {seconds:.1} s: the spool cannot be written ({reason}); the call went on, what was written is stored flagged cut short")]
    Failed { seconds: f64, reason: String },
}
