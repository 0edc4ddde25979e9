use super::*;
use crate::core::rtp::{self, RtpHeader};

fn pair(suite: Suite) -> (Outbound, Inbound) {
    let key = MasterKey::random(suite);
    (Outbound::new(key.clone()), Inbound::new(key))
}

fn rtp_packet(seq: u16, payload: &[u8]) -> Vec<u8> {
    rtp::build(RtpHeader { marker: false, payload_type: 0, sequence: seq, timestamp: seq as u32 * 160, ssrc: 0xcafe }, payload)
}

#[test]
fn every_suite_round_trips_srtp_and_srtcp_with_its_overhead() {
    for suite in Suite::ALL {
        let (mut tx, mut rx) = pair(suite);
        let plain = rtp_packet(7, &[0x55; 160]);
        let mut p = plain.clone();
        tx.protect_rtp(&mut p).unwrap();
        assert_eq!(p.len(), plain.len() + suite.rtp_tag_len(), "{suite}");
        assert_eq!(p[..12], plain[..12], "the header stays in the clear");
        assert_ne!(p[12..172], plain[12..], "{suite} encrypts the payload");
        let mut out = Vec::new();
        rx.unprotect_rtp(&p, &mut out).unwrap();
        assert_eq!(out, plain);
        assert_eq!(rx.unprotect_rtp(&p, &mut out), Err(SrtpError::Replay), "{suite}");

        let report =
            [0x81, 201, 0, 7, 0, 0, 0xca, 0xfe, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24];
        let mut r = report.to_vec();
        tx.protect_rtcp(&mut r).unwrap();
        assert_eq!(r.len(), report.len() + 4 + suite.rtcp_tag_len(), "{suite}");
        rx.unprotect_rtcp(&r, &mut out).unwrap();
        assert_eq!(out, report);
        assert_eq!(rx.unprotect_rtcp(&r, &mut out), Err(SrtpError::Replay));
    }
}

#[test]
fn wrong_keys_and_forgeries_never_authenticate_nor_move_the_window() {
    for suite in Suite::ALL {
        let (mut tx, mut rx) = pair(suite);
        let (mut attacker, _) = pair(suite);
        let mut good = rtp_packet(100, &[1; 160]);
        tx.protect_rtp(&mut good).unwrap();
        let mut out = Vec::new();
        rx.unprotect_rtp(&good, &mut out).unwrap();
        // The attacker's valid-looking SRTP far ahead, under its own key.
        let mut forged = rtp_packet(30000, &[2; 160]);
        attacker.protect_rtp(&mut forged).unwrap();
        assert_eq!(rx.unprotect_rtp(&forged, &mut out), Err(SrtpError::Auth));
        assert!(out.is_empty());
        // Plain RTP where SRTP is expected.
        assert_eq!(rx.unprotect_rtp(&rtp_packet(101, &[3; 160]), &mut out), Err(SrtpError::Auth));
        // A flipped bit anywhere.
        for i in [1, 3, 12, 100, good.len() - 1] {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(rx.unprotect_rtp(&bad, &mut out).is_err(), "{suite} byte {i}");
        }
        // None of it moved the window: the next real packets still pass, in order.
        for seq in 101..104 {
            let mut p = rtp_packet(seq, &[4; 160]);
            tx.protect_rtp(&mut p).unwrap();
            rx.unprotect_rtp(&p, &mut out).unwrap_or_else(|e| panic!("{suite} {seq}: {e}"));
        }
        assert_eq!(rx.unprotect_rtp(&[0x80, 0, 0], &mut out), Err(SrtpError::Malformed));
        assert_eq!(rx.unprotect_rtp(&rtp_packet(200, &[1, 2]), &mut out), Err(SrtpError::TooShort));
    }
}

/// 25 minutes at 50 packets a second crosses the sequence wrap (every 21.8 minutes):
/// with made-up time and a sequence that starts near the top, every packet decrypts.
#[test]
fn a_25_minute_call_crosses_the_sequence_wrap_without_a_gap() {
    let (mut tx, mut rx) = pair(Suite::AesCm128HmacSha1_80);
    let start: u16 = 60000;
    let packets = 25 * 60 * 50;
    let mut out = Vec::new();
    let mut wraps = 0;
    let mut last = 0u64;
    for k in 0..packets as u32 {
        let seq = start.wrapping_add(k as u16);
        let payload = k.to_be_bytes();
        let mut p = rtp_packet(seq, &payload);
        tx.protect_rtp(&mut p).unwrap();
        let got = rx.unprotect_rtp(&p, &mut out).unwrap_or_else(|e| panic!("packet {k} (seq {seq}): {e}"));
        assert_eq!(&out[12..], &payload, "packet {k}");
        if got.index >> 16 != last >> 16 {
            wraps += 1;
        }
        last = got.index;
    }
    assert_eq!(wraps, 2, "75000 packets from 60000 wrap twice (at 65536 and 131072)");
    assert_eq!(last, start as u64 + packets - 1);
}

