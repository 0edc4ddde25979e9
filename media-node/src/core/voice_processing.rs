//! Echo cancellation and noise suppression of the caller's audio (issue 35), with
//! sonora's port of WebRTC's audio processing (AEC3, its noise suppressor, the
//! residual-echo detector).
//!
//! The node is the one place that knows exactly what was played to the caller and
//! when. Every frame the call sends, and the silence of every frame it sends nothing
//! in, becomes the canceller's reference at its place on the call's 8 kHz timeline.
//! The caller's audio is processed in the order the jitter buffer releases it, 10 ms
//! at a time, each after the reference up to its own timeline position. So the delay
//! AEC3 has to find is the echo's own (the network both ways, the phone, the room, the
//! jitter buffer's playout delay), never an artefact of when the call's task ran.
//!
//! A narrowband call is processed at 8 kHz (sonora runs AEC3 at 16 kHz inside), a
//! wideband one at 16 kHz, its 8 kHz copy taken from the processed audio. Pure: no
//! clock, no I/O; the CPU it takes is measured by the caller.

use std::collections::VecDeque;

use sonora::config::{EchoCanceller, NoiseSuppression, NoiseSuppressionLevel};
use sonora::{AudioProcessing, Config, StreamConfig};

use crate::core::jitter::{Heard, FRAME_SAMPLES};
use crate::core::resample::Resampler;

/// 10 ms on the call's 8 kHz timeline: the unit the processing works in.
const CHUNK_8K: usize = 80;
/// The reference kept beyond what the caller's audio has reached: the caller may stop
/// sending while the bot talks, and what was played a second ago cannot be the echo of
/// anything the caller sends next (AEC3 keeps its own history of what it was given).
const MAX_REFERENCE_8K: usize = 8000;
/// A residual-echo likelihood (WebRTC's detector, over the processed audio) above
/// this counts as echo left in it.
const RESIDUAL_ECHO_LIKELY: f64 = 0.5;
/// The bot counts as talking (the canceller's figures mean something) while its
/// reference stood above this mean square (about -50 dBFS) within the last second.
const TALKING_POWER: f64 = 32768.0 * 32768.0 * 1e-5;
const TALK_MEMORY_8K: u64 = 8000;
/// AEC3 converges over the bot's first seconds of talk; until it has processed this
/// much caller audio while the bot talked (2 s), its output is a distorted echo that a
/// voice detector takes for speech and the echo guard cannot match to what was played.
/// The analysis hears what was sent until then (`converged`).
const CONVERGED_AFTER_8K: u64 = 16000;

/// What is done to the caller's audio before the listeners, the analysis and barge-in
/// hear it. Both off is today's audio, untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcessingConfig {
    /// Cancel the echo of what the node played.
    pub echo_cancellation: bool,
    /// Suppress the caller's background noise.
    pub noise_suppression: bool,
}

impl ProcessingConfig {
    pub fn any(self) -> bool {
        self.echo_cancellation || self.noise_suppression
    }
}

/// The caller's audio as it arrived, kept beside the processed copy for the recording
/// (which keeps what the caller really sent unless asked otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsSent {
    pub pcm: Vec<i16>,
    pub wide: Vec<i16>,
}

/// What the processing saw since the last `take_stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessingStats {
    /// Caller audio processed, in 8 kHz samples.
    pub processed_samples: u64,
    /// Of it, audio the residual-echo detector still found echo in.
    pub residual_echo_samples: u64,
    /// AEC3's echo return loss enhancement (dB) and the echo delay it found (ms),
    /// at the last chunk processed while the bot was talking.
    pub erle_db: Option<f64>,
    pub delay_ms: Option<u32>,
}

pub struct VoiceProcessing {
    cfg: ProcessingConfig,
    apm: AudioProcessing,
    /// The processing's rate: 8000, or 16000 for a wideband caller.
    rate: u32,
    /// What the node sent, at `rate`, from timeline position `reference_pos` on.
    reference: VecDeque<i16>,
    reference_pos: u64,
    /// Where the next frame sent is expected (frames come in order, one per 20 ms).
    next_frame_pos: Option<u64>,
    /// The last timeline position whose reference was loud (the bot talking).
    talked_at: Option<u64>,
    /// 8 -> 16 kHz for frames sent without their own 16 kHz audio (a wideband call
    /// playing an 8 kHz prompt).
    up: Resampler,
    /// 16 -> 8 kHz: the processed wideband audio's 8 kHz copy.
    down: Resampler,
    /// The caller's audio not yet a whole 10 ms, and the timeline position of its start.
    pending: Vec<i16>,
    pending_pos: u64,
    /// Processed audio not yet handed back.
    ready: VecDeque<i16>,
    chunk_in: Vec<i16>,
    chunk_out: Vec<i16>,
    residual_echo: bool,
    /// Caller audio processed while the bot talked (8 kHz samples), up to convergence.
    talked_over: u64,
    stats: ProcessingStats,
}

