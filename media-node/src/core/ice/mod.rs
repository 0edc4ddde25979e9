//! ICE-lite (RFC 8445 §2.5) for a WebRTC leg on the call's own port: the groundwork of
//! issue 36, not yet wired into calls or SDP.
//!
//! A lite agent gathers only its host candidate (the advertised address and the call's
//! port), never sends checks, and is always the controlled side: it answers the full
//! agent's Binding requests when they carry its credentials, learns from them which
//! addresses the peer has proven, and takes the pair the peer nominates
//! (USE-CANDIDATE). RFC 7675's consent is the peer's to keep: its checks keep coming
//! every few seconds; when none has come for `CONSENT_TIMEOUT` the node must stop
//! sending. Sans-IO: datagrams and time in, replies and verdicts out.
//!
//! What the rest of a leg takes from here: `is_validated(from)` is the gate before
//! anything from an address is handed to DTLS, decoded, played or latched (FreeSWITCH
//! CVE-2023-51443, rtpengine ES2023-03 came from skipping it).

pub mod sdp;
pub mod stun;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stun::{Builder, StunError, BINDING_ERROR, BINDING_REQUEST, BINDING_SUCCESS};

/// RFC 7675 §5.1: consent lapses 30 s after the last check that proved it.
pub const CONSENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Addresses a leg remembers as proven (a browser checks a handful of pairs).
const MAX_VALIDATED: usize = 8;
/// ICE's character set for ufrag and pwd (RFC 8839 §5.4).
const ICE_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A side's short-term credentials (`a=ice-ufrag`, `a=ice-pwd`). The password is a
/// secret: it signs every check, so it is never logged (`Debug` leaves it out).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub ufrag: String,
    pub pwd: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("ufrag", &self.ufrag).finish_non_exhaustive()
    }
}

impl Credentials {
    /// Fresh credentials from `rng`: 8 characters of ufrag, 24 of password (RFC 8445
    /// asks at least 4 and 22, and at least 24 and 128 bits of randomness).
    pub fn random(rng: &mut impl rand::Rng) -> Credentials {
        let mut draw = |n: usize| (0..n).map(|_| ICE_CHARS[rng.random_range(0..ICE_CHARS.len())] as char).collect::<String>();
        Credentials { ufrag: draw(8), pwd: draw(24) }
    }
}

/// What a STUN datagram did to the leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// A valid check from this address, answered; it is proven now.
    Answered { from: SocketAddr },
    /// The same, and the peer nominated this address: media goes there.
    Nominated { from: SocketAddr },
    /// Refused and counted (with an error response where STUN asks one).
    Refused(Refusal),
    /// A STUN message a lite agent has nothing to do with (a response, an indication).
    Ignored,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not STUN a peer could have meant (framing, FINGERPRINT): dropped unanswered.
    Malformed,
    /// USERNAME not `<our ufrag>:<theirs>`, or MESSAGE-INTEGRITY not ours: 401.
    Unauthorized,
    /// The peer claims the controlled role too: 487 (a lite agent never controls).
    RoleConflict,
    /// A comprehension-required attribute we do not know: 420.
    UnknownAttribute,
}

impl Refusal {
    pub const REASONS: [Refusal; 4] = [Refusal::Malformed, Refusal::Unauthorized, Refusal::RoleConflict, Refusal::UnknownAttribute];

    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::Unauthorized => "unauthorized",
            Refusal::RoleConflict => "role_conflict",
            Refusal::UnknownAttribute => "unknown_attribute",
        }
    }
}

/// One leg's ICE-lite agent.
pub struct IceLite {
    local: Credentials,
    /// The peer's ufrag, once its SDP has said it (checks must name it).
    remote_ufrag: Option<String>,
    /// Proven addresses, each with its last valid check.
    validated: Vec<(SocketAddr, Instant)>,
    nominated: Option<SocketAddr>,
    /// Refusals by reason (`Refusal::REASONS`' order), for the metrics.
    pub refused: [u64; 4],
}

impl IceLite {
    pub fn new(local: Credentials) -> IceLite {
        IceLite { local, remote_ufrag: None, validated: Vec::new(), nominated: None, refused: [0; 4] }
    }

    pub fn local(&self) -> &Credentials {
        &self.local
    }

    /// The peer's ufrag from its offer or answer. A new one is an ICE restart: what was
    /// proven under the old one is forgotten.
    pub fn set_remote_ufrag(&mut self, ufrag: &str) {
        if self.remote_ufrag.as_deref() != Some(ufrag) {
            if self.remote_ufrag.is_some() {
                self.validated.clear();
                self.nominated = None;
            }
            self.remote_ufrag = Some(ufrag.to_string());
        }
    }

