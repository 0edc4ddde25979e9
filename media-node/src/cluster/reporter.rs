//! Reports the node's state into its MediaNode status (server-side apply under its own
//! field manager), at most about once a second, at once on a meaningful change, and
//! with a heartbeat. It also follows `spec.draining` and resolves the advertised
//! address per the pool's rule. The API server being away never affects calls: the
//! reporter logs, keeps trying, and catches up when the server is back.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node as KubeNode;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use media_crds::{MediaNode, PortCounts};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::report::{report_due, Snapshot};
use crate::node::Node;

pub const FIELD_MANAGER: &str = "media-node";
const TICK: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
/// Parsed and validated with the rest of the node's settings (`config`).
pub struct ReporterConfig {
    pub name: String,
    pub namespace: String,
    /// The MediaPool (from MEDIA_POOL_NAME, else read from the MediaNode).
    pub pool: Option<String>,
    /// The Kubernetes Node the pod runs on (downward API spec.nodeName).
    pub kube_node: Option<String>,
    /// ExternalIP, InternalIP or Explicit.
    pub advertise_source: String,
    pub advertise_address: Option<String>,
    /// The pod IP (with hostNetwork, the host's), used when the Node cannot be read.
    pub pod_ip: Option<IpAddr>,
}

fn snapshot(node: &Node) -> Snapshot {
    let c = node.port_counts();
    Snapshot {
        ports: PortCounts { total: c.total as i64, allocated: c.allocated as i64, quarantined: c.quarantined as i64, free: c.free as i64 },
        sessions: node.active_calls() as i64,
        recordings: node.metrics.recordings_in_flight.get() + node.recordings.pending() as i64,
        ready: !node.is_draining(),
        draining: node.is_draining(),
        overloaded: node.admission.overloaded(),
        load_percent: (node.admission.load() * 10.0).round() as i64 * 10,
        address: node.advertised_ip().to_string(),
    }
}

async fn resolve_address(client: &Client, cfg: &ReporterConfig) -> Option<IpAddr> {
    if cfg.advertise_source == "Explicit" {
        return cfg.advertise_address.as_deref().and_then(|a| a.parse().ok());
    }
    let from_node = async {
        let name = cfg.kube_node.as_ref()?;
        let n = Api::<KubeNode>::all(client.clone())
            .get(name)
            .await
            .map_err(|e| warn!(error = %e, node = %name, "cannot read my Node"))
            .ok()?;
        let addrs = n.status?.addresses.unwrap_or_default();
        let pick = |t: &str| addrs.iter().find(|a| a.type_ == t).and_then(|a| a.address.parse::<IpAddr>().ok());
        match cfg.advertise_source.as_str() {
            "InternalIP" => pick("InternalIP"),
            _ => pick("ExternalIP").or_else(|| pick("InternalIP")),
        }
    };
    from_node.await.or(cfg.pod_ip)
}

pub async fn run(node: Arc<Node>, cfg: ReporterConfig, shutdown: CancellationToken) {
    let client = loop {
        match Client::try_default().await {
            Ok(c) => break c,
            Err(e) => {
                warn!(error = %e, "no Kubernetes client yet; calls are unaffected");
                tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(Duration::from_secs(2)) => {} }
            }
        }
    };
    let api: Api<MediaNode> = Api::namespaced(client.clone(), &cfg.namespace);
    let mut resolved = false;
    let mut last: Option<(Snapshot, Instant)> = None;
    let mut failing = false;
    let mut watching = false;
    let grpc_port = node.config.grpc_addr.port();
    loop {
        if !resolved {
            if let Some(ip) = resolve_address(&client, &cfg).await {
                if ip != node.advertised_ip() {
                    info!(%ip, source = %cfg.advertise_source, "advertised address resolved");
                }
                node.set_advertised_ip(ip);
                resolved = true;
            }
        }
        if !watching {
            // The pool's name, to watch its nodes (the own MediaNode names it too).
            let pool = match &cfg.pool {
                Some(p) => Some(p.clone()),
                None => api.get(&cfg.name).await.ok().map(|mn| mn.spec.pool),
            };
            if let Some(pool) = pool {
                // (A node that cannot authenticate its peers stays out; see server.rs.)
                node.fleet.join(&cfg.name);
                tokio::spawn(super::watch::run(
                    node.clone(),
                    client.clone(),
                    cfg.namespace.clone(),
                    cfg.name.clone(),
                    pool,
                    shutdown.clone(),
                ));
                watching = true;
            }
        }
        let snap = snapshot(&node);
        if report_due(last.as_ref().map(|(prev, at)| (prev, at.elapsed())), &snap) {
            let body = json!({
                "apiVersion": "media.sentiric.cloud/v1alpha1",
                "kind": "MediaNode",
                "status": {
                    "ports": snap.ports,
                    "sessions": snap.sessions,
                    "recordings": snap.recordings,
                    "advertisedAddress": snap.address,
                    // Peers reach each other inside the cluster: the pod IP (the host's,
                    // with hostNetwork), not the address callers use for RTP.
                    "grpcEndpoint": format!("{}:{grpc_port}", cfg.pod_ip.map(|ip| ip.to_string()).unwrap_or_else(|| snap.address.clone())),
                    "heartbeatTime": Timestamp::now().to_string(),
                    "ready": snap.ready,
                    "draining": snap.draining,
                    "overloaded": snap.overloaded,
                    "loadPercent": snap.load_percent,
                }
            });
            match api.patch_status(&cfg.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await {
                Ok(_) => {
                    if failing {
                        info!("reporting to the API server again");
                    }
                    failing = false;
                    last = Some((snap, Instant::now()));
                }
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "cannot report to the API server; calls are unaffected, retrying");
                    }
                    failing = true;
                }
            }
        }
        tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(TICK) => {} }
    }
}
