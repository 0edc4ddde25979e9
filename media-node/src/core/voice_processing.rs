//! Echo cancellation and noise suppression of the caller's audio (issue 35), in pure
//! Rust: AEC3 from sonora's port of WebRTC's audio processing, its block processor
//! driven directly (so its linear filter can be sized for a speakerphone in a room,
//! which the port's ready-made pipeline does not allow), WebRTC's residual-echo
//! detector from the same port, and RNNoise (nnnoiseless) for the noise.
//!
//! The node is the one place that knows exactly what was played to the caller and
//! when. Every frame the call sends, and the silence of every frame it sends nothing
//! in, becomes the canceller's reference at its place on the call's timeline. The
//! caller's audio is processed in the order the jitter buffer releases it, each block
//! after the reference up to its own timeline position. So the delay AEC3 has to find
//! is the echo's own (the network both ways, the phone, the room, the jitter buffer's
//! playout delay), never an artefact of when the call's task ran.
//!
//! Everything runs at 16 kHz (AEC3's own rate): a narrowband caller is converted up
//! and back. Pure: no clock, no I/O; the CPU it takes is measured by the caller.

use std::collections::VecDeque;

use sonora::{AudioProcessing, Config, StreamConfig};
use sonora_aec3::block::Block;
use sonora_aec3::block_processor::BlockProcessor;
use sonora_aec3::config::EchoCanceller3Config;

use crate::core::jitter::{Heard, FRAME_SAMPLES};
use crate::core::resample::Resampler;

/// The processing's rate, and AEC3's block (4 ms) and the pipeline's chunk (10 ms) in it.
const RATE: u32 = 16000;
const BLOCK: usize = 64;
const CHUNK: usize = 160;
/// The reference kept beyond what the caller's audio has reached: the caller may stop
/// sending while the bot talks, and what was played a second ago cannot be the echo of
/// anything the caller sends next (AEC3 keeps its own history of what it was given).
const MAX_REFERENCE: usize = 16000;
/// AEC3's linear filter, in 4 ms blocks: WebRTC's default of 13 (52 ms) is sized for a
/// laptop's loudspeaker next to its microphone. A speakerphone in a room returns a
/// tail of hundreds of ms; past the filter only the suppressor acts on it, at the
/// caller's expense. 40 blocks (160 ms) is measured in BENCHMARKS.md against 13.
const FILTER_BLOCKS: usize = 40;
/// The room tail's decay per 4 ms block the suppressor assumes (`aec3_config`).
const TAIL_DECAY: f32 = 0.98;
/// A residual-echo likelihood (WebRTC's detector, over the processed audio) above
/// this counts as echo left in it.
const RESIDUAL_ECHO_LIKELY: f64 = 0.5;
/// The bot counts as talking (the canceller's figures mean something) while its
/// reference stood above this mean square (about -50 dBFS) within the last second.
const TALKING_POWER: f64 = 32768.0 * 32768.0 * 1e-5;
const TALK_MEMORY_16K: u64 = 16000;
/// AEC3 converges over the bot's first seconds of talk; until it has processed this
/// much caller audio while the bot talked (2 s), its output is a distorted echo that a
/// voice detector takes for speech and the echo guard cannot match to what was played.
/// The analysis hears what was sent until then (`converged`).
const CONVERGED_AFTER_16K: u64 = 32000;

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
/// (which keeps what the caller really sent).
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
    /// at the last block processed while the bot was talking.
    pub erle_db: Option<f64>,
    pub delay_ms: Option<u32>,
}

/// RNNoise (nnnoiseless: the recurrent network and its weights inside the crate) at its
/// own 48 kHz over the 16 kHz audio, 10 ms at a time.
struct Rnn {
    state: Box<nnnoiseless::DenoiseState<'static>>,
    up: Resampler,
    down: Resampler,
    up_buf: Vec<i16>,
    input: Vec<f32>,
    output: Vec<f32>,
    out48: Vec<i16>,
    out16: Vec<i16>,
}

