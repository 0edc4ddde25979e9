//! Admission control: a node past its capacity refuses new calls (AllocatePort
//! RESOURCE_EXHAUSTED with the reason) and reports itself overloaded, so its pool
//! places calls on other nodes and the autoscaler grows the pool, rather than taking
//! every call and making every call late.
//!
//! `decide` holds the rule, pure. This part measures a window every `WINDOW`: the
//! media runtime's busy time (tokio's per-worker busy duration, so only the threads
//! that run calls count) and the frames sent late (the node's own
//! `media_rtp_send_lateness_seconds` histogram, read, not recomputed: admission adds
//! nothing to a call's path).

pub mod decide;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::core::Metric;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use decide::{Admission, LATE_SECONDS};
pub use decide::{Limits, Refusal, Window};

use crate::sync::lock;

/// How often the media threads' load is measured.
pub const WINDOW: Duration = Duration::from_millis(500);

/// The node's admission state, shared by AllocatePort and the reporter.
pub struct Gate {
    state: Mutex<Admission>,
    /// Mirrors `state.refusing()` for readers that must not wait (the reporter).
    refusing: AtomicBool,
}

impl Gate {
    pub fn new(limits: Limits) -> Gate {
        Gate { state: Mutex::new(Admission::new(limits)), refusing: AtomicBool::new(false) }
    }

    /// Whether a new call may come in; an admitted call counts towards the load at
    /// once.
    pub fn admit(&self) -> Result<(), Refusal> {
        let mut s = lock(&self.state);
        let r = s.admit();
        self.refusing.store(s.refusing().is_some(), Ordering::Relaxed);
        r
    }

    /// True while the node refuses new calls.
    pub fn overloaded(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    /// The media threads' busy share over the last window (0..1).
    pub fn load(&self) -> f64 {
        lock(&self.state).busy()
    }

    fn observe(&self, w: Window) -> Option<Refusal> {
        let mut s = lock(&self.state);
        s.observe(w);
        let refusing = s.refusing();
        self.refusing.store(refusing.is_some(), Ordering::Relaxed);
        refusing
    }
}

/// What the counters said at the start of a window.
struct Mark {
    at: Instant,
    busy: Duration,
    sent: u64,
    on_time: u64,
}

fn mark(metrics: &crate::metrics::Metrics) -> Mark {
    let rt = crate::call::runtime::handle().metrics();
    let busy = (0..rt.num_workers()).map(|w| rt.worker_total_busy_duration(w)).sum();
    let h = metrics.send_lateness.metric();
    let h = h.get_histogram();
    // The histogram's bucket at LATE_SECONDS holds the frames sent on time.
    let on_time = h.get_bucket().iter().find(|b| (b.upper_bound() - LATE_SECONDS).abs() < 1e-9).map_or(0, |b| b.cumulative_count());
    Mark { at: Instant::now(), busy, sent: h.get_sample_count(), on_time }
}

/// Measures a window every `WINDOW` until `stop`, and keeps the gate and the metrics
/// up to date.
pub async fn run(node: Arc<crate::node::Node>, stop: CancellationToken) {
    let workers = crate::call::runtime::handle().metrics().num_workers().max(1);
    let mut last = mark(&node.metrics);
    let mut was = None;
    loop {
        tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(WINDOW) => {} }
        let now = mark(&node.metrics);
        let wall = now.at.duration_since(last.at).as_secs_f64().max(1e-3);
        let sent = now.sent.saturating_sub(last.sent);
        let window = Window {
            busy: ((now.busy.saturating_sub(last.busy)).as_secs_f64() / (wall * workers as f64)).clamp(0.0, 1.0),
            sent,
            late: sent.saturating_sub(now.on_time.saturating_sub(last.on_time)),
            calls: node.active_calls(),
        };
        last = now;
        let refusing = node.admission.observe(window);
        node.metrics.media_load.set(window.busy);
        node.metrics.admitting.set(if refusing.is_some() { 0 } else { 1 });
        match (&was, &refusing) {
            (None, Some(r)) => warn!(reason = r.reason(), calls = window.calls, "refusing new calls: {r}"),
            (Some(_), None) => info!(calls = window.calls, load = window.busy, "taking new calls again"),
            _ => {}
        }
        was = refusing.map(|r| r.reason());
    }
}
