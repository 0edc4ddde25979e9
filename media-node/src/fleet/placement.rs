//! Where a new call goes: the ready node of the pool with the lowest occupancy, this
//! node winning ties (no hop when it is as good as any). Pure: the caller gathers the
//! candidates from its own pool and what peers reported or last told it.

/// One node that could take the call. `key` 0 is this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub key: usize,
    /// Serving, not draining, heartbeat fresh.
    pub ready: bool,
    /// RTP ports held by calls or in quarantine.
    pub used: i64,
    pub total: i64,
}

impl Candidate {
    fn has_room(&self) -> bool {
        self.ready && self.total > 0 && self.used < self.total
    }
}

/// The candidates able to take a call, best first: lowest occupancy (used/total,
/// compared exactly), then this node, then the lower key.
pub fn rank(cands: &[Candidate]) -> Vec<usize> {
    let mut able: Vec<&Candidate> = cands.iter().filter(|c| c.has_room()).collect();
    able.sort_by(|a, b| {
        // a.used/a.total vs b.used/b.total without floats.
        (a.used as i128 * b.total as i128).cmp(&(b.used as i128 * a.total as i128)).then(a.key.cmp(&b.key))
    });
    able.into_iter().map(|c| c.key).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(key: usize, used: i64, total: i64) -> Candidate {
        Candidate { key, ready: true, used, total }
    }

    #[test]
    fn lowest_occupancy_first_and_self_on_ties() {
        assert_eq!(rank(&[c(0, 10, 50), c(1, 3, 50), c(2, 7, 50)]), vec![1, 2, 0]);
        assert_eq!(rank(&[c(0, 5, 50), c(1, 5, 50)]), vec![0, 1], "no hop when this node is as good");
        // Occupancy, not counts: 10 of 100 beats 6 of 50.
        assert_eq!(rank(&[c(0, 6, 50), c(1, 10, 100)]), vec![1, 0]);
    }

    #[test]
    fn full_draining_or_stale_nodes_are_skipped() {
        let mut draining = c(1, 0, 50);
        draining.ready = false;
        assert_eq!(rank(&[c(0, 50, 50), draining, c(2, 49, 50)]), vec![2]);
        assert!(rank(&[c(0, 50, 50)]).is_empty());
        assert!(rank(&[c(0, 0, 0)]).is_empty(), "a node without ports takes nothing");
    }

    #[test]
    fn placing_one_by_one_spreads_evenly() {
        // What a node placing 100 calls in a row sees when every placement is counted.
        let mut nodes = vec![c(0, 0, 50), c(1, 0, 50), c(2, 0, 50)];
        for _ in 0..100 {
            let best = rank(&nodes)[0];
            nodes[best].used += 1;
        }
        let used: Vec<i64> = nodes.iter().map(|n| n.used).collect();
        assert_eq!(used, vec![34, 33, 33]);
    }
}
