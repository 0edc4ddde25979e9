//! What a load run measured, computed from every call's timings and the engine's
//! usage, and printed the way BENCHMARKS.md quotes it.

use std::time::Instant;

use super::options::{CallParts, Engine, LoadOptions};
use super::procfs::ProcUsage;

/// What counts as holding up: under 0.1 % loss both ways and 2 ms p99 pacing jitter.
pub const MAX_LOSS: f64 = 0.001;
pub const MAX_JITTER_P99_MS: f64 = 2.0;

/// What one call saw, as the load generator timed it.
pub(crate) struct CallResult {
    pub sent_at: Vec<Instant>,
    pub received_arrivals: Vec<Instant>,
    pub expected_from_node: usize,
    /// When each frame (or relayed packet) with the caller's audio reached the listener.
    pub listener_arrivals: Vec<Instant>,
    /// Call events the call's subscriber got.
    pub events: u64,
}

/// The engine's CPU over the run, user space and kernel apart, and its peak memory.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct EngineUsage {
    pub user_seconds: f64,
    pub system_seconds: f64,
    pub peak_rss_mb: f64,
}

impl EngineUsage {
    pub fn between(before: &ProcUsage, after: &ProcUsage) -> EngineUsage {
        let (user_seconds, system_seconds) = after.since(before);
        EngineUsage { user_seconds, system_seconds, peak_rss_mb: after.peak_rss_mb }
    }

    pub fn cpu_seconds(&self) -> f64 {
        self.user_seconds + self.system_seconds
    }
}

#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub engine: &'static str,
    pub calls: usize,
    pub seconds: f64,
    /// None where the run could not see it: a node given by --target without a
    /// listener (its packet counter is not read then, and nothing else heard the caller).
    pub caller_to_node_loss: Option<f64>,
    pub node_to_caller_loss: f64,
    pub jitter_p50_ms: f64,
    pub jitter_p99_ms: f64,
    pub jitter_max_ms: f64,
    /// AllocatePorts a second the run asked for, and how many were timed.
    pub allocate_rate: u32,
    pub allocate_samples: usize,
    pub allocate_p50_ms: f64,
    pub allocate_p99_ms: f64,
    /// The node's own pacing: how late packets left against their schedule, p50 and
    /// p99 as histogram bucket bounds (from its /metrics), free of the receiver's noise.
    pub send_lateness_ms: Option<(f64, f64)>,
    /// AllocatePort as the node timed it (its handler, without the client and the
    /// transport), p50 and p99 as histogram bucket bounds.
    pub allocate_in_node_ms: Option<(f64, f64)>,
    pub parts: CallParts,
    /// The callers' codec (SDP name).
    pub codec: &'static str,
    /// The callers spoke SRTP.
    pub srtp: bool,
    /// From an RTP packet sent by the caller to its audio reaching the listener.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    /// For an engine this tool started (read from /proc).
    pub usage: Option<EngineUsage>,
    pub listener_frames: u64,
    /// Call events all subscribers got (with --events).
    pub events: u64,
    /// Wall time of the whole run (allocation, calls, teardown), for CPU share.
    pub wall_seconds: f64,
    /// Calls the node refused at set-up (admission control: AllocatePort
    /// RESOURCE_EXHAUSTED), and the first refusal's message; `calls` counts the
    /// admitted ones only, and every figure is theirs.
    pub refused: usize,
    pub refusal: Option<String>,
    /// Share of the time the callers talked.
    pub talk_share: f64,
}

impl LoadReport {
    /// Under 0.1 % loss both ways and 2 ms p99 pacing jitter (a loss the run could not
    /// see does not count against it).
    pub fn holds(&self) -> bool {
        self.caller_to_node_loss.is_none_or(|l| l < MAX_LOSS)
            && self.node_to_caller_loss < MAX_LOSS
            && self.jitter_p99_ms < MAX_JITTER_P99_MS
    }

    /// The engine's CPU seconds over the run (user and system).
    pub fn cpu_seconds(&self) -> Option<f64> {
        self.usage.map(|u| u.cpu_seconds())
    }

    /// CPU per call per second of call: comparable across engines and run lengths.
    pub fn cpu_ms_per_call_second(&self) -> Option<f64> {
        self.cpu_seconds().map(|c| self.per_call_second(c))
    }

    /// User-space CPU per call-second: the part a real NIC leaves as it is.
    pub fn user_ms_per_call_second(&self) -> Option<f64> {
        self.usage.map(|u| self.per_call_second(u.user_seconds))
    }

