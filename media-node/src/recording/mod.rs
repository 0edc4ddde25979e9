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

use crate::core::recording::Channels;

/// Why StartRecording or StopRecording failed on a call, each with the status a caller
/// can act on (see `From<NodeError> for Status` in `grpc/service.rs`): the call's state is FAILED_PRECONDITION, a spool
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

/// A StartRecording request's audio format that the node does not write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("sample_rate {0} is not 8000 or 16000")]
    Rate(u32),
    #[error("format {0:?} is not mono or stereo")]
    Channels(String),
}

/// The rate a recording is written at: 8000 when not given, else 8000 or 16000.
pub(crate) fn recording_rate(rate: Option<u32>) -> Result<u32, FormatError> {
    match rate.unwrap_or(8000) {
        r @ (8000 | 16000) => Ok(r),
        r => Err(FormatError::Rate(r)),
    }
}

/// A request's `format`: none, `wav`, `mono` or `mixed` is one mixed channel;
/// `stereo` is caller left, bot right (any case, spaces around ignored).
pub(crate) fn recording_channels(format: Option<&str>) -> Result<Channels, FormatError> {
    match format.map(|f| f.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("wav") | Some("mono") | Some("mixed") => Ok(Channels::Mono),
        Some("stereo") => Ok(Channels::Stereo),
        Some(other) => Err(FormatError::Channels(crate::echo::clip(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_request_s_rate_and_format_are_checked() {
        assert_eq!(recording_rate(None), Ok(8000));
        assert_eq!(recording_rate(Some(16000)), Ok(16000));
        assert_eq!(recording_rate(Some(44100)).unwrap_err().to_string(), "sample_rate 44100 is not 8000 or 16000");
        for (f, c) in
            [(None, Channels::Mono), (Some(" WAV "), Channels::Mono), (Some("mixed"), Channels::Mono), (Some("Stereo"), Channels::Stereo)]
        {
            assert_eq!(recording_channels(f), Ok(c));
        }
        let long = "x".repeat(10_000);
        let e = recording_channels(Some(&long)).unwrap_err().to_string();
        assert!(e.starts_with("format \"xxx") && e.len() < 200, "{e}");
    }
}
