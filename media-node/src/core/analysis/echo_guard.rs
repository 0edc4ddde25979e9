//! Is what the caller "says" only the bot's own audio coming back? A speakerphone or
//! a poor handset returns the prompt 50 to 300 ms late and attenuated, and a voice
//! detector rightly calls that speech; barge-in on it would cut every prompt. The node
//! knows what it played, so it can tell: if a delayed, scaled copy of the played audio
//! explains most of the caller's energy, it is echo.
//!
//! The search: the best delay in `MIN_LAG..MAX_LAG`, first coarsely on both signals
//! averaged over 4 samples (speech's energy is mostly under 1 kHz), then to the sample
//! around the coarse best; the least-squares gain at that delay gives the energy the
//! echo explains. Only run when a barge-in is being decided, so its cost (about 0.3 M
//! multiply-adds per check) is paid a few times per caller turn, not per frame.

use std::collections::VecDeque;

/// Delays searched, in 8 kHz samples (20 to 400 ms: handset echo plus the round trip).
pub const MIN_LAG: u64 = 160;
pub const MAX_LAG: u64 = 3200;
/// Caller energy left unexplained by the echo below which it is echo (-5 dB).
const ECHO_RESIDUAL: f64 = 0.3;
const DECIMATE: u64 = 4;

struct Timeline {
    samples: VecDeque<i16>,
    start: u64,
    cap: usize,
}

impl Timeline {
    fn new(cap: usize) -> Timeline {
        Timeline { samples: VecDeque::with_capacity(cap), start: 0, cap }
    }

    fn end(&self) -> u64 {
        self.start + self.samples.len() as u64
    }

    /// Audio at `pos`; a gap since the last push is silence.
    fn push(&mut self, pos: u64, pcm: &[i16]) {
        if self.samples.is_empty() {
            self.start = pos;
        }
        let end = self.end();
        if pos > end {
            let gap = (pos - end).min(self.cap as u64) as usize;
            if gap == self.cap {
                self.samples.clear();
                self.start = pos;
            } else {
                self.samples.extend(std::iter::repeat_n(0, gap));
            }
        }
        let skip = self.end().saturating_sub(pos) as usize;
        if skip < pcm.len() {
            self.samples.extend(&pcm[skip..]);
        }
        let excess = self.samples.len().saturating_sub(self.cap);
        self.samples.drain(..excess);
        self.start += excess as u64;
    }

    fn at(&self, pos: u64) -> f64 {
        if pos < self.start {
            return 0.0;
        }
        self.samples.get((pos - self.start) as usize).map_or(0.0, |&v| v as f64)
    }
}

pub struct EchoGuard {
    played: Timeline,
    heard: Timeline,
}

impl Default for EchoGuard {
    fn default() -> Self {
        EchoGuard { played: Timeline::new(8000), heard: Timeline::new(4000) }
    }
}

/// Energy `h` explained by `p` scaled at best: dot²/‖p‖².
fn explained(dot: f64, pp: f64) -> f64 {
    if pp <= 0.0 {
        0.0
    } else {
        dot * dot / pp
    }
}

impl EchoGuard {
    /// Our own audio as it went out, at its timeline position.
    pub fn on_played(&mut self, pos: u64, pcm: &[i16]) {
        self.played.push(pos, pcm);
    }

    /// The caller's audio, at its timeline position.
    pub fn on_heard(&mut self, pos: u64, pcm: &[i16]) {
        self.heard.push(pos, pcm);
    }

