//! Secure RTP (RFC 3711) with SDES keys (RFC 4568): the suites, a call's keys for each
//! direction, and protecting and unprotecting SRTP and SRTCP packets.
//!
//! The ciphers are RustCrypto's (`aes`, `ctr`, `aes-gcm`, `hmac`, `sha1`); what is ours
//! is the framing around them: key derivation (`transform.rs`), the packet index with
//! its roll-over counter and the replay window (`replay.rs`), and the `a=crypto`
//! attribute (`sdes.rs`). Sans-IO like the rest of the core: bytes in, bytes out.
//!
//! The rules learned from the field's CVEs are kept here, where a packet is first
//! touched: nothing is decrypted before its tag checks, the replay window moves only
//! for packets that authenticated, and a failure is an error value to count, never a
//! reason to end the call. Keys never print (`Debug` says `<redacted>`), and every
//! copy of key material is wiped when it drops.

pub mod replay;
pub mod sdes;
mod transform;

use std::collections::HashMap;
use std::fmt;

use thiserror::Error;
use zeroize::Zeroizing;

use replay::{estimate_index, ReplayWindow, RocTracker};
use transform::Transform;

/// The crypto suites the node runs, strongest first (the order it picks by when an
/// offer lists several).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suite {
    /// RFC 7714.
    AeadAes256Gcm,
    AeadAes128Gcm,
    /// RFC 6188.
    AesCm256HmacSha1_80,
    /// RFC 3711 / RFC 4568: the one every SIP stack has.
    AesCm128HmacSha1_80,
    AesCm256HmacSha1_32,
    AesCm128HmacSha1_32,
}

impl Suite {
    pub const ALL: [Suite; 6] = [
        Suite::AeadAes256Gcm,
        Suite::AeadAes128Gcm,
        Suite::AesCm256HmacSha1_80,
        Suite::AesCm128HmacSha1_80,
        Suite::AesCm256HmacSha1_32,
        Suite::AesCm128HmacSha1_32,
    ];

    /// The name in `a=crypto` (RFC 4568 §6.2 and the registry).
    pub fn name(self) -> &'static str {
        match self {
            Suite::AeadAes256Gcm => "AEAD_AES_256_GCM",
            Suite::AeadAes128Gcm => "AEAD_AES_128_GCM",
            Suite::AesCm256HmacSha1_80 => "AES_256_CM_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm256HmacSha1_32 => "AES_256_CM_HMAC_SHA1_32",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    pub fn from_name(name: &str) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.name().eq_ignore_ascii_case(name))
    }

    pub fn key_len(self) -> usize {
        match self {
            Suite::AeadAes256Gcm | Suite::AesCm256HmacSha1_80 | Suite::AesCm256HmacSha1_32 => 32,
            _ => 16,
        }
    }

    /// The master salt: 112 bits for AES-CM, 96 for GCM (RFC 7714 §12).
    pub fn salt_len(self) -> usize {
        if self.is_aead() {
            12
        } else {
            14
        }
    }

    pub fn is_aead(self) -> bool {
        matches!(self, Suite::AeadAes256Gcm | Suite::AeadAes128Gcm)
    }

    /// The tag on SRTP packets.
    pub fn rtp_tag_len(self) -> usize {
        match self {
            Suite::AeadAes256Gcm | Suite::AeadAes128Gcm => 16,
            Suite::AesCm256HmacSha1_80 | Suite::AesCm128HmacSha1_80 => 10,
            Suite::AesCm256HmacSha1_32 | Suite::AesCm128HmacSha1_32 => 4,
        }
    }

