//! DTLS-SRTP (RFC 5763, RFC 5764) for WebRTC legs: the groundwork of issue 36, not
//! yet wired into calls or SDP.
//!
//! - The node's certificate: an ECDSA P-256 key and a self-signed X.509 certificate
//!   written here in DER (RustCrypto's `p256` signs; no OpenSSL, no C). WebRTC checks
//!   it by the fingerprint the SDP carries (`a=fingerprint:sha-256 ...`), never by a
//!   chain or dates.
//! - The handshake is `dimpl`'s (sans-IO DTLS 1.2/1.3, its `rust-crypto` backend).
//! - The keys: the handshake's exported keying material split as RFC 5764 §4.2 lays
//!   it out, into the node's own SRTP (`core::srtp`): the client's key protects what
//!   the client sends.
//!
//! The peer's certificate must match the fingerprint its SDP announced before any
//! key is used (`FingerprintMismatch` otherwise): the SDP is the only trust anchor.

use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::core::srtp::{CallKeys, MasterKey, Suite};

/// The node's DTLS identity. The private key never leaves it except into `dimpl`.
#[derive(Clone)]
pub struct NodeCertificate {
    der: Vec<u8>,
    key_pkcs8: Zeroizing<Vec<u8>>,
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for NodeCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCertificate").field("fingerprint", &self.fingerprint_sdp()).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtlsSrtpError {
    /// The peer's certificate is not the one its SDP's fingerprint names.
    FingerprintMismatch,
    /// The keying material does not fit the negotiated profile.
    KeyingMaterial,
}

