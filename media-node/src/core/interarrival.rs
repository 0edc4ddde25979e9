//! RFC 3550 §6.4.1 interarrival jitter of the caller's RTP: how much the spacing of
//! arrivals differs from the spacing of their timestamps, smoothed with gain 1/16. It
//! is what an RTCP receiver report would carry, and what the dashboards plot.

use std::time::Instant;

/// Samples per second of the RTP clock of G.711.
const CLOCK: f64 = 8000.0;

#[derive(Debug, Default, Clone)]
pub struct Interarrival {
    last: Option<(Instant, u32, u32)>,
    /// In RTP timestamp units.
    j: f64,
}

impl Interarrival {
    pub fn on_packet(&mut self, now: Instant, ssrc: u32, timestamp: u32) {
        if let Some((t0, ts0, s0)) = self.last {
            if s0 == ssrc {
                let arrival = now.saturating_duration_since(t0).as_secs_f64() * CLOCK;
                let sent = timestamp.wrapping_sub(ts0) as i32 as f64;
                self.j += ((arrival - sent).abs() - self.j) / 16.0;
            }
        }
        self.last = Some((now, timestamp, ssrc));
    }

    pub fn seconds(&self) -> f64 {
        self.j / CLOCK
    }

    pub fn has_data(&self) -> bool {
        self.last.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn steady_arrivals_have_no_jitter_and_alternating_ones_do() {
        let t0 = Instant::now();
        let mut a = Interarrival::default();
        for k in 0..100u32 {
            a.on_packet(t0 + Duration::from_millis(20 * k as u64), 1, k * 160);
        }
        assert!(a.seconds() < 1e-9);
        let mut b = Interarrival::default();
        for k in 0..400u32 {
            // Every other packet 4 ms late: |D| alternates 4 ms, so J converges to 4 ms.
            let late = if k % 2 == 1 { 4 } else { 0 };
            b.on_packet(t0 + Duration::from_millis(20 * k as u64 + late), 1, k * 160);
        }
        assert!((b.seconds() - 0.004).abs() < 0.0005, "{}", b.seconds());
    }

    #[test]
    fn a_new_ssrc_restarts_the_reference() {
        let t0 = Instant::now();
        let mut a = Interarrival::default();
        a.on_packet(t0, 1, 0);
        a.on_packet(t0 + Duration::from_millis(20), 2, 999_999);
        assert_eq!(a.seconds(), 0.0);
    }
}
