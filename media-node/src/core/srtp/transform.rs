//! One master key's transforms: the session keys it derives (RFC 3711 §4.3, key
//! derivation rate 0), AES-CM with HMAC-SHA1 (§4.1.1, §4.2) and AES-GCM (RFC 7714), for
//! SRTP and SRTCP.

use aes::{Aes128, Aes256};
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm, Nonce, Tag};
use ctr::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::replay::ReplayWindow;
use super::{MasterKey, SrtpError, Suite};

/// RFC 3711 §4.3.1 labels.
const LABEL_RTP_ENCRYPTION: u8 = 0;
const LABEL_RTP_AUTH: u8 = 1;
const LABEL_RTP_SALT: u8 = 2;
const LABEL_RTCP_ENCRYPTION: u8 = 3;
const LABEL_RTCP_AUTH: u8 = 4;
const LABEL_RTCP_SALT: u8 = 5;

const GCM_TAG: usize = 16;
/// The SRTCP trailer word: the E bit and the 31-bit index.
const E_FLAG: u32 = 0x8000_0000;

enum Gcm {
    A128(Box<Aes128Gcm>),
    A256(Box<Aes256Gcm>),
}

impl Gcm {
    fn encrypt(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> Tag {
        let nonce = Nonce::from_slice(nonce);
        match self {
            Gcm::A128(c) => c.encrypt_in_place_detached(nonce, aad, buf),
            Gcm::A256(c) => c.encrypt_in_place_detached(nonce, aad, buf),
        }
        .expect("an SRTP packet is far below GCM's length limit")
    }

    fn decrypt(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8], tag: &[u8]) -> Result<(), SrtpError> {
        let nonce = Nonce::from_slice(nonce);
        let tag = Tag::from_slice(tag);
        match self {
            Gcm::A128(c) => c.decrypt_in_place_detached(nonce, aad, buf, tag),
            Gcm::A256(c) => c.decrypt_in_place_detached(nonce, aad, buf, tag),
        }
        .map_err(|_| SrtpError::Auth)
    }
}

/// The session keys of RTP or of RTCP.
struct SessionKeys {
    /// The cipher key, `suite.key_len()` bytes of it.
    encryption: Zeroizing<[u8; 32]>,
    auth: Zeroizing<[u8; 20]>,
    /// 14 bytes for AES-CM, 12 for GCM.
    salt: Zeroizing<[u8; 14]>,
    /// GCM's key schedule and hash key, built once (wiped on drop: aes-gcm's zeroize).
    gcm: Option<Gcm>,
}

impl SessionKeys {
    fn derive(master: &MasterKey, labels: [u8; 3]) -> SessionKeys {
        let suite = master.suite;
        let mut encryption = Zeroizing::new([0u8; 32]);
        let mut auth = Zeroizing::new([0u8; 20]);
        let mut salt = Zeroizing::new([0u8; 14]);
        prf(master, labels[0], &mut encryption[..suite.key_len()]);
        if !suite.is_aead() {
            prf(master, labels[1], &mut auth[..]);
        }
        prf(master, labels[2], &mut salt[..suite.salt_len()]);
        let gcm = match suite {
            Suite::AeadAes128Gcm => Some(Gcm::A128(Box::new(Aes128Gcm::new_from_slice(&encryption[..16]).expect("16 bytes")))),
            Suite::AeadAes256Gcm => Some(Gcm::A256(Box::new(Aes256Gcm::new_from_slice(&encryption[..32]).expect("32 bytes")))),
            _ => None,
        };
        SessionKeys { encryption, auth, salt, gcm }
    }

    #[cfg(test)]
    fn from_session(suite: Suite, key: &[u8], salt_in: &[u8]) -> SessionKeys {
        let mut encryption = Zeroizing::new([0u8; 32]);
        encryption[..key.len()].copy_from_slice(key);
        let mut salt = Zeroizing::new([0u8; 14]);
        salt[..salt_in.len()].copy_from_slice(salt_in);
        let gcm = match suite {
            Suite::AeadAes128Gcm => Some(Gcm::A128(Box::new(Aes128Gcm::new_from_slice(key).unwrap()))),
            Suite::AeadAes256Gcm => Some(Gcm::A256(Box::new(Aes256Gcm::new_from_slice(key).unwrap()))),
            _ => None,
        };
        SessionKeys { encryption, auth: Zeroizing::new([0; 20]), salt, gcm }
    }

