//! The pool as one media service. Every node knows its peers (from their MediaNode
//! objects, see `cluster::watch`): their gRPC endpoint, port range and occupancy. With
//! that, any node can place a new call on the best node of the pool and route a
//! request for a port or a call it does not hold to the node that does.
//!
//! This is the fleet's state only, with no transport in it: the peer table, what peers
//! told us directly, and where this node placed calls. The gRPC side (clients to
//! peers, their TLS, the headers between nodes) is `grpc::peers`; the MediaNode watch
//! that fills the table is `cluster::watch`.

pub(crate) mod placement;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;

use crate::sync::{lock, read, write};

/// A peer whose last report is older than this takes no new calls from placement.
pub const PEER_STALE: Duration = Duration::from_secs(30);
/// Placements remembered per call_id, so a retried AllocatePort and a
/// StreamAudioToCall by call_id find the node the call went to.
const PLACED_MEMORY: usize = 65_536;

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
    /// False when the node cannot authenticate its peers (TLS without a client CA):
    /// it then never joins, and serves what reaches it.
    may_join: AtomicBool,
    peers: RwLock<(Vec<Peer>, Instant)>,
    direct: Mutex<HashMap<String, Direct>>,
    placed: Mutex<PlacedMap>,
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
            may_join: AtomicBool::new(true),
            peers: RwLock::new((Vec::new(), Instant::now())),
            direct: Mutex::new(HashMap::new()),
            placed: Mutex::new(PlacedMap::default()),
        }
    }

    /// Keeps this node out of the pool's forwarding for good (see `may_join`).
    pub fn never_join(&self) {
        self.may_join.store(false, Ordering::SeqCst);
    }

    /// Joins the pool under this node's MediaNode name: placement and forwarding start.
    pub fn join(&self, name: &str) {
        if self.may_join.load(Ordering::SeqCst) {
            let _ = self.self_name.set(name.to_string());
        }
    }

    pub fn enabled(&self) -> bool {
        self.self_name.get().is_some()
    }

    pub fn name(&self) -> &str {
        self.self_name.get().map(String::as_str).unwrap_or("")
    }

    /// Replaces the peer table (from the watch of the pool's MediaNodes).
    pub fn set_peers(&self, peers: Vec<Peer>) {
        *write(&self.peers) = (peers, Instant::now());
    }

    pub fn peers(&self) -> Vec<Peer> {
        read(&self.peers).0.clone()
    }

    /// The peer whose slot holds `port`.
    pub fn owner_of(&self, port: u32) -> Option<Peer> {
        read(&self.peers).0.iter().find(|p| p.owns_port(port)).cloned()
    }

    /// Ready peers able to take a call, each with its best-known occupancy: its last
    /// report, or what it told us in a reply since, whichever is newer.
    pub fn candidates(&self, now: Timestamp) -> Vec<(Peer, i64, i64)> {
        let guard = read(&self.peers);
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

    /// Records a peer's occupancy as it told us in an AllocatePort reply.
    pub fn observed(&self, peer: &str, used: i64, total: i64) {
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
}

/// `used/total`, as a node writes its occupancy in an AllocatePort reply.
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
        f.observed("a", 9, 50);
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
