//! Whether the node takes another call: pure, from what the media threads measured
//! over the last window (how busy they were, how many frames left late) and the calls
//! admitted since. Past its capacity a node that takes every call makes every call
//! late; this one refuses new calls instead (as rtpengine's `--max-load` and LiveKit's
//! `max_cpu_utilization` do), and the pool places them elsewhere.
//!
//! Two signals, either of which refuses:
//! - **load**: the media threads' busy share, plus what the calls admitted since the
//!   measurement will add (each costs what the node's calls cost on average), against
//!   `max_load`. This one predicts: calls set up at hundreds a second would otherwise
//!   all be admitted before the next window shows them.
//! - **lateness**: the share of frames sent more than `LATE_SECONDS` after their time,
//!   against `MAX_LATE_SHARE`, once the node carries at least half its load limit. It
//!   catches what the load does not see: a noisy neighbour, a CPU limit throttling the
//!   pod. On a nearly idle node late frames are not its calls' doing, and refusing
//!   calls would not cure them.
//!
//! A refusing node admits again only once both signals sit clearly below their limits
//! for `CLEAR_WINDOWS` windows in a row, so it does not flap at the edge.

use std::fmt;

/// A frame sent this much after its time counts as late. Not the receiver's 2 ms
/// jitter target: the node's own lateness includes the timer's 1 ms granularity, and
/// at 200 calls on a third of a core its p99 already sits in the 2-5 ms bucket while
/// the receiver sees 1 ms (BENCHMARKS.md). 5 ms late is late by any measure.
pub const LATE_SECONDS: f64 = 0.005;
/// The share of late frames over a window at which the node refuses.
pub const MAX_LATE_SHARE: f64 = 0.01;
/// Lateness refuses only at this share of the load limit or above.
const LATE_NEEDS_LOAD: f64 = 0.5;
/// Below the limits by these factors counts as clear (0.63 for a 0.7 limit).
const LOAD_CLEAR_FACTOR: f64 = 0.9;
const LATE_CLEAR_FACTOR: f64 = 0.5;
/// Windows in a row clear of both limits before a refusing node admits again.
pub const CLEAR_WINDOWS: u32 = 2;
/// Calls below which the cost per call is not estimated (the idle node's own work would
/// dominate it).
const CALLS_FOR_ESTIMATE: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Share (0..1] of the media threads' time they may be busy; 0 turns admission
    /// control off.
    pub max_load: f64,
}

/// What one window measured.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Window {
    /// Share of the media threads' time (0..1, over all of them) spent on calls.
    pub busy: f64,
    /// Frames sent in the window, and of them the late ones.
    pub sent: u64,
    pub late: u64,
    /// Calls on the node at the end of the window.
    pub calls: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    /// The media threads are (or, with the calls admitted since, would be) this busy.
    Load { busy: f64, limit: f64 },
    /// This share of the frames went out late.
    Late { share: f64 },
}