    /// AES in counter mode over `buf` from the 128-bit IV `iv`.
    fn ctr(&self, key_len: usize, iv: &[u8; 16], buf: &mut [u8]) {
        ctr_keystream(&self.encryption[..key_len], iv, buf);
    }

    fn hmac(&self, parts: &[&[u8]]) -> [u8; 20] {
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(&self.auth[..]).expect("HMAC takes any key length");
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }

    /// AES-CM's IV (§4.1.1): the salt, the SSRC at bits 64..96, the index at 16..64.
    fn cm_iv(&self, ssrc: u32, index: u64) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&self.salt[..]);
        for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *b ^= s;
        }
        for (b, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
            *b ^= s;
        }
        iv
    }

    /// GCM's 96-bit IV (RFC 7714 §8.1, §9.1): 00 00, the SSRC, then 48 bits (the ROC
    /// and sequence number, or 00 00 and the SRTCP index), XOR the salt.
    fn gcm_iv(&self, ssrc: u32, tail: u64) -> [u8; 12] {
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
        iv[6..12].copy_from_slice(&tail.to_be_bytes()[2..]);
        for (b, s) in iv.iter_mut().zip(&self.salt[..12]) {
            *b ^= s;
        }
        iv
    }
}

fn ctr_keystream(key: &[u8], iv: &[u8; 16], buf: &mut [u8]) {
    match key.len() {
        16 => ctr::Ctr128BE::<Aes128>::new(key.into(), iv.into()).apply_keystream(buf),
        32 => ctr::Ctr128BE::<Aes256>::new(key.into(), iv.into()).apply_keystream(buf),
        n => unreachable!("AES key of {n} bytes"),
    }
}

/// The AES-CM PRF of §4.3.1 with r = 0 (key derivation rate 0): the master salt with
/// the label at byte 7, times 2^16, as the counter's start. A 96-bit GCM salt is padded
/// with zeros to 112 bits, as libsrtp does.
fn prf(master: &MasterKey, label: u8, out: &mut [u8]) {
    let mut iv = Zeroizing::new([0u8; 16]);
    let salt = master.salt();
    iv[..salt.len()].copy_from_slice(salt);
    iv[7] ^= label;
    out.fill(0);
    ctr_keystream(master.key(), &iv, out);
}

/// A master key's SRTP and SRTCP transforms.
pub(super) struct Transform {
    suite: Suite,
    rtp: SessionKeys,
    rtcp: SessionKeys,
}

impl Transform {
    pub fn new(master: &MasterKey) -> Transform {
        Transform {
            suite: master.suite,
            rtp: SessionKeys::derive(master, [LABEL_RTP_ENCRYPTION, LABEL_RTP_AUTH, LABEL_RTP_SALT]),
            rtcp: SessionKeys::derive(master, [LABEL_RTCP_ENCRYPTION, LABEL_RTCP_AUTH, LABEL_RTCP_SALT]),
        }
    }

    /// `packet` (plain, header `hlen` bytes) becomes SRTP; `index` is ROC·2^16 + SEQ.
    pub fn protect_rtp(&self, packet: &mut Vec<u8>, hlen: usize, ssrc: u32, index: u64, mki: Option<&[u8]>) {
        let k = &self.rtp;
        if let Some(gcm) = &k.gcm {
            let iv = k.gcm_iv(ssrc, index);
            let (head, body) = packet.split_at_mut(hlen);
            let tag = gcm.encrypt(&iv, head, body);
            packet.extend_from_slice(&tag);
            packet.extend_from_slice(mki.unwrap_or_default());
            return;
        }
        k.ctr(self.suite.key_len(), &k.cm_iv(ssrc, index), &mut packet[hlen..]);
        let covered = packet.len();
        let roc = ((index >> 16) as u32).to_be_bytes();
        let tag = k.hmac(&[&packet[..covered], &roc]);
        packet.extend_from_slice(mki.unwrap_or_default());
        packet.extend_from_slice(&tag[..self.suite.rtp_tag_len()]);
    }