    /// The tag on SRTCP packets: the _32 suites still use 80 bits there (RFC 4568 §6.2.1).
    pub fn rtcp_tag_len(self) -> usize {
        if self.is_aead() {
            16
        } else {
            10
        }
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// RFC 3711 §9.2: a master key protects at most 2^48 SRTP and 2^31 SRTCP packets.
pub const MAX_LIFETIME: u64 = 1 << 48;
const MAX_RTCP_LIFETIME: u64 = 1 << 31;

/// One direction's master key and salt, as SDES carries them. Wiped when dropped;
/// `Debug` never shows the bytes.
#[derive(Clone)]
pub struct MasterKey {
    pub suite: Suite,
    /// Key then salt, `suite.key_len() + suite.salt_len()` bytes.
    material: Zeroizing<Vec<u8>>,
    /// Packets this key may protect (the `|lifetime` of the inline parameter).
    pub lifetime: u64,
    /// The key's MKI on the wire, when the crypto line gave one.
    pub mki: Option<Vec<u8>>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("suite", &self.suite)
            .field("key", &"<redacted>")
            .field("lifetime", &self.lifetime)
            .field("mki_len", &self.mki.as_ref().map(Vec::len))
            .finish()
    }
}

impl PartialEq for MasterKey {
    /// Constant time in the key bytes.
    fn eq(&self, other: &MasterKey) -> bool {
        use subtle::ConstantTimeEq;
        self.suite == other.suite
            && self.lifetime == other.lifetime
            && self.mki == other.mki
            && self.material.len() == other.material.len()
            && bool::from(self.material.ct_eq(&other.material))
    }
}

impl Eq for MasterKey {}

impl MasterKey {
    /// `material` is key then salt; None when its length does not fit the suite.
    pub fn new(suite: Suite, material: &[u8]) -> Option<MasterKey> {
        (material.len() == suite.key_len() + suite.salt_len()).then(|| MasterKey {
            suite,
            material: Zeroizing::new(material.to_vec()),
            lifetime: MAX_LIFETIME,
            mki: None,
        })
    }

    /// A fresh key for the node's own direction, from `rng`: the node hands in the OS
    /// source (getrandom), not the thread's RNG, whose output buffer would keep a copy
    /// of the key after the call; tests hand in a seeded one.
    pub fn generate<R: rand::CryptoRng + ?Sized>(suite: Suite, rng: &mut R) -> MasterKey {
        let mut material = Zeroizing::new(vec![0u8; suite.key_len() + suite.salt_len()]);
        rng.fill_bytes(&mut material);
        MasterKey { suite, material, lifetime: MAX_LIFETIME, mki: None }
    }

    /// A fresh key from the OS, for tests.
    #[cfg(test)]
    pub fn random(suite: Suite) -> MasterKey {
        use rand::TryRngCore;
        MasterKey::generate(suite, &mut rand::rngs::OsRng.unwrap_err())
    }

    fn key(&self) -> &[u8] {
        &self.material[..self.suite.key_len()]
    }

    fn salt(&self) -> &[u8] {
        &self.material[self.suite.key_len()..]
    }

    /// The key and salt as the inline parameter writes them (base64 of both).
    pub fn inline(&self) -> Zeroizing<String> {
        use base64::Engine;
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&self.material[..]))
    }
}

/// Why a packet was not taken (each is counted, none ends the call).
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq, Hash)]
pub enum SrtpError {
    #[error("too short for an SRTP packet")]
    TooShort,
    #[error("not an RTP or RTCP packet")]
    Malformed,
    #[error("authentication failed")]
    Auth,
    #[error("replayed packet")]
    Replay,
    #[error("older than the replay window")]
    TooOld,
    #[error("unknown MKI")]
    UnknownMki,
    #[error("the master key's lifetime is used up")]
    KeyExpired,
}

impl SrtpError {
    /// The `reason` label of the drop counter.
    pub fn reason(self) -> &'static str {
        match self {
            SrtpError::TooShort | SrtpError::Malformed => "malformed",
            SrtpError::Auth => "auth",
            SrtpError::Replay => "replay",
            SrtpError::TooOld => "too_old",
            SrtpError::UnknownMki => "unknown_mki",
            SrtpError::KeyExpired => "key_expired",
        }
    }
}

/// The far end's key in use: its derived session keys and how many packets it may
/// still authenticate.
struct RemoteKey {
    key: MasterKey,
    transform: Transform,
    rtp_left: u64,
    rtcp_left: u64,
}

