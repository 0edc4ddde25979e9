//! One call on real sockets: the tokio task that drives a `core::session::Session`.
pub mod runtime;
pub mod task;
pub use task::{spawn_call, BoundSockets, CallCommand, CallHandle, CallSockets, StreamEnd};