impl VoiceProcessing {
    /// None when the config asks for nothing.
    pub fn new(cfg: ProcessingConfig, wideband: bool) -> Option<VoiceProcessing> {
        if !cfg.any() {
            return None;
        }
        let rate = if wideband { 16000 } else { 8000 };
        let config = Config {
            echo_canceller: cfg.echo_cancellation.then(EchoCanceller::default),
            // High (about 18 dB): street noise at 5 dB SNR must come out 10 dB better,
            // and speech must survive it (the must-show figures, tests/tests/speakerphone.rs).
            noise_suppression: cfg.noise_suppression.then(|| NoiseSuppression { level: NoiseSuppressionLevel::High, ..Default::default() }),
            ..Default::default()
        };
        let apm = AudioProcessing::builder()
            .config(config)
            .capture_config(StreamConfig::new(rate, 1))
            .render_config(StreamConfig::new(rate, 1))
            .echo_detector(cfg.echo_cancellation)
            .build();
        Some(VoiceProcessing {
            cfg,
            apm,
            rate,
            reference: VecDeque::new(),
            reference_pos: 0,
            next_frame_pos: None,
            talked_at: None,
            up: Resampler::new(8000, 16000),
            down: Resampler::new(16000, 8000),
            pending: Vec::new(),
            pending_pos: 0,
            ready: VecDeque::new(),
            chunk_in: Vec::new(),
            chunk_out: Vec::new(),
            residual_echo: false,
            talked_over: 0,
            stats: ProcessingStats::default(),
        })
    }

    pub fn config(&self) -> ProcessingConfig {
        self.cfg
    }

    pub fn is_wideband(&self) -> bool {
        self.rate == 16000
    }

    fn chunk(&self) -> usize {
        CHUNK_8K * (self.rate / 8000) as usize
    }

    /// A frame of the call's clock at `pos`: what the node sent in it (its 8 kHz audio
    /// and, when the codec is wideband, the source's own 16 kHz audio if it had any),
    /// or None when it sent no audio (silence, a telephone-event).
    pub fn on_frame(&mut self, pos: u64, sent: Option<(&[i16], &[i16])>) {
        if !self.cfg.echo_cancellation {
            return;
        }
        let factor = (self.rate / 8000) as usize;
        let expected = *self.next_frame_pos.get_or_insert(pos);
        if pos < expected {
            return;
        }
        if self.reference.is_empty() {
            self.reference_pos = pos;
        } else if pos > expected {
            // Frames the clock skipped (the task was late): nothing went out in them.
            self.reference.extend(std::iter::repeat_n(0, (pos - expected) as usize * factor));
        }
        self.next_frame_pos = Some(pos + FRAME_SAMPLES as u64);
        match sent {
            Some((pcm, wide)) => {
                let power = pcm.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / pcm.len().max(1) as f64;
                if power > TALKING_POWER {
                    self.talked_at = Some(pos);
                }
                if factor == 1 {
                    self.reference.extend(pcm);
                } else if wide.len() == pcm.len() * 2 {
                    self.reference.extend(wide);
                } else {
                    let before = self.chunk_out.len();
                    self.up.process_into(pcm, &mut self.chunk_out);
                    self.reference.extend(self.chunk_out.drain(before..));
                }
            }
            None => self.reference.extend(std::iter::repeat_n(0, FRAME_SAMPLES * factor)),
        }
        let max = MAX_REFERENCE_8K * factor;
        if self.reference.len() > max {
            let drop = (self.reference.len() - max) / self.chunk() * self.chunk();
            self.reference.drain(..drop);
            self.reference_pos += (drop / factor) as u64;
        }
    }