impl RemoteKey {
    fn new(key: MasterKey) -> RemoteKey {
        RemoteKey { transform: Transform::new(&key), rtp_left: key.lifetime, rtcp_left: key.lifetime.min(MAX_RTCP_LIFETIME), key }
    }
}

/// Keeps the previous key after a rekey this many packets under the new one, for
/// packets already on the wire (a re-offer rekeys without a gap).
const PREVIOUS_KEY_GRACE: u32 = 64;
/// Streams tracked per direction (a far end changes SSRC on a re-INVITE now and then;
/// only authenticated packets make an entry, so a flood cannot fill it).
const MAX_STREAMS: usize = 8;

/// What the node receives under SRTP: the far end's keys and each of its streams'
/// replay windows (which live on across rekeys, as the ROC does).
pub struct Inbound {
    current: RemoteKey,
    previous: Option<(RemoteKey, u32)>,
    rtp: HashMap<u32, ReplayWindow>,
    rtcp: HashMap<u32, ReplayWindow>,
}

/// What an unprotected RTP packet was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unprotected {
    /// Its 48-bit packet index (ROC and sequence number).
    pub index: u64,
}

impl Inbound {
    pub fn new(remote: MasterKey) -> Inbound {
        Inbound { current: RemoteKey::new(remote), previous: None, rtp: HashMap::new(), rtcp: HashMap::new() }
    }

    pub fn key(&self) -> &MasterKey {
        &self.current.key
    }

    /// A re-offer's new key: packets under the old one are still taken for a while.
    pub fn rekey(&mut self, remote: MasterKey) {
        if remote == self.current.key {
            return;
        }
        let old = std::mem::replace(&mut self.current, RemoteKey::new(remote));
        self.previous = Some((old, 0));
    }

