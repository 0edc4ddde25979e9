//! SDES (RFC 4568): the `a=crypto` attribute that carries a direction's master key in
//! the SDP, and the node's SRTP policy.
//!
//! `a=crypto:<tag> <suite> inline:<base64 key||salt>[|<lifetime>][|<MKI>:<length>] [<session params>]`
//!
//! What the node does not run is refused by line, with the reason, so an offer with
//! several lines falls back to one it can take: several keys in one line, a key
//! derivation rate, unencrypted or unauthenticated SRTP, FEC. Errors never quote the
//! key parameter.

use std::fmt;

use thiserror::Error;
use zeroize::Zeroizing;

use super::{CallKeys, MasterKey, Suite, MAX_LIFETIME};

/// The node's rule for plain RTP against SRTP (`MEDIA_SRTP_POLICY`, or per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SrtpPolicy {
    /// Plain RTP only: RTP/SAVP offers are refused, crypto lines on RTP/AVP ignored.
    Off,
    /// SRTP when the far end offers or accepts keys, plain RTP otherwise.
    #[default]
    Optional,
    /// SRTP only: a plain offer or answer is refused.
    Required,
}

impl SrtpPolicy {
    pub fn parse(s: &str) -> Option<SrtpPolicy> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => Some(SrtpPolicy::Off),
            "optional" => Some(SrtpPolicy::Optional),
            "required" => Some(SrtpPolicy::Required),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SrtpPolicy::Off => "off",
            SrtpPolicy::Optional => "optional",
            SrtpPolicy::Required => "required",
        }
    }
}

/// A crypto line the node can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crypto {
    pub tag: u32,
    pub key: MasterKey,
}

/// Why a crypto line was not taken.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum CryptoRefusal {
    #[error("crypto line is not `<tag> <suite> inline:<key>`")]
    Syntax,
    #[error("crypto tag {0} is not a number of at most 9 digits")]
    Tag(String),
    #[error("crypto:{tag} suite {suite} is not supported")]
    Suite { tag: u32, suite: String },
    #[error("crypto:{tag} {suite}: the key method is not inline")]
    NotInline { tag: u32, suite: Suite },
    #[error("crypto:{tag} {suite}: the inline key is not base64 of {len} bytes (key and salt)")]
    KeyLength { tag: u32, suite: Suite, len: usize },
    #[error("crypto:{tag} {suite}: several master keys in one line (MKI rollover) are not supported")]
    SeveralKeys { tag: u32, suite: Suite },
    #[error("crypto:{tag} {suite}: bad key lifetime (2^n or a number, at most 2^48)")]
    Lifetime { tag: u32, suite: Suite },
    #[error("crypto:{tag} {suite}: bad MKI (value:length, length 1 to 8 bytes)")]
    Mki { tag: u32, suite: Suite },
    #[error("crypto:{tag} {suite}: session parameter {param} is not supported")]
    SessionParam { tag: u32, suite: Suite, param: String },
}

/// A field quoted back in a refusal. Suite names and session parameters are upper case,
/// digits, `_` and `=`; a short field cannot hold a key (30 bytes and more, 40 characters
/// of base64). Anything else may be key material in the wrong place, so it is not repeated.
fn clip(s: &str) -> String {
    let name = s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b"_-=".contains(&b));
    if name || s.len() <= 8 {
        s.chars().take(40).collect()
    } else {
        "(not shown)".into()
    }
}

