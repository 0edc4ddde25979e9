//! The sans-IO core: every audio rule of a call, with time and randomness passed in.
//! Nothing here reads a clock, an OS random source, a socket or a file (tests aside).
//!
//! - `session`: one call's media as a state machine, conducting its parts (transport,
//!   inbound, outbound, barge-in, DTMF).
//! - `negotiation`: one call's SDP offer/answer: versions, SDES keys, what was agreed.
//! - `sdp`: SDP parsing, the answer to an offer, the node's own offer.
//! - `srtp`: SRTP/SRTCP (RFC 3711, RFC 7714) and SDES key lines (RFC 4568).
//! - `rtp`, `rtcp`: packet parsing and building; RTCP reports and their state.
//! - `latch`: symmetric RTP: where media goes, and the source it locks to.
//! - `jitter`: the caller's reordering jitter buffer, on the call's 8 kHz timeline.
//! - `interarrival`: RFC 3550 interarrival jitter.
//! - `pacer`: the absolute 20 ms frame schedule.
//! - `playback`: what the node plays: prompts, streamed TTS with marks, echo.
//! - `dtmf_out`: digits sent as RFC 4733 events.
//! - `codec`, `g711`, `g722`, `opus`: the codecs and one direction's codec state.
//! - `resample`: band-limited rate conversion.
//! - `goertzel`: one frequency's power (tones).
//! - `ice`, `dtls_srtp`: ICE-lite, STUN, the node's DTLS certificate and DTLS-SRTP keys
//!   for WebRTC legs (issue 36; not yet wired into calls).
//! - `analysis`: VAD, DTMF in-band and RFC 4733, the echo guard, redaction, quality.
//! - `recording`: the recording's timeline and flush rules.
//! - `voice_processing`: echo cancellation against the node's own playout and noise
//!   suppression of the caller's audio.
pub mod analysis;
pub mod codec;
pub mod dtls_srtp;
pub mod dtmf_out;
pub mod g711;
pub mod g722;
pub mod goertzel;
pub mod ice;
pub mod interarrival;
pub mod jitter;
pub mod latch;
pub(crate) mod negotiation;
#[cfg(feature = "opus")]
pub mod opus;
pub mod pacer;
pub mod playback;
pub mod recording;
pub mod resample;
pub mod rtcp;
pub mod rtp;
pub mod sdp;
pub mod session;
pub mod srtp;
pub mod voice_processing;