#[test]
fn reordering_across_the_wrap_is_taken_with_the_right_roc() {
    let (mut tx, mut rx) = pair(Suite::AeadAes128Gcm);
    let mut wire = Vec::new();
    for seq in [65533u16, 65534, 65535, 0, 1, 2] {
        let mut p = rtp_packet(seq, &seq.to_be_bytes());
        tx.protect_rtp(&mut p).unwrap();
        wire.push(p);
    }
    let mut out = Vec::new();
    for i in [0, 1, 3, 2, 5, 4] {
        let got = rx.unprotect_rtp(&wire[i], &mut out).unwrap_or_else(|e| panic!("{i}: {e}"));
        assert_eq!(got.index, 65533 + i as u64);
    }
}

#[test]
fn a_rekey_takes_packets_under_both_keys_then_lets_the_old_one_go() {
    let old = MasterKey::random(Suite::AesCm128HmacSha1_80);
    let new = MasterKey::random(Suite::AesCm128HmacSha1_80);
    let mut tx_old = Outbound::new(old.clone());
    let mut rx = Inbound::new(old);
    let mut out = Vec::new();
    let mut late = Vec::new();
    for seq in 0..10u16 {
        let mut p = rtp_packet(seq, &[9; 20]);
        tx_old.protect_rtp(&mut p).unwrap();
        if seq < 8 {
            rx.unprotect_rtp(&p, &mut out).unwrap();
        } else {
            late.push(p);
        }
    }
    rx.rekey(new.clone());
    let mut tx_new = Outbound::new(new);
    for seq in 10..12u16 {
        let mut p = rtp_packet(seq, &[9; 20]);
        tx_new.protect_rtp(&mut p).unwrap();
        rx.unprotect_rtp(&p, &mut out).unwrap();
    }
    for p in &late {
        rx.unprotect_rtp(p, &mut out).expect("old-key packets still on the wire are taken");
    }
    for seq in 12..12 + PREVIOUS_KEY_GRACE as u16 {
        let mut p = rtp_packet(seq, &[9; 20]);
        tx_new.protect_rtp(&mut p).unwrap();
        rx.unprotect_rtp(&p, &mut out).unwrap();
    }
    let mut stale = rtp_packet(2000, &[9; 20]);
    tx_old.protect_rtp(&mut stale).unwrap();
    assert_eq!(rx.unprotect_rtp(&stale, &mut out), Err(SrtpError::Auth), "the old key is gone after its grace");
}

#[test]
fn mki_and_lifetime_are_honoured() {
    for suite in [Suite::AesCm128HmacSha1_80, Suite::AeadAes256Gcm] {
        let mut key = MasterKey::random(suite);
        key.mki = Some(vec![0, 0, 0, 1]);
        key.lifetime = 3;
        let mut tx = Outbound::new(key.clone());
        let mut rx = Inbound::new(key.clone());
        let mut out = Vec::new();
        let mut p = rtp_packet(1, &[5; 30]);
        tx.protect_rtp(&mut p).unwrap();
        assert_eq!(p.len(), 12 + 30 + 4 + suite.rtp_tag_len());
        rx.unprotect_rtp(&p, &mut out).unwrap();
        assert_eq!(&out[12..], &[5; 30]);
        let mut other = key.clone();
        other.mki = Some(vec![0, 0, 0, 2]);
        let mut p = rtp_packet(2, &[5; 30]);
        Outbound::new(other).protect_rtp(&mut p).unwrap();
        assert_eq!(rx.unprotect_rtp(&p, &mut out), Err(SrtpError::UnknownMki));
        for seq in 2..4 {
            let mut p = rtp_packet(seq, &[5; 30]);
            tx.protect_rtp(&mut p).unwrap();
            rx.unprotect_rtp(&p, &mut out).unwrap();
        }
        assert_eq!(tx.protect_rtp(&mut rtp_packet(4, &[5; 30])), Err(SrtpError::KeyExpired), "three packets, then no more");
        let mut beyond = rtp_packet(4, &[5; 30]);
        let mut tx2 = Outbound::new(key);
        tx2.protect_rtp(&mut beyond).unwrap();
        assert_eq!(rx.unprotect_rtp(&beyond, &mut out), Err(SrtpError::KeyExpired));
    }
}

#[test]
fn srtcp_index_runs_on_and_is_bound_by_the_tag() {
    let (mut tx, mut rx) = pair(Suite::AesCm128HmacSha1_32);
    tx.set_rtcp_index(0x7fff_fffe);
    let report = [0x80, 201, 0, 1, 0, 0, 0xca, 0xfe];
    let mut out = Vec::new();
    let mut first = report.to_vec();
    tx.protect_rtcp(&mut first).unwrap();
    rx.unprotect_rtcp(&first, &mut out).unwrap();
    let mut second = report.to_vec();
    tx.protect_rtcp(&mut second).unwrap();
    rx.unprotect_rtcp(&second, &mut out).unwrap();
    let n = second.len();
    assert_eq!(&second[n - 14..n - 10], &[0xff, 0xff, 0xff, 0xff], "E bit and index 2^31-1");
    let mut changed = first.clone();
    let n = changed.len();
    changed[n - 11] ^= 1;
    assert_eq!(rx.unprotect_rtcp(&changed, &mut out), Err(SrtpError::Auth), "a changed index fails the tag");
}
