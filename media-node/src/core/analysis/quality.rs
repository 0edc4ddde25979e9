//! A call's quality as the E-model (ITU-T G.107) estimates it from what the node
//! measures: packet loss, jitter (which the playout delay must cover) and delay. The
//! transmission rating R gives a MOS estimate; G.711 with no equipment impairment.

/// What was measured over one period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    /// Share of the caller's audio that never came (0..1).
    pub loss: f64,
    /// RFC 3550 interarrival jitter, ms.
    pub jitter_ms: f64,
    /// One-way delay the node adds or sees (playout hold, packetisation), ms.
    pub delay_ms: f64,
}

/// G.711's packet-loss robustness without packet-loss concealment (G.113 Appendix I):
/// the node fills lost audio with silence.
const BPL: f64 = 4.3;

/// The E-model's R (0..100) for G.711 (Ie = 0), random loss (BurstR = 1).
pub fn r_factor(m: Measured) -> f64 {
    let ppl = (m.loss * 100.0).clamp(0.0, 100.0);
    // Jitter the playout buffer must absorb counts as delay (twice the RFC 3550
    // estimate is what a buffer sized for it holds).
    let d = m.delay_ms + 2.0 * m.jitter_ms;
    let id = 0.024 * d + if d > 177.3 { 0.11 * (d - 177.3) } else { 0.0 };
    let ie_eff = 95.0 * ppl / (ppl + BPL);
    (93.2 - id - ie_eff).clamp(0.0, 100.0)
}

/// G.107 Annex B: MOS (1..4.5) from R.
pub fn mos(r: f64) -> f64 {
    if r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        // The cubic dips just under 1 for R below about 6.5.
        (1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6).max(1.0)
    }
}

/// Σ x² of a block, what levels are computed from.
pub fn sum_squares(pcm: &[i16]) -> f64 {
    pcm.iter().map(|&v| (v as f64) * (v as f64)).sum()
}

/// Level of a block's mean square as dBFS (-100 for silence).
pub fn dbfs(sum_squares: f64, samples: u64) -> f64 {
    if samples == 0 || sum_squares <= 0.0 {
        return -100.0;
    }
    (10.0 * (sum_squares / samples as f64 / (32768.0 * 32768.0)).log10()).max(-100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g107_reference_points() {
        // No loss, little delay: the G.711 default R of 93.2 less the delay, MOS ~4.4.
        let clean = r_factor(Measured { loss: 0.0, jitter_ms: 0.0, delay_ms: 60.0 });
        assert!((clean - (93.2 - 0.024 * 60.0)).abs() < 1e-9);
        assert!((mos(93.2) - 4.41).abs() < 0.01, "{}", mos(93.2));
        // 1 % random loss without concealment costs about 18 R points (G.113).
        let lossy = r_factor(Measured { loss: 0.01, jitter_ms: 0.0, delay_ms: 60.0 });
        assert!((clean - lossy - 17.9).abs() < 0.2, "{}", clean - lossy);
        // Long delay: past 177.3 ms the second term counts.
        let far = r_factor(Measured { loss: 0.0, jitter_ms: 0.0, delay_ms: 300.0 });
        assert!((far - (93.2 - 0.024 * 300.0 - 0.11 * 122.7)).abs() < 1e-9);
        assert_eq!(mos(-5.0), 1.0);
        assert_eq!(mos(120.0), 4.5);
        assert!(mos(50.0) > 2.5 && mos(50.0) < 2.7);
        assert_eq!(dbfs(0.0, 100), -100.0);
        assert!((dbfs(32768.0f64.powi(2) * 100.0, 100)).abs() < 1e-9);
    }
}