impl Rnn {
    fn new() -> Rnn {
        Rnn {
            state: nnnoiseless::DenoiseState::new(),
            up: Resampler::new(16000, 48000),
            down: Resampler::new(48000, 16000),
            up_buf: Vec::new(),
            input: vec![0.0; nnnoiseless::DenoiseState::FRAME_SIZE],
            output: vec![0.0; nnnoiseless::DenoiseState::FRAME_SIZE],
            out48: Vec::new(),
            out16: Vec::new(),
        }
    }

    fn process(&mut self, chunk: &[i16], ready: &mut VecDeque<i16>) {
        self.up.process_into(chunk, &mut self.up_buf);
        let n = nnnoiseless::DenoiseState::FRAME_SIZE;
        let mut used = 0;
        while self.up_buf.len() - used >= n {
            for (d, &s) in self.input.iter_mut().zip(&self.up_buf[used..used + n]) {
                *d = f32::from(s);
            }
            self.state.process_frame(&mut self.output, &self.input);
            self.out48.clear();
            self.out48.extend(self.output.iter().map(|&v| v.round().clamp(-32768.0, 32767.0) as i16));
            self.out16.clear();
            self.down.process_into(&self.out48, &mut self.out16);
            ready.extend(&self.out16);
            used += n;
        }
        self.up_buf.drain(..used);
    }
}

/// AEC3 for a phone call.
fn aec3_config() -> EchoCanceller3Config {
    let mut c = EchoCanceller3Config::default();
    c.filter.refined.length_blocks = FILTER_BLOCKS;
    c.filter.coarse.length_blocks = FILTER_BLOCKS;
    // How long AEC3's suppressor takes the room's reverberation to ring on: WebRTC's
    // 0.83 per block fits a laptop; a speakerphone in a room rings for up to a second
    // or more. Measured in tests/tests/echo_cancellation.rs (sox rooms): 0.83 leaves the
    // echo a median 19.7 dB lower, 0.98 31 dB, with the caller's words over the bot
    // (0.86 median correlation, from 0.86) and an answer right after it (0.87 least,
    // from 0.90) barely touched; 0.99 clips an answer's first words, 1.0 all double talk.
    c.ep_strength.default_len = TAIL_DECAY;
    c.validate();
    c
}

/// The reference: what the node sent at 16 kHz, from timeline position `start` (16 kHz
/// samples) on, read by two cursors (AEC3 in blocks, the residual-echo detector in
/// chunks) and dropped once both have passed it.
#[derive(Default)]
struct Reference {
    samples: VecDeque<i16>,
    start: u64,
    /// Where each reader is.
    aec: u64,
    detector: u64,
}

impl Reference {
    fn end(&self) -> u64 {
        self.start + self.samples.len() as u64
    }

    fn push_silence(&mut self, n: usize) {
        self.samples.extend(std::iter::repeat_n(0, n));
    }

    /// `n` samples from `at` into `out`, if they are all there.
    fn read(&self, at: u64, n: usize, out: &mut Vec<i16>) -> bool {
        if at < self.start || at + n as u64 > self.end() {
            return false;
        }
        let from = (at - self.start) as usize;
        out.clear();
        out.extend(self.samples.range(from..from + n));
        true
    }

    /// Drops what both readers have passed, and anything beyond the cap.
    fn trim(&mut self) {
        let keep_from = self.aec.min(self.detector).max(self.end().saturating_sub(MAX_REFERENCE as u64));
        if keep_from > self.start {
            let n = ((keep_from - self.start) as usize).min(self.samples.len());
            self.samples.drain(..n);
            self.start += n as u64;
        }
        self.aec = self.aec.max(self.start);
        self.detector = self.detector.max(self.start);
    }
}

