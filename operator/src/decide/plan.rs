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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodObs {
    pub name: String,
    pub terminating: bool,
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Claim a slot with a MediaNode, then start its pod.
    Create { name: String, ports: SlotPorts },
    /// The node's pod is gone: record when its slot was released.
    Tombstone { name: String },
    /// The quarantine of a released slot is over: delete its MediaNode.
    Forget { name: String },
    /// Take no new calls; the pod goes when the calls end or at the deadline.
    Drain { name: String, deadline: Timestamp },
    /// Scaling up again: a draining node goes back into service.
    Undrain { name: String },
    DeletePod { name: String },
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

pub fn node_name(pool: &str, slot: i32, now: Timestamp) -> String {
    format!("{pool}-{slot}-{:05x}", now.as_millisecond().rem_euclid(0x100000))
}

impl NodeObs {
    fn emptiness_key(&self) -> (bool, i64, i32) {
        // Not-ready first, then fewest calls; among equals the highest slot goes.
        let r = self.report.clone().unwrap_or_default();
        (r.ready, r.sessions + r.recordings, -self.slot)
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
    let (fitting, misfits): (Vec<&NodeObs>, Vec<&NodeObs>) =
        live.into_iter().partition(|n| pool.layout.fits(n.slot, n.udp_min, n.udp_max));
    let mut draining: Vec<&NodeObs> = fitting.iter().copied().filter(|n| n.draining).collect();
    let mut serving: Vec<&NodeObs> = fitting.iter().copied().filter(|n| !n.draining).collect();
    for n in misfits.iter().filter(|n| !n.draining) {
        let deadline = now + pool.drain_timeout;
        p.actions.push(Action::Drain { name: n.name.clone(), deadline });
    }
    draining.extend(misfits.iter().copied().filter(|n| n.draining));

    let desired = pool.replicas.max(0) as usize;
    if serving.len() < desired {
        // Undrain before creating: a draining node still holds its calls and its slot.
        draining.sort_by_key(|n| std::cmp::Reverse(n.emptiness_key()));
        while serving.len() < desired {
            let Some(pos) = draining.iter().position(|n| pool.layout.fits(n.slot, n.udp_min, n.udp_max) && !misfits.contains(n)) else {
                break;
            };
            let n = draining.remove(pos);
            p.actions.push(Action::Undrain { name: n.name.clone() });
            serving.push(n);
        }
        let wanted = desired - serving.len();
        let free: Vec<SlotPorts> = free_slots(pool.layout, &claims, now).take(wanted).collect();
        if free.len() < wanted {
            p.slots_exhausted = true;
        }
        for ports in free {
            p.actions.push(Action::Create { name: node_name(&pool.name, ports.slot, now), ports });
        }
    } else if serving.len() > desired {
        serving.sort_by_key(|n| n.emptiness_key());
        for n in &serving[..serving.len() - desired] {
            let deadline = now + pool.drain_timeout;
            p.actions.push(Action::Drain { name: n.name.clone(), deadline });
            wake(deadline, &mut p);
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
        }
    }

    fn pod(name: &str) -> PodObs {
        PodObs { name: name.into(), terminating: false }
    }

    fn creates(p: &Plan) -> Vec<i32> {
        p.actions.iter().filter_map(|a| if let Action::Create { ports, .. } = a { Some(ports.slot) } else { None }).collect()
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
        assert_eq!(p.actions, vec![Action::Drain { name: "b".into(), deadline: t(60) }]);

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
        let p = plan(&pool(2), &pods, &[nodes[0].clone(), b.clone(), nodes[2].clone()], t(59));
        assert!(p.actions.is_empty());
        let p = plan(&pool(2), &pods, &[nodes[0].clone(), b, nodes[2].clone()], t(60));
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
}
