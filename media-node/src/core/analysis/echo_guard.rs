//! Is what the caller "says" only the bot's own audio coming back? A speakerphone, a
//! hands-free kit or a poor handset returns the prompt 20 to 500 ms late, at up to
//! +6 dB, through a room that adds a decaying tail; a voice detector rightly calls that
//! speech, and a barge-in on it would cut every prompt. The node knows what it played,
//! so it can tell, frame by frame (16 ms), before the voice detector's gate counts the
//! frame as the caller's voice:
//!
//! 1. **The echo path** (delay and gain) is found when the caller's audio first
//!    sounds while the node plays, and followed after. Candidate delays in
//!    `MIN_LAG..MAX_LAG` come from a generalized cross-correlation with the phase
//!    transform (GCC-PHAT, one 8192-point FFT pair); each is checked by least squares
//!    on the waveforms, and the best is adopted when a delayed, scaled copy of what
//!    was played explains most of what was heard. A young path is searched again
//!    whenever a frame goes unexplained (a voice's steady pitch can make a near miss
//!    look good), an older one at most every 250 ms; every 128 ms of echo the delay
//!    (the far end's clock drifts) and the gain are followed to the sample.
//! 2. **The echo expected in each band** of the frame: the direct path (what was
//!    played exactly one delay before, at the path's gain) plus the room's tail (the
//!    played blocks before that, decaying at a rate learned per call), as WebRTC
//!    AEC3's residual-echo model does. A pause in the prompt where only the tail
//!    remains is thus still echo.
//! 3. **The verdict**: the frame is echo when nearly none of its energy stands above
//!    the expected echo and the noise floor, band by band. The caller talking over the
//!    bot fills bands the bot's voice leaves empty at that moment, so double talk at
//!    0 dB still counts as the caller's voice.
//!
//! Nothing runs while the node has played nothing that could still come back. While
//! it plays: a 128-point FFT per played block, and per frame the voice detector
//! scores as voice, one more for the delayed played frame; the search (about 1 M
//! flops) a few times per call; the tracking (33 lags over 64 ms) every 128 ms.
//! BENCHMARKS.md has the measured cost.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

use super::bands::{Analyser, Bands, BANDS, FRAME};

/// Delays searched, in 8 kHz samples (20 to 550 ms: a trunk's round trip, a handset or
/// a car kit, and a little room for the far end's clock drifting over a call).
pub const MIN_LAG: u64 = 160;
pub const MAX_LAG: u64 = 4400;
/// The search looks at this much of the caller's audio (128 ms).
const SEARCH: u64 = 1024;
/// A path is adopted when it explains at least this share of the caller's energy.
const ADOPT: f64 = 0.6;
/// Cross-correlation peaks checked at the full rate.
const CANDIDATES: usize = 3;
/// The FFT that cross-correlates the search window with what was played before it.
const GCC_SIZE: usize = 8192;

/// A frame's start, the path's delay and its gain's bits.
type ExpectedKey = (u64, u64, u32);

struct Scratch {
    h: Vec<f32>,
    q: Vec<f32>,
    hs: Vec<Complex<f32>>,
    qs: Vec<Complex<f32>>,
    xc: Vec<f32>,
}

type Plans = (Arc<dyn RealToComplex<f32>>, Arc<dyn ComplexToReal<f32>>);

fn gcc_plans() -> &'static Plans {
    static PLANS: OnceLock<Plans> = OnceLock::new();
    PLANS.get_or_init(|| {
        let mut planner = RealFftPlanner::<f32>::new();
        (planner.plan_fft_forward(GCC_SIZE), planner.plan_fft_inverse(GCC_SIZE))
    })
}