    /// The share of the caller's energy in the `window` samples before `to` that no
    /// delayed copy of our audio explains (1.0: none of it is echo).
    pub fn residual(&self, to: u64, window: u64) -> f64 {
        let window = window.min(to.saturating_sub(self.heard.start)).min(self.heard.cap as u64) / DECIMATE * DECIMATE;
        if window < 80 {
            return 1.0;
        }
        let from = to - window;
        let h: Vec<f64> = (from..to).map(|p| self.heard.at(p)).collect();
        let eh: f64 = h.iter().map(|v| v * v).sum();
        if eh <= 0.0 {
            return 1.0;
        }
        // Coarse: 4-sample averages, lags in steps of 4.
        let hd: Vec<f64> = h.chunks(DECIMATE as usize).map(|c| c.iter().sum::<f64>()).collect();
        let base = from.saturating_sub(MAX_LAG);
        let pd: Vec<f64> = (0..(window + MAX_LAG - MIN_LAG) / DECIMATE)
            .map(|j| (0..DECIMATE).map(|i| self.played.at(base + j * DECIMATE + i)).sum())
            .collect();
        let mut best = (0.0, MIN_LAG);
        for lag in (MIN_LAG..=MAX_LAG.min(from)).step_by(DECIMATE as usize) {
            let off = ((from - lag - base) / DECIMATE) as usize;
            let Some(p) = pd.get(off..off + hd.len()) else { continue };
            let (dot, pp) = hd.iter().zip(p).fold((0.0, 0.0), |(d, e), (a, b)| (d + a * b, e + b * b));
            let x = explained(dot, pp);
            if x > best.0 {
                best = (x, lag);
            }
        }
        // Fine: every lag around the coarse best, at the full rate.
        let mut best_fine = 0.0f64;
        for lag in best.1.saturating_sub(DECIMATE).max(MIN_LAG)..=(best.1 + DECIMATE).min(MAX_LAG).min(from) {
            let (dot, pp) = h.iter().enumerate().fold((0.0, 0.0), |(d, e), (i, a)| {
                let b = self.played.at(from - lag + i as u64);
                (d + a * b, e + b * b)
            });
            best_fine = best_fine.max(explained(dot, pp));
        }
        (1.0 - best_fine / eh).clamp(0.0, 1.0)
    }

    /// True when our own audio, delayed and attenuated, explains the caller's audio.
    pub fn is_echo(&self, to: u64, window: u64) -> bool {
        self.residual(to, window) < ECHO_RESIDUAL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn speech(seed: u32, n: usize) -> Vec<i16> {
        // Noise shaped into syllables: enough to test alignment, not a voice.
        let mut x = seed;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let env = (i as f64 / 1200.0 * std::f64::consts::PI).sin().abs();
                ((x as i32 >> 18) as f64 * env) as i16
            })
            .collect()
    }

    fn feed(g: &mut EchoGuard, played: &[i16], heard: &[i16]) {
        for (k, (p, h)) in played.chunks(160).zip(heard.chunks(160)).enumerate() {
            g.on_played(k as u64 * 160, p);
            g.on_heard(k as u64 * 160, h);
        }
    }

    #[test]
    fn delayed_attenuated_copy_is_echo_and_other_speech_is_not() {
        let bot = speech(3, 16000);
        let delay = 1200; // 150 ms
        let gain = 10f64.powf(-10.0 / 20.0);
        let echo: Vec<i16> = (0..16000).map(|i| if i >= delay { (bot[i - delay] as f64 * gain) as i16 } else { 0 }).collect();
        let mut g = EchoGuard::default();
        feed(&mut g, &bot, &echo);
        assert!(g.residual(16000, 1600) < 0.01, "echo residual {}", g.residual(16000, 1600));

        let caller = speech(99, 16000);
        let mixed: Vec<i16> = echo.iter().zip(&caller).map(|(&e, &c)| e.saturating_add(c)).collect();
        let mut g = EchoGuard::default();
        feed(&mut g, &bot, &mixed);
        assert!(!g.is_echo(16000, 1600), "speech over the echo: residual {}", g.residual(16000, 1600));

        // Nothing played: never echo.
        let mut g = EchoGuard::default();
        feed(&mut g, &vec![0; 16000], &caller);
        assert_eq!(g.residual(16000, 1600), 1.0);
    }

    #[test]
    fn each_delay_in_the_range_is_found() {
        let bot = speech(5, 16000);
        for delay in [MIN_LAG as usize, 401, 2400, MAX_LAG as usize] {
            let echo: Vec<i16> = (0..16000).map(|i| if i >= delay { bot[i - delay] / 4 } else { 0 }).collect();
            let mut g = EchoGuard::default();
            feed(&mut g, &bot, &echo);
            assert!(g.is_echo(16000, 1600), "delay {delay}: residual {}", g.residual(16000, 1600));
        }
    }
}
