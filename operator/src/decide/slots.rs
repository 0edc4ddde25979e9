//! Slots: the pool's port range cut into fixed-size slices, one per node.
//!
//! Occupancy is judged by actual port ranges, not slot numbers: every MediaNode in the
//! cluster (live, or released and still in quarantine) holds the UDP range written in
//! its spec. A candidate slot is free only if its range overlaps none of them. So a
//! resize of the pool's range or slot size can never hand out ports a live node still
//! uses, and since the table is rebuilt from the cluster on every reconcile, an
//! operator restart or a leader change cannot double-assign.

use super::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub min: i32,
    pub max: i32,
    pub size: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotPorts {
    pub slot: i32,
    pub udp_min: i32,
    pub udp_max: i32,
}

impl SlotPorts {
    /// gRPC sits on the slot's first TCP port, metrics on the next (TCP and UDP port
    /// spaces are separate, so the UDP range stays whole).
    pub fn grpc_port(&self) -> i32 {
        self.udp_min
    }
    pub fn metrics_port(&self) -> i32 {
        self.udp_min + 1
    }
}

impl Layout {
    pub fn count(&self) -> i32 {
        if self.size <= 0 || self.max < self.min {
            return 0;
        }
        (self.max - self.min + 1) / self.size
    }

    pub fn ports(&self, slot: i32) -> SlotPorts {
        let udp_min = self.min + slot * self.size;
        SlotPorts { slot, udp_min, udp_max: udp_min + self.size - 1 }
    }

    /// True when a node's ports are exactly a slot of this layout.
    pub fn fits(&self, slot: i32, udp_min: i32, udp_max: i32) -> bool {
        slot >= 0 && slot < self.count() && self.ports(slot) == SlotPorts { slot, udp_min, udp_max }
    }
}

/// A port range held in the cluster, and until when (None = held by a live node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub udp_min: i32,
    pub udp_max: i32,
    pub until: Option<Timestamp>,
}

impl Claim {
    fn blocks(&self, lo: i32, hi: i32, now: Timestamp) -> bool {
        let active = match self.until {
            None => true,
            Some(t) => now < t,
        };
        active && self.udp_min <= hi && lo <= self.udp_max
    }
}

/// Lowest slots of `layout` whose ports no claim blocks at `now`.
pub fn free_slots(layout: Layout, claims: &[Claim], now: Timestamp) -> impl Iterator<Item = SlotPorts> + '_ {
    (0..layout.count()).map(move |s| layout.ports(s)).filter(move |p| !claims.iter().any(|c| c.blocks(p.udp_min, p.udp_max, now)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::SignedDuration;
    use proptest::prelude::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    #[test]
    fn layout_cuts_the_range() {
        let l = Layout { min: 30000, max: 30999, size: 100 };
        assert_eq!(l.count(), 10);
        assert_eq!(l.ports(3), SlotPorts { slot: 3, udp_min: 30300, udp_max: 30399 });
        assert_eq!(l.ports(3).grpc_port(), 30300);
        assert!(l.fits(3, 30300, 30399));
        assert!(!l.fits(10, 31000, 31099));
    }

    #[test]
    fn quarantined_claim_blocks_until_it_expires() {
        let l = Layout { min: 30000, max: 30399, size: 100 };
        let claims =
            vec![Claim { udp_min: 30000, udp_max: 30099, until: Some(t(5)) }, Claim { udp_min: 30100, udp_max: 30199, until: None }];
        let free: Vec<i32> = free_slots(l, &claims, t(0)).map(|p| p.slot).collect();
        assert_eq!(free, vec![2, 3]);
        let free: Vec<i32> = free_slots(l, &claims, t(5)).map(|p| p.slot).collect();
        assert_eq!(free, vec![0, 2, 3]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Create,
        Delete(usize),
        Crash(usize),
        Wait(i64),
        Resize(i32),
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Create),
            2 => (0usize..8).prop_map(Op::Delete),
            1 => (0usize..8).prop_map(Op::Crash),
            2 => (0i64..8).prop_map(Op::Wait),
            1 => prop_oneof![Just(50), Just(100), Just(128), Just(200)].prop_map(Op::Resize),
            1 => Just(Op::Restart),
        ]
    }

    /// What the cluster stores: MediaNodes with their ranges, live or released.
    #[derive(Clone, Debug)]
    struct StoredNode {
        udp_min: i32,
        udp_max: i32,
        released_at: Option<Timestamp>,
    }

    proptest! {
        /// Across creates, deletes, crashes, resizes and operator restarts: no two live
        /// nodes ever share a port, and released ports wait out the quarantine.
        #[test]
        fn no_live_nodes_share_a_port(ops in proptest::collection::vec(op(), 1..120)) {
            let quarantine = SignedDuration::from_secs(5);
            let mut layout = Layout { min: 30000, max: 30999, size: 100 };
            let mut now = t(0);
            let mut cluster: Vec<StoredNode> = Vec::new();
            // The operator's view is rebuilt from `cluster` for every decision, as after a restart.
            for op in ops {
                match op {
                    Op::Create => {
                        let claims: Vec<Claim> = cluster.iter().map(|n| Claim {
                            udp_min: n.udp_min, udp_max: n.udp_max, until: n.released_at.map(|r| r + quarantine),
                        }).collect();
                        let first = free_slots(layout, &claims, now).next();
                        if let Some(p) = first {
                            for n in &cluster {
                                if let Some(r) = n.released_at {
                                    if n.udp_min <= p.udp_max && p.udp_min <= n.udp_max {
                                        prop_assert!(now >= r + quarantine, "ports reused inside quarantine");
                                    }
                                }
                            }
                            cluster.push(StoredNode { udp_min: p.udp_min, udp_max: p.udp_max, released_at: None });
                        }
                    }
                    Op::Delete(i) | Op::Crash(i) => {
                        let live: Vec<usize> = (0..cluster.len()).filter(|&k| cluster[k].released_at.is_none()).collect();
                        if !live.is_empty() {
                            cluster[live[i % live.len()]].released_at = Some(now);
                        }
                    }
                    Op::Wait(s) => {
                        now += SignedDuration::from_secs(s);
                        // Released nodes past quarantine are garbage-collected.
                        cluster.retain(|n| n.released_at.is_none_or(|r| now < r + quarantine));
                    }
                    Op::Resize(size) => layout = Layout { size, ..layout },
                    Op::Restart => {}
                }
                let live: Vec<&StoredNode> = cluster.iter().filter(|n| n.released_at.is_none()).collect();
                for (a, x) in live.iter().enumerate() {
                    for y in &live[a + 1..] {
                        prop_assert!(x.udp_max < y.udp_min || y.udp_max < x.udp_min, "overlap {:?} {:?}", x, y);
                    }
                }
            }
        }
    }
}
