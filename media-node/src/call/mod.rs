//! One call on real sockets: the tokio task that drives a `core::session::Session`
//! (`task`), its TTS streams and their marks (`streams`), what it measures for its
//! events (`measure`: quality periods, turn latency), its recording control
//! (`recording`), the runtime calls run on (`runtime`), batched UDP with kernel
//! receive stamps (`udp`), and the post that hands live-listen frames to the gRPC
//! streams in rounds (`listen_post`). Nothing here speaks the gRPC contract: the
//! `grpc` layer maps it to these types and back.
pub(crate) mod listen_post;
mod measure;
mod recording;
pub mod runtime;
pub(crate) mod streams;
pub(crate) mod task;
pub mod udp;
pub(crate) use listen_post::ListenerPost;
pub(crate) use streams::{MarkAck, StreamEnd, StreamReplies, TtsChunk};
pub(crate) use task::{spawn_call, BoundSockets, CallCommand, CallContext, CallHandle, Control};
