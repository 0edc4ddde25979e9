//! The power of one frequency in a block of samples (Goertzel's algorithm): cheaper than
//! an FFT when only a few frequencies matter, as for tones (DTMF, a test's 6 kHz probe).

/// Power of `x` (sampled at `rate`) at `freq`, normalised by the block's length squared,
/// so blocks of different lengths compare: a full-scale sine of amplitude A gives A²/4.
pub fn power_at(x: &[i16], rate: u32, freq: f64) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    let w = 2.0 * std::f64::consts::PI * freq / rate as f64;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &v in x {
        let s = v as f64 + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (x.len() as f64).powi(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tone_shows_at_its_frequency_and_not_elsewhere() {
        let tone: Vec<i16> =
            (0..1600).map(|i| (8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / 16000.0).sin()) as i16).collect();
        let at = power_at(&tone, 16000, 1000.0);
        assert!((at - 8000.0f64.powi(2) / 4.0).abs() < 0.02 * at, "A²/4: {at}");
        assert!(power_at(&tone, 16000, 3000.0) < at * 1e-3);
        assert_eq!(power_at(&[], 16000, 1000.0), 0.0);
    }
}
