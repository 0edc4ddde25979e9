//! Is the caller speaking: earshot's voice detector (a small neural network in pure
//! Rust, its weights compiled in) scores each 16 ms of audio, and a gate with minimum
//! durations turns scores into speech_started / speech_stopped.
//!
//! earshot takes 16 kHz; the call's 8 kHz audio is upsampled for it (the network was
//! trained on 16 kHz speech, and telephone-band speech upsampled is what it hears from
//! every narrowband call). Onsets and offsets are reported at the position where the
//! speech began or ended, not where the gate became sure: the gate's delay (the
//! minimum durations) is the event's latency, not an error in its time.
//!
//! The network scores a soft start (an "h", a breath before a vowel) as voice only
//! some 50 ms in, so an onset is walked back through the short-term energy to where
//! the level rose clear of the noise floor: that is where the caller began.

use std::time::Duration;

use super::bands::{self, NoiseFloor};
use super::echo_guard::{EchoGuard, Verdict};
use crate::core::resample::Resampler;

/// Samples per detector frame at 16 kHz (16 ms).
const CHUNK16: usize = 256;
/// The same frame in the call's 8 kHz samples.
pub const CHUNK8: u64 = 128;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadConfig {
    /// Score (0..1) at or above which a frame is voice. 0.6 rather than earshot's 0.5:
    /// band-limited white noise (an 8 kHz call upsampled) scores about 0.5, speech 0.6-0.95.
    pub threshold: f32,
    /// Voice must last this long to be speech (a cough, a click is not).
    pub min_speech: Duration,
    /// Speech ends after this much non-voice (the pauses between words do not end it).
    pub min_silence: Duration,
}

