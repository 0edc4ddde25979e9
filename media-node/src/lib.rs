//! media-node: the per-call RTP engine and the gRPC service around it. This crate is
//! the node and nothing else; what drives a node from outside (mediactl, the demo,
//! the load tool, the RTP caller, audio analysis, benches) is the `media-tools` crate
//! in `tools/`. Public here is what the node's binary, the tools and the tests need:
//! its sans-IO core, its configuration, starting a node, and the node's own types.
//!
//! - `core`: pure rules of one call (the session and its parts, offer/answer, SRTP,
//!   codecs, jitter, pacing, playback, analysis, the recording timeline), tested with
//!   made-up time.
//! - `config`: every setting the node reads, parsed and validated once.
//! - `node`: the node's calls by port and call_id, the port pool, the prompt cache,
//!   the drain switch.
//! - `server`: starting and stopping a node (gRPC, health, HTTP, drain).
//! - `ports`: the UDP port pool with quarantine.
//! - `audio`: prompts (URIs, decoding, the bounded cache), streamed TTS bytes (PCM, Ogg
//!   Opus), in-band DTMF tones, and listener formatting.
//! - `call`: the tokio task that runs one call's session over real sockets, the media
//!   runtime, the listener post, and the call's recording control.
//! - `grpc`: the `sentiric.media.v1.MediaService` server, forwarding and peer clients.
//! - `http`: Prometheus metrics and health endpoints.
//! - `metrics`: the node's one registry.
//! - `recording`: destinations, the spool writer, and storage that never loses one.
//! - `events`: the platform's events to RabbitMQ through a bounded outbox, and call
//!   events.
//! - `fleet`: the pool's state as this node knows it: peers, placement, placed calls.
//! - `cluster`: reporting into the node's MediaNode and watching the pool's nodes.
//! - `echo`: caller input quoted in errors, kept short.
//! - `fuzz`: fuzz targets over every parser of outside input.
//! - `sync`: the one poisoned-lock recovery.
pub mod admission;
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