/// Parses the value of one `a=crypto` attribute (after `crypto:`).
pub fn parse(value: &str) -> Result<Crypto, CryptoRefusal> {
    let mut fields = value.split_ascii_whitespace();
    let (Some(tag), Some(suite), Some(key_params)) = (fields.next(), fields.next(), fields.next()) else {
        return Err(CryptoRefusal::Syntax);
    };
    let tag: u32 = tag.parse().ok().filter(|_| tag.len() <= 9).ok_or_else(|| CryptoRefusal::Tag(clip(tag)))?;
    let suite = Suite::from_name(suite).ok_or_else(|| CryptoRefusal::Suite { tag, suite: clip(suite) })?;
    if key_params.contains(';') {
        return Err(CryptoRefusal::SeveralKeys { tag, suite });
    }
    let inline = key_params.strip_prefix("inline:").ok_or(CryptoRefusal::NotInline { tag, suite })?;
    let mut parts = inline.split('|');
    let material = parts.next().unwrap_or_default();
    let bytes = {
        use base64::Engine;
        // Some stacks drop the padding.
        let e = base64::engine::general_purpose::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new().with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        Zeroizing::new(e.decode(material).unwrap_or_default())
    };
    let mut key = MasterKey::new(suite, &bytes).ok_or(CryptoRefusal::KeyLength { tag, suite, len: suite.key_len() + suite.salt_len() })?;
    for p in parts {
        if let Some((value, len)) = p.split_once(':') {
            let (Ok(value), Ok(len)) = (value.parse::<u64>(), len.parse::<usize>()) else {
                return Err(CryptoRefusal::Mki { tag, suite });
            };
            if key.mki.is_some() || !(1..=8).contains(&len) || (len < 8 && value >> (8 * len) != 0) {
                return Err(CryptoRefusal::Mki { tag, suite });
            }
            key.mki = Some(value.to_be_bytes()[8 - len..].to_vec());
        } else {
            let lifetime = match p.strip_prefix("2^") {
                Some(exp) => exp.parse::<u32>().ok().filter(|e| *e <= 48).map(|e| 1u64 << e),
                None => p.parse::<u64>().ok().filter(|l| *l <= MAX_LIFETIME),
            };
            key.lifetime = lifetime.filter(|l| *l > 0).ok_or(CryptoRefusal::Lifetime { tag, suite })?;
        }
    }
    for param in fields {
        let name = param.split('=').next().unwrap_or_default();
        let ok = match name.to_ascii_uppercase().as_str() {
            "KDR" => param[name.len()..].trim_start_matches('=') == "0",
            // The window-size hint: the node's window (128) serves any sensible one.
            "WSH" => param[name.len()..].trim_start_matches('=').parse::<u32>().is_ok_and(|w| w >= 64),
            // A parameter marked optional by its leading '-' may be ignored (§6.3.7).
            _ => name.starts_with('-'),
        };
        if !ok {
            return Err(CryptoRefusal::SessionParam { tag, suite, param: clip(param) });
        }
    }
    Ok(Crypto { tag, key })
}

/// The line the node writes for its own key (`a=crypto:` and the value, no CRLF).
pub fn format(tag: u32, key: &MasterKey) -> Zeroizing<String> {
    let mut s = Zeroizing::new(format!("a=crypto:{tag} {} inline:", key.suite.name()));
    s.push_str(&key.inline());
    // RFC 4568 allows the lifetime as a power of two or as a plain number.
    if key.lifetime != MAX_LIFETIME {
        if key.lifetime.is_power_of_two() {
            s.push_str(&format!("|2^{}", key.lifetime.trailing_zeros()));
        } else {
            s.push_str(&format!("|{}", key.lifetime));
        }
    }
    if let Some(mki) = &key.mki {
        let mut v = [0u8; 8];
        v[8 - mki.len()..].copy_from_slice(mki);
        s.push_str(&format!("|{}:{}", u64::from_be_bytes(v), mki.len()));
    }
    s
}

/// The offer's crypto lines the node would run, and why the others were not taken.
#[derive(Debug, Default)]
pub struct Offered {
    pub supported: Vec<Crypto>,
    pub refused: Vec<CryptoRefusal>,
}

impl Offered {
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Offered {
        let mut o = Offered::default();
        for v in values {
            match parse(v) {
                Ok(c) => o.supported.push(c),
                Err(r) => o.refused.push(r),
            }
        }
        o
    }

    /// The strongest supported line (Suite::ALL's order), the first of its suite.
    pub fn best(&self) -> Option<&Crypto> {
        Suite::ALL.iter().find_map(|s| self.supported.iter().find(|c| c.key.suite == *s))
    }
}