    /// Checks, decrypts and takes an SRTP packet into `out` (the plain RTP packet):
    /// `authenticate_rtp` then `commit_rtp`, for a receiver with nothing else to check.
    pub fn unprotect_rtp(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<Unprotected, SrtpError> {
        let a = self.authenticate_rtp(data, out)?;
        Ok(self.commit_rtp(a))
    }

    /// Checks and decrypts an SRTP packet into `out` (the plain RTP packet). Nothing
    /// is decrypted unless the packet authenticates, and nothing moves (replay window,
    /// ROC, key use) until it is committed: a validly keyed packet the call then
    /// refuses (from a foreign source) leaves no trace.
    pub(crate) fn authenticate_rtp(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<Authenticated, SrtpError> {
        let hlen = super::rtp::header_len(data).map_err(|_| SrtpError::Malformed)?;
        let ssrc = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
        let seq = u16::from_be_bytes([data[2], data[3]]);
        let window = self.rtp.get(&ssrc).copied().unwrap_or_default();
        let index = estimate_index(&window, seq).ok_or(SrtpError::TooOld)?;
        window.check(index)?;
        let key = match Self::try_rtp(&self.current, data, hlen, ssrc, index, out) {
            Err(SrtpError::Auth | SrtpError::UnknownMki) if self.previous.is_some() => {
                let (old, _) = self.previous.as_ref().expect("checked");
                Self::try_rtp(old, data, hlen, ssrc, index, out)?;
                KeyUsed::Previous
            }
            r => r.map(|()| KeyUsed::Current)?,
        };
        Ok(Authenticated { ssrc, index, key })
    }

    /// Takes an authenticated RTP packet: its index enters the stream's replay window
    /// (and with it the ROC), and its key's use is counted.
    pub(crate) fn commit_rtp(&mut self, a: Authenticated) -> Unprotected {
        match a.key {
            KeyUsed::Current => {
                self.current.rtp_left = self.current.rtp_left.saturating_sub(1);
                if let Some((_, uses)) = self.previous.as_mut() {
                    *uses += 1;
                    if *uses >= PREVIOUS_KEY_GRACE {
                        self.previous = None;
                    }
                }
            }
            KeyUsed::Previous => {
                if let Some((old, _)) = self.previous.as_mut() {
                    old.rtp_left = old.rtp_left.saturating_sub(1);
                }
            }
        }
        Self::admit(&mut self.rtp, a.ssrc, a.index);
        Unprotected { index: a.index }
    }

    /// Records `index` in `ssrc`'s window, making room for a new stream if need be.
    fn admit(windows: &mut HashMap<u32, ReplayWindow>, ssrc: u32, index: u64) {
        if !windows.contains_key(&ssrc) && windows.len() >= MAX_STREAMS {
            // The stream heard least recently (the lowest index is a fair stand-in).
            if let Some(old) = windows.iter().min_by_key(|(_, w)| w.top()).map(|(s, _)| *s) {
                windows.remove(&old);
            }
        }
        windows.entry(ssrc).or_default().accept(index);
    }

    fn try_rtp(key: &RemoteKey, data: &[u8], hlen: usize, ssrc: u32, index: u64, out: &mut Vec<u8>) -> Result<(), SrtpError> {
        let suite = key.key.suite;
        let data = without_mki(key, data, suite.rtp_tag_len())?;
        if key.rtp_left == 0 {
            return Err(SrtpError::KeyExpired);
        }
        key.transform.unprotect_rtp(&data, hlen, ssrc, index, out)
    }

    /// Checks, decrypts and takes an SRTCP packet into `out` (the plain RTCP compound
    /// packet): `authenticate_rtcp` then `commit_rtcp`.
    pub fn unprotect_rtcp(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), SrtpError> {
        let a = self.authenticate_rtcp(data, out)?;
        self.commit_rtcp(a);
        Ok(())
    }

    /// Checks and decrypts an SRTCP packet into `out`; nothing moves until it is
    /// committed (as for RTP).
    pub(crate) fn authenticate_rtcp(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<Authenticated, SrtpError> {
        if data.len() < 8 || data[0] >> 6 != 2 {
            return Err(SrtpError::Malformed);
        }
        let ssrc = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
        let try_key = |key: &RemoteKey, out: &mut Vec<u8>, window: &ReplayWindow| -> Result<u64, SrtpError> {
            let suite = key.key.suite;
            let data = without_mki(key, data, suite.rtcp_tag_len())?;
            if key.rtcp_left == 0 {
                return Err(SrtpError::KeyExpired);
            }
            key.transform.unprotect_rtcp(&data, ssrc, window, out)
        };
        let window = self.rtcp.get(&ssrc).copied().unwrap_or_default();
        let (index, key) = match try_key(&self.current, out, &window) {
            Err(SrtpError::Auth | SrtpError::UnknownMki) if self.previous.is_some() => {
                (try_key(&self.previous.as_ref().expect("checked").0, out, &window)?, KeyUsed::Previous)
            }
            r => (r?, KeyUsed::Current),
        };
        Ok(Authenticated { ssrc, index, key })
    }

    /// Takes an authenticated SRTCP packet (its index into the window, its key's use).
    pub(crate) fn commit_rtcp(&mut self, a: Authenticated) {
        let key = match a.key {
            KeyUsed::Current => Some(&mut self.current),
            KeyUsed::Previous => self.previous.as_mut().map(|(k, _)| k),
        };
        if let Some(k) = key {
            k.rtcp_left = k.rtcp_left.saturating_sub(1);
        }
        Self::admit(&mut self.rtcp, a.ssrc, a.index);
    }
}

/// Which of the far end's keys a packet authenticated under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyUsed {
    Current,
    Previous,
}

/// A packet that authenticated and is not a replay, not yet taken: `commit_*` takes
/// it; dropping it leaves the receiver as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "an authenticated packet moves nothing until it is committed"]
pub(crate) struct Authenticated {
    ssrc: u32,
    index: u64,
    key: KeyUsed,
}

/// The packet without its MKI (checked against the key's), the tag still in place.
fn without_mki<'a>(key: &RemoteKey, data: &'a [u8], tag_len: usize) -> Result<std::borrow::Cow<'a, [u8]>, SrtpError> {
    let Some(mki) = &key.key.mki else { return Ok(std::borrow::Cow::Borrowed(data)) };
    if key.key.suite.is_aead() {
        // GCM: ... | tag | MKI.
        let at = data.len().checked_sub(mki.len()).ok_or(SrtpError::TooShort)?;
        if data[at..] != mki[..] {
            return Err(SrtpError::UnknownMki);
        }
        return Ok(std::borrow::Cow::Borrowed(&data[..at]));
    }
    // AES-CM: ... | MKI | tag; the MKI is outside the MAC, so the tag is moved up.
    let at = data.len().checked_sub(mki.len() + tag_len).ok_or(SrtpError::TooShort)?;
    if data[at..at + mki.len()] != mki[..] {
        return Err(SrtpError::UnknownMki);
    }
    let mut joined = data[..at].to_vec();
    joined.extend_from_slice(&data[at + mki.len()..]);
    Ok(std::borrow::Cow::Owned(joined))
}

