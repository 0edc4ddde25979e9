//! What the node reports into its MediaNode and when: the reporter's decision, pure,
//! so its timing is tested with made-up time. A change the operator or the pool acts
//! on (draining, readiness, overload, the advertised address) goes out at once; occupancy, which
//! feeds placement on the other nodes, at most about once a second; and a heartbeat
//! every ten seconds when nothing changed, so the operator can tell a live node from a
//! dead one.

use std::time::Duration;

use media_crds::PortCounts;

/// The shortest gap between two reports of a changed occupancy.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest gap between two reports (the heartbeat).
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// What the node reports, without the heartbeat time (so changes can be detected).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub ports: PortCounts,
    pub sessions: i64,
    pub recordings: i64,
    pub ready: bool,
    pub draining: bool,
    /// Admission control refuses new calls (the node is at capacity).
    pub overloaded: bool,
    /// The media threads' busy share, in steps of 10 % (so a load that wavers does
    /// not make a report a second).
    pub load_percent: i64,
    pub address: String,
}

/// Whether to report `now`, given the last report and how long ago it went out (None:
/// nothing reported yet, or the last report failed).
pub fn report_due(last: Option<(&Snapshot, Duration)>, now: &Snapshot) -> bool {
    let Some((prev, age)) = last else { return true };
    let meaningful =
        prev.draining != now.draining || prev.ready != now.ready || prev.overloaded != now.overloaded || prev.address != now.address;
    meaningful || (prev != now && age >= MIN_INTERVAL) || age >= HEARTBEAT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(sessions: i64) -> Snapshot {
        Snapshot {
            ports: PortCounts { total: 100, allocated: sessions, quarantined: 0, free: 100 - sessions },
            sessions,
            recordings: 0,
            ready: true,
            draining: false,
            overloaded: false,
            load_percent: 0,
            address: "192.0.2.10".into(),
        }
    }

    /// The reporter's loop with made-up time: a tick every 250 ms, the node's state
    /// from `state(ms)`; returns when reports went out.
    fn run(seconds: u64, state: impl Fn(u64) -> Snapshot) -> Vec<u64> {
        let mut last: Option<(Snapshot, u64)> = None;
        let mut sent = Vec::new();
        for ms in (0..=seconds * 1000).step_by(250) {
            let now = state(ms);
            if report_due(last.as_ref().map(|(s, at)| (s, Duration::from_millis(ms - at))), &now) {
                sent.push(ms);
                last = Some((now, ms));
            }
        }
        sent
    }

    #[test]
    fn an_idle_node_reports_once_then_heartbeats_every_ten_seconds() {
        assert_eq!(run(35, |_| snap(0)), vec![0, 10_000, 20_000, 30_000]);
    }

    #[test]
    fn a_changing_occupancy_is_reported_at_most_once_a_second() {
        // A call a tick: the count changes four times a second.
        let sent = run(5, |ms| snap((ms / 250) as i64));
        assert_eq!(sent, vec![0, 1000, 2000, 3000, 4000, 5000]);
    }

    #[test]
    fn draining_readiness_and_address_go_out_at_once() {
        let drained_at = 1250;
        let sent = run(3, |ms| Snapshot { draining: ms >= drained_at, ready: ms < drained_at, ..snap(0) });
        assert_eq!(sent, vec![0, drained_at]);
        let overloaded_at = 750;
        assert_eq!(
            run(2, |ms| Snapshot { overloaded: ms >= overloaded_at, ..snap(0) }),
            vec![0, overloaded_at],
            "overload goes out at once"
        );
        let moved = run(2, |ms| Snapshot { address: if ms >= 500 { "192.0.2.11".into() } else { "192.0.2.10".into() }, ..snap(0) });
        assert_eq!(moved, vec![0, 500]);
    }

    #[test]
    fn a_failed_report_is_retried_on_the_next_tick() {
        assert!(report_due(None, &snap(3)));
    }
}