impl NodeCertificate {
    /// A fresh key and certificate from `rng` (the node makes one at start: a
    /// certificate is an identity for the fingerprint, not a credential to renew).
    pub fn generate(rng: &mut impl rand::CryptoRng) -> NodeCertificate {
        let key = loop {
            let mut secret = Zeroizing::new([0u8; 32]);
            rng.fill_bytes(&mut secret[..]);
            // Zero or past the group order (about 2^-32 of draws): draw again.
            if let Ok(k) = SigningKey::from_slice(&secret[..]) {
                break k;
            }
        };
        let mut serial = [0u8; 8];
        rng.fill_bytes(&mut serial);
        serial[0] &= 0x7f;
        serial[0] |= 0x01;
        let spki = key.verifying_key().to_public_key_der().expect("a P-256 key encodes");
        let tbs = tbs_certificate(&serial, spki.as_bytes());
        let signature: Signature = key.sign(&tbs);
        let mut sig_bits = vec![0u8];
        sig_bits.extend_from_slice(signature.to_der().as_bytes());
        let der = tlv(0x30, &[tbs, ecdsa_with_sha256(), tlv(0x03, &[sig_bits])]);
        let key_pkcs8 = Zeroizing::new(key.to_pkcs8_der().expect("a P-256 key encodes").as_bytes().to_vec());
        let fingerprint = Sha256::digest(&der).into();
        NodeCertificate { der, key_pkcs8, fingerprint }
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// SHA-256 of the certificate, as `a=fingerprint` says it: `sha-256 AB:CD:...`.
    pub fn fingerprint_sdp(&self) -> String {
        format!("sha-256 {}", colon_hex(&self.fingerprint))
    }

    /// What `dimpl` takes (the certificate and its PKCS#8 key).
    pub fn for_dtls(&self) -> dimpl::DtlsCertificate {
        dimpl::DtlsCertificate { certificate: self.der.clone(), private_key: self.key_pkcs8.to_vec() }
    }
}

/// `AB:CD:...`, upper case, as browsers write fingerprints.
fn colon_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Does `cert_der` match an SDP fingerprint value (`sha-256 AB:CD:...`, any case)?
/// Only SHA-256 is taken (what browsers send; RFC 8122 lets a peer send several).
pub fn check_fingerprint(cert_der: &[u8], sdp_fingerprint: &str) -> Result<(), DtlsSrtpError> {
    let mut parts = sdp_fingerprint.split_whitespace();
    let (Some(hash), Some(value)) = (parts.next(), parts.next()) else { return Err(DtlsSrtpError::FingerprintMismatch) };
    let want = colon_hex(&Sha256::digest(cert_der));
    if hash.eq_ignore_ascii_case("sha-256") && value.eq_ignore_ascii_case(&want) {
        Ok(())
    } else {
        Err(DtlsSrtpError::FingerprintMismatch)
    }
}

/// The node's and the peer's SRTP keys from the handshake's keying material (RFC 5764
/// §4.2: client key, server key, client salt, server salt). `node_is_client`: the node
/// took the DTLS client role (`a=setup:active`).
pub fn srtp_keys(material: &[u8], profile: dimpl::SrtpProfile, node_is_client: bool) -> Result<CallKeys, DtlsSrtpError> {
    let suite = match profile {
        dimpl::SrtpProfile::AES128_CM_SHA1_80 => Suite::AesCm128HmacSha1_80,
        dimpl::SrtpProfile::AEAD_AES_128_GCM => Suite::AeadAes128Gcm,
        dimpl::SrtpProfile::AEAD_AES_256_GCM => Suite::AeadAes256Gcm,
        // A profile a later dimpl adds: none of the node's SRTP suites.
        _ => return Err(DtlsSrtpError::KeyingMaterial),
    };
    let (k, s) = (suite.key_len(), suite.salt_len());
    if material.len() != 2 * (k + s) {
        return Err(DtlsSrtpError::KeyingMaterial);
    }
    let side = |key_at: usize, salt_at: usize| {
        let mut m = Zeroizing::new(Vec::with_capacity(k + s));
        m.extend_from_slice(&material[key_at..key_at + k]);
        m.extend_from_slice(&material[salt_at..salt_at + s]);
        MasterKey::new(suite, &m).ok_or(DtlsSrtpError::KeyingMaterial)
    };
    let client = side(0, 2 * k)?;
    let server = side(k, 2 * k + s)?;
    Ok(if node_is_client { CallKeys { local: client, remote: server } } else { CallKeys { local: server, remote: client } })
}

/// A DER TLV: `tag`, the definite length, the parts.
fn tlv(tag: u8, parts: &[Vec<u8>]) -> Vec<u8> {
    let len: usize = parts.iter().map(Vec::len).sum();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|&b| b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

/// AlgorithmIdentifier ecdsa-with-SHA256 (1.2.840.10045.4.3.2, no parameters).
fn ecdsa_with_sha256() -> Vec<u8> {
    tlv(0x30, &[vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]])
}

/// Name: CN=media-node.
fn name() -> Vec<u8> {
    let cn = tlv(0x30, &[vec![0x06, 0x03, 0x55, 0x04, 0x03], tlv(0x0c, &[b"media-node".to_vec()])]);
    tlv(0x30, &[tlv(0x31, &[cn])])
}

/// TBSCertificate (RFC 5280 §4.1), version 3, no extensions. Validity is fixed and
/// wide: WebRTC pins the certificate by its fingerprint and checks no dates, and a
/// clock-free core cannot date it anyway.
fn tbs_certificate(serial: &[u8], spki: &[u8]) -> Vec<u8> {
    let version = tlv(0xa0, &[vec![0x02, 0x01, 0x02]]);
    let serial = tlv(0x02, &[serial.to_vec()]);
    let validity = tlv(0x30, &[tlv(0x17, &[b"250101000000Z".to_vec()]), tlv(0x17, &[b"491231235959Z".to_vec()])]);
    tlv(0x30, &[version, serial, ecdsa_with_sha256(), name(), validity, name(), spki.to_vec()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::srtp::{Inbound, Outbound};
    use rand::SeedableRng;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// Drains one side's output: packets to the other side, and what it learned.
    fn pump(
        d: &mut dimpl::Dtls,
        to: &mut Vec<Vec<u8>>,
        peer_cert: &mut Option<Vec<u8>>,
        keys: &mut Option<(Vec<u8>, dimpl::SrtpProfile)>,
    ) -> bool {
        let mut buf = vec![0u8; 4096];
        let mut connected = false;
        loop {
            match d.poll_output(&mut buf) {
                dimpl::Output::Packet(p) => to.push(p.to_vec()),
                dimpl::Output::BufferTooSmall { needed } => buf.resize(needed, 0),
                dimpl::Output::Timeout(_) => break,
                dimpl::Output::Connected => connected = true,
                dimpl::Output::PeerCert(c) => *peer_cert = Some(c.to_vec()),
                dimpl::Output::KeyingMaterial(km, profile) => *keys = Some((km.to_vec(), profile)),
                _ => {}
            }
        }
        connected
    }

    #[test]
    fn two_nodes_handshake_pin_each_others_fingerprint_and_share_srtp_keys() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(36);
        let (a_cert, b_cert) = (NodeCertificate::generate(&mut rng), NodeCertificate::generate(&mut rng));
        assert_ne!(a_cert.fingerprint_sdp(), b_cert.fingerprint_sdp());
        assert!(a_cert.fingerprint_sdp().starts_with("sha-256 ") && a_cert.fingerprint_sdp().len() == 8 + 32 * 3 - 1);
        assert!(!format!("{a_cert:?}").contains("key_pkcs8"), "the key is not printed");
        let config = Arc::new(dimpl::Config::default());
        let t0 = Instant::now();
        let mut client = dimpl::Dtls::new_12(config.clone(), a_cert.for_dtls(), t0);
        client.set_active(true);
        let mut server = dimpl::Dtls::new_12(config, b_cert.for_dtls(), t0);
        let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
        let (mut c_peer, mut s_peer, mut c_keys, mut s_keys) = (None, None, None, None);
        let (mut c_done, mut s_done) = (false, false);
        client.handle_timeout(t0).unwrap();
        for round in 1..50 {
            let now = t0 + Duration::from_millis(10 * round);
            c_done |= pump(&mut client, &mut to_server, &mut c_peer, &mut c_keys);
            for p in to_server.drain(..) {
                server.handle_packet(&p).expect("the server takes the client's flight");
            }
            s_done |= pump(&mut server, &mut to_client, &mut s_peer, &mut s_keys);
            for p in to_client.drain(..) {
                client.handle_packet(&p).expect("the client takes the server's flight");
            }
            if c_done && s_done && c_keys.is_some() && s_keys.is_some() {
                break;
            }
            client.handle_timeout(now).unwrap();
            server.handle_timeout(now).unwrap();
        }
        assert!(c_done && s_done, "the handshake completes");
        // Each pins the other by the fingerprint its SDP would carry, and refuses another.
        check_fingerprint(&c_peer.unwrap(), &b_cert.fingerprint_sdp()).expect("the client sees the server's certificate");
        check_fingerprint(&s_peer.clone().unwrap(), &a_cert.fingerprint_sdp().to_lowercase()).expect("any case");
        assert_eq!(check_fingerprint(&s_peer.unwrap(), &b_cert.fingerprint_sdp()), Err(DtlsSrtpError::FingerprintMismatch));
        let ((c_km, c_profile), (s_km, s_profile)) = (c_keys.unwrap(), s_keys.unwrap());
        assert_eq!((c_km.clone(), c_profile), (s_km.clone(), s_profile), "both export the same keying material");
        let (a, b) = (srtp_keys(&c_km, c_profile, true).unwrap(), srtp_keys(&s_km, s_profile, false).unwrap());
        // What the client protects, the server's SRTP takes, and the other way.
        let packet = crate::core::rtp::build(
            crate::core::rtp::RtpHeader { marker: true, payload_type: 111, sequence: 1, timestamp: 960, ssrc: 7 },
            &[1, 2, 3, 4],
        );
        for (from, to) in [(&a, &b), (&b, &a)] {
            let mut out = packet.clone();
            Outbound::new(from.local.clone()).protect_rtp(&mut out).unwrap();
            assert_ne!(out, packet);
            let mut plain = Vec::new();
            Inbound::new(to.remote.clone()).unprotect_rtp(&out, &mut plain).expect("the peer's keys open it");
            assert_eq!(plain, packet);
        }
        assert_eq!(srtp_keys(&c_km[1..], c_profile, true).err(), Some(DtlsSrtpError::KeyingMaterial));
    }
}
