//! The node's side of the cluster: reporting into its MediaNode, watching the pool's
//! nodes (peers for placement and forwarding, and its own drain flag), and resolving
//! the advertised address from its Kubernetes Node.
pub mod reporter;
pub mod watch;
pub use reporter::{run, ReporterConfig};