impl Default for VadConfig {
    fn default() -> Self {
        VadConfig { threshold: 0.6, min_speech: Duration::from_millis(64), min_silence: Duration::from_millis(400) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speech {
    /// 8 kHz sample positions (in the positions fed) where speech began / ended.
    Started { pos: u64 },
    /// `onset`: where this speech began.
    Stopped { pos: u64, onset: u64 },
}

fn frames(d: Duration) -> u32 {
    (d.as_micros() as u64).div_ceil(16_000).max(1) as u32
}

/// Energy blocks for walking an onset back (4 ms at 8 kHz).
const ENERGY_BLOCK: usize = 32;
/// How far back an onset may move (300 ms of blocks).
const ENERGY_BLOCKS_KEPT: usize = 75;
/// A block is part of the speech when it stands this far above the noise floor...
const ABOVE_FLOOR: f64 = 10.0; // 10 dB
/// ...and above an absolute level (-60 dBFS), so digital silence is never speech.
const MIN_LEVEL: f64 = 1073.0;
/// Voice frames in a row after which barge-in may count the caller as speaking (the
/// barge-in time is its own minimum duration).
pub const BARGE_IN_FRAMES: u32 = 2;
/// A frame is voice only when it stands this far above the noise floor (the mean of
/// its bands' SNRs in dB): street noise scores as voice in the network, but does not
/// stand above its own floor.
const SPEECH_ABOVE_FLOOR_DB: f32 = 4.0;
/// A frame this close to the floor (mean band SNR in dB) is the noise alone.
const QUIET_DB: f32 = 2.0;
/// Frames under the voice margin in a row (400 ms, the gate's own minimum silence)
/// after which the network rests: the pauses inside an utterance, the caller's or the
/// bot's echo, never rest it, so what it scores there is what it scored before (with
/// 96 ms, a fresh network in the pauses of a prompt's echo let a barge-in be dated
/// 80 ms early); a caller who listens rests it.
const GATE_AFTER: u32 = 25;
/// Frames replayed into a rested network before it scores again: with the frame
/// itself, the three frames of context it reads.
const WARM_UP: usize = 2;

/// The hysteresis on the scores, apart from the network so its rules test alone.
#[derive(Debug, Clone)]
pub struct Gate {
    threshold: f32,
    min_speech: u32,
    min_silence: u32,
    speaking: bool,
    /// Frames in a row on the other side of the threshold, and where that run began.
    run: u32,
    run_start: u64,
    /// Where the current speech began (while speaking).
    onset: u64,
}

impl Gate {
    pub fn new(cfg: VadConfig) -> Gate {
        Gate {
            threshold: cfg.threshold,
            min_speech: frames(cfg.min_speech),
            min_silence: frames(cfg.min_silence),
            speaking: false,
            run: 0,
            run_start: 0,
            onset: 0,
        }
    }

    /// One frame's score at `pos` (8 kHz samples).
    pub fn on_score(&mut self, pos: u64, score: f32) -> Option<Speech> {
        self.on_voice(pos, score >= self.threshold)
    }

    /// One frame at `pos`, voice or not.
    pub fn on_voice(&mut self, pos: u64, voice: bool) -> Option<Speech> {
        if voice == self.speaking {
            self.run = 0;
            return None;
        }
        if self.run == 0 {
            self.run_start = pos;
        }
        self.run += 1;
        if !self.speaking && self.run >= self.min_speech {
            self.speaking = true;
            self.run = 0;
            self.onset = self.run_start;
            return Some(Speech::Started { pos: self.run_start });
        }
        if self.speaking && self.run >= self.min_silence {
            self.speaking = false;
            self.run = 0;
            return Some(Speech::Stopped { pos: self.run_start, onset: self.onset });
        }
        None
    }

    pub fn speaking(&self) -> bool {
        self.speaking
    }

    /// Where the current speech began, while speaking.
    pub fn onset(&self) -> Option<u64> {
        self.speaking.then_some(self.onset)
    }

    /// Where a run of voice frames that is not speech yet began, once it is `frames`
    /// long.
    pub fn voice_run(&self, frames: u32) -> Option<u64> {
        (!self.speaking && self.run >= frames).then_some(self.run_start)
    }

    fn set_onset(&mut self, pos: u64) {
        self.onset = pos;
    }
}

/// The caller's short-term level (4 ms blocks) and its noise floor, for walking an
/// onset back to where the level rose.
#[derive(Debug, Default, Clone)]
pub struct Energy {
    /// (position, mean square) of the last blocks.
    blocks: std::collections::VecDeque<(u64, f64)>,
    acc: f64,
    n: usize,
    acc_pos: u64,
    /// Minimum statistics: falls to any quieter block at once, rises 1 dB per 100 ms.
    floor: Option<f64>,
}

impl Energy {
    pub fn reset(&mut self) {
        *self = Energy::default();
    }

    pub fn push(&mut self, pos: u64, pcm: &[i16]) {
        for (i, &s) in pcm.iter().enumerate() {
            if self.n == 0 {
                self.acc_pos = pos + i as u64;
            }
            self.acc += (s as f64) * (s as f64);
            self.n += 1;
            if self.n == ENERGY_BLOCK {
                let e = self.acc / ENERGY_BLOCK as f64;
                self.floor = Some(match self.floor {
                    Some(f) if e >= f => (f * 1.0093).min(e),
                    _ => e,
                });
                if self.blocks.len() == ENERGY_BLOCKS_KEPT {
                    self.blocks.pop_front();
                }
                self.blocks.push_back((self.acc_pos, e));
                self.acc = 0.0;
                self.n = 0;
            }
        }
    }

    /// The earliest position at or before `pos` from which every block up to `pos` is
    /// loud (clear of the floor the level had before it): where speech that the
    /// network found at `pos` really began. `pos` itself when nothing before it is.
    pub fn onset_before(&self, pos: u64) -> u64 {
        let Some(i) = self.blocks.iter().rposition(|&(p, _)| p <= pos) else { return pos };
        // The floor before the speech: the quietest block in what is kept before it.
        let before = self.blocks.iter().take(i + 1).map(|&(_, e)| e).fold(f64::MAX, f64::min);
        let floor = self.floor.unwrap_or(0.0).min(before);
        let loud = (floor * ABOVE_FLOOR).max(MIN_LEVEL);
        let mut onset = pos;
        for &(p, e) in self.blocks.iter().take(i + 1).rev() {
            if e < loud {
                break;
            }
            onset = p;
        }
        onset
    }
}

pub struct VoiceDetector {
    net: Box<earshot::Detector>,
    up: Resampler,
    wide: Vec<i16>,
    /// 16 kHz samples handed to the network so far (its frames' positions).
    consumed16: u64,
    /// 8 kHz position of the first sample fed since the last restart.
    origin: u64,
    next_pos: Option<u64>,
    pub gate: Gate,
    energy: Energy,
    /// The walked-back start of the voice run the gate has not made speech yet.
    run_onset: Option<(u64, u64)>,
    /// The last frame's score, for tests and the quality event.
    pub last_score: f32,
    /// The bot's own audio coming back, judged before a frame counts as voice.
    guard: EchoGuard,
    /// The caller's noise floor, band by band.
    floor: NoiseFloor,
    /// The line's own floor for the echo guard: from the caller's audio with the
    /// direct echo taken off (over a prompt the first floor is the echo's own quietest
    /// level, which would hide the caller's voice from the guard), and digital
    /// silence taken as no noise.
    line_floor: NoiseFloor,
    /// The end of the last frame the guard found to be echo: speech starts after it.
    echo_until: u64,
    /// The end of the last frame that sat in the noise floor: an onset is not walked
    /// back past it (street noise's level swings would take it there).
    quiet_until: u64,
    /// Voice-scored frames in a row the guard held back as echo.
    echo_run: u32,
    /// Stretches of "speech" (voice as long as speech must be) the guard found to be
    /// the node's own audio, since the last `take_echo_held`.
    echo_held: u64,
    /// Frames in a row under the floor's voice margin (see `score`).
    quiet_frames: u32,
    /// The last frames at 16 kHz, to bring an idle network back.
    recent: [[i16; CHUNK16]; WARM_UP],
    /// Frames the network was not run for (tests and the benchmark).
    pub gated_frames: u64,
    /// GATE_AFTER; u32::MAX runs the network on every frame (tests compare).
    gate_after: u32,
}

impl VoiceDetector {
    pub fn new(cfg: VadConfig) -> VoiceDetector {
        VoiceDetector {
            net: earshot::Detector::default_boxed(),
            up: Resampler::new(8000, 16000),
            wide: Vec::with_capacity(2 * CHUNK16),
            consumed16: 0,
            origin: 0,
            next_pos: None,
            gate: Gate::new(cfg),
            energy: Energy::default(),
            run_onset: None,
            last_score: 0.0,
            guard: EchoGuard::default(),
            floor: NoiseFloor::default(),
            line_floor: NoiseFloor::with_silence(),
            echo_until: 0,
            quiet_until: 0,
            echo_run: 0,
            echo_held: 0,
            quiet_frames: 0,
            recent: [[0; CHUNK16]; WARM_UP],
            gated_frames: 0,
            gate_after: GATE_AFTER,
        }
    }

    /// The same detector with the network run on every frame, never rested (the
    /// benchmark and the tests compare the two).
    pub fn never_resting(mut self) -> VoiceDetector {
        self.gate_after = u32::MAX;
        self
    }

    /// The node's own audio as it went out (what the caller's phone may return).
    pub fn on_played(&mut self, pos: u64, pcm: &[i16]) {
        self.guard.on_played(pos, pcm);
    }

    /// Stretches the echo guard held back since the last call.
    pub fn take_echo_held(&mut self) -> u64 {
        std::mem::take(&mut self.echo_held)
    }

    /// Where speech the gate found at `pos` began: walked back to where the level rose,
    /// but not into the echo or the noise before it.
    fn walk_back(&self, pos: u64) -> u64 {
        self.energy.onset_before(pos).max(self.echo_until).max(self.quiet_until)
    }

    /// The network's score for a 16 kHz frame whose 8 kHz copy stands `snr` dB over the
    /// floor. A frame under `SPEECH_ABOVE_FLOOR_DB` is never voice whatever it scores,
    /// so once `GATE_AFTER` such frames have come in a row the network is not run
    /// (silence, a line's noise, a caller who listens: most of a call). It keeps a
    /// recurrent state and three frames of context, so when a frame rises again it
    /// starts afresh, as at the start of a call, from the two frames before it.
    fn score(&mut self, frame: &[i16; CHUNK16], snr: f32) -> f32 {
        let quiet = snr < SPEECH_ABOVE_FLOOR_DB;
        let before = self.quiet_frames;
        self.quiet_frames = if quiet { before.saturating_add(1) } else { 0 };
        let score = if quiet && before >= self.gate_after {
            self.gated_frames += 1;
            0.0
        } else {
            // The frame before rested if it was past the first `gate_after` quiet ones.
            if before > self.gate_after {
                self.net.reset();
                for before in &self.recent {
                    self.net.predict_i16(before);
                }
            }
            self.net.predict_i16(frame)
        };
        self.recent.rotate_left(1);
        self.recent[WARM_UP - 1] = *frame;
        score
    }

    /// Is the frame at `pos8` (`frame` at 16 kHz) the caller's voice: the network's
    /// score, the frame standing above the noise floor, and not the node's own audio
    /// coming back.
    fn voiced(&mut self, pos8: u64, frame: &[i16; CHUNK16]) -> bool {
        let bands = self.guard.heard_bands(pos8);
        let snr = self.floor.snr_db(&bands);
        let score = self.score(frame, snr);
        self.last_score = score;
        self.floor.push(&bands);
        let line = if self.guard.could_echo(pos8) { self.guard.without_direct_echo(pos8, &bands) } else { bands };
        self.line_floor.push(&line);
        // Only once the floor has heard some noise: right after digital silence, the
        // first sound (a soft onset) is all the floor knows.
        if snr < QUIET_DB && self.floor.settled() {
            self.quiet_until = pos8 + bands::FRAME as u64;
        }
        if score < self.gate.threshold || snr < SPEECH_ABOVE_FLOOR_DB {
            self.echo_run = 0;
            return false;
        }
        let noise = *self.line_floor.floor();
        if self.guard.judge(pos8, &bands, &noise) == Verdict::Echo {
            self.echo_until = pos8 + bands::FRAME as u64;
            self.echo_run += 1;
            if self.echo_run == self.gate.min_speech {
                self.echo_held += 1;
            }
            return false;
        }
        self.echo_run = 0;
        true
    }

    /// Feeds 8 kHz audio that starts at `pos`; a gap in positions restarts the
    /// resampler's alignment (the network keeps its context).
    pub fn push(&mut self, pos: u64, pcm: &[i16], out: &mut Vec<Speech>) {
        self.push_processed(pos, pcm, pcm, out);
    }

    /// `push` for audio that echo cancellation or noise suppression processed: the
    /// network and the level judge `pcm`, the echo guard (and the noise floor it
    /// keeps) what the caller really sent. A canceller that is still converging
    /// leaves an echo too distorted to correlate with what was played, yet voiced
    /// enough for the network; as sent, it is the echo the guard knows. So a
    /// processed call holds back at least what an unprocessed one would.
    pub fn push_processed(&mut self, pos: u64, pcm: &[i16], as_sent: &[i16], out: &mut Vec<Speech>) {
        if self.next_pos != Some(pos) {
            self.up = Resampler::new(8000, 16000);
            self.wide.clear();
            self.consumed16 = 0;
            self.origin = pos;
            self.energy.reset();
        }
        self.energy.push(pos, pcm);
        self.guard.on_heard(pos, as_sent);
        self.next_pos = Some(pos + pcm.len() as u64);
        self.up.process_into(pcm, &mut self.wide);
        let delay = self.up.delay_out() as u64;
        let mut taken = 0;
        while self.wide.len() - taken >= CHUNK16 {
            let mut frame = [0i16; CHUNK16];
            frame.copy_from_slice(&self.wide[taken..taken + CHUNK16]);
            taken += CHUNK16;
            let pos8 = self.origin + self.consumed16.saturating_sub(delay) / 2;
            self.consumed16 += CHUNK16 as u64;
            let voiced = self.voiced(pos8, &frame);
            match self.gate.on_voice(pos8, voiced) {
                Some(Speech::Started { pos }) => {
                    let onset = self.walk_back(pos);
                    self.gate.set_onset(onset);
                    out.push(Speech::Started { pos: onset });
                }
                Some(ev) => out.push(ev),
                None => {}
            }
        }
        self.wide.drain(..taken);
    }

    /// Where the caller began speaking: the speech's onset, or while the gate is not
    /// sure yet, the start of a run of voice frames `BARGE_IN_FRAMES` long (barge-in's
    /// own time then decides), both walked back to where the level rose.
    pub fn onset(&mut self) -> Option<u64> {
        if let Some(onset) = self.gate.onset() {
            return Some(onset);
        }
        let start = self.gate.voice_run(BARGE_IN_FRAMES)?;
        match self.run_onset {
            Some((s, onset)) if s == start => Some(onset),
            _ => {
                let onset = self.walk_back(start);
                self.run_onset = Some((start, onset));
                Some(onset)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(gate: &mut Gate, scores: &[f32]) -> Vec<Speech> {
        scores.iter().enumerate().filter_map(|(i, &s)| gate.on_score(i as u64 * CHUNK8, s)).collect()
    }

    #[test]
    fn the_gate_needs_minimum_speech_and_silence_and_dates_events_back() {
        let cfg = VadConfig { threshold: 0.5, min_speech: Duration::from_millis(48), min_silence: Duration::from_millis(160) };
        let mut g = Gate::new(cfg);
        // 2 voice frames (32 ms, a click): nothing. Then 10 voice frames: speech from
        // the first of them. Pauses of 5 frames (80 ms) do not end it; 10 do.
        let mut s = vec![0.0, 0.9, 0.9, 0.1, 0.1];
        s.extend([0.8; 10]);
        s.extend([0.2; 5]);
        s.extend([0.7; 4]);
        s.extend([0.0; 12]);
        let ev = run(&mut g, &s);
        assert_eq!(ev, vec![Speech::Started { pos: 5 * CHUNK8 }, Speech::Stopped { pos: 24 * CHUNK8, onset: 5 * CHUNK8 }]);
        assert!(!g.speaking());
    }

    #[test]
    fn the_threshold_is_the_config_s() {
        let strict = VadConfig { threshold: 0.95, ..VadConfig::default() };
        let mut g = Gate::new(strict);
        assert!(run(&mut g, &[0.9; 50]).is_empty());
        let mut g = Gate::new(VadConfig::default());
        assert_eq!(run(&mut g, &[0.9; 50]), vec![Speech::Started { pos: 0 }]);
        assert_eq!(g.onset(), Some(0));
    }

    #[test]
    fn an_onset_walks_back_to_where_the_level_rose_above_the_noise() {
        let mut x: u32 = 9;
        let mut noise = |amp: f64| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            ((x as f64 / u32::MAX as f64 - 0.5) * 2.0 * amp) as i16
        };
        // 500 ms of noise at about -50 dBFS, then a soft start (-30 dBFS) 60 ms long,
        // then loud voice: the network would be sure only in the loud part.
        let mut pcm: Vec<i16> = (0..4000).map(|_| noise(150.0)).collect();
        pcm.extend((0..480).map(|_| noise(1500.0)));
        pcm.extend((0..1600).map(|_| noise(12000.0)));
        let mut e = Energy::default();
        for (k, f) in pcm.chunks(160).enumerate() {
            e.push(k as u64 * 160, f);
        }
        let found = e.onset_before(4480 + 160);
        assert!(found.abs_diff(4000) <= 32, "walked back to {found}, the level rose at 4000");
        // In the noise itself, nothing is walked back.
        assert_eq!(e.onset_before(3800), 3800);
    }

    #[test]
    fn silence_and_steady_noise_are_not_speech() {
        let mut v = VoiceDetector::new(VadConfig::default());
        let mut out = Vec::new();
        let mut x: u32 = 7;
        for k in 0..250u64 {
            let frame: Vec<i16> = (0..160)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    if k < 100 {
                        0
                    } else {
                        (x as i32 >> 22) as i16
                    }
                })
                .collect();
            v.push(k * 160, &frame, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
        assert!(v.gated_frames > 250, "silence and steady noise rest the network: {} of 312 frames", v.gated_frames);
    }

    /// Real speech between stretches of line noise: the gate rests the network through
    /// the noise and the speech events land where they land with the network run on
    /// every frame.
    #[test]
    fn resting_the_network_in_the_noise_changes_no_speech_event() {
        let wav = hound::WavReader::new(&include_bytes!("../../../testdata/speech-8k.wav")[..]).unwrap();
        let speech: Vec<i16> = wav.into_samples::<i16>().map(|s| s.unwrap()).collect();
        let mut x: u32 = 11;
        let mut noise = |n: usize| -> Vec<i16> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x as i32 >> 24) as i16
                })
                .collect()
        };
        let mut pcm = noise(16000);
        for _ in 0..3 {
            pcm.extend(speech.iter().zip(noise(speech.len())).map(|(&s, n)| s.saturating_add(n)));
            pcm.extend(noise(12000));
        }
        let run = |gate_after: u32| {
            let mut v = VoiceDetector::new(VadConfig::default());
            v.gate_after = gate_after;
            let mut out = Vec::new();
            for (k, f) in pcm.chunks(160).enumerate() {
                v.push(k as u64 * 160, f, &mut out);
            }
            (out, v.gated_frames)
        };
        let (always, none) = run(u32::MAX);
        let (gated, rested) = run(GATE_AFTER);
        assert_eq!(none, 0);
        let frames = pcm.len() as u64 / 128;
        assert!(rested * 3 > frames, "the network rested {rested} of {frames} frames");
        assert_eq!(always.len(), gated.len(), "{always:?}\n{gated:?}");
        assert!(always.len() >= 6, "three utterances, each started and stopped: {always:?}");
        for (a, g) in always.iter().zip(&gated) {
            let (pa, pg) = match (a, g) {
                (Speech::Started { pos: a }, Speech::Started { pos: g }) => (*a, *g),
                (Speech::Stopped { pos: a, .. }, Speech::Stopped { pos: g, .. }) => (*a, *g),
                _ => panic!("{a:?} against {g:?}"),
            };
            assert!(pa.abs_diff(pg) <= 2 * CHUNK8, "{a:?} against {g:?}: within two frames");
        }
    }
}
