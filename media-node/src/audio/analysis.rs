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
}
