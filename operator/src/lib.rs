//! The MediaPool operator: pure decisions (`decide`) and the kube wiring around them
//! (`kube`): watches, the reconcile loop, leader election, metrics.
pub mod decide;