pub struct VoiceProcessing {
    cfg: ProcessingConfig,
    /// The caller's codec is wideband (its 16 kHz audio is processed as it is).
    wideband: bool,
    aec: Option<BlockProcessor>,
    /// WebRTC's pipeline for its residual-echo detector (echo cancellation on).
    apm: Option<AudioProcessing>,
    reference: Reference,
    /// Where the next frame sent is expected (8 kHz timeline; one per 20 ms).
    next_frame_pos: Option<u64>,
    /// The last 16 kHz position whose reference was loud (the bot talking).
    talked_at: Option<u64>,
    /// 8 -> 16 kHz for the reference (frames without their own 16 kHz audio) and a
    /// narrowband caller; 16 -> 8 kHz for the processed audio's 8 kHz copy.
    up_reference: Resampler,
    up_caller: Resampler,
    down: Resampler,
    /// The caller's 16 kHz audio not yet a whole block, and its start's position.
    pending: Vec<i16>,
    pending_pos: u64,
    /// Cancelled audio not yet a whole 10 ms chunk, and its start's position.
    cancelled: Vec<i16>,
    cancelled_pos: u64,
    /// Processed 16 kHz audio not yet handed back.
    ready: VecDeque<i16>,
    block: Block,
    scratch: Vec<i16>,
    chunk_out: Vec<i16>,
    residual_echo: bool,
    /// The noise suppressor (noise suppression on).
    rnn: Option<Rnn>,
    /// Caller audio processed while the bot talked (16 kHz samples), up to convergence.
    talked_over: u64,
    stats: ProcessingStats,
}

impl VoiceProcessing {
    /// None when the config asks for nothing.
    pub fn new(cfg: ProcessingConfig, wideband: bool) -> Option<VoiceProcessing> {
        if !cfg.any() {
            return None;
        }
        let aec = cfg.echo_cancellation.then(|| BlockProcessor::new(&aec3_config(), RATE as usize, 1, 1));
        // WebRTC's pipeline keeps only its residual-echo detector here: its noise
        // suppressor reshaped words in 5 dB of street noise (0.68 correlation with what
        // was said, against RNNoise's 0.96, tests/tests/echo_cancellation.rs).
        let apm = cfg.echo_cancellation.then(|| {
            AudioProcessing::builder()
                .config(Config::default())
                .capture_config(StreamConfig::new(RATE, 1))
                .render_config(StreamConfig::new(RATE, 1))
                .echo_detector(true)
                .build()
        });
        Some(VoiceProcessing {
            cfg,
            wideband,
            aec,
            apm,
            reference: Reference::default(),
            next_frame_pos: None,
            talked_at: None,
            up_reference: Resampler::new(8000, RATE),
            up_caller: Resampler::new(8000, RATE),
            down: Resampler::new(RATE, 8000),
            pending: Vec::new(),
            pending_pos: 0,
            cancelled: Vec::new(),
            cancelled_pos: 0,
            ready: VecDeque::new(),
            block: Block::new(1, 1),
            scratch: Vec::new(),
            chunk_out: Vec::new(),
            residual_echo: false,
            rnn: cfg.noise_suppression.then(Rnn::new),
            talked_over: 0,
            stats: ProcessingStats::default(),
        })
    }

    pub fn config(&self) -> ProcessingConfig {
        self.cfg
    }

    /// A frame of the call's clock at `pos` (8 kHz timeline): what the node sent in it
    /// (its 8 kHz audio and, when the codec is wideband, the source's own 16 kHz audio
    /// if it had any), or None when it sent no audio (silence, a telephone-event).
    pub fn on_frame(&mut self, pos: u64, sent: Option<(&[i16], &[i16])>) {
        if !self.cfg.echo_cancellation {
            return;
        }
        let expected = *self.next_frame_pos.get_or_insert(pos);
        if pos < expected {
            return;
        }
        let r = &mut self.reference;
        if r.samples.is_empty() && r.start == 0 && r.aec == 0 {
            r.start = 2 * pos;
            r.aec = r.start;
            r.detector = r.start;
        } else if pos > expected {
            // Frames the clock skipped (the task was late): nothing went out in them.
            r.push_silence(2 * (pos - expected) as usize);
        }
        self.next_frame_pos = Some(pos + FRAME_SAMPLES as u64);
        match sent {
            Some((pcm, wide)) => {
                let power = pcm.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / pcm.len().max(1) as f64;
                if power > TALKING_POWER {
                    self.talked_at = Some(2 * pos);
                }
                if wide.len() == pcm.len() * 2 {
                    self.reference.samples.extend(wide);
                } else {
                    self.scratch.clear();
                    self.up_reference.process_into(pcm, &mut self.scratch);
                    self.reference.samples.extend(&self.scratch);
                }
            }
            None => self.reference.push_silence(2 * FRAME_SAMPLES),
        }
        self.reference.trim();
    }

