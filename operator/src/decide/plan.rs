//! What the operator should do to a pool now, given what it observed.

use super::slots::{free_slots, Claim, Layout, SlotPorts};
use super::{SignedDuration, Timestamp};

#[derive(Debug, Clone, PartialEq)]
pub struct PoolObs {
    pub name: String,
    pub replicas: i32,
    pub layout: Layout,
    pub quarantine: SignedDuration,
    pub drain_timeout: SignedDuration,
    /// Hash of what the pool asks a node pod to be (see `rollout::template_hash`).
    pub template_hash: String,
    pub max_surge: i32,
    pub max_unavailable: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodObs {
    pub name: String,
    pub terminating: bool,
    /// The pod's Ready condition (its kubelet's readiness probe): what decides
    /// whether the pool's Service sends it callers.
    pub ready: bool,
}

/// What a node last reported in its MediaNode status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeReport {
    pub sessions: i64,
    pub recordings: i64,
    pub ready: bool,
    pub draining: bool,
    pub heartbeat: Option<Timestamp>,
    pub ports_total: i64,
    pub ports_allocated: i64,
    pub ports_quarantined: i64,
    pub ports_free: i64,
    /// Admission control refuses new calls on this node (at capacity).
    pub overloaded: bool,
}

impl NodeReport {
    /// Ports this node counts as held for the autoscaler: its calls' and quarantined
    /// ones, or all of them while it refuses new calls (it has no room left, whatever
    /// its ports say, so the pool must grow).
    pub fn held_ports(&self) -> i64 {
        if self.overloaded {
            self.ports_total
        } else {
            self.ports_total - self.ports_free
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeObs {
    pub name: String,
    pub slot: i32,
    pub udp_min: i32,
    pub udp_max: i32,
    pub draining: bool,
    pub drain_deadline: Option<Timestamp>,
    pub released_at: Option<Timestamp>,
    pub report: Option<NodeReport>,
    /// The template hash the node was made from (None: made before hashes existed).
    pub template_hash: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Claim a slot with a MediaNode, then start its pod.
    Create {
        name: String,
        ports: SlotPorts,
    },
    /// The node's pod is gone: record when its slot was released.
    Tombstone {
        name: String,
    },
    /// The quarantine of a released slot is over: delete its MediaNode.
    Forget {
        name: String,
    },
    /// Take no new calls; the pod goes when the calls end or at the deadline.
    Drain {
        name: String,
        deadline: Timestamp,
        reason: DrainReason,
    },
    /// Scaling up again: a draining node goes back into service.
    Undrain {
        name: String,
    },
    DeletePod {
        name: String,
    },
}

/// Why a node is drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainReason {
    /// The pool wants fewer nodes.
    ScaleDown,
    /// The node was made from an older template; a new node replaces it.
    Rollout,
    /// The node's heartbeat is stale; a new node replaces it.
    Unhealthy,
    /// The node's ports no longer fit the pool's port layout.
    Relayout,
}

impl DrainReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            DrainReason::ScaleDown => "scale-down",
            DrainReason::Rollout => "rollout",
            DrainReason::Unhealthy => "stale heartbeat",
            DrainReason::Relayout => "port layout changed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Fewer free slots than nodes wanted.
    pub slots_exhausted: bool,
    /// The earliest time something scheduled becomes due (quarantine end, drain deadline).
    pub wake_at: Option<Timestamp>,
}

/// A heartbeat older than this means the node is not reporting.
pub const HEARTBEAT_STALE: SignedDuration = SignedDuration::from_secs(30);

/// Heartbeats are judged only over time the operator itself could see the pool: one
/// older than the moment its view began (its start, its taking the lease, the API
/// server's return after an outage) counts as given at that moment. Without this an
/// API server gone for longer than HEARTBEAT_STALE made every node look dead the moment
/// it came back (their reports could not arrive either), and the operator drained and
/// replaced a whole healthy pool; seen with the API server gone for 120 s. A node
/// really gone is still replaced, HEARTBEAT_STALE after the view began.
pub fn judged_from(nodes: &mut [NodeObs], view_since: Timestamp) {
    for h in nodes.iter_mut().filter_map(|n| n.report.as_mut()).filter_map(|r| r.heartbeat.as_mut()) {
        if *h < view_since {
            *h = view_since;
        }
    }
}

/// Nodes that hold their slot with a pod still running (not released, not terminating).
pub fn live_nodes<'a>(nodes: &'a [NodeObs], pods: &'a [PodObs]) -> impl Iterator<Item = &'a NodeObs> + 'a {
    nodes.iter().filter(move |n| n.released_at.is_none() && pods.iter().any(|p| p.name == n.name && !p.terminating))
}