    fn per_call_second(&self, cpu_seconds: f64) -> f64 {
        cpu_seconds * 1000.0 / (self.calls.max(1) as f64 * self.seconds.max(1e-9))
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match (self.engine, self.parts.listen, self.parts.record) {
            ("rtpengine", ..) => "play media + relay to the agent + pcap recording",
            (_, true, true) => "prompt + live listen 16 kHz + mono recording",
            (_, true, false) => "prompt + live listen 16 kHz, no recording",
            (_, false, true) => "prompt + mono recording, no listener",
            (_, false, false) => "prompt only, no listener, no recording",
        };
        let extra = match (self.engine, self.parts.events, self.parts.analysis) {
            ("rtpengine", ..) => "",
            (_, true, true) => " + call events subscriber",
            (_, false, true) => "",
            (_, true, false) => " + call events subscriber, node analysis off",
            (_, false, false) => ", node analysis off",
        };
        let transcode = if self.engine == "rtpengine" && self.codec != "PCMU" { ", transcoded to PCMU for the agent" } else { "" };
        writeln!(
            f,
            "{}: {} calls for {:.0} s ({what}{extra} each), caller codec {}{}{transcode}",
            self.engine,
            self.calls,
            self.seconds,
            self.codec,
            if self.srtp { " over SRTP (SDES, AES_CM_128_HMAC_SHA1_80)" } else { "" }
        )?;
        if self.talk_share > 0.0 && self.talk_share < 1.0 {
            writeln!(
                f,
                "  callers talk {:.0} % of the time ({:.0} s of every {:.0} s, the line's noise between)",
                self.talk_share * 100.0,
                self.talk_share * super::TURN_CYCLE,
                super::TURN_CYCLE
            )?;
        }
        if self.refused > 0 {
            writeln!(
                f,
                "  refused at set-up: {} of {} calls ({}); the figures below are the {} admitted calls'",
                self.refused,
                self.refused + self.calls,
                self.refusal.as_deref().unwrap_or(""),
                self.calls
            )?;
        }
        let inbound = match self.caller_to_node_loss {
            Some(l) => format!("{:.3} %", l * 100.0),
            None => "not measured (no listener and no engine metrics)".into(),
        };
        writeln!(f, "  loss caller->engine {inbound}, engine->caller {:.3} %", self.node_to_caller_loss * 100.0)?;
        writeln!(
            f,
            "  pacing jitter of what it sends: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            self.jitter_p50_ms, self.jitter_p99_ms, self.jitter_max_ms
        )?;
        if let Some((p50, p99)) = self.send_lateness_ms {
            writeln!(f, "  node-side send lateness (its own pacing): p50 <= {p50:.2} ms, p99 <= {p99:.2} ms")?;
        }
        writeln!(
            f,
            "  latency RTP in -> listener: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            self.latency_p50_ms, self.latency_p99_ms, self.latency_max_ms
        )?;
        if self.engine == Engine::MediaNode.name() {
            writeln!(
                f,
                "  AllocatePort at {}/s ({} timed): p50 {:.3} ms, p99 {:.3} ms",
                self.allocate_rate, self.allocate_samples, self.allocate_p50_ms, self.allocate_p99_ms
            )?;
            if let Some((p50, p99)) = self.allocate_in_node_ms {
                writeln!(f, "    of which in the node's handler: p50 <= {p50:.3} ms, p99 <= {p99:.3} ms")?;
            }
        }
        if let Some(u) = self.usage {
            let cpu = u.cpu_seconds();
            let share = cpu / self.wall_seconds.max(1e-9);
            writeln!(
                f,
                "  CPU {:.2} s (user {:.2} s, system {:.2} s) over {:.1} s ({:.1} % of one core), peak RSS {:.1} MB",
                cpu,
                u.user_seconds,
                u.system_seconds,
                self.wall_seconds,
                share * 100.0,
                u.peak_rss_mb
            )?;
            writeln!(
                f,
                "  {:.2} ms of CPU per call-second, of which user {:.2} ms",
                self.cpu_ms_per_call_second().unwrap_or(f64::NAN),
                self.user_ms_per_call_second().unwrap_or(f64::NAN)
            )?;
            writeln!(f, "  => about {:.0} such calls per core at this load", self.calls as f64 / share.max(1e-9))?;
        }
        if self.parts.events && self.engine != Engine::Rtpengine.name() {
            writeln!(f, "  call events received {} ({:.1} per call)", self.events, self.events as f64 / self.calls.max(1) as f64)?;
        }
        writeln!(
            f,
            "  listener frames received {}; holds up (loss < 0.1 %, p99 jitter < 2 ms): {}",
            self.listener_frames,
            if self.holds() { "yes" } else { "no" }
        )
    }
}

