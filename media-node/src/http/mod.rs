//! The node's HTTP side: Prometheus `/metrics`, liveness `/healthz`, readiness `/readyz`
//! (not ready while draining, so Services stop sending new calls).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::node::Node;

pub fn router(node: Arc<Node>) -> Router {
    Router::new().route("/metrics", get(metrics)).route("/healthz", get(|| async { "ok\n" })).route("/readyz", get(readyz)).with_state(node)
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    node.refresh_port_gauges();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], node.metrics.render())
}

async fn readyz(State(node): State<Arc<Node>>) -> impl IntoResponse {
    if node.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}
