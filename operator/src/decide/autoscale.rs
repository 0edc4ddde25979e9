//! The occupancy autoscaler: how many nodes keep the wanted free call capacity, within
//! the policy's bounds and the pool's slots, scaling up at once and down only after the
//! pool has had too many nodes for the whole delay.

use super::{SignedDuration, Timestamp};

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub free_sessions: Option<i64>,
    pub free_percent: Option<i64>,
    pub scale_down_delay: SignedDuration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// `spec.replicas` now.
    pub replicas: i32,
    /// Calls one node carries (RTP ports of a slot).
    pub capacity_per_node: i64,
    /// Ports held by calls or in quarantine on the serving nodes.
    pub used: i64,
    /// Slots of the pool's port range.
    pub slots: i32,
    /// Since when the pool has had more nodes than it needs.
    pub scale_down_since: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    MaxReplicas,
    MinReplicas,
    Slots,
}

impl Limit {
    pub fn as_str(&self) -> &'static str {
        match self {
            Limit::MaxReplicas => "MaxReplicas",
            Limit::MinReplicas => "MinReplicas",
            Limit::Slots => "Slots",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Nodes the occupancy calls for (None: no number of nodes is enough).
    pub recommended: Option<i32>,
    /// Within bounds and slots.
    pub desired: i32,
    pub limited_by: Option<Limit>,
    /// What `spec.replicas` should be now (differs from `desired` while a scale-down waits).
    pub replicas: i32,
    pub scale_down_since: Option<Timestamp>,
    /// When a pending scale-down falls due.
    pub wake_at: Option<Timestamp>,
}

/// Free calls `n` nodes must keep.
fn buffer(p: &Policy, n: i64, cap: i64) -> i64 {
    match (p.free_sessions, p.free_percent) {
        (Some(s), _) => s.max(0),
        (None, Some(pct)) => (n * cap * pct.clamp(0, 100) + 99) / 100,
        (None, None) => 0,
    }
}

/// The fewest nodes whose capacity covers the calls plus the buffer, searched up to
/// `limit` (beyond it, None).
pub fn recommend(p: &Policy, used: i64, cap: i64, limit: i32) -> Option<i32> {
    (0..=limit.max(0)).find(|&n| n as i64 * cap - used.max(0) >= buffer(p, n as i64, cap))
}

pub fn decide(p: &Policy, o: &Observed, now: Timestamp) -> Decision {
    let ceiling = p.max_replicas.min(o.slots);
    let recommended = recommend(p, o.used, o.capacity_per_node.max(1), o.slots.max(p.max_replicas));
    let (desired, limited_by) = match recommended {
        None => (ceiling, Some(if o.slots < p.max_replicas { Limit::Slots } else { Limit::MaxReplicas })),
        Some(r) if r > ceiling => {
            (ceiling, Some(if ceiling == o.slots && o.slots < p.max_replicas { Limit::Slots } else { Limit::MaxReplicas }))
        }
        Some(r) if r < p.min_replicas => (p.min_replicas.min(ceiling), Some(Limit::MinReplicas)),
        Some(r) => (r, None),
    };
    let mut d = Decision { recommended, desired, limited_by, replicas: o.replicas, scale_down_since: None, wake_at: None };
    if desired > o.replicas {
        d.replicas = desired;
    } else if desired < o.replicas {
        let since = o.scale_down_since.unwrap_or(now);
        let due = since + p.scale_down_delay;
        if now >= due {
            d.replicas = desired;
        } else {
            d.scale_down_since = Some(since);
            d.wake_at = Some(due);
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn policy() -> Policy {
        Policy {
            min_replicas: 1,
            max_replicas: 4,
            free_sessions: Some(30),
            free_percent: None,
            scale_down_delay: SignedDuration::from_secs(60),
        }
    }

    fn obs(replicas: i32, used: i64) -> Observed {
        Observed { replicas, capacity_per_node: 50, used, slots: 10, scale_down_since: None }
    }

    #[test]
    fn keeps_the_free_session_buffer() {
        assert_eq!(recommend(&policy(), 0, 50, 10), Some(1));
        assert_eq!(recommend(&policy(), 20, 50, 10), Some(1), "50 - 20 = 30 free");
        assert_eq!(recommend(&policy(), 21, 50, 10), Some(2));
        assert_eq!(recommend(&policy(), 70, 50, 10), Some(2));
        assert_eq!(recommend(&policy(), 71, 50, 10), Some(3));
    }

    #[test]
    fn percent_buffer_grows_with_the_pool() {
        let p = Policy { free_sessions: None, free_percent: Some(20), ..policy() };
        // 2 nodes: 100 capacity, 20 free wanted, so up to 80 used.
        assert_eq!(recommend(&p, 80, 50, 10), Some(2));
        assert_eq!(recommend(&p, 81, 50, 10), Some(3));
        assert_eq!(recommend(&p, 0, 50, 10), Some(0));
    }

    #[test]
    fn scales_up_at_once() {
        let d = decide(&policy(), &obs(1, 25), t(0));
        assert_eq!((d.desired, d.replicas, d.limited_by), (2, 2, None));
    }

    #[test]
    fn scales_down_only_after_the_delay() {
        let d = decide(&policy(), &obs(3, 10), t(0));
        assert_eq!((d.desired, d.replicas), (1, 3));
        assert_eq!(d.scale_down_since, Some(t(0)));
        assert_eq!(d.wake_at, Some(t(60)));
        let mut o = obs(3, 10);
        o.scale_down_since = d.scale_down_since;
        let d = decide(&policy(), &o, t(59));
        assert_eq!(d.replicas, 3);
        let d = decide(&policy(), &o, t(60));
        assert_eq!((d.replicas, d.scale_down_since), (1, None));
        // Load back before the delay ends: the wait starts over.
        let d = decide(&policy(), &Observed { scale_down_since: Some(t(0)), ..obs(3, 120) }, t(30));
        assert_eq!((d.replicas, d.scale_down_since), (3, None));
    }

    #[test]
    fn bounds_are_reported() {
        let d = decide(&policy(), &obs(4, 400), t(0));
        assert_eq!((d.desired, d.limited_by), (4, Some(Limit::MaxReplicas)));
        let d = decide(&Policy { min_replicas: 2, ..policy() }, &obs(2, 0), t(0));
        assert_eq!((d.desired, d.limited_by), (2, Some(Limit::MinReplicas)));
        let few_slots = Observed { slots: 3, ..obs(3, 400) };
        let d = decide(&policy(), &few_slots, t(0));
        assert_eq!((d.desired, d.limited_by), (3, Some(Limit::Slots)));
    }
}
