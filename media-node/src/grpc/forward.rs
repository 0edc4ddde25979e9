//! The fleet side of the MediaService: placing a new call on the best node of the
//! pool, and forwarding a request for a port or a call this node does not hold to the
//! node that does. Forwarded requests are marked and never forwarded again.

use k8s_openapi::jiff::Timestamp;
use media_proto::pb::media_service_client::MediaServiceClient;
use media_proto::pb::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{info, warn};

use super::peers::{is_forwarded, occupancy, outbound, FORWARD_TIMEOUT, NODE_HEADER, OCCUPANCY_HEADER};
use super::service::{BoxStream, MediaSvc};
use crate::fleet::placement::{rank, Candidate};
use crate::fleet::{Peer, Placed};
use crate::node::NodeError;

impl MediaSvc {
    /// The peer to forward a request for `port` to: a port outside this node's range
    /// that a peer's slot holds, unless the request was forwarded here already.
    pub(crate) fn route(&self, meta: &MetadataMap, port: u32) -> Option<Peer> {
        let fleet = &self.node.fleet;
        if !fleet.enabled() || is_forwarded(meta) || self.node.owns_port(port) {
            return None;
        }
        fleet.owner_of(port)
    }

    /// Sends a per-port request to the peer that owns the port, marked as forwarded and
    /// carrying the caller's trace id, and answers with the peer's reply (a fresh
    /// response: the peer's transport headers are not ours to pass on). `send` is the
    /// client method; `timeout` None lets the peer take as long as the RPC does.
    pub(crate) async fn forward<Req, Resp, F, Fut>(
        &self,
        method: &str,
        started: std::time::Instant,
        peer: &Peer,
        req: &Request<Req>,
        timeout: Option<std::time::Duration>,
        send: F,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Clone,
        F: FnOnce(MediaServiceClient<Channel>, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        let result = match self.peers.client(&peer.endpoint) {
            Ok(client) => send(client, self.outbound(req.get_ref().clone(), req.metadata(), timeout)).await,
            Err(e) => Err(e),
        };
        let result = self.counted(method, result.map(|r| Response::new(r.into_inner())));
        self.observe(method, started, &result);
        result
    }

    fn outbound<T>(&self, msg: T, from: &MetadataMap, timeout: Option<std::time::Duration>) -> Request<T> {
        outbound(msg, from, self.node.fleet.name(), timeout)
    }

    pub(crate) fn counted<T>(&self, method: &str, result: Result<T, Status>) -> Result<T, Status> {
        let label = match &result {
            Ok(_) => "ok".to_string(),
            Err(s) => format!("{:?}", s.code()),
        };
        self.node.metrics.forwarded.with_label_values(&[method, &label]).inc();
        result
    }

    /// Allocates on this node; the reply names the node and its occupancy after, so a
    /// node that placed the call here knows it at once.
    pub(crate) async fn allocate_here(&self, call_id: &str) -> Result<Response<AllocatePortResponse>, Status> {
        let a = self.node.allocate(call_id).await?;
        info!(call_id = %call_id, port = a.port, "port allocated");
        let mut resp = Response::new(AllocatePortResponse { rtp_port: a.port as u32, advertised_ip: a.advertised_ip.to_string() });
        let (used, total) = self.node.occupancy();
        if let Ok(v) = format!("{used}/{total}").parse() {
            resp.metadata_mut().insert(OCCUPANCY_HEADER, v);
        }
        if let Ok(v) = self.node.fleet.name().parse() {
            resp.metadata_mut().insert(NODE_HEADER, v);
        }
        Ok(resp)
    }

    /// AllocatePort at the pool level: the least occupied ready node takes the call
    /// (this one on a tie); if it cannot, the next one; with no node able, the answer
    /// is this node's own (UNAVAILABLE while draining, RESOURCE_EXHAUSTED when full or
    /// at capacity). An overloaded node is not a candidate, here or on its peers.
    pub(crate) async fn place(&self, meta: &MetadataMap, call_id: String) -> Result<Response<AllocatePortResponse>, Status> {
        let fleet = &self.node.fleet;
        if !call_id.is_empty() {
            // A retry: the call already has a node.
            if self.node.call_by_id(&call_id).is_ok() {
                return self.allocate_here(&call_id).await;
            }
            if let Some(p) = fleet.placed(&call_id) {
                if let Ok(resp) = self.allocate_on(&p.peer, &p.endpoint, meta, &call_id).await {
                    return Ok(resp);
                }
            }
        }
        let peers = fleet.candidates(Timestamp::now());
        let (used, total) = self.node.occupancy();
        let mut cands = vec![Candidate { key: 0, ready: !self.node.is_draining() && !self.node.admission.overloaded(), used, total }];
        cands.extend(peers.iter().enumerate().map(|(i, (_, used, total))| Candidate {
            key: i + 1,
            ready: true,
            used: *used,
            total: *total,
        }));
        let mut last_err = None;
        for key in rank(&cands) {
            let result = if key == 0 {
                self.allocate_here(&call_id).await
            } else {
                let peer = &peers[key - 1].0;
                self.allocate_on(&peer.name, &peer.endpoint, meta, &call_id).await
            };
            match result {
                Ok(resp) => {
                    self.node.metrics.placements.with_label_values(&[if key == 0 { "local" } else { "peer" }]).inc();
                    return Ok(resp);
                }
                Err(e) => last_err = Some(e),
            }
        }
        match last_err {
            Some(e) => Err(e),
            None => self.allocate_here(&call_id).await,
        }
    }

    async fn allocate_on(
        &self,
        peer: &str,
        endpoint: &str,
        meta: &MetadataMap,
        call_id: &str,
    ) -> Result<Response<AllocatePortResponse>, Status> {
        let fleet = &self.node.fleet;
        let mut client = self.peers.client(endpoint)?;
        let result =
            client.allocate_port(self.outbound(AllocatePortRequest { call_id: call_id.to_string() }, meta, Some(FORWARD_TIMEOUT))).await;
        let result = self.counted("AllocatePort", result);
        match result {
            Ok(resp) => {
                if let Some((used, total)) = occupancy(resp.metadata()) {
                    fleet.observed(peer, used, total);
                }
                let body = resp.into_inner();
                fleet.remember(call_id, Placed { peer: peer.to_string(), endpoint: endpoint.to_string(), port: body.rtp_port });
                info!(call_id = %call_id, peer, port = body.rtp_port, "call placed on a peer");
                // A fresh reply: the peer's transport headers are not ours to pass on.
                let mut out = Response::new(body);
                if let Ok(v) = peer.parse() {
                    out.metadata_mut().insert(NODE_HEADER, v);
                }
                Ok(out)
            }
            Err(e) => {
                warn!(peer, error = %e, "peer could not take the call");
                Err(e)
            }
        }
    }

    /// StreamAudioToCall for a call this node does not hold: to the node it was placed
    /// on, or else to the peer that accepts it (a peer without the call answers
    /// NOT_FOUND after the first message, before any audio is played).
    pub(crate) async fn forward_tts(
        &self,
        meta: &MetadataMap,
        first: StreamAudioToCallRequest,
        mut inbound: Streaming<StreamAudioToCallRequest>,
    ) -> Result<Response<BoxStream<StreamAudioToCallResponse>>, Status> {
        let fleet = &self.node.fleet;
        let mut targets: Vec<(String, String)> = Vec::new();
        if let Some(p) = fleet.placed(&first.call_id) {
            targets.push((p.peer, p.endpoint));
        }
        for p in fleet.peers() {
            if !targets.iter().any(|(n, _)| *n == p.name) {
                targets.push((p.name, p.endpoint));
            }
        }
        for (peer, endpoint) in targets {
            let (tx, rx) = mpsc::channel::<StreamAudioToCallRequest>(4);
            let _ = tx.send(first.clone()).await;
            let mut client = self.peers.client(&endpoint)?;
            match client.stream_audio_to_call(self.outbound(ReceiverStream::new(rx), meta, None)).await {
                Ok(resp) => {
                    self.counted("StreamAudioToCall", Ok(()))?;
                    info!(call_id = %first.call_id, peer = %peer, "TTS stream forwarded");
                    // Back-pressure carries through: the tiny channel fills when the
                    // peer's HTTP/2 window does, and then this loop stops reading.
                    tokio::spawn(async move {
                        while let Ok(Some(msg)) = inbound.message().await {
                            if tx.send(msg).await.is_err() {
                                break;
                            }
                        }
                    });
                    return Ok(Response::new(Box::pin(resp.into_inner()) as BoxStream<StreamAudioToCallResponse>));
                }
                Err(e) if e.code() == Code::NotFound => continue,
                Err(e) => {
                    warn!(peer = %peer, error = %e, "peer unreachable for a TTS stream");
                    continue;
                }
            }
        }
        Err(NodeError::UnknownCall(crate::echo::clip(&first.call_id)).into())
    }
}