pub fn node_name(pool: &str, slot: i32, now: Timestamp) -> String {
    format!("{pool}-{slot}-{:05x}", now.as_millisecond().rem_euclid(0x100000))
}

impl NodeObs {
    fn emptiness_key(&self) -> (bool, i64, i32) {
        // Not-ready first, then fewest calls; among equals the highest slot goes.
        let r = self.report.clone().unwrap_or_default();
        (r.ready, r.sessions + r.recordings, -self.slot)
    }

    /// Reported, but not for HEARTBEAT_STALE. A node that never reported is only
    /// starting (its image may still be pulling), not stale.
    pub fn stale(&self, now: Timestamp) -> bool {
        self.report.as_ref().is_some_and(|r| r.heartbeat.is_none_or(|h| now.duration_since(h) >= HEARTBEAT_STALE))
    }

    /// Reports ready with a fresh heartbeat.
    pub fn ready(&self, now: Timestamp) -> bool {
        self.report.as_ref().is_some_and(|r| r.ready) && !self.stale(now)
    }

    /// Ready by both counts: its own report and its pod's Ready condition. A new node
    /// reports ready a moment before its kubelet's probe marks the pod Ready, and
    /// counting it then let a rollout drain an old node while fewer than the wanted
    /// pods were behind the Service.
    pub fn serves(&self, pods: &[PodObs], now: Timestamp) -> bool {
        self.ready(now) && pods.iter().any(|p| p.name == self.name && p.ready && !p.terminating)
    }

    /// True when the node confirmed its drain and has nothing left in flight.
    fn drained(&self) -> bool {
        self.report.as_ref().is_some_and(|r| r.draining && r.sessions == 0 && r.recordings == 0)
    }
}

