//! The pool as one media service. Every node knows its peers (from their MediaNode
//! objects, see `cluster::watch`): their gRPC endpoint, port range and occupancy. With
//! that, any node can place a new call on the best node of the pool and route a
//! request for a port or a call it does not hold to the node that does.
//!
//! A forwarded request carries `x-media-forwarded-by`; a node never forwards such a
//! request again, so forwarding takes at most one hop and cannot loop.

pub mod placement;

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use media_proto::pb::media_service_client::MediaServiceClient;
use tonic::metadata::MetadataMap;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

/// Set on a forwarded request: the name of the node that forwarded it.
pub const FORWARDED_HEADER: &str = "x-media-forwarded-by";
/// Set on every AllocatePort reply: the node that holds the call.
pub const NODE_HEADER: &str = "x-media-node";
/// Set on every AllocatePort reply: `used/total` RTP ports of that node just after.
pub const OCCUPANCY_HEADER: &str = "x-media-occupancy";
/// A peer whose last report is older than this takes no new calls from placement.
pub const PEER_STALE: Duration = Duration::from_secs(30);
/// Placements remembered per call_id, so a retried AllocatePort and a
/// StreamAudioToCall by call_id find the node the call went to.
const PLACED_MEMORY: usize = 65_536;
/// A forwarded unary request that does not wait for playback gives up after this.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Another node of the pool, as its MediaNode says.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    pub name: String,
    /// host:port of its gRPC service.
    pub endpoint: String,
    pub udp_min: u16,
    pub udp_max: u16,
    /// Reports ready and is not marked draining.
    pub ready: bool,
    pub used: i64,
    pub total: i64,
    pub heartbeat: Option<Timestamp>,
}

impl Peer {
    pub fn owns_port(&self, port: u32) -> bool {
        (self.udp_min as u32..=self.udp_max as u32).contains(&port)
    }

    fn fresh(&self, now: Timestamp) -> bool {
        self.heartbeat.is_some_and(|h| now.duration_since(h).unsigned_abs() < PEER_STALE)
    }
}

/// Where a call was placed by this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub peer: String,
    pub endpoint: String,
    pub port: u32,
}

#[derive(Default)]
struct PlacedMap {
    by_call: HashMap<String, Placed>,
    /// The call placed on each port (slots are disjoint, so a port names one call), so
    /// a ReleasePort forgets its call without a scan.
    by_port: HashMap<u32, String>,
    /// Calls oldest first, for the bound; may still name calls forgotten since.
    order: VecDeque<String>,
}

impl PlacedMap {
    fn insert(&mut self, call_id: &str, placed: Placed) {
        let port = placed.port;
        match self.by_call.insert(call_id.to_string(), placed) {
            Some(old) if old.port != port => {
                self.by_port.remove(&old.port);
            }
            Some(_) => {}
            None => self.order.push_back(call_id.to_string()),
        }
        if let Some(prev) = self.by_port.insert(port, call_id.to_string()) {
            if prev != call_id {
                self.by_call.remove(&prev); // the port went to a new call
            }
        }
        while self.by_call.len() > PLACED_MEMORY {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(p) = self.by_call.remove(&old) {
                self.by_port.remove(&p.port);
            }
        }
        if self.order.len() > 2 * PLACED_MEMORY {
            let by_call = &self.by_call;
            self.order.retain(|c| by_call.contains_key(c));
        }
    }

    fn forget_port(&mut self, port: u32) {
        if let Some(call_id) = self.by_port.remove(&port) {
            self.by_call.remove(&call_id);
        }
    }
}

/// What a peer told us directly in an AllocatePort reply, fresher than its report.
#[derive(Debug, Clone, Copy)]
struct Direct {
    used: i64,
    total: i64,
    at: Instant,
}

pub struct Fleet {
    /// This node's MediaNode name, set when it joins a pool; until then (and on a
    /// standalone node) every request is served here and nothing is forwarded.
    self_name: std::sync::OnceLock<String>,
    peers: RwLock<(Vec<Peer>, Instant)>,
    direct: Mutex<HashMap<String, Direct>>,
    placed: Mutex<PlacedMap>,
    clients: Mutex<HashMap<String, MediaServiceClient<Channel>>>,
    /// mTLS to peers, when the node serves gRPC over mTLS.
    tls: std::sync::OnceLock<ClientTlsConfig>,
}

