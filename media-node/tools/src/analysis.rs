//! Measures used by the demo, the tests and the load tool to say whether audio that
//! came out matches audio that went in.

/// Normalised cross-correlation of `b` against `a`, best over lags 0..=max_lag
/// (b delayed relative to a). Returns (correlation, lag).
pub fn best_correlation(a: &[i16], b: &[i16], max_lag: usize) -> (f64, usize) {
    let mut best = (0.0, 0);
    for lag in 0..=max_lag.min(b.len()) {
        let n = a.len().min(b.len() - lag);
        if n == 0 {
            break;
        }
        let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
        for i in 0..n {
            let x = a[i] as f64;
            let y = b[i + lag] as f64;
            ab += x * y;
            aa += x * x;
            bb += y * y;
        }
        if aa > 0.0 && bb > 0.0 {
            let c = ab / (aa.sqrt() * bb.sqrt());
            if c > best.0 {
                best = (c, lag);
            }
        }
    }
    best
}

/// How well `b` holds `a` when each part may sit up to `tolerance` samples off the
/// place the whole fits best: `a` is cut into `segment`-long parts, each part's best
/// correlation within ±tolerance of the overall lag is taken, and the parts are
/// averaged weighted by their energy. A recording placed by arrival time may move a
/// few milliseconds when the node corrects for a first packet that came late; one
/// lag for the whole would count that as damage, while a missing or misplaced part
/// still shows. Returns (correlation, overall lag).
pub fn aligned_correlation(a: &[i16], b: &[i16], max_lag: usize, segment: usize, tolerance: usize) -> (f64, usize) {
    let segment = segment.max(1);
    let (_, lag) = best_correlation(a, b, max_lag);
    let (mut weighted, mut energy) = (0.0, 0.0);
    for (k, part) in a.chunks(segment).enumerate() {
        let e: f64 = part.iter().map(|&s| (s as f64).powi(2)).sum();
        if e == 0.0 {
            continue;
        }
        let from = (lag + k * segment).saturating_sub(tolerance).min(b.len());
        let lead = lag + k * segment - from;
        let (c, _) = best_correlation(part, &b[from..], lead + tolerance);
        weighted += c * e;
        energy += e;
    }
    (if energy > 0.0 { weighted / energy } else { 0.0 }, lag)
}

pub fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// Speech-like test audio: voiced "syllables" (a glottal-pulse-rich harmonic series
/// with a moving pitch and two formant-like peaks) separated by pauses. Deterministic,
/// so tests can compare what came out with what went in.
pub fn synth_speech(rate: u32, seconds: f64, seed: u32) -> Vec<i16> {
    let n = (rate as f64 * seconds) as usize;
    let mut out = vec![0i16; n];
    let syllable = (rate as f64 * 0.22) as usize;
    let pause = (rate as f64 * 0.09) as usize;
    let mut start = 0;
    let mut k = seed as usize;
    while start + syllable < n {
        let pitch = 100.0 + ((k * 37) % 80) as f64;
        let f1 = 400.0 + ((k * 53) % 500) as f64;
        let f2 = 1100.0 + ((k * 71) % 1200) as f64;
        for i in 0..syllable {
            let t = i as f64 / rate as f64;
            let env = (std::f64::consts::PI * i as f64 / syllable as f64).sin();
            let f0 = pitch * (1.0 + 0.1 * (t * 6.0).sin());
            let mut v = 0.0;
            for h in 1..=20 {
                let f = f0 * h as f64;
                if f > rate as f64 * 0.45 {
                    break;
                }
                let g = 1.0 / (1.0 + ((f - f1) / 150.0).powi(2)) + 0.6 / (1.0 + ((f - f2) / 200.0).powi(2)) + 0.05;
                v += g * (2.0 * std::f64::consts::PI * f * t).sin();
            }
            out[start + i] = (v * env * 4000.0).clamp(-30000.0, 30000.0) as i16;
        }
        start += syllable + pause;
        k += 1;
    }
    out
}

/// A bot-like prompt: a short melody of pure-ish tones, so it is easy to tell from speech.
pub fn synth_prompt(rate: u32, seconds: f64) -> Vec<i16> {
    let notes = [523.25, 659.25, 783.99, 1046.5, 783.99, 659.25];
    let n = (rate as f64 * seconds) as usize;
    let per = n / notes.len();
    (0..n)
        .map(|i| {
            let f = notes[(i / per.max(1)).min(notes.len() - 1)];
            let t = i as f64 / rate as f64;
            let env = ((i % per.max(1)) as f64 / per.max(1) as f64 * std::f64::consts::PI).sin().powf(0.3);
            (env * 9000.0 * ((2.0 * std::f64::consts::PI * f * t).sin() + 0.3 * (4.0 * std::f64::consts::PI * f * t).sin())) as i16
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_finds_the_lag() {
        let a = synth_speech(8000, 1.0, 1);
        let mut b = vec![0i16; 37];
        b.extend_from_slice(&a);
        let (c, lag) = best_correlation(&a, &b, 100);
        assert!(c > 0.999);
        assert_eq!(lag, 37);
        let other = synth_prompt(8000, 1.0);
        assert!(best_correlation(&a, &other, 100).0 < 0.5);
    }

    /// `speech` laid at `lag`, its first `head` samples `shift` later than the rest
    /// (where a node's wall-clock correction after a late first packet leaves them).
    fn realigned(speech: &[i16], lag: usize, head: usize, shift: usize) -> Vec<i16> {
        let mut rec = vec![0i16; lag + speech.len() + shift];
        for (i, &s) in speech.iter().enumerate() {
            let at = lag + i + if i < head { shift } else { 0 };
            rec[at] = rec[at].saturating_add(s);
        }
        rec
    }

    #[test]
    fn aligned_correlation_forgives_a_small_move_not_damage() {
        let speech = synth_speech(8000, 2.0, 9);
        // The first 180 ms placed 10 ms late: one lag for the whole scores that poorly...
        let moved = realigned(&speech, 300, 1440, 78);
        assert!(best_correlation(&speech, &moved, 8000).0 < 0.85);
        // ...while every part is there, within 20 ms of its place.
        let (c, lag) = aligned_correlation(&speech, &moved, 8000, 1600, 160);
        assert!(c > 0.97, "{c}");
        assert_eq!(lag, 300);
        // A missing 300 ms, or a part 60 ms out of place, still shows.
        let mut holed = realigned(&speech, 300, 0, 0);
        holed[300 + 4000..300 + 6400].fill(0);
        assert!(aligned_correlation(&speech, &holed, 8000, 1600, 160).0 < 0.9);
        let far = realigned(&speech, 300, 6400, 480);
        assert!(aligned_correlation(&speech, &far, 8000, 1600, 160).0 < 0.9);
    }
}