impl Refusal {
    /// Every `reason()`, for the metric's labels.
    pub const REASONS: [&'static str; 2] = ["load", "lateness"];

    /// A short name for metrics and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Load { .. } => "load",
            Refusal::Late { .. } => "lateness",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Load { busy, limit } => write!(
                f,
                "the node is at capacity: its media threads are {:.0} % busy with the calls it has (limit {:.0} %)",
                busy * 100.0,
                limit * 100.0
            ),
            Refusal::Late { share } => write!(
                f,
                "the node is at capacity: {:.1} % of its frames left more than {} ms late (limit {:.0} %)",
                share * 100.0,
                LATE_SECONDS * 1000.0,
                MAX_LATE_SHARE * 100.0
            ),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Admission {
    limits: Limits,
    /// The last window's busy share.
    busy: f64,
    /// What one call costs (busy share per call), averaged over windows.
    per_call: Option<f64>,
    /// Calls admitted since the last window.
    admitted_since: usize,
    /// Set while the node refuses: why, and how many clear windows it has seen since.
    refusing: Option<(Refusal, u32)>,
}

impl Admission {
    pub fn new(limits: Limits) -> Admission {
        Admission { limits, busy: 0.0, per_call: None, admitted_since: 0, refusing: None }
    }

    pub fn enabled(&self) -> bool {
        self.limits.max_load > 0.0
    }

    /// The last window's busy share of the media threads.
    pub fn busy(&self) -> f64 {
        self.busy
    }

    /// Takes one window's measurement.
    pub fn observe(&mut self, w: Window) {
        self.busy = w.busy;
        self.admitted_since = 0;
        if w.calls >= CALLS_FOR_ESTIMATE {
            let cost = w.busy / w.calls as f64;
            self.per_call = Some(match self.per_call {
                Some(p) => 0.7 * p + 0.3 * cost,
                None => cost,
            });
        }
        if !self.enabled() {
            self.refusing = None;
            return;
        }
        let share = if w.sent == 0 { 0.0 } else { w.late as f64 / w.sent as f64 };
        let over = if w.busy >= self.limits.max_load {
            Some(Refusal::Load { busy: w.busy, limit: self.limits.max_load })
        } else if share >= MAX_LATE_SHARE && w.busy >= self.limits.max_load * LATE_NEEDS_LOAD {
            Some(Refusal::Late { share })
        } else {
            None
        };
        let clear = w.busy < self.limits.max_load * LOAD_CLEAR_FACTOR && share < MAX_LATE_SHARE * LATE_CLEAR_FACTOR;
        self.refusing = match (over, self.refusing) {
            (Some(r), _) => Some((r, 0)),
            (None, Some((r, n))) if clear => (n + 1 < CLEAR_WINDOWS).then_some((r, n + 1)),
            (None, Some((r, _))) => Some((r, 0)),
            (None, None) => None,
        };
    }

    /// Whether a new call may come in now; an admitted one is counted towards the load
    /// until the next window measures it.
    pub fn admit(&mut self) -> Result<(), Refusal> {
        if !self.enabled() {
            return Ok(());
        }
        if let Some((r, _)) = self.refusing {
            return Err(r);
        }
        let projected = self.busy + (self.admitted_since + 1) as f64 * self.per_call.unwrap_or(0.0);
        if projected >= self.limits.max_load {
            return Err(Refusal::Load { busy: projected, limit: self.limits.max_load });
        }
        self.admitted_since += 1;
        Ok(())
    }

    /// Refusing now (for readiness reports): a window found the node over its limits,
    /// or the calls admitted since have brought it where the next would be refused.
    pub fn refusing(&self) -> Option<Refusal> {
        if let Some((r, _)) = self.refusing {
            return Some(r);
        }
        let projected = self.busy + (self.admitted_since + 1) as f64 * self.per_call.unwrap_or(0.0);
        (self.enabled() && projected >= self.limits.max_load).then_some(Refusal::Load { busy: projected, limit: self.limits.max_load })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(busy: f64, calls: usize) -> Window {
        Window { busy, sent: calls as u64 * 25, late: 0, calls }
    }

    #[test]
    fn a_node_below_its_limit_admits_and_one_above_refuses_with_the_reason() {
        let mut a = Admission::new(Limits { max_load: 0.7 });
        a.observe(at(0.3, 100));
        assert!(a.admit().is_ok());
        a.observe(at(0.75, 250));
        let r = a.admit().unwrap_err();
        assert_eq!(r.reason(), "load");
        assert!(r.to_string().contains("75 % busy") && r.to_string().contains("limit 70 %"), "{r}");
    }

    #[test]
    fn calls_admitted_since_the_last_window_count_at_the_average_cost() {
        // 0.5 busy with 100 calls: 0.005 a call, so 40 more reach 0.7 and the 41st
        // would pass the limit of 0.702.
        let mut a = Admission::new(Limits { max_load: 0.702 });
        a.observe(at(0.5, 100));
        let admitted = (0..100).take_while(|_| a.admit().is_ok()).count();
        assert_eq!(admitted, 40);
        assert!(a.refusing().is_some(), "reported as refusing before the next window");
        // The next window measures them; the same load admits again.
        a.observe(at(0.5, 140));
        assert!(a.admit().is_ok());
    }

    #[test]
    fn late_frames_refuse_even_when_the_load_looks_low() {
        let mut a = Admission::new(Limits { max_load: 0.7 });
        a.observe(Window { busy: 0.4, sent: 10_000, late: 150, calls: 200 });
        assert_eq!(a.admit().unwrap_err().reason(), "lateness");
        assert!(a.admit().unwrap_err().to_string().contains("1.5 %"));
        // The same lateness on a nearly idle node is not its calls' doing.
        let mut idle = Admission::new(Limits { max_load: 0.7 });
        idle.observe(Window { busy: 0.1, sent: 500, late: 50, calls: 20 });
        assert!(idle.admit().is_ok());
    }

    #[test]
    fn a_refusing_node_admits_again_only_after_clear_windows_in_a_row() {
        let mut a = Admission::new(Limits { max_load: 0.7 });
        a.observe(at(0.8, 300));
        assert!(a.admit().is_err());
        // Just under the limit is not clear: still refusing.
        a.observe(at(0.68, 280));
        assert!(a.admit().is_err());
        a.observe(at(0.6, 250));
        assert!(a.admit().is_err(), "one clear window is not enough");
        a.observe(at(0.6, 250));
        assert!(a.admit().is_ok());
    }

    #[test]
    fn off_admits_everything_and_an_idle_node_estimates_nothing() {
        let mut a = Admission::new(Limits { max_load: 0.0 });
        a.observe(Window { busy: 1.0, sent: 100, late: 100, calls: 500 });
        assert!(a.admit().is_ok() && a.refusing().is_none());
        // Two calls on an idle node: no cost per call is guessed from them.
        let mut b = Admission::new(Limits { max_load: 0.7 });
        b.observe(at(0.05, 2));
        assert!((0..1000).all(|_| b.admit().is_ok()));
    }
}