    /// Processes one piece of the caller's audio the jitter buffer released (live,
    /// not late), in place: `pcm` (and `wide`, for a wideband caller) become the
    /// processed audio; what arrived is returned for the recording. The processed
    /// audio lags what arrived by the conversions' and blocks' few ms.
    pub fn process(&mut self, heard: &mut Heard) -> AsSent {
        let wideband = !heard.wide.is_empty();
        if wideband != self.wideband {
            // The caller's codec changed band (a re-offer): start afresh.
            if let Some(mut fresh) = VoiceProcessing::new(self.cfg, wideband) {
                fresh.stats = self.stats;
                *self = fresh;
            }
        }
        if self.pending.is_empty() {
            self.pending_pos = 2 * heard.pos;
        }
        if wideband {
            self.pending.extend_from_slice(&heard.wide);
        } else {
            self.up_caller.process_into(&heard.pcm, &mut self.pending);
        }
        let mut used = 0;
        while self.pending.len() - used >= BLOCK {
            let at = self.pending_pos;
            self.cancel_block(at, used);
            used += BLOCK;
            self.pending_pos += BLOCK as u64;
        }
        self.pending.drain(..used);
        let need = 2 * heard.pcm.len();
        let short = need.saturating_sub(self.ready.len());
        let mut out: Vec<i16> = Vec::with_capacity(need);
        out.extend(std::iter::repeat_n(0, short));
        out.extend(self.ready.drain(..need - short));
        self.stats.processed_samples += heard.pcm.len() as u64;
        if self.residual_echo {
            self.stats.residual_echo_samples += heard.pcm.len() as u64;
        }
        let mut narrow = Vec::with_capacity(heard.pcm.len() + 2);
        self.down.process_into(&out, &mut narrow);
        // The converter's output runs a sample short or long of half at first; the
        // 8 kHz copy keeps its exact length.
        narrow.resize(heard.pcm.len(), 0);
        let pcm = std::mem::replace(&mut heard.pcm, narrow);
        if wideband {
            let wide = std::mem::replace(&mut heard.wide, out);
            AsSent { pcm, wide }
        } else {
            AsSent { pcm, wide: Vec::new() }
        }
    }

    /// AEC3 over the block of `pending` at `offset` (timeline position `at`), after the
    /// reference up to it; then on to the pipeline in 10 ms chunks.
    fn cancel_block(&mut self, at: u64, offset: usize) {
        if self.cancelled.is_empty() {
            self.cancelled_pos = at;
        }
        let input = &self.pending[offset..offset + BLOCK];
        if let Some(aec) = &mut self.aec {
            // The reference up to this block's place on the timeline goes first.
            while self.reference.aec <= at && self.reference.read(self.reference.aec, BLOCK, &mut self.scratch) {
                for (d, &s) in self.block.view_mut(0, 0).iter_mut().zip(&self.scratch) {
                    *d = f32::from(s);
                }
                aec.buffer_render(&self.block);
                self.reference.aec += BLOCK as u64;
            }
            let saturated = input.iter().any(|&s| s >= 32700 || s <= -32700);
            for (d, &s) in self.block.view_mut(0, 0).iter_mut().zip(input) {
                *d = f32::from(s);
            }
            aec.process_capture(false, saturated, None, &mut self.block);
            self.cancelled.extend(self.block.view(0, 0).iter().map(|&v| v.round().clamp(-32768.0, 32767.0) as i16));
            let talking = self.talked_at.is_some_and(|t| t + TALK_MEMORY_16K >= at);
            if talking {
                self.talked_over = (self.talked_over + BLOCK as u64).min(CONVERGED_AFTER_16K);
                let m = aec.get_metrics();
                self.stats.erle_db = Some(m.echo_return_loss_enhancement);
                self.stats.delay_ms = Some(m.delay_ms.max(0) as u32);
            }
        } else {
            self.cancelled.extend_from_slice(input);
        }
        self.reference.trim();
        while self.cancelled.len() >= CHUNK {
            let pos = self.cancelled_pos;
            self.pipeline_chunk(pos);
            self.cancelled.drain(..CHUNK);
            self.cancelled_pos += CHUNK as u64;
        }
    }

