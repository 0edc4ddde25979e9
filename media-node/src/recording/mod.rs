//! Call recordings: where they go (`destination`), how a finished recording becomes
//! durable (`store`: local spool first, then S3 or the local recordings root, retried
//! until it succeeds, also across restarts), and the per-call writer (`writer`).
pub mod destination;
pub mod store;
pub mod writer;

pub use destination::{Destination, DestinationError};
pub use store::{RecordingStore, StoreConfig};
pub use writer::{RecordingJob, RecordingSpec, RecordingWriter};
