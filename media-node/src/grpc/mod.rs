//! The `sentiric.media.v1.MediaService` server: requests in, node operations out,
//! errors as gRPC status codes a caller can act on. `forward` makes the pool answer
//! as one service (placement and forwarding between nodes).
pub mod conn;
mod forward;
pub mod service;
pub use service::MediaSvc;
