//! The node's side of the cluster: reporting into its MediaNode, watching the pool's
//! nodes (peers for placement and forwarding, and its own drain flag), and resolving
//! the advertised address from its Kubernetes Node. When to report is decided in
//! `report`, pure; `reporter` does the I/O.
mod report;
pub mod reporter;
pub(crate) mod watch;
pub use reporter::{run, ReporterConfig};