    /// A STUN datagram from `from` at `now`; a reply to send back to `from`, if any,
    /// goes into `reply`.
    pub fn on_stun(&mut self, now: Instant, from: SocketAddr, datagram: &[u8], reply: &mut Vec<u8>) -> Checked {
        reply.clear();
        let m = match stun::parse(datagram) {
            Ok(m) => m,
            Err(StunError::UnknownRequired(_)) => {
                // Answered only for a request that authenticates; parse stopped before
                // MESSAGE-INTEGRITY could be read, so nothing is said back.
                return self.refuse(Refusal::UnknownAttribute);
            }
            Err(_) => return self.refuse(Refusal::Malformed),
        };
        if m.kind != BINDING_REQUEST {
            return Checked::Ignored;
        }
        let expected_prefix = format!("{}:", self.local.ufrag);
        let named_us = m.username.is_some_and(|u| {
            u.starts_with(expected_prefix.as_bytes())
                && self.remote_ufrag.as_ref().is_none_or(|r| &u[expected_prefix.len()..] == r.as_bytes())
        });
        if !named_us || m.verify(self.local.pwd.as_bytes()).is_err() {
            // RFC 8489 §9.1.3: 401, with no integrity (the peer's key is unproven).
            *reply = Builder::new(BINDING_ERROR, m.transaction).error(401, "Unauthorized").finish(None);
            return self.refuse(Refusal::Unauthorized);
        }
        if m.controlled.is_some() {
            *reply = Builder::new(BINDING_ERROR, m.transaction).error(487, "Role Conflict").finish(Some(self.local.pwd.as_bytes()));
            return self.refuse(Refusal::RoleConflict);
        }
        *reply = Builder::new(BINDING_SUCCESS, m.transaction).xor_mapped(from).finish(Some(self.local.pwd.as_bytes()));
        match self.validated.iter_mut().find(|(a, _)| *a == from) {
            Some(v) => v.1 = now,
            None => {
                if self.validated.len() == MAX_VALIDATED {
                    // The stalest proof goes, never the nominated pair's.
                    let nominated = self.nominated;
                    if let Some(i) =
                        (0..self.validated.len()).filter(|&i| Some(self.validated[i].0) != nominated).min_by_key(|&i| self.validated[i].1)
                    {
                        self.validated.remove(i);
                    }
                }
                self.validated.push((from, now));
            }
        }
        if m.use_candidate {
            self.nominated = Some(from);
            Checked::Nominated { from }
        } else {
            Checked::Answered { from }
        }
    }

    fn refuse(&mut self, r: Refusal) -> Checked {
        if let Some(i) = Refusal::REASONS.iter().position(|x| *x == r) {
            self.refused[i] += 1;
        }
        Checked::Refused(r)
    }

    /// True when `from` has proven itself with a valid check (and not lost it since).
    pub fn is_validated(&self, from: SocketAddr) -> bool {
        self.validated.iter().any(|(a, _)| *a == from)
    }

    /// Where media goes: the pair the peer nominated.
    pub fn nominated(&self) -> Option<SocketAddr> {
        self.nominated
    }

