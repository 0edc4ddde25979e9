//! 20 ms send cadence that does not drift: frame k is due at start + k * 20 ms, computed
//! from the start every time, never as "last + 20 ms", so timer lateness never adds up.

use std::time::{Duration, Instant};

pub const FRAME: Duration = Duration::from_millis(20);
/// After a stall longer than this many frames the pacer skips ahead instead of bursting.
pub const MAX_BURST: u64 = 5;

#[derive(Debug)]
pub struct Pacer {
    start: Instant,
    next: u64,
    pub skipped: u64,
}

impl Pacer {
    pub fn new(start: Instant) -> Pacer {
        Pacer { start, next: 0, skipped: 0 }
    }

    pub fn deadline(&self, index: u64) -> Instant {
        self.start + Duration::from_micros(index * FRAME.as_micros() as u64)
    }

    /// When the next frame is due.
    pub fn next_deadline(&self) -> Instant {
        self.deadline(self.next)
    }

    /// Index of the next frame to be produced.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// Frame indices due at `now`. A short delay is caught up (the frames go out
    /// back to back); a long stall is skipped so the far end is not flooded.
    pub fn due(&mut self, now: Instant) -> std::ops::Range<u64> {
        if now < self.next_deadline() {
            return self.next..self.next;
        }
        let current = (now.duration_since(self.start).as_micros() / FRAME.as_micros()) as u64;
        if current + 1 - self.next > MAX_BURST {
            let first = current + 1 - MAX_BURST;
            self.skipped += first - self.next;
            self.next = first;
        }
        let range = self.next..current + 1;
        self.next = current + 1;
        range
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hour_of_late_ticks_does_not_drift() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        let mut frames = 0u64;
        // Every wake-up is 0..3 ms late, as a busy timer would be.
        for k in 0..180_000u64 {
            let late = Duration::from_micros((k * 7919) % 3000);
            let now = p.next_deadline() + late;
            let due = p.due(now);
            frames += due.end - due.start;
            assert!(due.end - due.start <= 1, "no bursts for small lateness");
        }
        assert_eq!(frames, 180_000);
        // Frame 180000 is due exactly one hour after the start.
        assert_eq!(p.next_deadline().duration_since(t0), Duration::from_secs(3600));
        assert_eq!(p.skipped, 0);
    }

    #[test]
    fn short_delay_catches_up_long_stall_skips() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        assert_eq!(p.due(t0), 0..1);
        assert_eq!(p.due(t0 + Duration::from_millis(65)), 1..4);
        assert_eq!(p.due(t0 + Duration::from_millis(70)), 4..4);
        let r = p.due(t0 + Duration::from_millis(1000));
        assert_eq!(r.end - r.start, MAX_BURST);
        assert_eq!(r.end, 51);
        assert_eq!(p.skipped, 51 - 4 - MAX_BURST);
    }
}
