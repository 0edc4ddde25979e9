//! media-node: the per-call RTP engine and the gRPC service around it. This crate is
//! the node and nothing else; what drives a node from outside (mediactl, the demo,
//! the load tool, the RTP caller, audio analysis, benches) is the `media-tools` crate
//! in `tools/`. Public here is what the node's binary, the tools and the tests need:
//! its sans-IO core, its configuration, starting a node, and the node's own types.
//!
//! - `core`: pure rules of one call (RTP, G.711, jitter, pacing, playback, latching,
//!   the recording timeline and its flush schedule), tested with made-up time.
//! - `ports`: the UDP port pool with quarantine.
//! - `audio`: prompts (URIs, WAV decoding, the bounded cache), streamed TTS bytes, and
//!   listener formatting.
//! - `call`: the tokio task that runs one call's session over real sockets, and the
//!   call's recording control.
//! - `grpc`: the `sentiric.media.v1.MediaService` server, forwarding and peer clients.
//! - `http`: Prometheus metrics and health endpoints.
//! - `recording`: destinations, the spool writer, and storage that never loses one.
//! - `events`: the platform's events to RabbitMQ through a bounded outbox.
//! - `fleet`: the pool's state as this node knows it: peers, placement, placed calls.
//! - `cluster`: reporting into the node's MediaNode and watching the pool's nodes.
//! - `sync`: the one poisoned-lock recovery.
pub mod audio;
pub mod call;
pub mod cluster;
pub mod config;
pub mod core;
mod echo;
pub(crate) mod events;
pub mod fleet;
mod fuzz;
pub mod grpc;
pub(crate) mod http;
pub(crate) mod metrics;
pub mod node;
pub(crate) mod ports;
pub mod recording;
pub mod server;
mod sync;
