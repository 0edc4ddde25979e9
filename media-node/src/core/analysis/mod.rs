//! Real-time analysis of a call's audio (issue 17): what the caller does (speaks,
//! presses digits, goes silent), found where the audio is. Pure: positions and times
//! are passed in.
pub mod inband_dtmf;
pub mod telephone_event;
pub mod vad;
