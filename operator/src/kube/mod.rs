//! The operator's I/O: the reconcile loop against the API server, leader election,
//! and the objects it builds.
pub mod controller;
pub mod events;
pub mod leader;
pub mod resources;
