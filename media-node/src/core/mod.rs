//! The sans-IO core: every audio rule of a call, with time passed in.
pub mod analysis;
pub mod codec;
pub mod dtmf_out;
pub mod g711;
pub mod g722;
pub mod goertzel;
pub mod interarrival;
pub mod jitter;
pub mod latch;
pub mod pacer;
pub mod playback;
pub mod recording;
pub mod resample;
pub mod rtp;
pub mod sdp;
pub mod session;
