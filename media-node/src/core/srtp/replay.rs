//! The SRTP packet index (RFC 3711 §3.3.1, Appendix A) and the replay window (§3.3.2).
//!
//! A 16-bit sequence number wraps every 22 minutes at 50 packets a second; the 32-bit
//! roll-over counter (ROC) extends it to a 48-bit index, which is what the cipher and
//! the MAC use. The receiver guesses each packet's ROC from the highest index it has
//! authenticated; a wrong guess fails authentication, so an attacker cannot move it.

use super::SrtpError;

/// Packets this far behind the newest are still taken once (RFC 3711 asks for 64 at
/// least; 128 tolerates the reordering of a jittery Wi-Fi leg).
pub const WINDOW: u64 = 128;

/// One stream's newest authenticated index and which of the WINDOW before it were seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    top: u64,
    seen: u128,
    started: bool,
}

impl ReplayWindow {
    /// The newest authenticated index (0 before any).
    pub fn top(&self) -> u64 {
        self.top
    }

    pub fn started(&self) -> bool {
        self.started
    }

    /// Whether `index` may still be taken (before authentication: no state moves).
    pub fn check(&self, index: u64) -> Result<(), SrtpError> {
        if !self.started || index > self.top {
            return Ok(());
        }
        let behind = self.top - index;
        if behind >= WINDOW {
            Err(SrtpError::TooOld)
        } else if self.seen >> behind & 1 == 1 {
            Err(SrtpError::Replay)
        } else {
            Ok(())
        }
    }

    /// Records an authenticated `index`.
    pub fn accept(&mut self, index: u64) {
        if !self.started {
            *self = ReplayWindow { top: index, seen: 1, started: true };
        } else if index > self.top {
            let ahead = index - self.top;
            self.seen = if ahead >= WINDOW { 0 } else { self.seen << ahead };
            self.seen |= 1;
            self.top = index;
        } else {
            self.seen |= 1 << (self.top - index);
        }
    }
}

/// RFC 3711 Appendix A: the index of a packet with sequence number `seq`, given the
/// newest authenticated one. None for a packet from before the stream's start.
pub fn estimate_index(w: &ReplayWindow, seq: u16) -> Option<u64> {
    if !w.started {
        // The stream's first packet: ROC 0 (RFC 4568 signals no other start).
        return Some(seq as u64);
    }
    let roc = w.top >> 16;
    let s_l = (w.top & 0xffff) as i64;
    let seq_i = seq as i64;
    let v = if s_l < 32768 {
        if seq_i - s_l > 32768 {
            // Just before the last wrap.
            roc.checked_sub(1)?
        } else {
            roc
        }
    } else if s_l - 32768 > seq_i {
        // Just after a wrap the receiver has not seen yet.
        roc + 1
    } else {
        roc
    };
    Some((v << 16) | seq as u64)
}

/// The sender's side: the ROC counts the wraps of its own sequence numbers.
#[derive(Debug, Clone, Copy, Default)]
pub struct RocTracker {
    roc: u64,
    last: Option<u16>,
}

impl RocTracker {
    /// The index of the packet the sender numbers `seq` (sequence numbers only move on,
    /// so a smaller one far below the last is the wrap).
    pub fn index(&mut self, seq: u16) -> u64 {
        if let Some(last) = self.last {
            if seq < last && last - seq > 32768 {
                self.roc += 1;
            }
        }
        self.last = Some(seq);
        (self.roc << 16) | seq as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_and_too_old_packets_are_refused_reordered_ones_taken() {
        let mut w = ReplayWindow::default();
        for i in [10u64, 12, 11, 13] {
            w.check(i).unwrap();
            w.accept(i);
        }
        assert_eq!(w.check(12), Err(SrtpError::Replay));
        w.accept(300);
        assert_eq!(w.check(13), Err(SrtpError::TooOld), "128 behind the newest");
        assert_eq!(w.check(300 - 127), Ok(()));
        assert_eq!(w.check(300), Err(SrtpError::Replay));
        assert_eq!(w.check(301), Ok(()));
    }

    #[test]
    fn the_index_follows_the_wrap_both_ways() {
        let mut w = ReplayWindow::default();
        w.accept(65530);
        assert_eq!(estimate_index(&w, 2), Some(65536 + 2), "after the wrap");
        w.accept(65536 + 2);
        assert_eq!(estimate_index(&w, 65534), Some(65534), "a late packet from before it");
        assert_eq!(estimate_index(&w, 3), Some(65536 + 3));
        let mut fresh = ReplayWindow::default();
        fresh.accept(5);
        assert_eq!(estimate_index(&fresh, 65000), None, "before the stream began");
        let mut t = RocTracker::default();
        assert_eq!(t.index(65535), 65535);
        assert_eq!(t.index(0), 65536);
        assert_eq!(t.index(1), 65537);
    }
}