impl fmt::Display for Offered {
    /// Why nothing could be taken, for an error: each refused line's reason.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.refused.is_empty() {
            return f.write_str("no crypto line");
        }
        let reasons: Vec<String> = self.refused.iter().map(|r| r.to_string()).collect();
        f.write_str(&reasons.join("; "))
    }
}

/// A call's SDES keys across its offers and answers: the node's key for its own
/// direction lives on through re-offers of the same suite, so a re-INVITE (a hold, a
/// codec change, the far end's new key) never leaves the far end unable to decrypt.
#[derive(Debug, Default)]
pub struct CallSdes {
    /// The crypto lines of the node's last offer (keys of the node's).
    offered: Vec<Crypto>,
    /// What applies to the call now.
    agreed: Option<CallKeys>,
}

impl CallSdes {
    /// The keys for answering the far end's `theirs` (a new key of the node's from
    /// `rng`).
    pub fn answer<R: rand::CryptoRng + ?Sized>(&mut self, theirs: &Crypto, rng: &mut R) -> CallKeys {
        let local = match &self.agreed {
            Some(k) if k.local.suite == theirs.key.suite => k.local.clone(),
            _ => MasterKey::generate(theirs.key.suite, rng),
        };
        let keys = CallKeys { remote: theirs.key.clone(), local };
        self.agreed = Some(keys.clone());
        keys
    }

    /// The node's crypto lines for an offer: one per suite, strongest first, the key in
    /// use kept for its suite (new ones from `rng`).
    pub fn offer<R: rand::CryptoRng + ?Sized>(&mut self, rng: &mut R) -> Vec<Crypto> {
        self.offered = Suite::ALL
            .iter()
            .zip(1..)
            .map(|(suite, tag)| {
                let key = match &self.agreed {
                    Some(k) if k.local.suite == *suite => k.local.clone(),
                    _ => MasterKey::generate(*suite, rng),
                };
                Crypto { tag, key }
            })
            .collect();
        self.offered.clone()
    }

    /// The keys when the far end answered the node's offer with `theirs`; None when it
    /// names no line of that offer.
    pub fn answered(&mut self, theirs: &Crypto) -> Option<CallKeys> {
        let mine = self.offered.iter().find(|c| c.tag == theirs.tag && c.key.suite == theirs.key.suite)?;
        let keys = CallKeys { remote: theirs.key.clone(), local: mine.key.clone() };
        self.agreed = Some(keys.clone());
        Some(keys)
    }

    /// Plain RTP from now on.
    pub fn plain(&mut self) {
        self.agreed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY80: &str = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";

    #[test]
    fn parses_the_lines_sip_stacks_write() {
        let c = parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY80}|2^20|1:4")).unwrap();
        assert_eq!((c.tag, c.key.suite, c.key.lifetime), (1, Suite::AesCm128HmacSha1_80, 1 << 20));
        assert_eq!(c.key.mki.as_deref(), Some(&[0, 0, 0, 1][..]));
        let c = parse(&format!("2 AES_CM_128_HMAC_SHA1_32 inline:{KEY80} KDR=0 WSH=128 -FOO=1")).unwrap();
        assert_eq!((c.key.lifetime, c.key.mki.clone()), (MAX_LIFETIME, None));
        // A 28-byte GCM key and salt, unpadded base64.
        let gcm = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGw";
        assert_eq!(parse(&format!("3 AEAD_AES_128_GCM inline:{gcm}")).unwrap().key.suite, Suite::AeadAes128Gcm);
        let printed = format!("{:?}", parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY80}")).unwrap());
        assert!(!printed.contains(KEY80) && printed.contains("<redacted>"), "{printed}");
    }

