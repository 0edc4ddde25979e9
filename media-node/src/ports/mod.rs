//! The node's UDP ports.
pub mod pool;
pub use pool::{PoolCounts, PoolError, PortPool};
