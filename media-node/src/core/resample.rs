//! Band-limited sample-rate conversion between any two integer rates.
//!
//! A rational polyphase FIR (upsample by L, Kaiser-windowed sinc low-pass, decimate by M),
//! streaming: state carries across calls, so chunked input gives the same output as one
//! block, and the cumulative output count is exactly ceil(inputs * L / M): 160 samples at
//! 8 kHz become 320 at 16 kHz, never 318. Written here rather than taken from a crate
//! because the engine needs exact per-chunk counts with no internal block latency, on
//! tiny 20 ms chunks, with one small state per listener.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Filter taps per polyphase branch for a pure interpolation; decimation widens it.
const BASE_TAPS: usize = 16;
/// Kaiser beta: ~70 dB stop-band, enough that G.711's own noise floor dominates.
const KAISER_BETA: f64 = 7.0;
/// Pass band as a fraction of the lower Nyquist frequency.
const ROLLOFF: f64 = 0.92;

struct Filter {
    up: usize,
    down: usize,
    taps: usize,
    /// Phase-major and time-reversed: coeffs[phase * taps + k] multiplies the k-th
    /// oldest of the last `taps` inputs, so the dot product runs forward over both.
    coeffs: Vec<f32>,
    /// Group delay in output samples.
    delay_out: usize,
}

/// Coefficients are shared by every resampler of the same rate pair.
fn filter_for(up: usize, down: usize) -> Arc<Filter> {
    type Filters = HashMap<(usize, usize), Arc<Filter>>;
    static CACHE: OnceLock<Mutex<Filters>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = crate::sync::lock(cache);
    cache.entry((up, down)).or_insert_with(|| Arc::new(design(up, down))).clone()
}

fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let half = x / 2.0;
    for k in 1..50 {
        term *= (half / k as f64) * (half / k as f64);
        sum += term;
        if term < sum * 1e-12 {
            break;
        }
    }
    sum
}

fn design(up: usize, down: usize) -> Filter {
    let taps = BASE_TAPS * down.div_ceil(up).max(1);
    let n = up * taps;
    // Cut-off in cycles per sample of the upsampled stream.
    let cutoff = ROLLOFF * 0.5 / up.max(down) as f64;
    // The centre sits on a multiple of `down`, so the group delay is a whole number
    // of output samples and `convert` can remove it exactly.
    let centre = ((n - 1) / 2 / down) * down;
    let half_width = centre.max(1) as f64;
    let i0_beta = bessel_i0(KAISER_BETA);
    let mut proto = vec![0f64; n];
    for (k, c) in proto.iter_mut().enumerate() {
        let t = k as f64 - centre as f64;
        let r = t / half_width;
        if r.abs() > 1.0 {
            continue;
        }
        let sinc = if t == 0.0 { 2.0 * cutoff } else { (2.0 * std::f64::consts::PI * cutoff * t).sin() / (std::f64::consts::PI * t) };
        let window = bessel_i0(KAISER_BETA * (1.0 - r * r).sqrt()) / i0_beta;
        *c = sinc * window;
    }
    // Normalise each phase to unity DC gain so a constant stays constant.
    let mut coeffs = vec![0f32; n];
    for phase in 0..up {
        let sum: f64 = (0..taps).map(|j| proto[phase + j * up]).sum();
        for j in 0..taps {
            coeffs[phase * taps + (taps - 1 - j)] = (proto[phase + j * up] / sum) as f32;
        }
    }
    Filter { up, down, taps, coeffs, delay_out: centre / down }
}

/// Dot product in eight independent lanes (taps are a multiple of 8), which the
/// compiler turns into SIMD; a single running sum would pin it to one scalar chain.
#[inline]
fn dot(c: &[f32], x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    for (cc, xx) in c.chunks_exact(8).zip(x.chunks_exact(8)) {
        for k in 0..8 {
            lanes[k] += cc[k] * xx[k];
        }
    }
    let tail: f32 = c.chunks_exact(8).remainder().iter().zip(x.chunks_exact(8).remainder()).map(|(a, b)| a * b).sum();
    lanes.iter().sum::<f32>() + tail
}

/// Round half away from zero; `as` saturates to the i16 range.
#[inline]
fn round_to_i16(x: f32) -> i16 {
    (x + 0.5f32.copysign(x)) as i16
}

