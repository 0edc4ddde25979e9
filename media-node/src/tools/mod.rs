//! Client-side tools for operators and tests: an RTP caller and the demo call.
pub mod caller;
pub mod demo;
pub mod http;
pub mod load;
pub mod ng;
