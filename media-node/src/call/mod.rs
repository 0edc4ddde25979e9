//! One call on real sockets: the tokio task that drives a `core::session::Session`
//! (`task`), its recording control (`recording`), the runtime calls run on
//! (`runtime`), its StreamCallEvents subscribers (`events_stream`), batched UDP with kernel receive stamps (`udp`), and the post that hands
//! live-listen frames to the gRPC streams in rounds (`listen_post`).
pub(crate) mod events_stream;
pub(crate) mod listen_post;
mod recording;
pub mod runtime;
pub(crate) mod task;
pub mod udp;
pub(crate) use listen_post::ListenerPost;
pub(crate) use task::{spawn_call, BoundSockets, CallCommand, CallContext, CallHandle, Control, StreamEnd, TtsChunk};