    #[test]
    fn refuses_clearly_and_never_quotes_the_key() {
        let cases = [
            (format!("1 F8_128_HMAC_SHA1_80 inline:{KEY80}"), "suite F8_128_HMAC_SHA1_80 is not supported"),
            (format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY80}|2^20|1:4;inline:{KEY80}|2^20|2:4"), "several master keys"),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=".to_string(), "not base64 of 30 bytes"),
            (format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY80} KDR=10"), "session parameter KDR=10"),
            (format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY80} UNENCRYPTED_SRTP"), "UNENCRYPTED_SRTP"),
            (format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY80} UNAUTHENTICATED_SRTP"), "UNAUTHENTICATED_SRTP"),
            (format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY80}|2^49"), "bad key lifetime"),
            (format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY80}|300:1"), "bad MKI"),
            (format!("1 AES_CM_128_HMAC_SHA1_80 uri:https://kms/{KEY80}"), "not inline"),
            ("x AES_CM_128_HMAC_SHA1_80 inline:a".to_string(), "tag x"),
            ("1".to_string(), "crypto line is not"),
            // The suite left out, so the key stands where the suite should.
            (format!("1 inline:{KEY80} UNENCRYPTED_SRTP"), "suite (not shown)"),
            (format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY80} {KEY80}"), "session parameter (not shown)"),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:a|2^20".to_string(), "not base64"),
        ];
        for (line, expected) in cases {
            let e = parse(&line).unwrap_err().to_string();
            assert!(e.contains(expected), "{line}: {e}");
            assert!(!e.contains(KEY80), "the key leaked into {e}");
        }
    }

    #[test]
    fn the_strongest_supported_line_is_chosen_and_written_back_alike() {
        let o = Offered::parse([
            format!("1 AES_CM_128_HMAC_SHA1_32 inline:{KEY80}").as_str(),
            format!("2 AES_CM_128_HMAC_SHA1_80 inline:{KEY80}").as_str(),
            format!("3 F8_128_HMAC_SHA1_80 inline:{KEY80}").as_str(),
        ]);
        assert_eq!(o.best().map(|c| c.tag), Some(2));
        assert_eq!(o.refused.len(), 1);
        let mine = MasterKey::random(Suite::AesCm128HmacSha1_80);
        let line = format(2, &mine);
        let back = parse(line.strip_prefix("a=crypto:").unwrap()).unwrap();
        assert_eq!(back, Crypto { tag: 2, key: mine.clone() });
        assert_ne!(MasterKey::random(Suite::AesCm128HmacSha1_80), mine, "fresh keys differ");
        let mut with_mki = mine;
        with_mki.mki = Some(vec![0, 7]);
        with_mki.lifetime = 1 << 31;
        let back = parse(format(5, &with_mki).strip_prefix("a=crypto:").unwrap()).unwrap();
        assert_eq!(back.key, with_mki);
    }

    #[test]
    fn the_nodes_key_lives_on_through_re_offers_of_its_suite() {
        let theirs = |suite| Crypto { tag: 1, key: MasterKey::random(suite) };
        let mut call = CallSdes::default();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
        let first = call.answer(&theirs(Suite::AesCm128HmacSha1_80), &mut rng);
        let again = call.answer(&theirs(Suite::AesCm128HmacSha1_80), &mut rng);
        assert_eq!(first.local, again.local, "the far end rekeyed; the node's direction goes on");
        assert_ne!(first.remote, again.remote);
        let other = call.answer(&theirs(Suite::AeadAes128Gcm), &mut rng);
        assert_ne!(other.local.suite, first.local.suite);
        let offered = call.offer(&mut rng);
        assert_eq!(offered.len(), 6);
        assert_eq!(offered.iter().find(|c| c.key.suite == Suite::AeadAes128Gcm).unwrap().key, other.local, "kept in the offer");
        let answer = Crypto { tag: 4, key: MasterKey::random(Suite::AesCm128HmacSha1_80) };
        let keys = call.answered(&answer).unwrap();
        assert_eq!(keys.local, offered[3].key);
        assert_eq!(call.answered(&Crypto { tag: 4, key: MasterKey::random(Suite::AeadAes128Gcm) }), None, "tag and suite must match");
    }
}