/// The room's tail is followed this far behind the direct path (47 blocks, 750 ms).
const TAIL_BLOCKS: usize = 47;
/// The tail's energy in the j-th block behind the direct path is `tail_gain * RHO^j`
/// of what the direct path brought in that block. RHO is 0.55 dB per block (a slow
/// room: sox's larger rooms fall about that fast after their first 100 ms). The gain
/// starts at GAMMA and is learned per call from frames judged echo in which the tail
/// is most of what is expected (at most doubling per step, a tenth of the way per
/// frame), never below TAIL_MIN: a room that was quiet so far is not assumed to have
/// no tail at all. TAIL_MIN 0.03 against 0.02 or 0.04 is what the speakerphone tests
/// chose: no echo-only call cut (0.02 let 6 of 160 through), double talk at 0 dB a
/// median 278 ms to the cut (330 ms at 0.04).
const RHO: f32 = 0.88;
const GAMMA: f32 = 0.05;
const TAIL_LEARNING: f32 = 0.1;
const TAIL_MIN: f32 = 0.03;
const TAIL_MAX: f32 = 0.6;
/// A band's energy is explained up to MARGIN times the direct echo and noise floor
/// expected in it (+3 dB), plus TAIL_MARGIN times the expected tail (+6 dB: a diffuse
/// tail's level swings more from frame to frame than a direct copy's).
const MARGIN: f32 = 2.0;
const TAIL_MARGIN: f32 = 4.0;
/// A frame is echo when no more than this share of its energy stands above that.
const UNEXPLAINED: f32 = 0.15;
/// Played blocks quieter than this (about -60 dBFS) are silence: no FFT for them.
const SILENT_BLOCK: f32 = 1.0;
thread_local! {
    /// Searches this thread may still run now; None (the default): any number. A
    /// search is one 8192-point FFT pair (about 150 µs); 200 calls that start together
    /// would search together and hold every other call's tick on the thread for tens
    /// of ms. The media runtime rations them (`ration_searches`) by its own clock, so
    /// this core never reads one.
    static SEARCH_RATION: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// Grants this thread `tokens` more echo searches, keeping at most `cap` in hand: from
/// then on a search runs only with a token (one is taken per search), and a search
/// without one waits for a later frame.
pub fn ration_searches(tokens: u32, cap: u32) {
    SEARCH_RATION.with(|r| r.set(Some(r.get().unwrap_or(0).saturating_add(tokens).min(cap))));
}

fn take_search_ration() -> bool {
    SEARCH_RATION.with(|r| match r.get() {
        None => true,
        Some(0) => false,
        Some(n) => {
            r.set(Some(n - 1));
            true
        }
    })
}

/// Played silence after which the bot's audio is a new turn (500 ms).
const NEW_TURN: u64 = 4000;
/// Frames between two checks of the path while echo comes back (128 ms).
const TRACK_EVERY: u32 = 8;
/// Frames between two searches while frames go unexplained (250 ms), or 2 while the
/// path has explained fewer than YOUNG frames (about a second of echo).
const RESEARCH_EVERY: u32 = 16;
const YOUNG: u32 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing the node played could have come back in this frame.
    NothingPlayed,
    Echo,
    /// More than the echo: the caller's voice (or something else the node did not play).
    NotEcho,
}

#[derive(Debug, Clone, Copy)]
struct Path {
    delay: u64,
    /// The path's power gain (its amplitude gain squared).
    gain2: f32,
}

pub struct EchoGuard {
    played: Timeline,
    heard: Timeline,
    analyser: Analyser,
    /// The played audio's bands per FRAME-sample block on the timeline grid (block
    /// index, bands), the newest last; silent blocks are zeros.
    played_bands: VecDeque<(u64, Bands)>,
    /// The block being filled.
    block: Vec<i16>,
    block_index: u64,
    /// The end of the last played block that was not silence.
    last_loud: Option<u64>,
    path: Option<Path>,
    /// Frames since the path was last checked or searched for.
    since_track: u32,
    since_search: u32,
    /// Searches that found nothing since a path was last confirmed (a young path's
    /// failed re-searches count too).
    failed: u32,
    /// The last frame's expected echo (direct, tail), by frame, delay and gain.
    expected: Option<(ExpectedKey, (Bands, Bands))>,
    /// The delay the last search found, waiting for the next to agree.
    candidate: Option<u64>,
    /// Frames found to be echo since the path was adopted (a young path may be a
    /// near miss: a voice's steady pitch explains much at a lag a pitch period off).
    confirmed: u32,
    /// The room's tail, learned: its energy per block behind the direct path is
    /// `tail_gain * RHO^age` of the direct path's.
    tail_gain: f32,
}

