//! The `sentiric.media.v1.MediaService` server: requests in, node operations out,
//! errors as gRPC status codes a caller can act on (`service`). The pool answers as
//! one service through `forward` (placement and forwarding between nodes) and `peers`
//! (clients to the other nodes, their TLS, the headers nodes exchange). `conn` lets
//! HTTP/2 gather frames into one write; `events_stream` turns a call's events into a
//! StreamCallEvents subscriber's stream.
pub(crate) mod conn;
mod events_stream;
mod forward;
pub mod peers;
pub(crate) mod service;
pub(crate) use service::{BoxStream, MediaSvc};
