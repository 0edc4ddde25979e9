//! Audio at the engine's edges: what a URI names, decoding it to the call's 8 kHz PCM,
//! the bounded prompt cache, streamed TTS bytes to call PCM (`tts`), and the formatting
//! of the caller's audio for listeners.
pub(crate) mod cache;
pub mod decode;
pub mod dtmf;
pub mod listener;
pub mod ogg;
pub(crate) mod tts;
pub(crate) mod uri;

/// The engine's internal rate: G.711's.
pub const CALL_RATE: u32 = 8000;