pub(crate) fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Latency of packet i = when the listener got the i-th frame with audio in it - when
/// packet i left (one 20 ms frame per packet).
fn latencies(r: &CallResult, out: &mut Vec<f64>) {
    for (sent, heard) in r.sent_at.iter().zip(&r.listener_arrivals) {
        out.push(heard.saturating_duration_since(*sent).as_secs_f64() * 1000.0);
    }
}

/// Loss from what was sent against what arrived (never below zero: a duplicate or a
/// frame of the engine's own audio is not negative loss).
pub(crate) fn loss(sent: usize, arrived: f64) -> f64 {
    (1.0 - arrived / sent.max(1) as f64).max(0.0)
}

pub(crate) fn summarise(
    engine: Engine,
    opts: &LoadOptions,
    results: &[CallResult],
    mut alloc_ms: Vec<f64>,
    caller_to_engine_loss: Option<f64>,
    usage: Option<EngineUsage>,
    wall: f64,
) -> LoadReport {
    let mut jitter = Vec::new();
    let mut latency = Vec::new();
    let (mut expected, mut received, mut frames) = (0usize, 0usize, 0u64);
    for r in results {
        expected += r.expected_from_node;
        received += r.received_arrivals.len();
        frames += r.listener_arrivals.len() as u64;
        for w in r.received_arrivals.windows(2) {
            jitter.push((w[1].duration_since(w[0]).as_secs_f64() * 1000.0 - 20.0).abs());
        }
        latencies(r, &mut latency);
    }
    LoadReport {
        engine: engine.name(),
        calls: results.len(),
        seconds: opts.seconds,
        caller_to_node_loss: caller_to_engine_loss,
        node_to_caller_loss: loss(expected, received as f64),
        jitter_p50_ms: percentile(&mut jitter, 0.5),
        jitter_p99_ms: percentile(&mut jitter, 0.99),
        jitter_max_ms: percentile(&mut jitter, 1.0),
        allocate_rate: opts.allocate_rate,
        allocate_samples: alloc_ms.len(),
        allocate_p50_ms: percentile(&mut alloc_ms, 0.5),
        allocate_p99_ms: percentile(&mut alloc_ms, 0.99),
        latency_p50_ms: percentile(&mut latency, 0.5),
        latency_p99_ms: percentile(&mut latency, 0.99),
        latency_max_ms: percentile(&mut latency, 1.0),
        usage,
        listener_frames: frames,
        events: results.iter().map(|r| r.events).sum(),
        wall_seconds: wall,
        refused: 0,
        refusal: None,
        talk_share: opts.talk_share,
        send_lateness_ms: None,
        allocate_in_node_ms: None,
        parts: opts.parts,
        codec: opts.codec.name(),
        srtp: opts.srtp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_call_second_counts_user_and_system_and_user_alone() {
        let r = LoadReport {
            calls: 10,
            seconds: 2.0,
            usage: Some(EngineUsage { user_seconds: 0.06, system_seconds: 0.04, peak_rss_mb: 10.0 }),
            ..LoadReport::default()
        };
        // 0.1 s of CPU over 20 call-seconds.
        assert!((r.cpu_ms_per_call_second().unwrap() - 5.0).abs() < 1e-9);
        assert!((r.user_ms_per_call_second().unwrap() - 3.0).abs() < 1e-9);
        let text = r.to_string();
        assert!(text.contains("user 0.06 s, system 0.04 s"), "{text}");
    }

    #[test]
    fn an_unmeasured_inbound_loss_is_said_and_does_not_fail_the_level() {
        let r = LoadReport { caller_to_node_loss: None, jitter_p99_ms: 1.0, ..LoadReport::default() };
        assert!(r.holds());
        assert!(r.to_string().contains("not measured"));
        let lossy = LoadReport { caller_to_node_loss: Some(0.01), ..r.clone() };
        assert!(!lossy.holds());
        assert!((loss(100, 99.0) - 0.01).abs() < 1e-12);
        assert_eq!(loss(100, 120.0), 0.0);
    }
}