    /// Authenticates the SRTP packet `data` (MKI removed) and decrypts it into `out`.
    pub fn unprotect_rtp(&self, data: &[u8], hlen: usize, ssrc: u32, index: u64, out: &mut Vec<u8>) -> Result<(), SrtpError> {
        let k = &self.rtp;
        let tag_len = self.suite.rtp_tag_len();
        if data.len() < hlen + tag_len {
            return Err(SrtpError::TooShort);
        }
        let (body, tag) = data.split_at(data.len() - tag_len);
        out.clear();
        out.extend_from_slice(body);
        if let Some(gcm) = &k.gcm {
            let iv = k.gcm_iv(ssrc, index);
            let (head, payload) = out.split_at_mut(hlen);
            if let Err(e) = gcm.decrypt(&iv, head, payload, tag) {
                out.clear();
                return Err(e);
            }
            return Ok(());
        }
        let roc = ((index >> 16) as u32).to_be_bytes();
        let mac = k.hmac(&[body, &roc]);
        if !bool::from(mac[..tag_len].ct_eq(tag)) {
            out.clear();
            return Err(SrtpError::Auth);
        }
        k.ctr(self.suite.key_len(), &k.cm_iv(ssrc, index), &mut out[hlen..]);
        Ok(())
    }

    /// `packet` (a plain RTCP compound packet) becomes SRTCP with index `index`,
    /// encrypted (the E bit set).
    pub fn protect_rtcp(&self, packet: &mut Vec<u8>, ssrc: u32, index: u32, mki: Option<&[u8]>) {
        let k = &self.rtcp;
        let trailer = (E_FLAG | index).to_be_bytes();
        if let Some(gcm) = &k.gcm {
            let iv = k.gcm_iv(ssrc, index as u64);
            let mut aad = [0u8; 12];
            aad[..8].copy_from_slice(&packet[..8]);
            aad[8..].copy_from_slice(&trailer);
            let tag = gcm.encrypt(&iv, &aad, &mut packet[8..]);
            packet.extend_from_slice(&tag);
            packet.extend_from_slice(&trailer);
            packet.extend_from_slice(mki.unwrap_or_default());
            return;
        }
        k.ctr(self.suite.key_len(), &k.cm_iv(ssrc, index as u64), &mut packet[8..]);
        packet.extend_from_slice(&trailer);
        let tag = k.hmac(&[&packet[..]]);
        packet.extend_from_slice(mki.unwrap_or_default());
        packet.extend_from_slice(&tag[..self.suite.rtcp_tag_len()]);
    }