/// Integer upsampling (the listener's 8 -> 16 kHz): every input from `first` on yields
/// one output per phase. Each phase is run as a FIR over the whole chunk, tap by tap
/// across the outputs, so the compiler vectorises over outputs, with no horizontal
/// sums and no phase stepping per sample. `acc` is scratch kept by the caller.
/// Returns how many inputs were consumed.
fn interpolate(f: &Filter, buf: &[f32], first: usize, acc: &mut Vec<f32>, out: &mut Vec<i16>) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has just been found to support AVX2.
        return unsafe { interpolate_avx2(f, buf, first, acc, out) };
    }
    interpolate_body(f, buf, first, acc, out)
}

/// The same loops compiled for AVX2: eight outputs per instruction instead of SSE2's
/// four (the build targets baseline x86-64, so every CPU can run the node). No FMA:
/// each product is still rounded before the add, so the output is bit-identical to
/// the baseline path's and does not depend on the machine.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn interpolate_avx2(f: &Filter, buf: &[f32], first: usize, acc: &mut Vec<f32>, out: &mut Vec<i16>) -> usize {
    interpolate_body(f, buf, first, acc, out)
}

#[inline(always)]
fn interpolate_body(f: &Filter, buf: &[f32], first: usize, acc: &mut Vec<f32>, out: &mut Vec<i16>) -> usize {
    let taps = f.taps;
    let n = buf.len().saturating_sub(first);
    if n == 0 {
        return 0;
    }
    acc.clear();
    acc.resize(f.up * n, 0.0);
    let base = first + 1 - taps;
    for (phase, acc) in acc.chunks_exact_mut(n).enumerate() {
        for (k, &c) in f.coeffs[phase * taps..(phase + 1) * taps].iter().enumerate() {
            for (a, &x) in acc.iter_mut().zip(&buf[base + k..base + k + n]) {
                *a += c * x;
            }
        }
    }
    // Interleave the phases into the output.
    let start = out.len();
    out.resize(start + f.up * n, 0);
    for (phase, acc) in acc.chunks_exact(n).enumerate() {
        for (o, &a) in out[start + phase..].iter_mut().step_by(f.up).zip(acc) {
            *o = round_to_i16(a);
        }
    }
    n
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

pub struct Resampler {
    from: u32,
    to: u32,
    filter: Option<Arc<Filter>>,
    /// Recent input, oldest first; starts with taps-1 zeros of history.
    buf: Vec<f32>,
    /// Position of the next output in upsampled units, relative to buf[0].
    next_up: usize,
    /// Per-phase sums of one chunk (integer upsampling only), kept to reuse.
    acc: Vec<f32>,
}

impl Resampler {
    /// Panics only on a zero rate, which callers validate first.
    pub fn new(from: u32, to: u32) -> Resampler {
        assert!(from > 0 && to > 0, "sample rates must be positive");
        if from == to {
            return Resampler { from, to, filter: None, buf: Vec::new(), next_up: 0, acc: Vec::new() };
        }
        let g = gcd(from as usize, to as usize);
        let filter = filter_for(to as usize / g, from as usize / g);
        let history = filter.taps - 1;
        Resampler { from, to, buf: vec![0.0; history], next_up: history * filter.up, filter: Some(filter), acc: Vec::new() }
    }

    /// Group delay of the filter, in output samples.
    pub fn delay_out(&self) -> usize {
        self.filter.as_ref().map_or(0, |f| f.delay_out)
    }

    /// True when input and output rates are the same (samples pass unchanged).
    pub fn is_identity(&self) -> bool {
        self.filter.is_none()
    }

    pub fn rates(&self) -> (u32, u32) {
        (self.from, self.to)
    }

    /// Converts a chunk, appending to `out`.
    pub fn process_into(&mut self, input: &[i16], out: &mut Vec<i16>) {
        let Some(f) = &self.filter else {
            out.extend_from_slice(input);
            return;
        };
        self.buf.extend(input.iter().map(|&s| s as f32));
        out.reserve(input.len() * f.up / f.down + 1);
        let taps = f.taps;
        if f.down == 1 {
            // With down == 1 a chunk always ends on phase 0 of the next input.
            let first = self.next_up / f.up;
            let n = interpolate(f, &self.buf, first, &mut self.acc, out);
            self.next_up = (first + n) * f.up;
        } else {
            // The output position is kept as (input index, phase) and stepped by adding:
            // two divisions per output sample were a quarter of the cost (hot_paths
            // bench: 88 -> 65 µs per call-second for 8 -> 16 kHz).
            let mut i = self.next_up / f.up;
            let mut phase = self.next_up % f.up;
            while i < self.buf.len() {
                let c = &f.coeffs[phase * taps..(phase + 1) * taps];
                let x = &self.buf[i + 1 - taps..=i];
                out.push(round_to_i16(dot(c, x)));
                phase += f.down;
                while phase >= f.up {
                    phase -= f.up;
                    i += 1;
                }
            }
            self.next_up = i * f.up + phase;
        }
        let keep_from = (self.next_up / f.up).saturating_sub(taps - 1).min(self.buf.len());
        self.buf.drain(..keep_from);
        self.next_up -= keep_from * f.up;
    }

    pub fn process(&mut self, input: &[i16]) -> Vec<i16> {
        let mut out = Vec::with_capacity(input.len() * self.to as usize / self.from as usize + 2);
        self.process_into(input, &mut out);
        out
    }
}

/// One-shot conversion of a whole clip (prompts): the filter's group delay is removed
/// and its tail flushed, so the clip starts on time and keeps its full length.
pub fn convert(input: &[i16], from: u32, to: u32) -> Vec<i16> {
    let mut clip = ClipResampler::new(from, to);
    clip.push(input);
    clip.finish()
}

/// `convert` fed a piece at a time, as a decoder produces them: the same output as
/// `convert` of the whole, while holding only the output (a prompt decoded at 192 kHz
/// costs its 8 or 16 kHz copy, not its source).
pub struct ClipResampler {
    r: Resampler,
    from: u32,
    to: u32,
    fed: u64,
    out: Vec<i16>,
}

impl ClipResampler {
    pub fn new(from: u32, to: u32) -> ClipResampler {
        ClipResampler { r: Resampler::new(from, to), from, to, fed: 0, out: Vec::new() }
    }

    pub fn push(&mut self, input: &[i16]) {
        self.fed += input.len() as u64;
        self.r.process_into(input, &mut self.out);
    }

    /// Input samples taken so far (at the source rate).
    pub fn fed(&self) -> u64 {
        self.fed
    }

    pub fn finish(mut self) -> Vec<i16> {
        let delay = self.r.delay_out();
        let want = (self.fed * self.to as u64).div_ceil(self.from as u64) as usize;
        let flush = vec![0i16; (delay * self.from as usize).div_ceil(self.to as usize) + 1];
        self.r.process_into(&flush, &mut self.out);
        self.out.drain(..delay.min(self.out.len()));
        self.out.truncate(want);
        self.out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn tone(freq: f64, rate: u32, n: usize, amp: f64) -> Vec<i16> {
        (0..n).map(|i| (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin()) as i16).collect()
    }

    pub fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
    }

    #[test]
    fn a_clip_fed_in_pieces_converts_as_the_whole() {
        let x = tone(440.0, 44_100, 44_100, 8000.0);
        let whole = convert(&x, 44_100, 8000);
        let mut clip = ClipResampler::new(44_100, 8000);
        for piece in x.chunks(1153) {
            clip.push(piece);
        }
        assert_eq!(clip.fed(), 44_100);
        assert_eq!(clip.finish(), whole);
    }

    #[test]
    fn twenty_ms_at_8k_is_exactly_320_at_16k() {
        let mut r = Resampler::new(8000, 16000);
        for _ in 0..50 {
            assert_eq!(r.process(&[100; 160]).len(), 320);
        }
        let mut down = Resampler::new(16000, 8000);
        for _ in 0..50 {
            assert_eq!(down.process(&[100; 320]).len(), 160);
        }
    }

    #[test]
    fn cumulative_count_is_exact_for_awkward_ratios() {
        let mut r = Resampler::new(44100, 8000);
        let mut total = 0;
        for chunk in [441, 1000, 7, 4410, 3] {
            total += r.process(&vec![0; chunk]).len();
        }
        let inputs: usize = 441 + 1000 + 7 + 4410 + 3;
        assert_eq!(total, (inputs * 8000).div_ceil(44100));
    }

    #[test]
    fn chunked_equals_whole() {
        let x = tone(700.0, 8000, 1600, 8000.0);
        let whole = Resampler::new(8000, 24000).process(&x);
        let mut r = Resampler::new(8000, 24000);
        let mut chunked = Vec::new();
        for c in x.chunks(37) {
            r.process_into(c, &mut chunked);
        }
        assert_eq!(whole, chunked);
    }

    #[test]
    fn pass_band_tone_survives_up_and_down() {
        for (from, to) in [(8000, 16000), (16000, 8000), (8000, 48000), (44100, 8000), (22050, 8000)] {
            let x = tone(1000.0, from, from as usize, 10000.0);
            let y = convert(&x, from, to);
            let expected = tone(1000.0, to, y.len(), 10000.0);
            // Compare after the filter's settling, allowing for its group delay by
            // searching the best small lag.
            let skip = y.len() / 10;
            let best = (0..64)
                .map(|lag| {
                    let err: Vec<i16> = (skip..y.len() - 64).map(|i| y[i + lag].saturating_sub(expected[i])).collect();
                    rms(&err)
                })
                .fold(f64::MAX, f64::min);
            assert!(best < 10000.0 / 1.414 * 0.05, "{from}->{to}: residual rms {best}");
        }
    }

    #[test]
    fn stop_band_tone_is_removed_when_decimating() {
        // 6 kHz cannot exist at 8 kHz (Nyquist 4 kHz): a naive decimator aliases it to 2 kHz.
        let x = tone(6000.0, 16000, 16000, 10000.0);
        let y = convert(&x, 16000, 8000);
        let level = rms(&y[800..]);
        assert!(level < 10000.0 / 1.414 * 0.01, "alias leaked at rms {level}");
    }

    #[test]
    fn convert_keeps_clip_aligned_and_full_length() {
        let mut x = vec![0i16; 800];
        x[400] = 20000; // an impulse at 50 ms
        let y = convert(&x, 8000, 16000);
        assert_eq!(y.len(), 1600);
        let peak = y.iter().enumerate().max_by_key(|(_, v)| v.abs()).unwrap().0;
        assert!((799..=801).contains(&peak), "impulse moved to {peak}");
    }

    #[test]
    fn integer_upsampling_is_the_polyphase_filter() {
        // The interpolation path against the filter's definition, computed directly:
        // output i*up+p is phase p's taps over the last `taps` inputs up to i.
        for to in [16000u32, 24000, 48000] {
            let up = (to / 8000) as usize;
            let f = filter_for(up, 1);
            let x = tone(1200.0, 8000, 1000, 9000.0);
            let mut padded = vec![0f32; f.taps - 1];
            padded.extend(x.iter().map(|&s| s as f32));
            let mut r = Resampler::new(8000, to);
            let mut y = Vec::new();
            for c in x.chunks(73) {
                r.process_into(c, &mut y);
            }
            assert_eq!(y.len(), x.len() * up);
            for (i, pair) in y.chunks(up).enumerate() {
                for (p, &got) in pair.iter().enumerate() {
                    let want = dot(&f.coeffs[p * f.taps..(p + 1) * f.taps], &padded[i..i + f.taps]).round();
                    assert!((got as f32 - want).abs() <= 1.0, "{to}: output {i}/{p}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn same_rate_is_identity() {
        let x = tone(440.0, 16000, 320, 5000.0);
        assert_eq!(Resampler::new(16000, 16000).process(&x), x);
    }

    #[test]
    fn the_avx2_path_gives_the_baseline_paths_samples_exactly() {
        // A recording or a listener must not depend on which CPU the node ran on.
        let f = filter_for(2, 1);
        let x: Vec<f32> = tone(1234.0, 8000, 8000, 12000.0).iter().map(|&s| s as f32).collect();
        let (mut acc, mut base, mut chosen) = (Vec::new(), Vec::new(), Vec::new());
        let first = f.taps - 1;
        interpolate_body(&f, &x, first, &mut acc, &mut base);
        interpolate(&f, &x, first, &mut acc, &mut chosen);
        assert_eq!(base.len(), 2 * (x.len() - first));
        assert_eq!(base, chosen);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            let mut wide = Vec::new();
            // SAFETY: AVX2 is present (checked just above).
            unsafe { interpolate_avx2(&f, &x, first, &mut acc, &mut wide) };
            assert_eq!(base, wide);
        }
    }
}
