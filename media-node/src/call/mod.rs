//! One call on real sockets: the tokio task that drives a `core::session::Session`.
pub mod listen_post;
pub mod runtime;
pub mod task;
pub mod udp;
pub use listen_post::ListenerPost;
pub use task::{spawn_call, BoundSockets, CallCommand, CallHandle, CallSockets, StreamEnd};