    /// Authenticates the SRTCP packet `data` (MKI removed), checks its index against
    /// `window`, and decrypts it into `out`; returns the index.
    pub fn unprotect_rtcp(&self, data: &[u8], ssrc: u32, window: &ReplayWindow, out: &mut Vec<u8>) -> Result<u64, SrtpError> {
        let k = &self.rtcp;
        let tag_len = self.suite.rtcp_tag_len();
        if data.len() < 8 + 4 + tag_len {
            return Err(SrtpError::TooShort);
        }
        out.clear();
        if let Some(gcm) = &k.gcm {
            // header | ciphertext | tag | E+index
            let (rest, trailer) = data.split_at(data.len() - 4);
            let word = u32::from_be_bytes(trailer.try_into().expect("4 bytes"));
            let index = (word & !E_FLAG) as u64;
            let iv = k.gcm_iv(ssrc, index);
            let (sealed, tag) = rest.split_at(rest.len() - GCM_TAG);
            if word & E_FLAG != 0 {
                let mut aad = [0u8; 12];
                aad[..8].copy_from_slice(&sealed[..8]);
                aad[8..].copy_from_slice(trailer);
                out.extend_from_slice(sealed);
                gcm.decrypt(&iv, &aad, &mut out[8..], tag).inspect_err(|_| out.clear())?;
            } else {
                // Authenticated only (RFC 7714 §9.2): all of it is associated data.
                let mut aad = sealed.to_vec();
                aad.extend_from_slice(trailer);
                gcm.decrypt(&iv, &aad, &mut [], tag)?;
                out.extend_from_slice(sealed);
            }
            window.check(index).inspect_err(|_| out.clear())?;
            return Ok(index);
        }
        let (covered, tag) = data.split_at(data.len() - tag_len);
        let mac = k.hmac(&[covered]);
        if !bool::from(mac[..tag_len].ct_eq(tag)) {
            return Err(SrtpError::Auth);
        }
        let (packet, trailer) = covered.split_at(covered.len() - 4);
        let word = u32::from_be_bytes(trailer.try_into().expect("4 bytes"));
        let index = (word & !E_FLAG) as u64;
        window.check(index)?;
        out.extend_from_slice(packet);
        if word & E_FLAG != 0 {
            k.ctr(self.suite.key_len(), &k.cm_iv(ssrc, index), &mut out[8..]);
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// RFC 3711 Appendix B.3: the session keys of one master key.
    #[test]
    fn key_derivation_matches_rfc3711_b3() {
        let master =
            MasterKey::new(Suite::AesCm128HmacSha1_80, &hex("E1F97A0D3E018BE0D64FA32C06DE4139 0EC675AD498AFEEBB6960B3AABE6")).unwrap();
        let k = SessionKeys::derive(&master, [LABEL_RTP_ENCRYPTION, LABEL_RTP_AUTH, LABEL_RTP_SALT]);
        assert_eq!(&k.encryption[..16], &hex("C61E7A93744F39EE10734AFE3FF7A087")[..]);
        assert_eq!(&k.salt[..], &hex("30CBBC08863D8C85D49DB34A9AE1")[..]);
        assert_eq!(&k.auth[..], &hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")[..]);
        // The PRF's longer output (B.3 lists 94 bytes of the auth key stream).
        let mut long = [0u8; 94];
        prf(&master, LABEL_RTP_AUTH, &mut long);
        assert_eq!(
            &long[..],
            &hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA48F0A0ACF3C34E2359E6CDBCEE049646C43D9327AD175578EF72270986371C10C9A369AC2F94A8C5FBCDDDC256D6E919A48B610EF17C2041E474035766B68642C59BBFC2F34DB60DBDFB2")[..]
        );
    }

    /// RFC 3711 Appendix B.2: AES-CM's keystream for session key 2B7E..., salt F0F1...FD,
    /// SSRC 0, index 0 (blocks 0, 1, 2, 0xFEFF, 0xFF00, 0xFF01).
    #[test]
    fn aes_cm_keystream_matches_rfc3711_b2() {
        let mut k = SessionKeys::from_session(
            Suite::AesCm128HmacSha1_80,
            &hex("2B7E151628AED2A6ABF7158809CF4F3C"),
            &hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD"),
        );
        k.auth = Zeroizing::new([0; 20]);
        let iv = k.cm_iv(0, 0);
        assert_eq!(&iv[..], &hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000")[..]);
        let mut stream = vec![0u8; 16 * 0xFF02];
        k.ctr(16, &iv, &mut stream);
        let block = |i: usize| stream[16 * i..16 * (i + 1)].to_vec();
        assert_eq!(block(0), hex("E03EAD0935C95E80E166B16DD92B4EB4"));
        assert_eq!(block(1), hex("D23513162B02D0F72A43A2FE4A5F97AB"));
        assert_eq!(block(2), hex("41E95B3BB0A2E8DD477901E4FCA894C0"));
        assert_eq!(block(0xFEFF), hex("EC8CDF7398607CB0F2D21675EA9EA1E4"));
        assert_eq!(block(0xFF00), hex("362B7C3C6773516318A077D7FC5073AE"));
        assert_eq!(block(0xFF01), hex("6A2CC3787889374FBEB4C81B17BA6C44"));
    }

    /// RFC 7714 §16 and §17: session key 00..0f (or 00..1f), salt "Quid pro quo".
    fn gcm(suite: Suite) -> Transform {
        let key: Vec<u8> = (0..suite.key_len() as u8).collect();
        let salt = hex("517569642070726f2071756f");
        Transform { suite, rtp: SessionKeys::from_session(suite, &key, &salt), rtcp: SessionKeys::from_session(suite, &key, &salt) }
    }

    const GALLIA: &str = "8040f17b8041f8d35501a0b2 47616c6c 69612065 7374206f 6d6e6973 20646976 69736120 696e2070 61727465 73207472 6573";
    const RTCP: &str = "81c8000d4d6172734e5450314e545032525450200000042a0000e9304c756e61deadbeefdeadbeefdeadbeefdeadbeefdeadbeef";

    #[test]
    fn gcm_matches_rfc7714_vectors() {
        let cases = [
            (
                Suite::AeadAes128Gcm,
                "8040f17b8041f8d35501a0b2f24de3a3fb34de6cacba861c9d7e4bcabe633bd50d294e6f42a5f47a51c7d19b36de3adf8833899d7f27beb16a9152cf765ee4390cce",
                "81c8000d4d61727363e94885dcdab67ca727d7662f6b7e997ff5c0f76c06f32dc676a5f1730d6fda4ce09b4686303ded0bb9275bc84aa45896cf4d2fc5abf87245d9eade800005d4",
            ),
            (
                Suite::AeadAes256Gcm,
                "8040f17b8041f8d35501a0b232b1de78a822fe12ef9f78fa332e33aab18012389a58e2f3b50b2a0276ffae0f1ba63799b87b7aa3db36dfffd6b0f9bb7878d7a76c13",
                "81c8000d4d617273d50ae4d1f5ce5d304ba297e47d470c282c3ece5dbffe0a50a2eaa5c1110555be8415f658c61de0476f1b6fad1d1eb30c4446839f57ff6f6cb26ac3be800005d4",
            ),
        ];
        for (suite, srtp, srtcp) in cases {
            let t = gcm(suite);
            assert_eq!(t.rtp.gcm_iv(0x5501a0b2, 0xf17b)[..], hex("51753c6580c2726f20718414")[..]);
            let mut p = hex(GALLIA);
            t.protect_rtp(&mut p, 12, 0x5501a0b2, 0xf17b, None);
            assert_eq!(p, hex(srtp), "{suite} SRTP");
            let mut plain = Vec::new();
            t.unprotect_rtp(&hex(srtp), 12, 0x5501a0b2, 0xf17b, &mut plain).unwrap();
            assert_eq!(plain, hex(GALLIA));
            let mut tampered = hex(srtp);
            tampered[20] ^= 1;
            assert_eq!(t.unprotect_rtp(&tampered, 12, 0x5501a0b2, 0xf17b, &mut plain), Err(SrtpError::Auth));
            assert!(plain.is_empty(), "nothing of a forged packet is handed on");
            assert_eq!(t.unprotect_rtp(&hex(srtp), 12, 0x5501a0b2, 0x1_f17b, &mut plain), Err(SrtpError::Auth), "the ROC is bound");

            assert_eq!(t.rtcp.gcm_iv(0x4d617273, 0x5d4)[..], hex("517524055203726f207170bb")[..]);
            let mut r = hex(RTCP);
            t.protect_rtcp(&mut r, 0x4d617273, 0x5d4, None);
            assert_eq!(r, hex(srtcp), "{suite} SRTCP");
            let index = t.unprotect_rtcp(&hex(srtcp), 0x4d617273, &ReplayWindow::default(), &mut plain).unwrap();
            assert_eq!((index, plain.clone()), (0x5d4, hex(RTCP)));
            let mut tampered = hex(srtcp);
            tampered[30] ^= 8;
            assert_eq!(t.unprotect_rtcp(&tampered, 0x4d617273, &ReplayWindow::default(), &mut plain), Err(SrtpError::Auth));
        }
    }
}