/// The client side of mTLS between nodes: the pool's CA as the root, the node's own
/// certificate as its identity. None without a CA (plain TLS cannot authenticate the
/// forwarding node, so nodes do not forward then).
pub fn peer_tls(files: &crate::config::TlsFiles) -> std::io::Result<Option<ClientTlsConfig>> {
    let Some(ca) = &files.client_ca else { return Ok(None) };
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca)?))
        .identity(Identity::from_pem(std::fs::read(&files.cert)?, std::fs::read(&files.key)?));
    if let Some(d) = &files.peer_domain {
        tls = tls.domain_name(d.clone());
    }
    Ok(Some(tls))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet::new()
    }
}

impl Fleet {
    pub fn new() -> Fleet {
        Fleet {
            self_name: std::sync::OnceLock::new(),
            peers: RwLock::new((Vec::new(), Instant::now())),
            direct: Mutex::new(HashMap::new()),
            placed: Mutex::new(PlacedMap::default()),
            clients: Mutex::new(HashMap::new()),
            tls: std::sync::OnceLock::new(),
        }
    }

    /// Forward over mTLS (call before `join`).
    pub fn use_tls(&self, tls: ClientTlsConfig) {
        let _ = self.tls.set(tls);
    }

    /// Joins the pool under this node's MediaNode name: placement and forwarding start.
    pub fn join(&self, name: &str) {
        let _ = self.self_name.set(name.to_string());
    }

    pub fn enabled(&self) -> bool {
        self.self_name.get().is_some()
    }

    pub fn name(&self) -> &str {
        self.self_name.get().map(String::as_str).unwrap_or("")
    }

    /// Replaces the peer table (from the watch of the pool's MediaNodes).
    pub fn set_peers(&self, peers: Vec<Peer>) {
        *self.peers.write().unwrap_or_else(|e| e.into_inner()) = (peers, Instant::now());
    }

