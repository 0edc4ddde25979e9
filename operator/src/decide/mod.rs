//! The operator's decisions as pure functions of what it observed: no client, no
//! clock, no I/O. The kube layer gathers the observations and carries out the plan.
pub mod autoscale;
pub mod events;
pub mod plan;
pub mod rollout;
pub mod slots;
pub mod status;

pub use k8s_openapi::jiff::{SignedDuration, Timestamp};