/// What the node sends under SRTP: its own key, and its stream's roll-over counter
/// and SRTCP index, which run on across rekeys.
pub struct Outbound {
    key: MasterKey,
    transform: Transform,
    roc: RocTracker,
    rtcp_index: u32,
    rtp_left: u64,
    rtcp_left: u64,
}

impl Outbound {
    pub fn new(local: MasterKey) -> Outbound {
        Outbound {
            transform: Transform::new(&local),
            rtp_left: local.lifetime,
            rtcp_left: local.lifetime.min(MAX_RTCP_LIFETIME),
            key: local,
            roc: RocTracker::default(),
            rtcp_index: 0,
        }
    }

    pub fn key(&self) -> &MasterKey {
        &self.key
    }

    /// The node's new key from a re-offer: the sequence and ROC run on.
    pub fn rekey(&mut self, local: MasterKey) {
        if local == self.key {
            return;
        }
        self.transform = Transform::new(&local);
        self.rtp_left = local.lifetime;
        self.rtcp_left = local.lifetime.min(MAX_RTCP_LIFETIME);
        self.key = local;
    }

    /// Turns the plain RTP packet in `packet` into SRTP, in place.
    pub fn protect_rtp(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        let hlen = super::rtp::header_len(packet).map_err(|_| SrtpError::Malformed)?;
        if self.rtp_left == 0 {
            return Err(SrtpError::KeyExpired);
        }
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        let index = self.roc.index(u16::from_be_bytes([packet[2], packet[3]]));
        self.transform.protect_rtp(packet, hlen, ssrc, index, self.key.mki.as_deref());
        self.rtp_left -= 1;
        Ok(())
    }

    /// Turns the plain RTCP compound packet in `packet` into SRTCP, in place.
    pub fn protect_rtcp(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        if packet.len() < 8 {
            return Err(SrtpError::Malformed);
        }
        if self.rtcp_left == 0 {
            return Err(SrtpError::KeyExpired);
        }
        let ssrc = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        self.transform.protect_rtcp(packet, ssrc, self.rtcp_index, self.key.mki.as_deref());
        self.rtcp_index = (self.rtcp_index + 1) & 0x7fff_ffff;
        self.rtcp_left -= 1;
        Ok(())
    }

    #[cfg(test)]
    fn set_rtcp_index(&mut self, index: u32) {
        self.rtcp_index = index;
    }
}

/// A call's SRTP: the far end's key for what the node receives, the node's own for
/// what it sends.
pub struct Srtp {
    pub inbound: Inbound,
    pub outbound: Outbound,
}

impl Srtp {
    pub fn new(keys: &CallKeys) -> Srtp {
        Srtp { inbound: Inbound::new(keys.remote.clone()), outbound: Outbound::new(keys.local.clone()) }
    }

    /// A re-offer's keys: each direction changes only if its key did.
    pub fn rekey(&mut self, keys: &CallKeys) {
        self.inbound.rekey(keys.remote.clone());
        self.outbound.rekey(keys.local.clone());
    }
}

/// The two keys SDES agreed for a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallKeys {
    /// The far end's, from its crypto line: what the node receives is under it.
    pub remote: MasterKey,
    /// The node's, in its own crypto line: what the node sends is under it.
    pub local: MasterKey,
}

#[cfg(test)]
mod tests;