    /// The residual-echo detector and the noise suppressor over 10 ms of cancelled
    /// audio at `pos`.
    fn pipeline_chunk(&mut self, pos: u64) {
        self.chunk_out.clear();
        self.chunk_out.extend_from_slice(&self.cancelled[..CHUNK]);
        if let Some(apm) = &mut self.apm {
            let mut discard = [0i16; CHUNK];
            while self.reference.detector <= pos && self.reference.read(self.reference.detector, CHUNK, &mut self.scratch) {
                // A rejected frame only means a wrong length, which cannot happen here.
                let _ = apm.process_render_i16(&self.scratch, &mut discard);
                self.reference.detector += CHUNK as u64;
            }
            // The detector only watches: what it hands back is the chunk as it was.
            let _ = apm.process_capture_i16(&self.cancelled[..CHUNK], &mut discard);
            self.residual_echo = apm.statistics().residual_echo_likelihood.is_some_and(|l| l > RESIDUAL_ECHO_LIKELY);
        }
        match &mut self.rnn {
            Some(rnn) => rnn.process(&self.chunk_out, &mut self.ready),
            None => self.ready.extend(&self.chunk_out),
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
        !self.cfg.echo_cancellation || self.talked_over >= CONVERGED_AFTER_16K
    }

    pub fn take_stats(&mut self) -> ProcessingStats {
        std::mem::take(&mut self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::resample;

    fn speech(bytes: &[u8]) -> Vec<i16> {
        hound::WavReader::new(bytes).unwrap().into_samples::<i16>().map(|s| s.unwrap()).collect()
    }

    /// A speakerphone at `rate`: the node's prompt comes back 200 ms late at -6 dB
    /// through a small room's decaying tail; the caller talks from 6 s. Returns
    /// (reference, echo, caller).
    fn speakerphone(seconds: usize, rate: usize) -> (Vec<i16>, Vec<f32>, Vec<f32>) {
        let n = seconds * rate;
        let mut prompt = resample::convert(&speech(include_bytes!("../../testdata/speech-8k.wav")), 8000, rate as u32);
        while prompt.len() < n {
            prompt.extend(prompt.clone());
        }
        prompt.truncate(n);
        let delay = rate / 5;
        // Taps every 1.5 ms over 60 ms, deterministic signs.
        let step = rate * 3 / 2000;
        let tail: Vec<(usize, f32)> =
            (0..40).map(|k| (k * step, 0.5 * (-(k as f32) / 12.0).exp() * if k % 3 == 1 { -0.5 } else { 0.5 })).collect();
        let echo: Vec<f32> =
            (0..n).map(|t| tail.iter().filter(|(d, _)| t >= delay + d).map(|(d, g)| g * f32::from(prompt[t - delay - d])).sum()).collect();
        let says = resample::convert(&speech(include_bytes!("../../testdata/speech2-8k.wav")), 8000, rate as u32);
        let mut caller = vec![0.0f32; n];
        for (i, s) in says.iter().enumerate().take(n.saturating_sub(6 * rate)) {
            caller[6 * rate + i] = f32::from(*s) * 0.5;
        }
        (prompt, echo, caller)
    }

    fn energy(x: &[f32]) -> f64 {
        x.iter().map(|&s| f64::from(s) * f64::from(s)).sum()
    }

    /// Runs the call through the processing as the session does: each 20 ms frame's
    /// reference goes in when it is sent, then the caller's audio of that frame. A
    /// wideband call hands both rates, as the jitter buffer does.
    fn run(cfg: ProcessingConfig, rate: usize, prompt: &[i16], capture: &[i16]) -> Vec<f32> {
        let wideband = rate == 16000;
        let mut p = VoiceProcessing::new(cfg, wideband).unwrap();
        let frame = rate / 50;
        let mut out = Vec::new();
        for (k, (r, c)) in prompt.chunks(frame).zip(capture.chunks(frame)).enumerate() {
            let pos = k as u64 * 160;
            let (r8, c8) =
                if wideband { (resample::convert(r, 16000, 8000), resample::convert(c, 16000, 8000)) } else { (r.to_vec(), c.to_vec()) };
            let wide_ref: &[i16] = if wideband { r } else { &[] };
            p.on_frame(pos, Some((&r8, wide_ref)));
            let wide = if wideband { c.to_vec() } else { Vec::new() };
            let mut h = Heard { pos, wall_pos: pos, pcm: c8.clone(), wide, concealed: false, late: false, as_sent: None };
            let sent = p.process(&mut h);
            assert_eq!(sent.pcm, c8, "what the caller sent is kept as it came");
            assert_eq!(h.pcm.len(), 160, "the 8 kHz copy keeps its length");
            out.extend(if wideband { &h.wide } else { &h.pcm }.iter().map(|&s| f32::from(s)));
        }
        out
    }

    fn cancelled_and_kept(rate: usize) {
        let (prompt, echo, caller) = speakerphone(10, rate);
        let capture: Vec<i16> = echo.iter().zip(&caller).map(|(e, c)| (e + c).round().clamp(-32768.0, 32767.0) as i16).collect();
        let out = run(ProcessingConfig { echo_cancellation: true, noise_suppression: false }, rate, &prompt, &capture);
        // Echo only, from 2 s (the canceller has had its 2 s) until the caller talks.
        let (from, to) = (2 * rate, 6 * rate);
        let erle = 10.0 * (energy(&echo[from..to]) / energy(&out[from..to]).max(1.0)).log10();
        assert!(erle >= 25.0, "{rate} Hz: echo {erle:.1} dB lower");
        // Double talk: the caller over the prompt's echo comes through, a few ms late.
        let (c, lag) = (0..rate / 25)
            .map(|lag| {
                let (a, b) = (&out[6 * rate + lag..], &caller[6 * rate..out.len() - lag]);
                (a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum::<f64>() / (energy(a) * energy(b)).sqrt(), lag)
            })
            .fold((f64::MIN, 0), |best, c| if c.0 > best.0 { c } else { best });
        // The caller here is as loud as the echo that arrives with it (0.71 at 8 kHz and
        // 0.77 at 16 kHz measured; the speakerphone tests hold the real-parts figures).
        assert!(c >= 0.65, "{rate} Hz: caller's speech correlation {c:.2} (at {lag} samples) in double talk");
        assert!(lag < rate / 50, "{rate} Hz: the processing delays the caller by {lag} samples");
    }

    #[test]
    fn a_narrowband_callers_echo_is_cancelled_and_the_caller_kept() {
        cancelled_and_kept(8000);
    }

    #[test]
    fn a_wideband_callers_echo_is_cancelled_against_the_16_khz_reference() {
        cancelled_and_kept(16000);
    }

    #[test]
    fn nothing_asked_is_nothing_done() {
        assert!(VoiceProcessing::new(ProcessingConfig::default(), false).is_none());
    }
}
