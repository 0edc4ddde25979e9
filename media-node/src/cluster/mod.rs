//! The node's side of the cluster: reporting into its MediaNode, following its drain
//! flag, and resolving the advertised address from its Kubernetes Node.
pub mod reporter;
pub use reporter::{ReporterConfig, run};
