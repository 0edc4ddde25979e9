//! The MediaPool operator: pure decisions (`decide`) and the kube wiring around them
//! (`kube`): watches, the reconcile loop, leader election; plus metrics and health.
pub mod decide;
pub mod kube;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::kube::controller::Ctx;
use crate::kube::leader::{self, LeaseConfig};
use crate::metrics::OperatorMetrics;

#[derive(Debug, Clone)]
pub struct OperatorOptions {
    /// Watch one namespace, or all when None.
    pub namespace: Option<String>,
    pub lease_namespace: String,
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub http_addr: SocketAddr,
}

/// Serves /metrics and health, and runs the controller while this replica leads.
pub async fn run(client: ::kube::Client, opts: OperatorOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = Arc::new(OperatorMetrics::new());
    let leading = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(opts.http_addr).await?;
    let (m, l) = (metrics.clone(), leading.clone());
    let router = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move { m.render() }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .route(
            "/leader",
            get(move || {
                let l = l.clone();
                async move {
                    if l.load(Ordering::SeqCst) {
                        "leader\n"
                    } else {
                        "standby\n"
                    }
                }
            }),
        );
    let http_stop = shutdown.clone();
    let http = tokio::spawn(async move { axum::serve(listener, router).with_graceful_shutdown(http_stop.cancelled_owned()).await });

    let ctx = Arc::new(Ctx::new(client.clone(), &opts.identity, metrics.clone()));
    let cfg = LeaseConfig {
        namespace: opts.lease_namespace.clone(),
        name: opts.lease_name.clone(),
        identity: opts.identity.clone(),
        duration: opts.lease_duration,
    };
    let gauge = metrics.leader.clone();
    let flag = leading.clone();
    let ns = opts.namespace.clone();
    leader::run(
        client,
        cfg,
        shutdown.clone(),
        move |is_leader| {
            gauge.set(is_leader as i64);
            flag.store(is_leader, Ordering::SeqCst);
        },
        move |stop| crate::kube::controller::run(ctx.clone(), ns.clone(), stop),
    )
    .await;
    http.await??;
    Ok(())
}
