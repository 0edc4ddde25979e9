//! The gRPC side of the pool: clients to the other nodes (made once per endpoint, over
//! mTLS when the node serves mTLS), the headers nodes exchange, and the request a node
//! sends a peer. A forwarded request carries `x-media-forwarded-by`; a node never
//! forwards such a request again, so forwarding takes at most one hop and cannot loop.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use media_proto::pb::media_service_client::MediaServiceClient;
use tonic::metadata::MetadataMap;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use crate::config::TlsFiles;
use crate::fleet::parse_occupancy;
use crate::sync::lock;

/// Set on a forwarded request: the name of the node that forwarded it.
pub const FORWARDED_HEADER: &str = "x-media-forwarded-by";
/// Set on every AllocatePort reply: the node that holds the call.
pub const NODE_HEADER: &str = "x-media-node";
/// Set on every AllocatePort reply: `used/total` RTP ports of that node just after.
pub const OCCUPANCY_HEADER: &str = "x-media-occupancy";
/// A forwarded unary request that does not wait for playback gives up after this.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// The client side of mTLS between nodes: the pool's CA as the root, the node's own
/// certificate as its identity. None without a CA (plain TLS cannot authenticate the
/// forwarding node, so nodes do not forward then).
pub fn peer_tls(files: &TlsFiles) -> std::io::Result<Option<ClientTlsConfig>> {
    let Some(ca) = &files.client_ca else { return Ok(None) };
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca)?))
        .identity(Identity::from_pem(std::fs::read(&files.cert)?, std::fs::read(&files.key)?));
    if let Some(d) = &files.peer_domain {
        tls = tls.domain_name(d.clone());
    }
    Ok(Some(tls))
}

/// Clients to the pool's other nodes.
#[derive(Default)]
pub struct PeerClients {
    clients: Mutex<HashMap<String, MediaServiceClient<Channel>>>,
    /// mTLS to peers, when the node serves gRPC over mTLS.
    tls: Option<ClientTlsConfig>,
}

impl PeerClients {
    pub fn new(tls: Option<ClientTlsConfig>) -> PeerClients {
        PeerClients { clients: Mutex::new(HashMap::new()), tls }
    }

    /// A client for a peer, made once per endpoint. The channel connects lazily and
    /// reconnects by itself; requests to a peer that is away fail with UNAVAILABLE.
    pub fn client(&self, endpoint: &str) -> Result<MediaServiceClient<Channel>, Status> {
        let mut clients = lock(&self.clients);
        if let Some(c) = clients.get(endpoint) {
            return Ok(c.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{endpoint}"))
            .map_err(|e| Status::internal(format!("bad peer endpoint {endpoint:?}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20));
        if let Some(tls) = &self.tls {
            ep = ep.tls_config(tls.clone()).map_err(|e| Status::internal(format!("peer TLS: {e}")))?;
        }
        let c = MediaServiceClient::new(ep.connect_lazy());
        clients.insert(endpoint.to_string(), c.clone());
        Ok(c)
    }
}

/// The request to send to a peer: the message, the caller's trace id, and the mark
/// (this node's name) that stops the peer from forwarding it again.
pub fn outbound<T>(msg: T, from: &MetadataMap, self_name: &str, timeout: Option<Duration>) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(t) = from.get("x-trace-id") {
        req.metadata_mut().insert("x-trace-id", t.clone());
    }
    if let Ok(v) = self_name.parse() {
        req.metadata_mut().insert(FORWARDED_HEADER, v);
    }
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    req
}

pub fn is_forwarded(meta: &MetadataMap) -> bool {
    meta.contains_key(FORWARDED_HEADER)
}

/// The occupancy a peer put in its AllocatePort reply.
pub fn occupancy(meta: &MetadataMap) -> Option<(i64, i64)> {
    meta.get(OCCUPANCY_HEADER).and_then(|v| v.to_str().ok()).and_then(parse_occupancy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_request_carries_the_trace_and_the_mark_and_nothing_else() {
        let mut from = MetadataMap::new();
        from.insert("x-trace-id", "t-1".parse().unwrap());
        from.insert("authorization", "Bearer secret".parse().unwrap());
        let req = outbound((), &from, "node-a", Some(FORWARD_TIMEOUT));
        assert_eq!(req.metadata().get("x-trace-id").unwrap(), "t-1");
        assert!(is_forwarded(req.metadata()));
        assert!(req.metadata().get("authorization").is_none(), "the caller's credentials stay with this node");
        let mut reply = MetadataMap::new();
        reply.insert(OCCUPANCY_HEADER, "9/50".parse().unwrap());
        assert_eq!(occupancy(&reply), Some((9, 50)));
        assert_eq!(occupancy(&MetadataMap::new()), None);
    }
}
