//! The media node server. Configuration from flags and environment (see --help), all
//! of it parsed and validated by `NodeConfig` before anything starts.

use clap::Parser;
use media_node::call::runtime;
use media_node::config::{NodeArgs, NodeConfig};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let args = NodeArgs::parse();
    let cfg = match NodeConfig::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("media-node: {e}");
            std::process::exit(2);
        }
    };
    runtime::configure(cfg.runtime);
    #[cfg(feature = "opus")]
    media_node::core::opus::set_default_complexity(cfg.opus_complexity);
    runtime::serving(&cfg.runtime).build()?.block_on(run(args.log_json, cfg))
}

async fn run(log_json: bool, cfg: NodeConfig) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if log_json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let cluster = cfg.cluster.clone();
    let running = media_node::server::start(cfg).await?;
    let reporter_stop = tokio_util::sync::CancellationToken::new();
    if let Some(rc) = cluster {
        tracing::info!(media_node = %rc.name, namespace = %rc.namespace, "reporting to the cluster");
        tokio::spawn(media_node::cluster::run(running.node.clone(), rc, reporter_stop.clone()));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: draining"),
    }
    // The reporter keeps running through the drain so the cluster sees it.
    let result = running.stop().await;
    reporter_stop.cancel();
    result
}
