//! media-node: the per-call RTP engine and the gRPC service around it.
//!
//! - `core`: pure rules of one call (RTP, G.711, jitter, pacing, playback, latching).
//! - `ports`: the UDP port pool with quarantine.
//! - `audio`: prompts (URIs, WAV decoding, the bounded cache) and listener formatting.
//! - `call`: the tokio task that runs one call's session over real sockets.
//! - `grpc`: the `sentiric.media.v1.MediaService` server.
//! - `http`: Prometheus metrics and health endpoints.
//! - `fleet`: the pool as one service: placement of new calls and forwarding to the
//!   node that holds a port or a call.
//! - `cluster`: reporting into the node's MediaNode and watching the pool's nodes.
pub mod audio;
pub mod call;
pub mod cluster;
pub mod config;
pub mod core;
pub mod events;
pub mod fleet;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod node;
pub mod ports;
pub mod recording;
pub mod server;
pub mod tools;
