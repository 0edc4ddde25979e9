//! STUN (RFC 8489) as ICE uses it (RFC 8445 §7): Binding requests and responses with
//! short-term credentials. Only what an ICE-lite answerer meets is read; an attribute
//! it does not know is skipped (a comprehension-required one refuses the message, as
//! RFC 8489 §14 says, so a peer that needs it learns so).
//!
//! Integrity is checked before anything in the message is believed: MESSAGE-INTEGRITY
//! (HMAC-SHA1 keyed by the password, compared in constant time) and FINGERPRINT
//! (CRC-32, which tells STUN from the RTP and DTLS sharing the port).

use hmac::{Hmac, Mac};
use sha1::Sha1;
use std::net::{IpAddr, SocketAddr};
use subtle::ConstantTimeEq;

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
const HEADER: usize = 20;

/// Message types this node reads or writes (method Binding, RFC 8489 §18.2).
pub const BINDING_REQUEST: u16 = 0x0001;
pub const BINDING_SUCCESS: u16 = 0x0101;
pub const BINDING_ERROR: u16 = 0x0111;
pub const BINDING_INDICATION: u16 = 0x0011;

const USERNAME: u16 = 0x0006;
const MESSAGE_INTEGRITY: u16 = 0x0008;
const ERROR_CODE: u16 = 0x0009;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;
const PRIORITY: u16 = 0x0024;
const USE_CANDIDATE: u16 = 0x0025;
const FINGERPRINT: u16 = 0x8028;
const ICE_CONTROLLED: u16 = 0x8029;
const ICE_CONTROLLING: u16 = 0x802A;
/// XORed into the CRC-32 of FINGERPRINT ("STUN").
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// Why a datagram is not a STUN message this node believes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StunError {
    /// Not STUN framing (length, magic cookie, attribute bounds).
    Malformed,
    /// FINGERPRINT absent or wrong.
    Fingerprint,
    /// MESSAGE-INTEGRITY absent or wrong (the password does not match).
    Integrity,
    /// A comprehension-required attribute this node does not know.
    UnknownRequired(u16),
}

impl StunError {
    pub fn reason(self) -> &'static str {
        match self {
            StunError::Malformed => "malformed",
            StunError::Fingerprint => "fingerprint",
            StunError::Integrity => "integrity",
            StunError::UnknownRequired(_) => "unknown_attribute",
        }
    }
}

/// RFC 7983's first-byte demultiplexing of what arrives on a WebRTC leg's one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stun,
    Dtls,
    /// RTP or RTCP (told apart by the payload type, RFC 5761).
    Rtp,
    Other,
}

pub fn classify(datagram: &[u8]) -> Kind {
    match datagram.first() {
        Some(0..=3) => Kind::Stun,
        Some(20..=63) => Kind::Dtls,
        Some(128..=191) => Kind::Rtp,
        _ => Kind::Other,
    }
}

/// A Binding message as read: its type, transaction, and the ICE attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: u16,
    pub transaction: [u8; 12],
    pub username: Option<&'a [u8]>,
    pub priority: Option<u32>,
    pub use_candidate: bool,
    /// ICE-CONTROLLING's or ICE-CONTROLLED's tie-breaker, and which it was.
    pub controlling: Option<u64>,
    pub controlled: Option<u64>,
    pub xor_mapped: Option<SocketAddr>,
    pub error_code: Option<u16>,
    /// Where MESSAGE-INTEGRITY starts and its value, for `verify`.
    integrity: Option<(usize, &'a [u8])>,
    raw: &'a [u8],
}

/// The cheap check before parsing: STUN framing and the magic cookie.
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER
        && datagram[0] & 0xC0 == 0
        && u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]) == MAGIC_COOKIE
        && usize::from(u16::from_be_bytes([datagram[2], datagram[3]])) + HEADER == datagram.len()
}

