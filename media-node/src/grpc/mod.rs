//! The `sentiric.media.v1.MediaService` server: requests in, node operations out,
//! errors as gRPC status codes a caller can act on.
pub mod service;
pub use service::MediaSvc;
