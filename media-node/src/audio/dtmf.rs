//! DTMF as in-band tones at the call's rate, for far ends that did not negotiate
//! RFC 4733: each digit's two sines (-10 dBFS each, no twist), then a pause.

use crate::audio::CALL_RATE;
use crate::core::analysis::inband_dtmf::frequencies;

/// The digits (already checked to be DTMF keys; others are skipped) as PCM.
pub fn tones(digits: &str, duration_ms: u32, gap_ms: u32) -> Vec<i16> {
    let rate = CALL_RATE as f64;
    let n = (CALL_RATE * duration_ms / 1000) as usize;
    let gap = (CALL_RATE * gap_ms / 1000) as usize;
    let amp = 32767.0 * 10f64.powf(-10.0 / 20.0);
    let mut out = Vec::new();
    for (low, high) in digits.chars().filter_map(frequencies) {
        out.extend((0..n).map(|i| {
            let t = i as f64 / rate;
            (amp * 0.5 * ((std::f64::consts::TAU * low * t).sin() + (std::f64::consts::TAU * high * t).sin())) as i16
        }));
        out.extend(std::iter::repeat_n(0, gap));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::analysis::inband_dtmf::{ToneDetector, ToneDigit};

    #[test]
    fn the_tones_made_are_the_digits_found() {
        let pcm = tones("0123456789*#ABCD", 80, 60);
        let mut d = ToneDetector::default();
        let mut out = Vec::new();
        d.push(0, &pcm, &mut out);
        d.push(pcm.len() as u64, &[0; 800], &mut out);
        let found: String = out.iter().filter_map(|e| if let ToneDigit::Ended { digit, .. } = e { Some(*digit) } else { None }).collect();
        assert_eq!(found, "0123456789*#ABCD");
    }
}
