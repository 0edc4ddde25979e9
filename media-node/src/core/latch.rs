//! Where our RTP goes, and whose RTP we accept (symmetric RTP, RFC 4961 / "comedia").
//!
//! The signalled address (SDP) is where we send until the caller's own packets arrive.
//! Behind NAT the signalled address is a private one, so the source of the first valid
//! RTP packet is adopted ("latched") and locked for the rest of the call: packets from
//! any other address are dropped (RTP bleed / hijack protection). Only a new signalled
//! target (re-INVITE: control://set_target) opens the latch again.

use std::net::SocketAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Accepted, and the media target moved here.
    Latched(SocketAddr),
    /// From an address that is not the call's peer.
    Foreign,
}

#[derive(Debug, Default)]
pub struct Latch {
    /// False for asymmetric peers that send from one port and listen on another.
    symmetric: bool,
    signalled: Option<SocketAddr>,
    latched: Option<SocketAddr>,
}

impl Latch {
    pub fn is_symmetric(&self) -> bool {
        self.symmetric
    }

    pub fn new(symmetric: bool) -> Latch {
        Latch { symmetric, ..Default::default() }
    }

    pub fn set_target(&mut self, addr: SocketAddr) {
        self.signalled = Some(addr);
        self.latched = None;
    }

    /// Sets the target only if none is known yet (an explicit address never overrides
    /// where the caller's RTP actually comes from).
    pub fn suggest_target(&mut self, addr: SocketAddr) {
        if self.signalled.is_none() && self.latched.is_none() {
            self.signalled = Some(addr);
        }
    }

    pub fn target(&self) -> Option<SocketAddr> {
        self.latched.or(self.signalled)
    }

    pub fn on_packet(&mut self, from: SocketAddr) -> Verdict {
        if let Some(peer) = self.latched {
            return if peer == from { Verdict::Accept } else { Verdict::Foreign };
        }
        if !self.symmetric {
            // Asymmetric: accept the signalled host's packets, send to the signalled address.
            return match self.signalled {
                Some(s) if s.ip() != from.ip() => Verdict::Foreign,
                Some(_) => Verdict::Accept,
                None => {
                    self.latched = Some(from);
                    Verdict::Latched(from)
                }
            };
        }
        self.latched = Some(from);
        if self.signalled == Some(from) {
            Verdict::Accept
        } else {
            Verdict::Latched(from)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nat_source_is_latched_then_locked() {
        let mut l = Latch::new(true);
        l.set_target(a("192.168.1.10:4000"));
        assert_eq!(l.target(), Some(a("192.168.1.10:4000")));
        assert_eq!(l.on_packet(a("203.0.113.5:61000")), Verdict::Latched(a("203.0.113.5:61000")));
        assert_eq!(l.target(), Some(a("203.0.113.5:61000")));
        // An unrelated address mid-call is never adopted.
        assert_eq!(l.on_packet(a("198.51.100.66:5004")), Verdict::Foreign);
        assert_eq!(l.target(), Some(a("203.0.113.5:61000")));
        assert_eq!(l.on_packet(a("203.0.113.5:61000")), Verdict::Accept);
    }

    #[test]
    fn explicit_target_does_not_override_latched_source() {
        let mut l = Latch::new(true);
        l.on_packet(a("203.0.113.5:61000"));
        l.suggest_target(a("10.0.0.1:4000"));
        assert_eq!(l.target(), Some(a("203.0.113.5:61000")));
    }

    #[test]
    fn resignalling_reopens_the_latch() {
        let mut l = Latch::new(true);
        l.on_packet(a("203.0.113.5:61000"));
        l.set_target(a("203.0.113.9:7000"));
        assert_eq!(l.on_packet(a("203.0.113.9:7000")), Verdict::Accept);
        assert_eq!(l.target(), Some(a("203.0.113.9:7000")));
        assert_eq!(l.on_packet(a("203.0.113.5:61000")), Verdict::Foreign);
    }

    #[test]
    fn asymmetric_peer_keeps_signalled_target() {
        let mut l = Latch::new(false);
        l.set_target(a("127.0.0.1:40000"));
        assert_eq!(l.on_packet(a("127.0.0.1:50000")), Verdict::Accept);
        assert_eq!(l.target(), Some(a("127.0.0.1:40000")));
        assert_eq!(l.on_packet(a("127.0.0.2:50000")), Verdict::Foreign);
    }
}