impl Default for EchoGuard {
    fn default() -> Self {
        EchoGuard {
            played: Timeline::new((MAX_LAG + SEARCH + 2 * FRAME as u64) as usize),
            heard: Timeline::new(2 * SEARCH as usize),
            analyser: Analyser::default(),
            played_bands: VecDeque::with_capacity(blocks_kept()),
            block: Vec::with_capacity(FRAME),
            block_index: 0,
            last_loud: None,
            path: None,
            since_track: 0,
            since_search: RESEARCH_EVERY,
            failed: 0,
            expected: None,
            candidate: None,
            confirmed: 0,
            tail_gain: GAMMA,
        }
    }
}

fn blocks_kept() -> usize {
    (MAX_LAG as usize + FRAME) / FRAME + TAIL_BLOCKS + 4
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
        let frame = FRAME as u64;
        let mut at = pos;
        let mut rest = pcm;
        while !rest.is_empty() {
            let index = at / frame;
            if index != self.block_index || self.block.is_empty() {
                if !self.block.is_empty() {
                    self.finish_block();
                }
                self.block_index = index;
                // A block joined part way: silence before.
                self.block.resize((at % frame) as usize, 0);
            }
            let take = rest.len().min(FRAME - self.block.len());
            self.block.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            at += take as u64;
            if self.block.len() == FRAME {
                self.finish_block();
                self.block_index = index + 1;
            }
        }
    }

    fn finish_block(&mut self) {
        self.block.resize(FRAME, 0);
        let power = self.block.iter().map(|&s| (s as f32) * (s as f32)).sum::<f32>() / FRAME as f32;
        let bands = if power < SILENT_BLOCK {
            [0.0; BANDS]
        } else {
            // A new turn of the bot after a pause: a path not found in the last one
            // is looked for again at the moderate pace (a caller may have switched to
            // the speakerphone meanwhile).
            let end = self.block_index * FRAME as u64;
            if self.path.is_none() && self.last_loud.is_none_or(|l| end >= l + NEW_TURN) {
                self.failed = self.failed.min(6);
            }
            self.last_loud = Some((self.block_index + 1) * FRAME as u64);
            self.analyser.bands(&self.block)
        };
        if self.played_bands.len() == blocks_kept() {
            self.played_bands.pop_front();
        }
        self.played_bands.push_back((self.block_index, bands));
        self.block.clear();
    }

    /// The caller's audio, at its timeline position.
    pub fn on_heard(&mut self, pos: u64, pcm: &[i16]) {
        self.heard.push(pos, pcm);
    }

    /// The bands of the caller's frame at `from` (FRAME samples).
    pub fn heard_bands(&mut self, from: u64) -> Bands {
        let mut frame = [0i16; FRAME];
        for (i, s) in frame.iter_mut().enumerate() {
            *s = self.heard.at(from + i as u64) as i16;
        }
        self.analyser.bands(&frame)
    }

    /// Could anything the node played be coming back in the frame at `from`?
    pub fn could_echo(&self, from: u64) -> bool {
        let reach = MAX_LAG + (TAIL_BLOCKS * FRAME) as u64;
        self.last_loud.is_some_and(|end| end + reach > from)
    }

    /// The caller's frame at `from` with the direct echo the path predicts taken off,
    /// band by band (what the line's own noise floor is to be learned from while the
    /// node plays); the frame as it is while no path is known.
    pub fn without_direct_echo(&mut self, from: u64, bands: &Bands) -> Bands {
        let Some(path) = self.path else { return *bands };
        let (direct, _) = self.expected_echo(from, path);
        std::array::from_fn(|b| (bands[b] - direct[b]).max(0.0))
    }

    /// Is the caller's frame at `from` (its `bands`, over the noise floor `noise`)
    /// only the node's own audio coming back?
    pub fn judge(&mut self, from: u64, bands: &Bands, noise: &Bands) -> Verdict {
        if !self.could_echo(from) {
            return Verdict::NothingPlayed;
        }
        let to = from + FRAME as u64;
        self.since_search = self.since_search.saturating_add(1);
        self.since_track = self.since_track.saturating_add(1);
        // Not found yet: every voiced frame searches (the first echo must not be heard
        // as speech); once six searches found nothing, the caller talks and nothing of
        // the bot comes back (a headset): every 16th, then after 14 every 250th (4 s)
        // until the bot's next turn, so a caller who talks over the bot costs little.
        let every = match self.failed {
            0..6 => 1,
            6..14 => 16,
            _ => 250,
        };
        if self.path.is_none() && self.since_search >= every {
            self.search(to);
        }
        let Some(path) = self.path else { return Verdict::NotEcho };
        let verdict = self.verdict(from, path, bands, noise);
        // A young path is searched again on every other unexplained frame, as long as
        // searches keep finding something (a path that explains nothing after six
        // failed searches was a fluke, and is dropped).
        let young = self.confirmed < YOUNG;
        let research = if young { 2.max(every) } else { RESEARCH_EVERY };
        match verdict {
            Verdict::Echo => {
                self.confirmed = self.confirmed.saturating_add(1);
                if self.confirmed == YOUNG {
                    self.failed = 0;
                }
                if self.since_track >= TRACK_EVERY {
                    self.track(to);
                }
            }
            Verdict::NotEcho if young && self.failed >= 6 => {
                self.path = None;
                self.confirmed = 0;
            }
            Verdict::NotEcho if self.since_search >= research && self.search(to) => {
                return self.verdict(from, self.path.expect("just found"), bands, noise);
            }
            _ => {}
        }
        verdict
    }

    fn verdict(&mut self, from: u64, path: Path, bands: &Bands, noise: &Bands) -> Verdict {
        let (direct, tail) = self.expected_echo(from, path);
        let total: f32 = bands.iter().sum();
        let margin = MARGIN;
        let above: f32 =
            (0..BANDS).map(|b| (bands[b] - margin * (direct[b] + noise[b]) - TAIL_MARGIN * self.tail_gain * tail[b]).max(0.0)).sum();
        if above > UNEXPLAINED * total {
            return Verdict::NotEcho;
        }
        // Echo: learn the room's tail where it is what the caller's side mostly
        // returns (a pause in the prompt, a word's end): where the direct path
        // dominates, what it leaves is the direct estimate's error, not the room.
        let unit: f32 = tail.iter().sum();
        let direct_sum: f32 = direct.iter().sum();
        if unit > 0.0 && direct_sum < self.tail_gain * unit {
            let left: f32 = (0..BANDS).map(|b| (bands[b] - direct[b] - noise[b]).max(0.0)).sum();
            let observed = (left / unit).min(2.0 * self.tail_gain);
            self.tail_gain = (self.tail_gain + TAIL_LEARNING * (observed - self.tail_gain)).clamp(TAIL_MIN, TAIL_MAX);
        }
        Verdict::Echo
    }

    /// The echo expected in each band of the caller's frame at `from`: the direct path
    /// from what was played exactly `delay` before (the delay is followed to the
    /// sample), the room's tail from the played blocks before that.
    fn expected_echo(&mut self, from: u64, path: Path) -> (Bands, Bands) {
        // The line's floor and the verdict ask for the same frame in turn.
        let key = (from, path.delay, path.gain2.to_bits());
        if let Some((k, expected)) = self.expected {
            if k == key {
                return expected;
            }
        }
        let expected = self.compute_expected_echo(from, path);
        self.expected = Some((key, expected));
        expected
    }

    fn compute_expected_echo(&mut self, from: u64, path: Path) -> (Bands, Bands) {
        let frame = FRAME as u64;
        let Some(src) = from.checked_sub(path.delay) else { return ([0.0; BANDS], [0.0; BANDS]) };
        let mut played = [0i16; FRAME];
        for (i, s) in played.iter_mut().enumerate() {
            *s = self.played.at(src + i as u64) as i16;
        }
        let direct = self.analyser.bands(&played);
        let first = src / frame;
        let mut tail = [0.0f32; BANDS];
        for &(index, ref b) in self.played_bands.iter().rev() {
            if index >= first {
                continue;
            }
            let age = (first - index) as i32;
            if age as usize > TAIL_BLOCKS {
                break;
            }
            let w = RHO.powi(age);
            for (t, &e) in tail.iter_mut().zip(b) {
                *t += w * e;
            }
        }
        (direct.map(|d| path.gain2 * d), tail.map(|t| path.gain2 * t))
    }

    /// Looks for the echo path in the caller's audio up to `to`; true when one was
    /// found (and adopted).
    fn search(&mut self, to: u64) -> bool {
        if !take_search_ration() {
            // The thread's searches are rationed and none is left this moment: try
            // again on the next frame, with nothing counted as failed.
            return false;
        }
        self.since_search = 0;
        let found = self.best_lag(to, SEARCH, MIN_LAG, MAX_LAG);
        match found {
            // A delay is adopted when two searches in a row agree on it (or it is the
            // path's own): against a steady tone (hold music, a beep) some lag always
            // explains much of any voice, but a different one each time.
            Some((lag, gain, share)) if share >= ADOPT => {
                let agreed = [self.candidate, self.path.map(|p| p.delay)].into_iter().flatten().any(|d| d.abs_diff(lag) <= 2);
                self.candidate = Some(lag);
                if !agreed {
                    self.failed = self.failed.saturating_add(1);
                    return false;
                }
                if self.path.is_none_or(|p| p.delay.abs_diff(lag) > 2) {
                    self.confirmed = 0;
                }
                self.path = Some(Path { delay: lag, gain2: (gain * gain) as f32 });
                self.since_track = 0;
                true
            }
            _ => {
                self.candidate = None;
                self.failed = self.failed.saturating_add(1);
                false
            }
        }
    }

    /// Follows a known path's delay (the far end's clock drifts) and gain.
    fn track(&mut self, to: u64) {
        self.since_track = 0;
        let Some(path) = self.path else { return };
        let lo = path.delay.saturating_sub(16).max(MIN_LAG);
        if let Some((lag, gain, share)) = self.fine(to, SEARCH / 2, lo, path.delay + 16) {
            if share >= ADOPT {
                let gain2 = (gain * gain) as f32;
                self.path = Some(Path { delay: lag, gain2: 0.7 * path.gain2 + 0.3 * gain2 });
            }
        }
    }

    /// The best delay in `lo..=hi` for the `window` samples before `to`: (delay, gain,
    /// share of the heard energy it explains). Candidates come from the generalized
    /// cross-correlation with the phase transform (GCC-PHAT: every frequency weighed
    /// alike, so a voice's steady pitch, strong under 1 kHz, does not make a lag a pitch
    /// period off look as good as the true one); each is then checked at the full rate
    /// by least squares. Before the timeline's start the node played silence.
    fn best_lag(&self, to: u64, window: u64, lo: u64, hi: u64) -> Option<(u64, f64, f64)> {
        let window = window.min(to.saturating_sub(self.heard.start)).min(self.heard.cap as u64);
        if window < 2 * FRAME as u64 || hi < lo || window + hi - lo >= GCC_SIZE as u64 {
            return None;
        }
        let from = to - window;
        let (fwd, inv) = gcc_plans();
        // The FFT buffers (about 160 KB) are the thread's, not each call's.
        thread_local! {
            static SCRATCH: std::cell::RefCell<Option<Scratch>> = const { std::cell::RefCell::new(None) };
        }
        let xc = SCRATCH.with(|cell| {
            let mut cell = cell.borrow_mut();
            let sc = cell.get_or_insert_with(|| Scratch {
                h: fwd.make_input_vec(),
                q: fwd.make_input_vec(),
                hs: fwd.make_output_vec(),
                qs: fwd.make_output_vec(),
                xc: inv.make_output_vec(),
            });
            sc.h.fill(0.0);
            for (i, v) in sc.h.iter_mut().take(window as usize).enumerate() {
                *v = self.heard.at(from + i as u64) as f32;
            }
            // q[m] = played[from - hi + m]: lag L pairs h[n] with q[n + hi - L].
            sc.q.fill(0.0);
            let base = from as i64 - hi as i64;
            for (m, v) in sc.q.iter_mut().take((window + hi - lo) as usize).enumerate() {
                *v = self.played.at_signed(base + m as i64) as f32;
            }
            fwd.process(&mut sc.h, &mut sc.hs).ok()?;
            fwd.process(&mut sc.q, &mut sc.qs).ok()?;
            for (x, hx) in sc.qs.iter_mut().zip(&sc.hs) {
                let c = hx.conj() * *x;
                let m = c.norm();
                *x = if m > 1e-3 { c / m } else { Complex::new(0.0, 0.0) };
            }
            // A real signal's spectrum has real DC and Nyquist bins.
            sc.qs[0].im = 0.0;
            let last = sc.qs.len() - 1;
            sc.qs[last].im = 0.0;
            inv.process(&mut sc.qs, &mut sc.xc).ok()?;
            Some(sc.xc[..=(hi - lo) as usize].to_vec())
        })?;
        let mut top: [(f32, u64); CANDIDATES] = [(f32::MIN, lo); CANDIDATES];
        for shift in 0..=(hi - lo) {
            let x = xc[shift as usize];
            let lag = hi - shift;
            if let Some(near) = top.iter_mut().find(|t| t.1.abs_diff(lag) <= 8 && t.0 > f32::MIN) {
                if x > near.0 {
                    *near = (x, lag);
                }
            } else if x > top[CANDIDATES - 1].0 {
                top[CANDIDATES - 1] = (x, lag);
                top.sort_by(|a, b| b.0.total_cmp(&a.0));
            }
        }
        top.iter()
            .filter(|t| t.0 > f32::MIN)
            .filter_map(|t| self.fine(to, window, t.1.saturating_sub(2).max(lo), (t.1 + 2).min(hi)))
            .max_by(|a, b| a.2.total_cmp(&b.2))
    }

    /// Every lag in `lo..=hi` at the full rate, over the `window` samples before `to`.
    fn fine(&self, to: u64, window: u64, lo: u64, hi: u64) -> Option<(u64, f64, f64)> {
        let window = window.min(to.saturating_sub(self.heard.start));
        let from = to.checked_sub(window)?;
        let h: Vec<f64> = (from..to).map(|p| self.heard.at(p)).collect();
        let eh: f64 = h.iter().map(|v| v * v).sum();
        if eh <= 0.0 {
            return None;
        }
        let mut best: Option<(u64, f64, f64)> = None;
        for lag in lo..=hi {
            let start = from as i64 - lag as i64;
            let (dot, pp) = h.iter().enumerate().fold((0.0, 0.0), |(d, e), (i, a)| {
                let b = self.played.at_signed(start + i as i64);
                (d + a * b, e + b * b)
            });
            let share = explained(dot, pp) / eh;
            if best.is_none_or(|b| share > b.2) {
                best = Some((lag, if pp > 0.0 { dot / pp } else { 0.0 }, share));
            }
        }
        best
    }

    /// The path's delay in samples, once found.
    pub fn delay(&self) -> Option<u64> {
        self.path.map(|p| p.delay)
    }
}

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

    fn at_signed(&self, pos: i64) -> f64 {
        u64::try_from(pos).map_or(0.0, |p| self.at(p))
    }

    fn at(&self, pos: u64) -> f64 {
        if pos < self.start {
            return 0.0;
        }
        self.samples.get((pos - self.start) as usize).map_or(0.0, |&v| v as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn speech(seed: u32, n: usize) -> Vec<i16> {
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

    #[test]
    fn a_delay_is_adopted_when_two_searches_agree_and_then_the_echo_is_echo() {
        let bot = speech(5, 24000);
        let delay = 2000;
        let mut g = EchoGuard::default();
        let noise = [0.1; BANDS];
        let mut verdicts = Vec::new();
        for k in 0..150u64 {
            let at = k as usize * 160;
            g.on_played(k * 160, &bot[at..at + 160]);
            let heard: Vec<i16> = (at..at + 160).map(|n| if n >= delay { bot[n - delay] / 2 } else { 0 }).collect();
            g.on_heard(k * 160, &heard);
            if k >= 20 && k % 4 == 0 {
                let from = k * 160 + 160 - FRAME as u64;
                let bands = g.heard_bands(from);
                if bands.iter().sum::<f32>() > 1000.0 {
                    verdicts.push(g.judge(from, &bands, &noise));
                }
            }
        }
        assert_eq!(verdicts[0], Verdict::NotEcho, "one search alone adopts nothing");
        assert_eq!(g.delay(), Some(delay as u64));
        let echo = verdicts.iter().filter(|&&v| v == Verdict::Echo).count();
        assert!(echo + 1 >= verdicts.len(), "{verdicts:?}");
    }

    #[test]
    fn rationed_searches_wait_for_a_grant_and_then_find_the_path() {
        // A thread of its own: the ration is the thread's.
        std::thread::spawn(|| {
            let bot = speech(5, 24000);
            let delay = 2000;
            let noise = [0.1; BANDS];
            let mut g = EchoGuard::default();
            ration_searches(0, 2);
            let mut judged = 0;
            let mut feed = |g: &mut EchoGuard, k: u64| {
                let at = k as usize * 160;
                g.on_played(k * 160, &bot[at..at + 160]);
                let heard: Vec<i16> = (at..at + 160).map(|n| if n >= delay { bot[n - delay] / 2 } else { 0 }).collect();
                g.on_heard(k * 160, &heard);
                let from = k * 160 + 160 - FRAME as u64;
                let bands = g.heard_bands(from);
                if k >= 20 && bands.iter().sum::<f32>() > 1000.0 {
                    judged += 1;
                    g.judge(from, &bands, &noise)
                } else {
                    Verdict::NothingPlayed
                }
            };
            for k in 0..80 {
                assert_ne!(feed(&mut g, k), Verdict::Echo);
            }
            assert_eq!(g.delay(), None, "no grant, no search: nothing adopted");
            // Two searches granted, and the two agree.
            ration_searches(2, 2);
            let verdicts: Vec<Verdict> = (80..150).map(|k| feed(&mut g, k)).collect();
            assert_eq!(g.delay(), Some(delay as u64));
            assert!(verdicts.iter().filter(|&&v| v == Verdict::Echo).count() > 40, "{verdicts:?}");
            assert!(judged > 100);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_search_finds_the_delay() {
        let bot = speech(3, 16000);
        for delay in [MIN_LAG as usize, 1478, 2400, 4000] {
            let mut g = EchoGuard::default();
            for k in 0..100 {
                g.on_played(k * 160, &bot[k as usize * 160..(k as usize + 1) * 160]);
                let heard: Vec<i16> = (0..160)
                    .map(|i| {
                        let n = k as usize * 160 + i;
                        if n >= delay {
                            bot[n - delay] / 2
                        } else {
                            0
                        }
                    })
                    .collect();
                g.on_heard(k * 160, &heard);
            }
            let found = g.best_lag(16000, SEARCH, MIN_LAG, MAX_LAG);
            assert_eq!(found.map(|f| f.0), Some(delay as u64), "{found:?}");
        }
    }
}