    /// Processes one piece of the caller's audio the jitter buffer released (live,
    /// not late), in place: `pcm` (and `wide`, for a wideband caller) become the
    /// processed audio; what arrived is returned for the recording. A piece that is
    /// not a whole number of 10 ms delays the audio by the remainder, once.
    pub fn process(&mut self, heard: &mut Heard) -> AsSent {
        let wideband = !heard.wide.is_empty();
        if wideband != self.is_wideband() {
            // The caller's codec changed band (a re-offer): start afresh at its rate.
            if let Some(fresh) = VoiceProcessing::new(self.cfg, wideband) {
                *self = fresh;
            }
        }
        if self.pending.is_empty() {
            self.pending_pos = heard.pos;
        }
        let input = if wideband { &heard.wide } else { &heard.pcm };
        self.pending.extend_from_slice(input);
        let chunk = self.chunk();
        let mut used = 0;
        while self.pending.len() - used >= chunk {
            self.chunk_in.clear();
            self.chunk_in.extend_from_slice(&self.pending[used..used + chunk]);
            self.process_chunk(self.pending_pos);
            used += chunk;
            self.pending_pos += CHUNK_8K as u64;
        }
        self.pending.drain(..used);
        let need = input.len();
        let short = need.saturating_sub(self.ready.len());
        let mut out: Vec<i16> = Vec::with_capacity(need);
        out.extend(std::iter::repeat_n(0, short));
        out.extend(self.ready.drain(..need - short));
        self.stats.processed_samples += heard.pcm.len() as u64;
        if self.residual_echo {
            self.stats.residual_echo_samples += heard.pcm.len() as u64;
        }
        if wideband {
            let mut narrow = Vec::with_capacity(heard.pcm.len());
            self.down.process_into(&out, &mut narrow);
            // The resampler's output runs a sample or so short or long of half at
            // first; the 8 kHz copy keeps its exact length.
            narrow.resize(heard.pcm.len(), 0);
            let pcm = std::mem::replace(&mut heard.pcm, narrow);
            let wide = std::mem::replace(&mut heard.wide, out);
            AsSent { pcm, wide }
        } else {
            let pcm = std::mem::replace(&mut heard.pcm, out);
            AsSent { pcm, wide: Vec::new() }
        }
    }

    fn process_chunk(&mut self, pos: u64) {
        let chunk = self.chunk();
        if self.cfg.echo_cancellation {
            // The reference up to this chunk's place on the timeline goes first.
            self.chunk_out.resize(chunk, 0);
            while self.reference_pos <= pos && self.reference.len() >= chunk {
                let (a, b) = self.reference.as_slices();
                let render: &[i16] = if a.len() >= chunk {
                    &a[..chunk]
                } else {
                    self.chunk_out[..a.len()].copy_from_slice(a);
                    self.chunk_out[a.len()..].copy_from_slice(&b[..chunk - a.len()]);
                    &self.chunk_out
                };
                let mut discard = [0i16; 160];
                // A rejected frame only means a wrong length, which cannot happen here.
                let _ = self.apm.process_render_i16(render, &mut discard[..chunk]);
                self.reference.drain(..chunk);
                self.reference_pos += CHUNK_8K as u64;
            }
            // The reference is placed by send time: no further delay to tell AEC3.
            let _ = self.apm.set_stream_delay_ms(0);
        }
        self.chunk_out.resize(chunk, 0);
        match self.apm.process_capture_i16(&self.chunk_in, &mut self.chunk_out) {
            Ok(()) => self.ready.extend(&self.chunk_out),
            Err(_) => self.ready.extend(&self.chunk_in),
        }
        if self.cfg.echo_cancellation {
            let s = self.apm.statistics();
            self.residual_echo = s.residual_echo_likelihood.is_some_and(|l| l > RESIDUAL_ECHO_LIKELY);
            let talking = self.talked_at.is_some_and(|t| t + TALK_MEMORY_8K >= pos);
            if talking {
                self.talked_over = (self.talked_over + CHUNK_8K as u64).min(CONVERGED_AFTER_8K);
                if let Some(erle) = s.echo_return_loss_enhancement {
                    self.stats.erle_db = Some(erle);
                }
                if let Some(d) = s.delay_ms {
                    self.stats.delay_ms = Some(d.max(0) as u32);
                }
            }
        }
    }

    /// True while the processed audio still carries echo (the residual-echo detector's
    /// view of the last 10 ms).
    pub fn residual_echo(&self) -> bool {
        self.residual_echo
    }

    /// True once the processed audio is fit for the voice detector: suppression alone
    /// always is; the canceller after its first 2 s of the bot talking.
    pub fn converged(&self) -> bool {
        !self.cfg.echo_cancellation || self.talked_over >= CONVERGED_AFTER_8K
    }

