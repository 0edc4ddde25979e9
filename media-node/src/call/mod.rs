//! One call on real sockets: the tokio task that drives a `core::session::Session`.
pub mod task;
pub use task::{spawn_call, CallCommand, CallHandle, CallSockets, StreamEnd};