pub fn plan(pool: &PoolObs, pods: &[PodObs], nodes: &[NodeObs], now: Timestamp) -> Plan {
    let mut p = Plan::default();
    let wake = |t: Timestamp, p: &mut Plan| p.wake_at = Some(p.wake_at.map_or(t, |w| w.min(t)));
    let pod = |name: &str| pods.iter().find(|x| x.name == name);

    let mut claims = Vec::new();
    let mut live: Vec<&NodeObs> = Vec::new();
    for n in nodes {
        match (n.released_at, pod(&n.name)) {
            (Some(released), _) => {
                let until = released + pool.quarantine;
                if now >= until {
                    p.actions.push(Action::Forget { name: n.name.clone() });
                } else {
                    claims.push(Claim { udp_min: n.udp_min, udp_max: n.udp_max, until: Some(until) });
                    wake(until, &mut p);
                }
            }
            (None, None) => {
                p.actions.push(Action::Tombstone { name: n.name.clone() });
                let until = now + pool.quarantine;
                claims.push(Claim { udp_min: n.udp_min, udp_max: n.udp_max, until: Some(until) });
                wake(until, &mut p);
            }
            (None, Some(pod)) => {
                claims.push(Claim { udp_min: n.udp_min, udp_max: n.udp_max, until: None });
                if !pod.terminating {
                    live.push(n);
                }
            }
        }
    }
    // A pod without its MediaNode holds ports nobody accounts for: it goes.
    for pod in pods.iter().filter(|p| !p.terminating) {
        if !nodes.iter().any(|n| n.name == pod.name) {
            p.actions.push(Action::DeletePod { name: pod.name.clone() });
        }
    }

    // Nodes whose ports no longer match the pool's layout are replaced.
    let (fitting, misfits): (Vec<&NodeObs>, Vec<&NodeObs>) = live.into_iter().partition(|n| pool.layout.fits(n.slot, n.udp_min, n.udp_max));
    let mut draining: Vec<&NodeObs> = fitting.iter().copied().filter(|n| n.draining).collect();
    let mut serving: Vec<&NodeObs> = Vec::new();
    let drain = |n: &NodeObs, reason: DrainReason, p: &mut Plan| {
        let deadline = now + pool.drain_timeout;
        p.actions.push(Action::Drain { name: n.name.clone(), deadline, reason });
        wake(deadline, p);
    };
    for n in fitting.iter().copied().filter(|n| !n.draining) {
        // A node that stopped reporting is replaced; it keeps its calls (it may only
        // have lost the API server) until they end or its drain deadline passes.
        if n.stale(now) {
            drain(n, DrainReason::Unhealthy, &mut p);
        } else {
            serving.push(n);
        }
    }
    for n in misfits.iter().filter(|n| !n.draining) {
        drain(n, DrainReason::Relayout, &mut p);
    }
    draining.extend(misfits.iter().copied().filter(|n| n.draining));

    let desired = pool.replicas.max(0) as usize;
    let current = |n: &NodeObs| n.template_hash.as_deref() == Some(pool.template_hash.as_str());
    let (mut new, mut old): (Vec<&NodeObs>, Vec<&NodeObs>) = serving.into_iter().partition(|n| current(n));

    // Short of current nodes: undrain before creating, since a draining node still
    // holds its calls and its slot. Only current, healthy, fitting nodes come back.
    if new.len() < desired {
        draining.sort_by_key(|n| std::cmp::Reverse(n.emptiness_key()));
        while new.len() < desired {
            let Some(pos) = draining.iter().position(|n| current(n) && !n.stale(now) && !misfits.contains(n)) else {
                break;
            };
            let n = draining.remove(pos);
            p.actions.push(Action::Undrain { name: n.name.clone() });
            new.push(n);
        }
    }

    // Drain: every old node, and current nodes beyond `desired`, emptiest first; a
    // ready node only while the ready ones left stay at desired - maxUnavailable.
    let mut available = new.iter().chain(old.iter()).filter(|n| n.serves(pods, now)).count() as i64;
    let min_available = desired as i64 - pool.max_unavailable.max(0) as i64;
    old.sort_by_key(|n| n.emptiness_key());
    new.sort_by_key(|n| n.emptiness_key());
    let excess_new = new.len().saturating_sub(desired);
    let candidates: Vec<(&NodeObs, DrainReason)> =
        old.iter().map(|n| (*n, DrainReason::Rollout)).chain(new.iter().take(excess_new).map(|n| (*n, DrainReason::ScaleDown))).collect();
    let mut drained: Vec<&str> = Vec::new();
    for (n, reason) in candidates {
        if n.serves(pods, now) {
            if available - 1 < min_available {
                continue;
            }
            available -= 1;
        }
        drain(n, reason, &mut p);
        drained.push(&n.name);
    }
    old.retain(|n| !drained.contains(&n.name.as_str()));
    new.retain(|n| !drained.contains(&n.name.as_str()));

    // Create current nodes up to `desired`, never serving more than desired + maxSurge.
    let serving_now = new.len() + old.len();
    let room = (desired + pool.max_surge.max(0) as usize).saturating_sub(serving_now);
    let wanted = desired.saturating_sub(new.len()).min(room);
    if wanted > 0 {
        let free: Vec<SlotPorts> = free_slots(pool.layout, &claims, now).take(wanted).collect();
        if free.len() < wanted {
            p.slots_exhausted = true;
        }
        for ports in free {
            p.actions.push(Action::Create { name: node_name(&pool.name, ports.slot, now), ports });
        }
    }

    for n in draining {
        let past_deadline = n.drain_deadline.is_some_and(|d| now >= d);
        if n.drained() || past_deadline {
            p.actions.push(Action::DeletePod { name: n.name.clone() });
        } else if let Some(d) = n.drain_deadline {
            wake(d, &mut p);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn pool(replicas: i32) -> PoolObs {
        PoolObs {
            name: "p".into(),
            replicas,
            layout: Layout { min: 30000, max: 30399, size: 100 },
            quarantine: SignedDuration::from_secs(5),
            drain_timeout: SignedDuration::from_secs(60),
            template_hash: "h1".into(),
            max_surge: 1,
            max_unavailable: 0,
        }
    }

    fn node(name: &str, slot: i32, sessions: i64) -> NodeObs {
        NodeObs {
            name: name.into(),
            slot,
            udp_min: 30000 + slot * 100,
            udp_max: 30099 + slot * 100,
            draining: false,
            drain_deadline: None,
            released_at: None,
            report: Some(NodeReport { sessions, ready: true, heartbeat: Some(t(0)), ..Default::default() }),
            template_hash: Some("h1".into()),
        }
    }

    fn pod(name: &str) -> PodObs {
        PodObs { name: name.into(), terminating: false, ready: true }
    }

    fn creates(p: &Plan) -> Vec<i32> {
        p.actions.iter().filter_map(|a| if let Action::Create { ports, .. } = a { Some(ports.slot) } else { None }).collect()
    }

    #[test]
    fn an_overloaded_node_counts_as_full_for_the_autoscaler() {
        let r = NodeReport { ports_total: 500, ports_free: 400, ..Default::default() };
        assert_eq!(r.held_ports(), 100);
        assert_eq!(NodeReport { overloaded: true, ..r }.held_ports(), 500, "no room, whatever its ports say");
    }

    #[test]
    fn an_empty_pool_gets_the_lowest_slots() {
        let p = plan(&pool(3), &[], &[], t(0));
        assert_eq!(creates(&p), vec![0, 1, 2]);
        assert!(!p.slots_exhausted);
    }

    #[test]
    fn more_replicas_than_slots_is_reported() {
        let p = plan(&pool(5), &[], &[], t(0));
        assert_eq!(creates(&p).len(), 4);
        assert!(p.slots_exhausted);
    }

    #[test]
    fn a_vanished_pod_is_tombstoned_and_replaced_on_another_slot() {
        let nodes = vec![node("a", 0, 0), node("b", 1, 0)];
        let p = plan(&pool(2), &[pod("b")], &nodes, t(10));
        assert!(p.actions.contains(&Action::Tombstone { name: "a".into() }));
        assert_eq!(creates(&p), vec![2], "slot 0 is quarantined, slot 1 is live");
        assert_eq!(p.wake_at, Some(t(15)));
    }

    #[test]
    fn a_released_slot_is_forgotten_after_quarantine() {
        let mut a = node("a", 0, 0);
        a.released_at = Some(t(0));
        let early = plan(&pool(0), &[], std::slice::from_ref(&a), t(4));
        assert!(early.actions.is_empty());
        let late = plan(&pool(0), &[], &[a], t(5));
        assert_eq!(late.actions, vec![Action::Forget { name: "a".into() }]);
    }

    #[test]
    fn scale_down_drains_the_emptiest_then_deletes_when_drained() {
        let nodes = vec![node("a", 0, 3), node("b", 1, 0), node("c", 2, 1)];
        let pods = vec![pod("a"), pod("b"), pod("c")];
        let p = plan(&pool(2), &pods, &nodes, t(0));
        assert_eq!(p.actions, vec![Action::Drain { name: "b".into(), deadline: t(60), reason: DrainReason::ScaleDown }]);

        let mut b = node("b", 1, 0);
        b.draining = true;
        b.drain_deadline = Some(t(60));
        // Not yet acknowledged by the node: wait.
        let p = plan(&pool(2), &pods, &[nodes[0].clone(), b.clone(), nodes[2].clone()], t(1));
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        b.report.as_mut().unwrap().draining = true;
        let p = plan(&pool(2), &pods, &[nodes[0].clone(), b.clone(), nodes[2].clone()], t(2));
        assert_eq!(p.actions, vec![Action::DeletePod { name: "b".into() }]);
        // With calls left, only the deadline removes it.
        b.report.as_mut().unwrap().sessions = 2;
        let mut later = vec![nodes[0].clone(), b, nodes[2].clone()];
        for n in later.iter_mut() {
            n.report.as_mut().unwrap().heartbeat = Some(t(55));
        }
        let p = plan(&pool(2), &pods, &later, t(59));
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        let p = plan(&pool(2), &pods, &later, t(60));
        assert_eq!(p.actions, vec![Action::DeletePod { name: "b".into() }]);
    }

    #[test]
    fn scaling_up_again_undrains_first() {
        let mut b = node("b", 1, 2);
        b.draining = true;
        b.drain_deadline = Some(t(60));
        let p = plan(&pool(2), &[pod("a"), pod("b")], &[node("a", 0, 0), b], t(1));
        assert_eq!(p.actions, vec![Action::Undrain { name: "b".into() }]);
    }

    #[test]
    fn a_resize_replaces_nodes_that_no_longer_fit() {
        let mut resized = pool(1);
        resized.layout.size = 200;
        let p = plan(&resized, &[pod("b")], &[node("b", 1, 0)], t(0));
        assert!(p.actions.iter().any(|a| matches!(a, Action::Drain { name, .. } if name == "b")));
        // Slot 0 of the new layout (30000-30199) overlaps b's 30100-30199: not given out.
        assert_eq!(creates(&p), vec![1]);
    }

    #[test]
    fn orphan_pods_are_removed() {
        let p = plan(&pool(0), &[pod("stray")], &[], t(0));
        assert_eq!(p.actions, vec![Action::DeletePod { name: "stray".into() }]);
    }

    fn drains(p: &Plan) -> Vec<(String, DrainReason)> {
        p.actions
            .iter()
            .filter_map(|a| if let Action::Drain { name, reason, .. } = a { Some((name.clone(), *reason)) } else { None })
            .collect()
    }

    /// Applies a plan to the observed world the way the cluster would: created nodes
    /// appear (and report ready at once when `ready`), drained ones get the flag.
    fn apply(p: &Plan, pods: &mut Vec<PodObs>, nodes: &mut Vec<NodeObs>, hash: &str, now: Timestamp, ready: bool) {
        for a in &p.actions {
            match a {
                Action::Create { name, ports } => {
                    pods.push(pod(name));
                    let mut n = node(name, ports.slot, 0);
                    n.template_hash = Some(hash.into());
                    n.report = ready.then(|| NodeReport { ready: true, heartbeat: Some(now), ..Default::default() });
                    nodes.push(n);
                }
                Action::Drain { name, deadline, .. } => {
                    let n = nodes.iter_mut().find(|n| &n.name == name).unwrap();
                    n.draining = true;
                    n.drain_deadline = Some(*deadline);
                    if let Some(r) = n.report.as_mut() {
                        r.draining = true;
                        r.ready = false;
                    }
                }
                Action::DeletePod { name } => pods.retain(|p| &p.name != name),
                _ => {}
            }
        }
    }

    #[test]
    fn a_template_change_surges_first_and_never_drops_below_desired() {
        let mut pods: Vec<PodObs> = ["a", "b", "c"].iter().map(|n| pod(n)).collect();
        let mut nodes = vec![node("a", 0, 5), node("b", 1, 1), node("c", 2, 3)];
        let mut changed = pool(3);
        changed.layout.max = 30999; // room for the surge and the draining nodes
        changed.template_hash = "h2".into();

        // First step: one new node, no old one drained while the new one is not ready.
        let p = plan(&changed, &pods, &nodes, t(1));
        assert_eq!(creates(&p).len(), 1, "{:?}", p.actions);
        assert!(drains(&p).is_empty(), "nothing drains before a new node is ready");
        apply(&p, &mut pods, &mut nodes, "h2", t(1), false);
        let p = plan(&changed, &pods, &nodes, t(2));
        assert!(p.actions.is_empty(), "waits for the new node: {:?}", p.actions);

        // The new node is ready: the emptiest old node drains and the next new one comes.
        for n in nodes.iter_mut().filter(|n| n.template_hash.as_deref() == Some("h2")) {
            n.report = Some(NodeReport { ready: true, heartbeat: Some(t(3)), ..Default::default() });
        }
        let mut step = 3;
        loop {
            let p = plan(&changed, &pods, &nodes, t(step));
            let serving = nodes.iter().filter(|n| !n.draining && pods.iter().any(|p| p.name == n.name)).count();
            assert!((3..=4).contains(&serving), "between desired and desired + maxSurge serving: {serving}");
            if p.actions.is_empty() {
                break;
            }
            apply(&p, &mut pods, &mut nodes, "h2", t(step), true);
            step += 1;
            assert!(step < 20, "the rollout converges");
        }
        let first_old_drained = nodes.iter().find(|n| n.name == "b").unwrap();
        assert!(first_old_drained.draining, "the emptiest old node went first");
        let serving: Vec<&NodeObs> = nodes.iter().filter(|n| !n.draining).collect();
        assert_eq!(serving.len(), 3);
        assert!(serving.iter().all(|n| n.template_hash.as_deref() == Some("h2")));
        // Old nodes keep their calls: none is deleted before it drained or its deadline.
        assert_eq!(pods.len(), 6, "old nodes with calls are still there");
        for n in nodes.iter_mut() {
            n.report.as_mut().unwrap().heartbeat = Some(t(99));
        }
        let done = plan(&changed, &pods, &nodes, t(100));
        assert_eq!(done.actions.iter().filter(|a| matches!(a, Action::DeletePod { .. })).count(), 3, "removed at the drain deadline");
    }

    #[test]
    fn a_new_node_counts_as_serving_only_once_its_pod_is_ready_too() {
        let mut pods: Vec<PodObs> = ["a", "b"].iter().map(|n| pod(n)).collect();
        let mut nodes = vec![node("a", 0, 5), node("b", 1, 1)];
        let mut changed = pool(2);
        changed.layout.max = 30999;
        changed.template_hash = "h2".into();
        let p = plan(&changed, &pods, &nodes, t(1));
        apply(&p, &mut pods, &mut nodes, "h2", t(1), true);
        // The new node reports ready at once, but its pod's probe has not passed yet.
        let new = nodes.iter().find(|n| n.template_hash.as_deref() == Some("h2")).unwrap().name.clone();
        pods.iter_mut().find(|p| p.name == new).unwrap().ready = false;
        let p = plan(&changed, &pods, &nodes, t(2));
        assert!(drains(&p).is_empty(), "no old node drains while the new pod is not Ready: {:?}", p.actions);
        pods.iter_mut().find(|p| p.name == new).unwrap().ready = true;
        let p = plan(&changed, &pods, &nodes, t(3));
        assert_eq!(drains(&p).len(), 1, "then the rollout goes on: {:?}", p.actions);
    }

    #[test]
    fn max_unavailable_lets_a_rollout_proceed_without_spare_slots() {
        let mut p0 = pool(4); // all 4 slots in use: no surge possible
        p0.template_hash = "h2".into();
        p0.max_unavailable = 1;
        let nodes = vec![node("a", 0, 5), node("b", 1, 1), node("c", 2, 3), node("d", 3, 2)];
        let pods: Vec<PodObs> = ["a", "b", "c", "d"].iter().map(|n| pod(n)).collect();
        let p = plan(&p0, &pods, &nodes, t(1));
        assert_eq!(drains(&p), vec![("b".to_string(), DrainReason::Rollout)], "exactly one, the emptiest");
        assert!(creates(&p).is_empty());
        assert!(p.slots_exhausted, "reported: the rollout waits for a slot");
    }

    #[test]
    fn a_stale_node_is_drained_and_replaced() {
        let mut nodes = vec![node("a", 0, 2), node("b", 1, 0)];
        nodes[0].report.as_mut().unwrap().heartbeat = Some(t(0));
        nodes[1].report.as_mut().unwrap().heartbeat = Some(t(40));
        let pods = vec![pod("a"), pod("b")];
        let p = plan(&pool(2), &pods, &nodes, t(45));
        assert_eq!(drains(&p), vec![("a".to_string(), DrainReason::Unhealthy)]);
        assert_eq!(creates(&p), vec![2]);
        // A node that never reported is starting, not stale.
        let mut fresh = node("c", 2, 0);
        fresh.report = None;
        let p = plan(&pool(1), &[pod("c")], &[fresh], t(500));
        assert!(p.actions.is_empty(), "{:?}", p.actions);
    }

    #[test]
    fn heartbeats_that_could_not_arrive_are_not_stale() {
        // The API server was gone from t(0) to t(120): no report could arrive, and the
        // operator's view began again at t(120).
        let mut nodes = vec![node("a", 0, 2), node("b", 1, 0)];
        for n in &mut nodes {
            n.report.as_mut().unwrap().heartbeat = Some(t(0));
        }
        let pods = vec![pod("a"), pod("b")];
        assert_eq!(drains(&plan(&pool(2), &pods, &nodes, t(121))).len(), 2, "judged on the stale times, the whole pool goes");
        judged_from(&mut nodes, t(120));
        let p = plan(&pool(2), &pods, &nodes, t(121));
        assert!(p.actions.is_empty(), "a healthy pool after an outage is left alone: {:?}", p.actions);
        // One node reports again, the other never does: it is replaced, in its time.
        nodes[1].report.as_mut().unwrap().heartbeat = Some(t(125));
        assert!(drains(&plan(&pool(2), &pods, &nodes, t(140))).is_empty());
        assert_eq!(drains(&plan(&pool(2), &pods, &nodes, t(151))), vec![("a".to_string(), DrainReason::Unhealthy)]);
        // Newer heartbeats are kept as they are.
        judged_from(&mut nodes, t(100));
        assert_eq!(nodes[1].report.as_ref().unwrap().heartbeat, Some(t(125)));
    }

    #[test]
    fn a_stale_draining_node_is_not_undrained() {
        let mut a = node("a", 0, 2);
        a.draining = true;
        a.drain_deadline = Some(t(100));
        let p = plan(&pool(1), &[pod("a")], &[a], t(45));
        assert!(!p.actions.iter().any(|x| matches!(x, Action::Undrain { .. })));
        assert_eq!(creates(&p), vec![1]);
    }
}