    /// RFC 7675: the peer still consents to the nominated pair at `now` (a valid check
    /// within `CONSENT_TIMEOUT`). False before any nomination.
    pub fn has_consent(&self, now: Instant) -> bool {
        let Some(n) = self.nominated else { return false };
        self.validated.iter().any(|(a, at)| *a == n && now.saturating_duration_since(*at) < CONSENT_TIMEOUT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn agent() -> IceLite {
        let mut ice = IceLite::new(Credentials { ufrag: "node".into(), pwd: "node-password-of-24-chars".into() });
        ice.set_remote_ufrag("peer");
        ice
    }

    /// A full agent's check, as a browser sends it.
    fn check(username: &str, pwd: &str, nominate: bool, t: u8) -> Vec<u8> {
        let mut b = Builder::new(BINDING_REQUEST, [t; 12]);
        b.username(username.as_bytes()).priority(0x6e0001ff).controlling(42);
        if nominate {
            b.use_candidate();
        }
        b.finish(Some(pwd.as_bytes()))
    }

    #[test]
    fn a_valid_check_is_answered_with_the_address_it_came_from_and_nominates() {
        let (mut ice, t0) = (agent(), Instant::now());
        let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let mut reply = Vec::new();
        assert!(!ice.is_validated(peer));
        assert_eq!(
            ice.on_stun(t0, peer, &check("node:peer", "node-password-of-24-chars", false, 1), &mut reply),
            Checked::Answered { from: peer }
        );
        let r = stun::parse(&reply).unwrap();
        assert_eq!((r.kind, r.transaction, r.xor_mapped), (BINDING_SUCCESS, [1; 12], Some(peer)));
        r.verify(b"node-password-of-24-chars").expect("signed with our password");
        assert!(ice.is_validated(peer) && ice.nominated().is_none() && !ice.has_consent(t0));
        assert_eq!(
            ice.on_stun(t0, peer, &check("node:peer", "node-password-of-24-chars", true, 2), &mut reply),
            Checked::Nominated { from: peer }
        );
        assert_eq!(ice.nominated(), Some(peer));
        assert!(ice.has_consent(t0 + Duration::from_secs(29)));
        // Consent lapses 30 s after the last check; a new one restores it.
        assert!(!ice.has_consent(t0 + CONSENT_TIMEOUT));
        let later = t0 + Duration::from_secs(40);
        ice.on_stun(later, peer, &check("node:peer", "node-password-of-24-chars", false, 3), &mut reply);
        assert!(ice.has_consent(later + Duration::from_secs(5)));
    }

    #[test]
    fn a_wrong_password_or_name_is_refused_with_401_and_proves_nothing() {
        let (mut ice, t0) = (agent(), Instant::now());
        let attacker: SocketAddr = "127.0.0.2:4000".parse().unwrap();
        let mut reply = Vec::new();
        for (user, pwd) in [
            ("node:peer", "not-the-password-at-all!"),
            ("nodx:peer", "node-password-of-24-chars"),
            ("node:other", "node-password-of-24-chars"),
        ] {
            assert_eq!(
                ice.on_stun(t0, attacker, &check(user, pwd, true, 9), &mut reply),
                Checked::Refused(Refusal::Unauthorized),
                "{user}"
            );
            let r = stun::parse(&reply).unwrap();
            assert_eq!((r.kind, r.error_code), (BINDING_ERROR, Some(401)));
        }
        assert!(!ice.is_validated(attacker) && ice.nominated().is_none());
        assert_eq!(ice.refused[1], 3);
        // Not STUN at all: no answer.
        assert_eq!(ice.on_stun(t0, attacker, &[0, 1, 0, 0], &mut reply), Checked::Refused(Refusal::Malformed));
        assert!(reply.is_empty());
    }

    #[test]
    fn a_peer_that_claims_the_controlled_role_gets_487() {
        let (mut ice, t0) = (agent(), Instant::now());
        let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let raw = Builder::new(BINDING_REQUEST, [4; 12]).username(b"node:peer").controlled(1).finish(Some(b"node-password-of-24-chars"));
        let mut reply = Vec::new();
        assert_eq!(ice.on_stun(t0, peer, &raw, &mut reply), Checked::Refused(Refusal::RoleConflict));
        assert_eq!(stun::parse(&reply).unwrap().error_code, Some(487));
        assert!(!ice.is_validated(peer));
    }

    #[test]
    fn an_ice_restart_forgets_what_was_proven() {
        let (mut ice, t0) = (agent(), Instant::now());
        let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let mut reply = Vec::new();
        ice.on_stun(t0, peer, &check("node:peer", "node-password-of-24-chars", true, 1), &mut reply);
        ice.set_remote_ufrag("peer2");
        assert!(!ice.is_validated(peer) && ice.nominated().is_none());
        assert_eq!(
            ice.on_stun(t0, peer, &check("node:peer", "node-password-of-24-chars", true, 2), &mut reply),
            Checked::Refused(Refusal::Unauthorized)
        );
    }

    /// The fuzz corpus's checks were made by Python's hmac and zlib (an implementation
    /// not ours): ours agrees with it on MESSAGE-INTEGRITY and FINGERPRINT.
    #[test]
    fn checks_signed_elsewhere_are_answered_and_a_wrong_password_is_not() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/stun_check");
        let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let mut reply = Vec::new();
        for (file, want) in [
            ("check", Checked::Answered { from: peer }),
            ("nominate", Checked::Nominated { from: peer }),
            ("wrong-password", Checked::Refused(Refusal::Unauthorized)),
        ] {
            let raw = std::fs::read(dir.join(file)).unwrap();
            assert_eq!(agent().on_stun(Instant::now(), peer, &raw, &mut reply), want, "{file}");
        }
    }

    #[test]
    fn credentials_are_random_ice_characters_and_the_password_is_not_printed() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (a, b) = (Credentials::random(&mut rng), Credentials::random(&mut rng));
        assert_ne!(a, b);
        assert_eq!((a.ufrag.len(), a.pwd.len()), (8, 24));
        assert!(a.pwd.bytes().all(|c| ICE_CHARS.contains(&c)));
        assert!(!format!("{a:?}").contains(&a.pwd));
    }
}
