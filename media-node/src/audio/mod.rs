//! Audio at the engine's edges: what a URI names, decoding it to the call's 8 kHz PCM,
//! the bounded prompt cache, and the formatting of the caller's audio for listeners.
pub mod analysis;
pub mod cache;
pub mod decode;
pub mod listener;
pub mod uri;

/// The engine's internal rate: G.711's.
pub const CALL_RATE: u32 = 8000;
