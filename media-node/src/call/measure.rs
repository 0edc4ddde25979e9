//! What a call measures for its events and metrics, kept apart from the task that
//! feeds it: the periodic quality report (loss, jitter, levels, the E-model's R and
//! MOS) and the turn latency (caller stops, agent answers, the answer goes out). Time
//! is handed in.

use std::time::{Duration, Instant};

use crate::core::analysis::quality::{dbfs, mos, r_factor, sum_squares, Measured};
use crate::events::call::Happened;

/// What the periodic quality event is computed from, since the last one.
#[derive(Debug, Default)]
pub struct QualityPeriod {
    packets: u64,
    lost: u64,
    heard: u64,
    heard_sq: f64,
    played: u64,
    played_sq: f64,
}

impl QualityPeriod {
    /// The caller's packets and lost samples, from the session's counters.
    pub fn on_packets(&mut self, packets: u64, lost_samples: u64) {
        self.packets += packets;
        self.lost += lost_samples;
    }

    /// The caller's audio the listeners got.
    pub fn on_heard(&mut self, pcm: &[i16]) {
        self.heard += pcm.len() as u64;
        self.heard_sq += sum_squares(pcm);
    }

    /// The node's audio that went out (silence is not sent, so it does not count).
    pub fn on_played(&mut self, pcm: &[i16]) {
        self.played += pcm.len() as u64;
        self.played_sq += sum_squares(pcm);
    }

    /// The period's quality as a call event at `pos`, and a new period; None while
    /// the caller sends no RTP (a silent caller is a media timeout, not bad quality).
    /// `delay`: the node's own (its playout hold and a packet's length).
    pub fn report(&mut self, pos: u64, jitter: Duration, delay: Duration) -> Option<Happened> {
        let q = std::mem::take(self);
        if q.packets == 0 {
            return None;
        }
        let jitter_ms = jitter.as_secs_f64() * 1000.0;
        let loss = q.lost as f64 / q.heard.max(1) as f64;
        let r = r_factor(Measured { loss, jitter_ms, delay_ms: delay.as_secs_f64() * 1000.0 });
        Some(Happened::Quality {
            pos,
            loss_percent: loss * 100.0,
            jitter_ms,
            r_factor: r,
            mos: mos(r),
            caller_dbfs: dbfs(q.heard_sq, q.heard),
            bot_dbfs: dbfs(q.played_sq, q.played),
        })
    }
}

/// One turn's latency, split where the node can see it: from the caller's speech
/// ending to the agent's first audio (`agent`), and from that audio arriving to its
/// first frame going out (`media`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurnLatency {
    pub agent: Duration,
    pub media: Duration,
    /// Where on the call's timeline the answer went out.
    pub pos: u64,
}

impl TurnLatency {
    pub fn event(&self) -> Happened {
        Happened::Turn { pos: self.pos, agent_ms: self.agent.as_millis() as u64, media_ms: self.media.as_millis() as u64 }
    }
}

/// The turn being measured: when the caller's speech ended, and when the agent's
/// first audio after it came in.
#[derive(Debug, Default)]
pub struct Turn {
    measuring: Option<(Instant, Option<Instant>)>,
}

impl Turn {
    /// The caller's speech ended at `at` (where its audio stopped, not when the
    /// detector said so): a new turn.
    pub fn speech_ended(&mut self, at: Instant) {
        self.measuring = Some((at, None));
    }

    /// The agent's audio arrived: the first after the speech ended closes the agent
    /// stage.
    pub fn agent_audio(&mut self, now: Instant) {
        if let Some((_, agent @ None)) = &mut self.measuring {
            *agent = Some(now);
        }
    }

    /// The node's own audio went out at `pos`: the turn is complete if the agent had
    /// answered.
    pub fn bot_audio(&mut self, now: Instant, pos: u64) -> Option<TurnLatency> {
        let (ended, Some(agent)) = self.measuring? else { return None };
        self.measuring = None;
        Some(TurnLatency { agent: agent.saturating_duration_since(ended), media: now.saturating_duration_since(agent), pos })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_turn_is_measured_from_the_speech_s_end_to_the_answer_going_out() {
        let t0 = Instant::now();
        let mut t = Turn::default();
        assert_eq!(t.bot_audio(t0, 0), None, "no turn yet");
        t.speech_ended(t0);
        assert_eq!(t.bot_audio(t0 + 100 * MS, 800), None, "the agent has not answered: a prompt still playing is no answer");
        t.agent_audio(t0 + 700 * MS);
        t.agent_audio(t0 + 900 * MS);
        let l = t.bot_audio(t0 + 760 * MS, 6080).unwrap();
        assert_eq!((l.agent, l.media, l.pos), (700 * MS, 60 * MS, 6080), "the first of the agent's audio counts");
        assert_eq!(l.event(), Happened::Turn { pos: 6080, agent_ms: 700, media_ms: 60 });
        assert_eq!(t.bot_audio(t0 + 800 * MS, 6400), None, "one turn, one measure");
    }

    #[test]
    fn quality_reports_loss_levels_and_nothing_for_a_silent_caller() {
        let mut q = QualityPeriod::default();
        assert_eq!(q.report(0, Duration::ZERO, 60 * MS), None);
        q.on_packets(250, 400);
        for _ in 0..250 {
            q.on_heard(&[3277; 160]);
        }
        q.on_played(&[0; 160]);
        let Some(Happened::Quality { loss_percent, caller_dbfs, r_factor, .. }) = q.report(40_000, 4 * MS, 60 * MS) else {
            panic!("a report")
        };
        assert!((loss_percent - 1.0).abs() < 1e-9, "{loss_percent}");
        assert!((caller_dbfs + 20.0).abs() < 0.1, "{caller_dbfs}");
        assert!(r_factor > 70.0 && r_factor < 93.3, "{r_factor}");
        assert_eq!(q.report(40_000, Duration::ZERO, 60 * MS), None, "a new period starts empty");
    }
}
