//! The RTP port pool with quarantine, as pure bookkeeping.
//!
//! RTP uses even ports, RTCP the odd port above. A released port waits out the
//! quarantine before reuse, so late packets of the old call never reach a new one.
//! The I/O layer calls `release` only after the call's sockets are closed, which is
//! what makes "a released port is never handed out while its socket is still bound"
//! hold by construction. Free ports are handed out oldest-released first.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("port range {min}-{max} holds no even RTP port with its RTCP port above it")]
    EmptyRange { min: u16, max: u16 },
    #[error("all {total} RTP ports are allocated or in quarantine")]
    Exhausted { total: usize },
    #[error("port {0} is not allocated on this node")]
    NotAllocated(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolCounts {
    pub total: usize,
    pub allocated: usize,
    pub quarantined: usize,
    pub free: usize,
}

#[derive(Debug)]
pub struct PortPool {
    quarantine: Duration,
    total: usize,
    free: VecDeque<u16>,
    allocated: HashSet<u16>,
    /// In release order, so the head is always the first to come out.
    quarantined: VecDeque<(u16, Instant)>,
}

impl PortPool {
    /// Every even port p in [min, max] with p + 1 <= max.
    pub fn new(min: u16, max: u16, quarantine: Duration) -> Result<PortPool, PoolError> {
        let first = min.saturating_add(min % 2);
        let free: VecDeque<u16> = (first as u32..max as u32).step_by(2).map(|p| p as u16).collect();
        if free.is_empty() {
            return Err(PoolError::EmptyRange { min, max });
        }
        Ok(PortPool { quarantine, total: free.len(), free, allocated: HashSet::new(), quarantined: VecDeque::new() })
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(port, released)) = self.quarantined.front() {
            if now.duration_since(released) < self.quarantine {
                break;
            }
            self.quarantined.pop_front();
            self.free.push_back(port);
        }
    }

    pub fn allocate(&mut self, now: Instant) -> Result<u16, PoolError> {
        self.expire(now);
        let port = self.free.pop_front().ok_or(PoolError::Exhausted { total: self.total })?;
        self.allocated.insert(port);
        Ok(port)
    }

    /// The call on `port` is over and its sockets are closed: start the quarantine.
    pub fn release(&mut self, port: u16, now: Instant) -> Result<(), PoolError> {
        if !self.allocated.remove(&port) {
            return Err(PoolError::NotAllocated(port));
        }
        self.quarantined.push_back((port, now));
        Ok(())
    }

    pub fn counts(&mut self, now: Instant) -> PoolCounts {
        self.expire(now);
        PoolCounts { total: self.total, allocated: self.allocated.len(), quarantined: self.quarantined.len(), free: self.free.len() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const Q: Duration = Duration::from_secs(5);

    #[test]
    fn only_even_ports_with_room_for_rtcp() {
        let mut p = PortPool::new(10001, 10006, Q).unwrap();
        let t = Instant::now();
        assert_eq!(p.allocate(t), Ok(10002));
        assert_eq!(p.allocate(t), Ok(10004));
        assert_eq!(p.allocate(t), Err(PoolError::Exhausted { total: 2 }));
        assert_eq!(PortPool::new(10000, 10000, Q).unwrap_err(), PoolError::EmptyRange { min: 10000, max: 10000 });
    }

    #[test]
    fn quarantine_is_exact() {
        let mut p = PortPool::new(20000, 20001, Q).unwrap();
        let t0 = Instant::now();
        let port = p.allocate(t0).unwrap();
        p.release(port, t0).unwrap();
        assert_eq!(p.counts(t0).quarantined, 1);
        assert!(p.allocate(t0 + Q - Duration::from_millis(1)).is_err(), "not a millisecond early");
        assert_eq!(p.allocate(t0 + Q), Ok(port));
    }

    #[test]
    fn release_of_unknown_port_is_an_error() {
        let mut p = PortPool::new(20000, 20010, Q).unwrap();
        assert_eq!(p.release(20002, Instant::now()), Err(PoolError::NotAllocated(20002)));
        let t = Instant::now();
        let port = p.allocate(t).unwrap();
        p.release(port, t).unwrap();
        assert_eq!(p.release(port, t), Err(PoolError::NotAllocated(port)), "no double release");
    }

    #[test]
    fn least_recently_released_goes_first() {
        let mut p = PortPool::new(20000, 20006, Duration::ZERO).unwrap();
        let t = Instant::now();
        let a = p.allocate(t).unwrap();
        let b = p.allocate(t).unwrap();
        p.release(b, t).unwrap();
        p.release(a, t).unwrap();
        assert_eq!(p.allocate(t), Ok(20004), "the never-used port first");
        assert_eq!(p.allocate(t), Ok(b));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Allocate,
        Release(usize),
        Wait(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![Just(Op::Allocate), (0usize..16).prop_map(Op::Release), (0u64..3000).prop_map(Op::Wait)]
    }

    proptest! {
        #[test]
        fn no_port_is_reused_inside_quarantine_or_double_allocated(ops in proptest::collection::vec(op(), 1..200)) {
            let q = Duration::from_millis(2000);
            let mut p = PortPool::new(30000, 30015, q).unwrap();
            let t0 = Instant::now();
            let mut now = t0;
            let mut held: Vec<u16> = Vec::new();
            let mut released_at: std::collections::HashMap<u16, Instant> = Default::default();
            for op in ops {
                match op {
                    Op::Allocate => if let Ok(port) = p.allocate(now) {
                        prop_assert!(!held.contains(&port), "double allocation of {}", port);
                        if let Some(at) = released_at.get(&port) {
                            prop_assert!(now.duration_since(*at) >= q, "{} reused inside quarantine", port);
                        }
                        prop_assert!(port % 2 == 0);
                        held.push(port);
                    } else {
                        let c = p.counts(now);
                        prop_assert_eq!(c.free, 0);
                    },
                    Op::Release(i) => if !held.is_empty() {
                        let port = held.remove(i % held.len());
                        p.release(port, now).unwrap();
                        released_at.insert(port, now);
                    },
                    Op::Wait(ms) => now += Duration::from_millis(ms),
                }
                let c = p.counts(now);
                prop_assert_eq!(c.allocated, held.len());
                prop_assert_eq!(c.allocated + c.free + c.quarantined, c.total);
            }
        }
    }
}
