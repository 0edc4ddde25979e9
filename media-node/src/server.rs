//! Starting and stopping a node: gRPC (plaintext, TLS or mTLS) with the standard
//! health service, the HTTP side, and the drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use media_proto::pb::media_service_server::MediaServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::{info, warn};

use crate::config::NodeConfig;
use crate::grpc::peers::{peer_tls, PeerClients};
use crate::grpc::MediaSvc;
use crate::metrics::Metrics;
use crate::node::Node;

pub struct RunningNode {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub node: Arc<Node>,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningNode {
    /// Begins the drain: no new calls, not ready, calls in flight go on until they end
    /// or the drain timeout passes; then the servers close.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    pub async fn wait(self) -> anyhow::Result<()> {
        self.done.await.context("node task panicked")?
    }

    /// Shuts down and waits.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown();
        self.wait().await
    }
}

pub async fn start(cfg: NodeConfig) -> anyhow::Result<RunningNode> {
    let metrics = Arc::new(Metrics::new());
    let node = Arc::new(Node::new(cfg.clone(), metrics).context("port range")?);

    let grpc_listener = TcpListener::bind(cfg.grpc_addr).await.with_context(|| format!("binding gRPC on {}", cfg.grpc_addr))?;
    let http_listener = TcpListener::bind(cfg.http_addr).await.with_context(|| format!("binding HTTP on {}", cfg.http_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    // HTTP/2 streams one connection may hold open at once: a client carries each of its
    // calls' RecordAudio, PlayAudio and StreamAudioToCall on one connection, so the cap
    // follows the node's capacity (four per call, plus room for health and control),
    // and a client that opens streams without end is refused them instead of holding
    // the node's memory.
    let calls = u32::try_from(node.port_counts().total).unwrap_or(u32::MAX);
    let mut builder = Server::builder().max_concurrent_streams(Some(calls.saturating_mul(4).saturating_add(64)));
    if let Some(tls) = &cfg.tls {
        let cert = std::fs::read(&tls.cert).with_context(|| format!("reading {:?}", tls.cert))?;
        let key = std::fs::read(&tls.key).with_context(|| format!("reading {:?}", tls.key))?;
        let mut t = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = &tls.client_ca {
            let ca = std::fs::read(ca).with_context(|| format!("reading {ca:?}"))?;
            t = t.client_ca_root(Certificate::from_pem(ca));
        }
        builder = builder.tls_config(t).context("TLS configuration")?;
    }

    // Forwarding to peers authenticates both ends with the pool's CA. With TLS but no
    // client CA, nodes cannot authenticate each other: this one then never joins the
    // pool's forwarding and serves what reaches it.
    let peer_tls = match cfg.tls.as_ref().map(peer_tls) {
        None => None,
        Some(Ok(Some(tls))) => Some(tls),
        Some(Ok(None)) => {
            warn!(
                "gRPC TLS without a client CA: nodes cannot authenticate each other, so they do not forward; each serves what reaches it"
            );
            node.fleet.never_join();
            None
        }
        Some(Err(e)) => {
            warn!(error = %e, "cannot read the TLS files for forwarding to peers; this node serves what reaches it");
            node.fleet.never_join();
            None
        }
    };
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<MediaServiceServer<MediaSvc>>().await;

    let shutdown = CancellationToken::new();
    let servers_stop = CancellationToken::new();
    // Spooled recordings (also from before a restart) are stored in the background
    // until the node stops.
    // Before serving: recovery renames unfinished `.part` files, which must be the
    // last process's, never one a call of this process has begun.
    let recovered = node.recordings.recover_spool();
    if recovered > 0 {
        info!(recovered, "recordings left unfinished by the last stop are back in the spool");
    }
    tokio::spawn(node.recordings.clone().run_retries(servers_stop.clone()));
    tokio::spawn(crate::admission::run(node.clone(), servers_stop.clone()));
    if let Some(url) = cfg.rabbitmq_url.clone() {
        tokio::spawn(node.events.clone().run(url, servers_stop.clone()));
    }
    // Live audio to the agent rides these connections as many small frames: Nagle's
    // algorithm would hold them back waiting for ACKs (tens of ms), so it is off; and
    // `Conn` lets HTTP/2 gather frames that are ready together into one write.
    let incoming = TcpListenerStream::new(grpc_listener).map(|conn| {
        conn.map(|c| {
            let _ = c.set_nodelay(true);
            crate::grpc::conn::Conn(c)
        })
    });
    let grpc = builder
        .add_service(health_svc)
        .add_service(MediaServiceServer::new(MediaSvc::new(node.clone(), PeerClients::new(peer_tls))))
        .serve_with_incoming_shutdown(incoming, servers_stop.clone().cancelled_owned());
    let http = axum::serve(http_listener, crate::http::router(node.clone())).with_graceful_shutdown(servers_stop.clone().cancelled_owned());

    info!(%grpc_addr, %http_addr, ports = %format!("{}-{}", cfg.port_min, cfg.port_max), advertised_ip = %cfg.advertised_ip, "media node serving");

    // Whoever starts the drain (SIGTERM, or the operator through the MediaNode), the
    // node turns NOT_SERVING so probes and Services stop sending new calls.
    let mut drain_rx = node.drain_requested();
    let drain_health = health.clone();
    tokio::spawn(async move {
        if drain_rx.wait_for(|d| *d).await.is_ok() {
            drain_health.set_not_serving::<MediaServiceServer<MediaSvc>>().await;
            drain_health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        }
    });

    let drain_node = node.clone();
    let drain_token = shutdown.clone();
    let drain_timeout = cfg.drain_timeout;
    let done = tokio::spawn(async move {
        let grpc = tokio::spawn(grpc);
        let http = tokio::spawn(async move { http.await });
        drain_token.cancelled().await;
        drain_node.start_draining();
        health.set_not_serving::<MediaServiceServer<MediaSvc>>().await;
        let calls = drain_node.active_calls();
        info!(calls, timeout_s = drain_timeout.as_secs(), "draining");
        if !drain_node.wait_idle(drain_timeout).await {
            warn!(calls = drain_node.active_calls(), "drain deadline passed; ending remaining calls");
        }
        drain_node.release_all().await;
        // Give the last events (recordings stored as calls ended) a moment to go out.
        for _ in 0..30 {
            if drain_node.events.queued() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        servers_stop.cancel();
        grpc.await.context("gRPC task")?.context("gRPC server")?;
        http.await.context("HTTP task")?.context("HTTP server")?;
        let unsent = drain_node.events.queued();
        if unsent > 0 {
            drain_node.metrics.events_dropped.inc_by(unsent as u64);
            warn!(unsent, "events not confirmed by RabbitMQ before stop were lost");
        }
        info!("media node stopped");
        Ok(())
    });
    Ok(RunningNode { grpc_addr, http_addr, node, shutdown, done })
}