    pub fn take_stats(&mut self) -> ProcessingStats {
        std::mem::take(&mut self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn speech(bytes: &[u8]) -> Vec<i16> {
        hound::WavReader::new(bytes).unwrap().into_samples::<i16>().map(|s| s.unwrap()).collect()
    }

    /// A speakerphone at 8 kHz: the node's prompt comes back 200 ms late at -6 dB with
    /// a room's tail; the caller talks from 6 s. Returns (reference, echo, caller).
    fn speakerphone(seconds: usize) -> (Vec<i16>, Vec<f32>, Vec<f32>) {
        let n = seconds * 8000;
        let mut prompt = speech(include_bytes!("../../testdata/speech-8k.wav"));
        while prompt.len() < n {
            prompt.extend(prompt.clone());
        }
        prompt.truncate(n);
        let delay = 1600;
        // A decaying tail (a small room): taps every 1.5 ms, deterministic signs.
        let tail: Vec<(usize, f32)> =
            (0..40).map(|k| (k * 12, 0.5 * (-(k as f32) / 12.0).exp() * if k % 3 == 1 { -0.5 } else { 0.5 })).collect();
        let echo: Vec<f32> =
            (0..n).map(|t| tail.iter().filter(|(d, _)| t >= delay + d).map(|(d, g)| g * f32::from(prompt[t - delay - d])).sum()).collect();
        let says = speech(include_bytes!("../../testdata/speech2-8k.wav"));
        let mut caller = vec![0.0f32; n];
        for (i, s) in says.iter().enumerate().take(n.saturating_sub(6 * 8000)) {
            caller[6 * 8000 + i] = f32::from(*s) * 0.5;
        }
        (prompt, echo, caller)
    }

    fn energy(x: &[f32]) -> f64 {
        x.iter().map(|&s| f64::from(s) * f64::from(s)).sum()
    }

    /// Runs the call through the processing as the session does: each 20 ms frame's
    /// reference goes in when it is sent, the caller's audio 20 ms after.
    fn run(cfg: ProcessingConfig, prompt: &[i16], capture: &[i16]) -> Vec<f32> {
        let mut p = VoiceProcessing::new(cfg, false).unwrap();
        let mut out = Vec::new();
        for (k, (r, c)) in prompt.chunks(160).zip(capture.chunks(160)).enumerate() {
            let pos = k as u64 * 160;
            p.on_frame(pos, Some((r, &[])));
            let mut h = Heard { pos, wall_pos: pos, pcm: c.to_vec(), wide: Vec::new(), concealed: false, late: false, as_sent: None };
            let sent = p.process(&mut h);
            assert_eq!(sent.pcm, c, "what the caller sent is kept as it came");
            out.extend(h.pcm.iter().map(|&s| f32::from(s)));
        }
        out
    }

    #[test]
    fn the_prompts_echo_is_cancelled_and_the_caller_kept() {
        let (prompt, echo, caller) = speakerphone(10);
        let capture: Vec<i16> = echo.iter().zip(&caller).map(|(e, c)| (e + c).round().clamp(-32768.0, 32767.0) as i16).collect();
        let out = run(ProcessingConfig { echo_cancellation: true, noise_suppression: false }, &prompt, &capture);
        // Echo only, from 2 s (the canceller has had its 2 s) until the caller talks.
        let (from, to) = (2 * 8000, 6 * 8000);
        let erle = 10.0 * (energy(&echo[from..to]) / energy(&out[from..to]).max(1.0)).log10();
        assert!(erle >= 25.0, "echo {erle:.1} dB lower");
        // Double talk: the caller over the prompt's echo is still there.
        // Double talk: the caller over the prompt's echo comes through, about 11 ms
        // later (sonora's 8 <-> 16 kHz conversion inside). AEC3's suppressor takes
        // some of the caller where the echo is as loud (BENCHMARKS.md has the figures).
        let (c, lag) = (0..160usize)
            .map(|lag| {
                let (a, b) = (&out[6 * 8000 + lag..], &caller[6 * 8000..out.len() - lag]);
                (a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum::<f64>() / (energy(a) * energy(b)).sqrt(), lag)
            })
            .fold((f64::MIN, 0), |best, c| if c.0 > best.0 { c } else { best });
        assert!(c >= 0.45, "caller's speech correlation {c:.2} (at {lag} samples) in double talk");
        assert!(lag < 120, "the processing delays the caller by {lag} samples");
    }

    #[test]
    fn nothing_asked_is_nothing_done() {
        assert!(VoiceProcessing::new(ProcessingConfig::default(), false).is_none());
    }
}