/// Reads a STUN message: framing and FINGERPRINT checked (ICE requires it, RFC 8445
/// §7.1.2), MESSAGE-INTEGRITY located but not checked (`Message::verify` does, with
/// the password the USERNAME names).
pub fn parse(datagram: &[u8]) -> Result<Message<'_>, StunError> {
    if !is_stun(datagram) || !datagram.len().is_multiple_of(4) {
        return Err(StunError::Malformed);
    }
    let mut transaction = [0u8; 12];
    transaction.copy_from_slice(&datagram[8..20]);
    let mut m = Message {
        kind: u16::from_be_bytes([datagram[0], datagram[1]]),
        transaction,
        username: None,
        priority: None,
        use_candidate: false,
        controlling: None,
        controlled: None,
        xor_mapped: None,
        error_code: None,
        integrity: None,
        raw: datagram,
    };
    let mut at = HEADER;
    let mut fingerprint_ok = false;
    while at < datagram.len() {
        if at + 4 > datagram.len() {
            return Err(StunError::Malformed);
        }
        let kind = u16::from_be_bytes([datagram[at], datagram[at + 1]]);
        let len = usize::from(u16::from_be_bytes([datagram[at + 2], datagram[at + 3]]));
        let value_at = at + 4;
        let end = value_at + len;
        if end > datagram.len() {
            return Err(StunError::Malformed);
        }
        let value = &datagram[value_at..end];
        if fingerprint_ok {
            // Nothing may follow FINGERPRINT.
            return Err(StunError::Malformed);
        }
        match kind {
            // After MESSAGE-INTEGRITY only FINGERPRINT counts (RFC 8489 §14.5).
            _ if m.integrity.is_some() && kind != FINGERPRINT => {}
            USERNAME => m.username = Some(value),
            PRIORITY if len == 4 => m.priority = Some(u32::from_be_bytes([value[0], value[1], value[2], value[3]])),
            USE_CANDIDATE if len == 0 => m.use_candidate = true,
            ICE_CONTROLLING if len == 8 => m.controlling = Some(u64::from_be_bytes(value.try_into().expect("8 bytes"))),
            ICE_CONTROLLED if len == 8 => m.controlled = Some(u64::from_be_bytes(value.try_into().expect("8 bytes"))),
            XOR_MAPPED_ADDRESS => m.xor_mapped = Some(read_xor_address(value, &transaction).ok_or(StunError::Malformed)?),
            ERROR_CODE if len >= 4 => m.error_code = Some(u16::from(value[2] & 0x7) * 100 + u16::from(value[3])),
            MESSAGE_INTEGRITY if len == 20 => m.integrity = Some((at, value)),
            FINGERPRINT if len == 4 => {
                let want = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
                if crc32(&with_length(datagram, at, end)) ^ FINGERPRINT_XOR != want {
                    return Err(StunError::Fingerprint);
                }
                fingerprint_ok = true;
            }
            PRIORITY | USE_CANDIDATE | ICE_CONTROLLING | ICE_CONTROLLED | ERROR_CODE | MESSAGE_INTEGRITY | FINGERPRINT => {
                return Err(StunError::Malformed)
            }
            k if k < 0x8000 && !matches!(k, 0x0001 | 0x0014 | 0x0015 | 0x001C | 0x001D | 0x001E) => {
                return Err(StunError::UnknownRequired(k));
            }
            _ => {}
        }
        at = end + (4 - len % 4) % 4;
    }
    if !fingerprint_ok {
        return Err(StunError::Fingerprint);
    }
    Ok(m)
}

impl Message<'_> {
    /// MESSAGE-INTEGRITY checked with `password` (the short-term credential).
    pub fn verify(&self, password: &[u8]) -> Result<(), StunError> {
        let (at, value) = self.integrity.ok_or(StunError::Integrity)?;
        let mac = hmac_sha1(password, &with_length(self.raw, at, at + 24));
        if bool::from(mac[..].ct_eq(value)) {
            Ok(())
        } else {
            Err(StunError::Integrity)
        }
    }
}

/// The message up to `upto`, its header's length set as if it ended at `end` (what
/// MESSAGE-INTEGRITY and FINGERPRINT are computed over).
fn with_length(raw: &[u8], upto: usize, end: usize) -> Vec<u8> {
    let mut v = raw[..upto].to_vec();
    let len = (end - HEADER) as u16;
    v[2..4].copy_from_slice(&len.to_be_bytes());
    v
}

fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn read_xor_address(value: &[u8], transaction: &[u8; 12]) -> Option<SocketAddr> {
    if value.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([value[2], value[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match (value[1], value.len()) {
        (1, 8) => {
            let ip: [u8; 4] = std::array::from_fn(|i| value[4 + i] ^ cookie[i]);
            Some(SocketAddr::new(IpAddr::from(ip), port))
        }
        (2, 20) => {
            let ip: [u8; 16] = std::array::from_fn(|i| value[4 + i] ^ if i < 4 { cookie[i] } else { transaction[i - 4] });
            Some(SocketAddr::new(IpAddr::from(ip), port))
        }
        _ => None,
    }
}

/// Builds a STUN message: attributes in order, then MESSAGE-INTEGRITY (when a
/// password is given) and FINGERPRINT.
pub struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    pub fn new(kind: u16, transaction: [u8; 12]) -> Builder {
        let mut buf = Vec::with_capacity(96);
        buf.extend_from_slice(&kind.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&transaction);
        Builder { buf }
    }

    fn attribute(&mut self, kind: u16, value: &[u8]) -> &mut Builder {
        self.buf.extend_from_slice(&kind.to_be_bytes());
        self.buf.extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        self.buf.extend(std::iter::repeat_n(0, (4 - value.len() % 4) % 4));
        self
    }

    pub fn username(&mut self, name: &[u8]) -> &mut Builder {
        self.attribute(USERNAME, name)
    }

    pub fn priority(&mut self, p: u32) -> &mut Builder {
        self.attribute(PRIORITY, &p.to_be_bytes())
    }

    pub fn use_candidate(&mut self) -> &mut Builder {
        self.attribute(USE_CANDIDATE, &[])
    }

    pub fn controlling(&mut self, tie_breaker: u64) -> &mut Builder {
        self.attribute(ICE_CONTROLLING, &tie_breaker.to_be_bytes())
    }

    pub fn controlled(&mut self, tie_breaker: u64) -> &mut Builder {
        self.attribute(ICE_CONTROLLED, &tie_breaker.to_be_bytes())
    }

    pub fn error(&mut self, code: u16, reason: &str) -> &mut Builder {
        let mut v = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
        v.extend_from_slice(reason.as_bytes());
        self.attribute(ERROR_CODE, &v)
    }

    pub fn xor_mapped(&mut self, addr: SocketAddr) -> &mut Builder {
        let cookie = MAGIC_COOKIE.to_be_bytes();
        let mut v = vec![0, 0];
        v.extend_from_slice(&(addr.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes());
        match addr.ip() {
            IpAddr::V4(ip) => {
                v[1] = 1;
                v.extend(ip.octets().iter().zip(cookie).map(|(a, b)| a ^ b));
            }
            IpAddr::V6(ip) => {
                v[1] = 2;
                let mut key = [0u8; 16];
                key[..4].copy_from_slice(&cookie);
                key[4..].copy_from_slice(&self.buf[8..20]);
                v.extend(ip.octets().iter().zip(key).map(|(a, b)| a ^ b));
            }
        }
        self.attribute(XOR_MAPPED_ADDRESS, &v)
    }

    /// MESSAGE-INTEGRITY with `password` (if any), FINGERPRINT, and the bytes.
    pub fn finish(&mut self, password: Option<&[u8]>) -> Vec<u8> {
        if let Some(key) = password {
            let end = self.buf.len() + 24;
            let mac = hmac_sha1(key, &with_length(&self.buf, self.buf.len(), end));
            self.attribute(MESSAGE_INTEGRITY, &mac);
        }
        let end = self.buf.len() + 8;
        let crc = crc32(&with_length(&self.buf, self.buf.len(), end)) ^ FINGERPRINT_XOR;
        self.attribute(FINGERPRINT, &crc.to_be_bytes());
        let len = (self.buf.len() - HEADER) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
        std::mem::take(&mut self.buf)
    }
}

/// CRC-32 (ISO-HDLC, as FINGERPRINT takes it), bitwise: STUN messages are short and
/// rare (a consent check every few seconds).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    const PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

    /// RFC 5769 §2.1.
    fn sample_request() -> Vec<u8> {
        hex("00010058 2112a442 b7e7a701 bc34d686 fa87dfae 80220010 5354554e 20746573 7420636c 69656e74 \
             00240004 6e0001ff 80290008 932ff9b1 51263b36 00060009 6576746a 3a683676 59202020 00080014 \
             9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2 80280004 e57a3bcf")
    }

    #[test]
    fn crc32_is_iso_hdlc() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn rfc5769_sample_request_reads_and_verifies() {
        let raw = sample_request();
        assert_eq!(raw.len(), 108);
        let m = parse(&raw).expect("the RFC's request");
        assert_eq!(m.kind, BINDING_REQUEST);
        assert_eq!(m.username, Some(&b"evtj:h6vY"[..]));
        assert_eq!(m.priority, Some(0x6e0001ff));
        assert_eq!(m.controlled, Some(0x932ff9b151263b36));
        assert!(!m.use_candidate);
        m.verify(PASSWORD).expect("the RFC's password");
        assert_eq!(m.verify(b"VOkJxbRl1RmTxUk/WvJxBu"), Err(StunError::Integrity));
        // A bit flipped anywhere breaks the fingerprint.
        for i in [21, 40, 70, 100] {
            let mut bad = raw.clone();
            bad[i] ^= 1;
            assert!(parse(&bad).is_err(), "byte {i}");
        }
    }

    #[test]
    fn rfc5769_ipv4_and_ipv6_responses_read() {
        let v4 = hex("0101003c 2112a442 b7e7a701 bc34d686 fa87dfae 8022000b 74657374 20766563 746f7220 00200008 \
             0001a147 e112a643 00080014 2b91f599 fd9e90c3 8c7489f9 2af9ba53 f06be7d7 80280004 c07d4c96");
        let m = parse(&v4).expect("the RFC's IPv4 response");
        assert_eq!(m.kind, BINDING_SUCCESS);
        assert_eq!(m.xor_mapped, Some("192.0.2.1:32853".parse().unwrap()));
        m.verify(PASSWORD).unwrap();
        let v6 = hex("01010048 2112a442 b7e7a701 bc34d686 fa87dfae 8022000b 74657374 20766563 746f7220 00200014 \
             0002a147 0113a9fa a5d3f179 bc25f4b5 bed2b9d9 00080014 a382954e 4be67bf1 1784c97c 8292c275 \
             bfe3ed41 80280004 c8fb0b4c");
        let m = parse(&v6).expect("the RFC's IPv6 response");
        assert_eq!(m.xor_mapped, Some("[2001:db8:1234:5678:11:2233:4455:6677]:32853".parse().unwrap()));
        m.verify(PASSWORD).unwrap();
    }

    #[test]
    fn what_the_builder_writes_reads_back_and_verifies() {
        let t = [7u8; 12];
        for addr in ["192.0.2.1:32853", "[2001:db8::1]:9"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let raw = Builder::new(BINDING_SUCCESS, t).xor_mapped(addr).finish(Some(b"pw"));
            let m = parse(&raw).unwrap();
            assert_eq!((m.kind, m.transaction, m.xor_mapped), (BINDING_SUCCESS, t, Some(addr)));
            m.verify(b"pw").unwrap();
        }
        let raw = Builder::new(BINDING_REQUEST, t).username(b"a:b").priority(9).use_candidate().controlling(5).finish(Some(b"pw"));
        let m = parse(&raw).unwrap();
        assert_eq!((m.username, m.priority, m.use_candidate, m.controlling), (Some(&b"a:b"[..]), Some(9), true, Some(5)));
        let raw = Builder::new(BINDING_ERROR, t).error(401, "Unauthorized").finish(None);
        assert_eq!(parse(&raw).unwrap().error_code, Some(401));
        assert_eq!(parse(&raw).unwrap().verify(b"pw"), Err(StunError::Integrity), "no integrity to check");
    }

    #[test]
    fn the_first_byte_tells_stun_dtls_and_rtp_apart() {
        assert_eq!(classify(&sample_request()), Kind::Stun);
        assert_eq!(classify(&[22, 254, 253]), Kind::Dtls);
        assert_eq!(classify(&[0x80, 0]), Kind::Rtp);
        assert_eq!(classify(&[]), Kind::Other);
        assert_eq!(classify(&[64]), Kind::Other);
    }

    #[test]
    fn junk_and_truncation_are_refused_not_panicked_on() {
        let raw = sample_request();
        for n in 0..raw.len() {
            assert!(parse(&raw[..n]).is_err());
        }
        let mut unknown = Builder::new(BINDING_REQUEST, [1; 12]);
        unknown.attribute(0x0042, b"x");
        assert_eq!(parse(&unknown.finish(None)), Err(StunError::UnknownRequired(0x0042)));
        let no_fingerprint = &raw[..raw.len() - 8];
        let mut fixed = no_fingerprint.to_vec();
        let len = (fixed.len() - HEADER) as u16;
        fixed[2..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(parse(&fixed), Err(StunError::Fingerprint), "ICE requires FINGERPRINT");
    }
}