    pub fn peers(&self) -> Vec<Peer> {
        self.peers.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// The peer whose slot holds `port`.
    pub fn owner_of(&self, port: u32) -> Option<Peer> {
        self.peers.read().unwrap_or_else(|e| e.into_inner()).0.iter().find(|p| p.owns_port(port)).cloned()
    }

    /// Ready peers able to take a call, each with its best-known occupancy: its last
    /// report, or what it told us in a reply since, whichever is newer.
    pub fn candidates(&self, now: Timestamp) -> Vec<(Peer, i64, i64)> {
        let guard = self.peers.read().unwrap_or_else(|e| e.into_inner());
        let (peers, reported_at) = (&guard.0, guard.1);
        let direct = lock(&self.direct);
        peers
            .iter()
            .filter(|p| p.ready && p.fresh(now))
            .map(|p| match direct.get(&p.name) {
                Some(d) if d.at > reported_at => (p.clone(), d.used, d.total),
                _ => (p.clone(), p.used, p.total),
            })
            .collect()
    }

    /// Records a peer's occupancy from its AllocatePort reply.
    pub fn observed(&self, peer: &str, meta: &MetadataMap) {
        let Some((used, total)) = meta.get(OCCUPANCY_HEADER).and_then(|v| v.to_str().ok()).and_then(parse_occupancy) else {
            return;
        };
        lock(&self.direct).insert(peer.to_string(), Direct { used, total, at: Instant::now() });
    }

    pub fn remember(&self, call_id: &str, placed: Placed) {
        if call_id.is_empty() {
            return;
        }
        lock(&self.placed).insert(call_id, placed);
    }

    pub fn placed(&self, call_id: &str) -> Option<Placed> {
        lock(&self.placed).by_call.get(call_id).cloned()
    }

    pub fn forget_port(&self, port: u32) {
        lock(&self.placed).forget_port(port);
    }

    /// A client for a peer, made once per endpoint. The channel connects lazily and
    /// reconnects by itself; requests to a peer that is away fail with UNAVAILABLE.
    pub fn client(&self, endpoint: &str) -> Result<MediaServiceClient<Channel>, Status> {
        let mut clients = lock(&self.clients);
        if let Some(c) = clients.get(endpoint) {
            return Ok(c.clone());
        }
        let scheme = if self.tls.get().is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{endpoint}"))
            .map_err(|e| Status::internal(format!("bad peer endpoint {endpoint:?}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20));
        if let Some(tls) = self.tls.get() {
            ep = ep.tls_config(tls.clone()).map_err(|e| Status::internal(format!("peer TLS: {e}")))?;
        }
        let c = MediaServiceClient::new(ep.connect_lazy());
        clients.insert(endpoint.to_string(), c.clone());
        Ok(c)
    }

    /// The request to send to a peer: the message, the caller's trace id, and the
    /// mark that stops the peer from forwarding it again.
    pub fn outbound<T>(&self, msg: T, from: &MetadataMap, timeout: Option<Duration>) -> Request<T> {
        let mut req = Request::new(msg);
        if let Some(t) = from.get("x-trace-id") {
            req.metadata_mut().insert("x-trace-id", t.clone());
        }
        if let Ok(v) = self.name().parse() {
            req.metadata_mut().insert(FORWARDED_HEADER, v);
        }
        if let Some(t) = timeout {
            req.set_timeout(t);
        }
        req
    }
}

pub fn is_forwarded(meta: &MetadataMap) -> bool {
    meta.contains_key(FORWARDED_HEADER)
}

pub fn parse_occupancy(s: &str) -> Option<(i64, i64)> {
    let (u, t) = s.split_once('/')?;
    Some((u.trim().parse().ok()?, t.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined() -> Fleet {
        let f = Fleet::new();
        f.join("me");
        f
    }

    fn peer(name: &str, min: u16, used: i64) -> Peer {
        Peer {
            name: name.into(),
            endpoint: format!("127.0.0.1:{min}"),
            udp_min: min,
            udp_max: min + 99,
            ready: true,
            used,
            total: 50,
            heartbeat: Some(Timestamp::now()),
        }
    }

    #[test]
    fn owner_by_port_range() {
        let f = joined();
        f.set_peers(vec![peer("a", 30100, 0), peer("b", 30200, 0)]);
        assert_eq!(f.owner_of(30250).unwrap().name, "b");
        assert_eq!(f.owner_of(30100).unwrap().name, "a");
        assert!(f.owner_of(30300).is_none());
    }

    #[test]
    fn a_direct_reply_overrides_an_older_report_until_the_next_one() {
        let f = joined();
        f.set_peers(vec![peer("a", 30100, 3)]);
        let mut meta = MetadataMap::new();
        meta.insert(OCCUPANCY_HEADER, "9/50".parse().unwrap());
        f.observed("a", &meta);
        assert_eq!(f.candidates(Timestamp::now())[0].1, 9);
        f.set_peers(vec![peer("a", 30100, 10)]);
        assert_eq!(f.candidates(Timestamp::now())[0].1, 10, "a newer report wins");
    }

    #[test]
    fn stale_or_draining_peers_are_not_candidates() {
        let f = joined();
        let mut old = peer("old", 30100, 0);
        old.heartbeat = Some(Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(60));
        let mut draining = peer("d", 30200, 0);
        draining.ready = false;
        f.set_peers(vec![old, draining, peer("ok", 30300, 0)]);
        let names: Vec<String> = f.candidates(Timestamp::now()).into_iter().map(|c| c.0.name).collect();
        assert_eq!(names, vec!["ok"]);
    }

    #[test]
    fn placements_are_bounded_and_forgotten_with_their_port() {
        let f = joined();
        f.remember("c1", Placed { peer: "a".into(), endpoint: "x".into(), port: 30102 });
        assert_eq!(f.placed("c1").unwrap().port, 30102);
        f.forget_port(30102);
        assert!(f.placed("c1").is_none());
        assert_eq!(parse_occupancy("3/50"), Some((3, 50)));
        assert_eq!(parse_occupancy("x"), None);
        // A port given to a new call no longer leads to the old one.
        f.remember("c2", Placed { peer: "a".into(), endpoint: "x".into(), port: 30104 });
        f.remember("c3", Placed { peer: "a".into(), endpoint: "x".into(), port: 30104 });
        assert!(f.placed("c2").is_none());
        assert_eq!(f.placed("c3").unwrap().port, 30104);
        // The memory is bounded: the oldest placements go first.
        for i in 0..PLACED_MEMORY as u32 + 10 {
            f.remember(&format!("bulk-{i}"), Placed { peer: "a".into(), endpoint: "x".into(), port: 40000 + i });
        }
        assert!(f.placed("bulk-0").is_none() && f.placed("c3").is_none());
        assert!(f.placed(&format!("bulk-{}", PLACED_MEMORY + 9)).is_some());
        assert_eq!(lock(&f.placed).by_call.len(), PLACED_MEMORY);
    }
}
