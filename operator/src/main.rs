//! The MediaPool operator. Uses in-cluster credentials, or KUBECONFIG outside a cluster.

use std::time::Duration;

use clap::Parser;
use media_operator::{run, OperatorOptions};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "media-operator", about = "Runs MediaPools: node pods, disjoint port slots, pool status")]
struct Args {
    /// Watch only this namespace (all namespaces when unset).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Namespace of the leader-election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "media-system")]
    lease_namespace: String,
    #[arg(long, default_value = "media-operator-leader")]
    lease_name: String,
    /// This replica's identity in the Lease (its pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Address of /metrics, /healthz, /readyz.
    #[arg(long, env = "OPERATOR_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: std::net::SocketAddr,
    #[arg(long, env = "OPERATOR_LOG_JSON", default_value_t = false)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if args.log_json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let client = kube::Client::try_default().await?;
    let identity = args.identity.unwrap_or_else(|| format!("media-operator-{}", std::process::id()));
    let opts = OperatorOptions {
        namespace: args.namespace,
        lease_namespace: args.lease_namespace,
        lease_name: args.lease_name,
        identity,
        lease_duration: Duration::from_secs(args.lease_seconds),
        http_addr: args.http_addr,
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        stop.cancel();
    });
    run(client, opts, shutdown).await
}
