use super::inbound::MAX_REBUILT_PACKETS;
use super::*;
use crate::core::analysis::Signal;
use crate::core::codec::{Decoder, Encoder, OpusPrefs};
use crate::core::g711::{linear_to_ulaw, Codec};
use crate::core::jitter::Heard;
use crate::core::playback::MarkFate;
use crate::core::playback::Sound;
use crate::core::rtp::{self, RtpHeader};
use crate::core::srtp::{CallKeys, SrtpError};
use std::sync::Arc;
use std::time::Duration;

const MS20: Duration = Duration::from_millis(20);

fn caller() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

fn session(t0: Instant) -> Session {
    let cfg = SessionConfig {
        ssrc: 0x1234,
        initial_sequence: 65530,
        initial_timestamp: u32::MAX - 800,
        symmetric_rtp: true,
        jitter: JitterConfig::default(),
        analysis: AnalysisConfig::default(),
        telephone_event_pt: TELEPHONE_EVENT_PT,
        wall_start: std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        stopwatch: Instant::now,
    };
    Session::new(cfg, t0)
}

fn rtp_from_caller(pt: u8, seq: u16, ts: u32, sample: i16) -> Vec<u8> {
    let payload = match pt {
        8 => vec![crate::core::g711::linear_to_alaw(sample); 160],
        _ => vec![linear_to_ulaw(sample); 160],
    };
    rtp::build(RtpHeader { marker: false, payload_type: pt, sequence: seq, timestamp: ts, ssrc: 99 }, &payload)
}

fn run_ticks(s: &mut Session, t0: Instant, from: u64, to: u64, out: &mut Outputs) {
    for k in from..to {
        s.handle_tick(t0 + MS20 * k as u32, out);
    }
}

fn media(send: (u8, AudioCodec), te: Option<u8>, sends: bool) -> MediaSettings {
    MediaSettings {
        send,
        opus: OpusPrefs::default(),
        receive: vec![(0, AudioCodec::Pcmu), (9, AudioCodec::G722), (8, AudioCodec::Pcma)],
        telephone_event_pt: te,
        sends,
        srtp: None,
        rtcp: RtcpTarget::Separate(None),
        ptime_ms: 20,
    }
}

#[test]
fn refused_payloads_and_codec_time_are_counted_by_codec() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    let mut m = media((9, AudioCodec::G722), Some(101), true);
    m.receive.push((18, AudioCodec::G729));
    s.handle_command(Command::SetMedia(m), &mut out);
    // G.729 of 7 bytes is neither 10-byte frames nor a 2-byte SID.
    let bad = rtp::build(RtpHeader { marker: false, payload_type: 18, sequence: 1, timestamp: 160, ssrc: 99 }, &[0x55; 7]);
    s.handle_datagram(t0, caller(), &bad, &mut out);
    s.handle_datagram(t0 + MS20, caller(), &rtp_from_caller(0, 2, 320, 4000), &mut out);
    s.handle_command(Command::Play { id: 1, pcm: vec![1000i16; 160 * 5].into(), barge_in: None }, &mut out);
    run_ticks(&mut s, t0, 1, 6, &mut out);
    let c = s.take_counters();
    assert_eq!(c.decode_errors.0[AudioCodec::G729 as usize], 1);
    assert_eq!(c.decode_errors.0.iter().sum::<u64>(), 1);
    let (enc, dec) = (c.codec_nanos.0[AudioCodec::G722 as usize].0, c.codec_nanos.0[AudioCodec::Pcmu as usize].1);
    assert!(enc > 0 && dec > 0, "G.722 encoding and PCMU decoding took time: {enc} ns, {dec} ns");
    assert_eq!(c.codec_nanos.0[AudioCodec::Opus as usize], (0, 0));
}

/// A session whose far end is known, sending `send` at `ptime` as SDP agreed.
fn sending_in(t0: Instant, send: (u8, AudioCodec), ptime: u32) -> (Session, Outputs) {
    let mut s = session(t0);
    let mut out = Outputs::default();
    s.handle_command(Command::SetTarget(caller()), &mut out);
    let mut m = media(send, Some(101), true);
    m.ptime_ms = ptime;
    s.handle_command(Command::SetMedia(m), &mut out);
    (s, out)
}

#[test]
fn packets_follow_the_far_ends_ptime() {
    // (codec, payload type, the far end's ptime, the packet the node sends in ms,
    // payload bytes per 10 ms)
    let cases = [
        (AudioCodec::Pcmu, 0, 40, 40, Some(80)),
        (AudioCodec::Pcma, 8, 30, 30, Some(80)),
        (AudioCodec::Pcmu, 0, 10, 10, Some(80)),
        (AudioCodec::G729, 18, 60, 60, Some(10)),
        (AudioCodec::G722, 9, 25, 20, Some(80)),
        #[cfg(feature = "opus")]
        (AudioCodec::Opus, 111, 30, 20, None),
    ];
    for (codec, pt, ptime, ms, bytes_per_10ms) in cases {
        let t0 = Instant::now();
        let (mut s, mut out) = sending_in(t0, (pt, codec), ptime);
        // A 1 s prompt, then silence.
        s.handle_command(Command::Play { id: 1, pcm: vec![3000i16; 8000].into(), barge_in: None }, &mut out);
        // Driven as the call task drives it: a tick whenever the session asks for one;
        // a packet's time is the tick that released it.
        let mut sent: Vec<(Instant, RtpHeader, usize)> = Vec::new();
        let mut now = t0;
        while now < t0 + Duration::from_millis(1400) {
            s.handle_tick(now, &mut out);
            for t in out.transmit.drain(..).filter(|t| !rtp::is_rtcp(&t.data)) {
                let p = rtp::parse(&t.data).unwrap();
                sent.push((now, p.header(), p.payload.len()));
            }
            now = s.poll_timeout();
        }
        let full = 1000 / ms as usize;
        let short = 1000 % ms as u64;
        assert_eq!(sent.len(), full + (short > 0) as usize, "{codec:?} at {ms} ms");
        let step = ms * 8 * codec.clock_ratio();
        for (k, w) in sent.windows(2).enumerate() {
            assert_eq!(w[1].1.sequence, w[0].1.sequence.wrapping_add(1), "{codec:?}: continuous numbering");
            assert_eq!(w[1].1.timestamp.wrapping_sub(w[0].1.timestamp), step, "{codec:?}: packet {k} is {ms} ms on");
            assert!(!w[1].1.marker, "one talkspurt");
            // Paced: one packet every ptime (the prompt's short last one aside).
            if k + 2 < sent.len() || short == 0 {
                assert_eq!(w[1].0 - w[0].0, Duration::from_millis(ms as u64), "{codec:?}: packet {k} leaves a ptime after the one before");
            }
        }
        assert!(sent[0].1.marker);
        if let Some(b) = bytes_per_10ms {
            assert!(sent[..full].iter().all(|p| p.2 == b * ms as usize / 10), "{codec:?}: {ms} ms payloads");
            if short > 0 {
                assert_eq!(sent[full].2, b * short as usize / 10, "{codec:?}: the prompt's end goes out short");
            }
        }
    }
}

/// A wideband codec sends a prompt's own 16 kHz audio: a 6 kHz tone (which its
/// 8 kHz copy cannot hold) reaches the far end's decoder, in 20 ms packets and in
/// the packets other ptimes make from several frames, and the recording is handed
/// the same 16 kHz audio. The same prompt without its 16 kHz copy carries none.
#[test]
fn a_wideband_codec_sends_the_prompts_own_16k_audio() {
    use crate::core::goertzel::power_at;
    let tone: Vec<i16> = (0..16000).map(|i| (8000.0 * (2.0 * std::f64::consts::PI * 6000.0 * i as f64 / 16000.0).sin()) as i16).collect();
    let narrow = crate::core::resample::convert(&tone, 16000, 8000);
    let full = power_at(&tone[..8000], 16000, 6000.0);
    let cases = [
        (AudioCodec::G722, 9, 20),
        (AudioCodec::G722, 9, 40),
        (AudioCodec::G722, 9, 30),
        #[cfg(feature = "opus")]
        (AudioCodec::Opus, 111, 20),
        #[cfg(feature = "opus")]
        (AudioCodec::Opus, 111, 40),
    ];
    for (codec, pt, ptime) in cases {
        for with_wide in [true, false] {
            let t0 = Instant::now();
            let (mut s, mut out) = sending_in(t0, (pt, codec), ptime);
            let wide = with_wide.then(|| Arc::from(tone.clone()));
            s.handle_command(Command::Play { id: 1, pcm: Sound { pcm: narrow.clone().into(), wide }, barge_in: None }, &mut out);
            let (mut dec, mut heard, mut played) = (Decoder::new(codec), Vec::new(), Vec::new());
            let mut now = t0;
            while now < t0 + Duration::from_millis(1200) {
                s.handle_tick(now, &mut out);
                for t in out.transmit.drain(..).filter(|t| !rtp::is_rtcp(&t.data)) {
                    let (mut pcm, mut wide) = (Vec::new(), Vec::new());
                    assert!(dec.decode_wide(rtp::parse(&t.data).unwrap().payload, &mut pcm, Some(&mut wide)));
                    heard.extend(wide);
                }
                played.extend(out.played.drain(..).flat_map(|p| p.wide));
                now = s.poll_timeout();
            }
            let got = power_at(&heard[4000..12000], 16000, 6000.0) / full;
            if with_wide {
                assert!(got > 0.5, "{codec:?} at {ptime} ms: 6 kHz reached the far end at {got:.3} of its power");
                assert_eq!(played, tone, "{codec:?}: the recording is handed what was sent");
            } else {
                assert!(got < 0.01, "{codec:?} at {ptime} ms: an 8 kHz prompt has no 6 kHz ({got:.4})");
                assert!(played.is_empty());
            }
        }
    }
}

fn far_rtcp() -> SocketAddr {
    "127.0.0.1:40001".parse().unwrap()
}

#[test]
fn reports_go_back_where_the_far_ends_rtcp_comes_from_on_its_host_only() {
    use crate::core::rtcp;
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    s.handle_command(Command::SetMedia(media((0, AudioCodec::Pcmu), Some(101), true)), &mut out);
    s.handle_datagram(t0, caller(), &rtp_from_caller(0, 1, 160, 4000), &mut out);
    let report_to = |s: &mut Session, from: u64, out: &mut Outputs| {
        out.rtcp.clear();
        for k in from..from + 400 {
            s.handle_tick(t0 + MS20 * k as u32, out);
            if let Some(t) = out.rtcp.first() {
                return (t.to, k + 1);
            }
        }
        panic!("no report in 8 s");
    };
    let (to, next) = report_to(&mut s, 0, &mut out);
    assert_eq!(to, far_rtcp(), "before any RTCP came: the port above the RTP port");
    // The far end's NAT gave its RTCP another port: reports follow it there.
    let natted: SocketAddr = "127.0.0.1:45555".parse().unwrap();
    s.handle_rtcp(t0 + MS20 * next as u32, natted, &rtcp::report(99, None, &[], "far"));
    let (to, next) = report_to(&mut s, next, &mut out);
    assert_eq!(to, natted);
    // RTCP from another host, or junk from the far end's host, moves nothing.
    s.handle_rtcp(t0 + MS20 * next as u32, "198.51.100.9:7000".parse().unwrap(), &rtcp::report(99, None, &[], "other"));
    s.handle_rtcp(t0 + MS20 * next as u32, "127.0.0.1:46666".parse().unwrap(), &[0x80, 0xc9, 0, 9]);
    let (to, _) = report_to(&mut s, next, &mut out);
    assert_eq!(to, natted);
    assert_eq!(s.take_counters().rtcp_malformed, 1);
}

#[test]
fn a_negotiated_call_reports_by_rtcp_srtcp_under_keys_and_says_bye() {
    use crate::core::rtcp::{self, ntp_middle};
    use crate::core::srtp::{Inbound, MasterKey, Outbound, Suite};
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    // A call that never negotiated sends no RTCP, however long it runs.
    s.handle_datagram(t0, caller(), &rtp_from_caller(0, 1, 160, 4000), &mut out);
    run_ticks(&mut s, t0, 0, 500, &mut out);
    assert!(out.rtcp.is_empty() && out.transmit.iter().all(|t| !rtp::is_rtcp(&t.data)));
    assert_eq!(s.take_counters().rtcp_sent, 0);

    let far = MasterKey::random(Suite::AesCm128HmacSha1_80);
    let node = MasterKey::random(Suite::AesCm128HmacSha1_80);
    let mut m = media((0, AudioCodec::Pcmu), Some(101), true);
    m.srtp = Some(CallKeys { remote: far.clone(), local: node.clone() });
    s.handle_command(Command::SetMedia(m.clone()), &mut out);
    let mut caller_tx = Outbound::new(far);
    let mut far_rx = Inbound::new(node);
    out.clear();
    // 20 s of the caller's audio with every 10th packet lost, and the node's prompt.
    s.handle_command(Command::Play { id: 1, pcm: vec![1000i16; 160 * 1000].into(), barge_in: None }, &mut out);
    let mut reports = Vec::new();
    for k in 500..1500u64 {
        if k % 10 != 3 {
            let mut p = rtp_from_caller(0, k as u16, k as u32 * 160, 4000);
            caller_tx.protect_rtp(&mut p).unwrap();
            s.handle_datagram(t0 + MS20 * k as u32, caller(), &p, &mut out);
        }
        s.handle_tick(t0 + MS20 * k as u32, &mut out);
        for t in out.rtcp.drain(..) {
            assert_eq!(t.to, "127.0.0.1:40001".parse().unwrap(), "the port above the caller's RTP port");
            let mut plain = Vec::new();
            far_rx.unprotect_rtcp(&t.data, &mut plain).expect("SRTCP under the node's key");
            reports.push((k, rtcp::parse(&plain).unwrap()));
        }
        out.transmit.clear();
        out.heard.clear();
    }
    // 20 s: a report every 2.5-7.5 s, the first within 3.75 s.
    assert!((3..=8).contains(&reports.len()), "{}", reports.len());
    assert!(reports[0].0 - 500 <= 188, "{}", reports[0].0);
    let (at, last) = reports.last().unwrap();
    let (ssrc, ntp) = last.sender.expect("a sender report while the node sends");
    assert_eq!(ssrc, 0x1234);
    let wall = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + MS20 * *at as u32;
    assert_eq!(ntp_middle(ntp), ntp_middle(rtcp::ntp(wall)), "NTP time of the report");
    let b = last.blocks[0];
    assert_eq!((b.ssrc, b.extended_max), (99, (*at as u32) - (*at as u32 % 10 == 3) as u32));
    // 1 in 10 of the caller's packets lost since the start.
    let expected = (*at - 500 + 1) as i32 + 1;
    assert!((b.cumulative_lost - expected / 10).abs() <= 1, "{} of {expected}", b.cumulative_lost);
    assert!((b.fraction_lost as f64 / 256.0 - 0.1).abs() < 0.03, "{}", b.fraction_lost);

    // The far end's SR, then its report about the node, echoing our last SR 40 ms on.
    let their_ntp = rtcp::ntp(wall + Duration::from_millis(10));
    let mut sr = rtcp::report(99, Some(rtcp::SenderInfo { ntp: their_ntp, rtp_timestamp: 0, packets: 1, octets: 160 }), &[], "far");
    caller_tx.protect_rtcp(&mut sr).unwrap();
    s.handle_rtcp(t0 + MS20 * 1500, far_rtcp(), &sr);
    let echoed = rtcp::ReportBlock {
        ssrc: 0x1234,
        fraction_lost: 26,
        cumulative_lost: 3,
        extended_max: 1,
        jitter: 160,
        lsr: ntp_middle(ntp),
        dlsr: 65536 / 50,
    };
    let mut rr = rtcp::report(99, None, &[echoed], "far");
    caller_tx.protect_rtcp(&mut rr).unwrap();
    s.handle_rtcp(t0 + MS20 * (*at as u32 + 3), far_rtcp(), &rr);
    let f = s.take_far_end_report().expect("the far end's report on the node's audio");
    assert!((f.round_trip.unwrap().as_secs_f64() - 0.040).abs() < 0.001, "{:?}", f.round_trip);
    assert_eq!(f.jitter_seconds, 0.02);
    // A forged report (plain, under SRTP) is dropped before it is read.
    s.handle_rtcp(t0, far_rtcp(), &rtcp::report(99, None, &[echoed], "forged"));
    assert!(s.take_far_end_report().is_none());
    let c = s.take_counters();
    assert_eq!(c.srtp_dropped.of(SrtpError::Auth), 1);
    assert_eq!(c.rtcp, 2);
    assert_eq!(c.rtcp_sent, reports.len() as u64);

    // On hold the node sends an RR and echoes the far end's SR; at the end, a BYE.
    m.sends = false;
    m.srtp = None;
    m.rtcp = RtcpTarget::Muxed;
    s.handle_command(Command::SetMedia(m), &mut out);
    out.clear();
    let mut rr_seen = None;
    for k in 1500..1900u64 {
        s.handle_tick(t0 + MS20 * k as u32, &mut out);
        assert!(out.rtcp.is_empty(), "muxed: on the RTP port");
        if let Some(t) = out.transmit.iter().find(|t| rtp::is_rtcp(&t.data)) {
            rr_seen.get_or_insert((k, rtcp::parse(&t.data).unwrap()));
        }
        out.transmit.clear();
    }
    let (k, rr) = rr_seen.expect("a receiver report on hold");
    assert!(rr.sender.is_none());
    assert_eq!(rr.blocks[0].lsr, ntp_middle(their_ntp));
    assert_eq!(rr.blocks[0].dlsr, ((k - 1500) * 20 * 65536 / 1000) as u32);
    s.close(&mut out);
    let bye = out.transmit.iter().find(|t| rtp::is_rtcp(&t.data)).expect("a BYE");
    assert!(rtcp::parse(&bye.data).unwrap().bye);
}

#[test]
fn negotiated_media_switches_codec_holds_and_resumes_with_continuous_numbering() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    s.handle_command(Command::SetTarget(caller()), &mut out);
    s.handle_command(Command::SetMedia(media((0, AudioCodec::Pcmu), Some(96), true)), &mut out);
    s.handle_command(Command::Play { id: 1, pcm: vec![1000i16; 160 * 20].into(), barge_in: None }, &mut out);
    run_ticks(&mut s, t0, 0, 4, &mut out);
    // A re-offer: G.722 from now on.
    s.handle_command(Command::SetMedia(media((9, AudioCodec::G722), Some(96), true)), &mut out);
    assert!(out.events.contains(&Event::CodecChanged(AudioCodec::G722)));
    run_ticks(&mut s, t0, 4, 8, &mut out);
    // Hold (the far end's sendonly makes the node recvonly): nothing goes out.
    s.handle_command(Command::SetMedia(media((9, AudioCodec::G722), Some(96), false)), &mut out);
    run_ticks(&mut s, t0, 8, 12, &mut out);
    // Resume.
    s.handle_command(Command::SetMedia(media((9, AudioCodec::G722), Some(96), true)), &mut out);
    run_ticks(&mut s, t0, 12, 15, &mut out);
    let packets: Vec<_> = out.transmit.iter().map(|t| rtp::parse(&t.data).unwrap().clone()).collect();
    assert_eq!(packets.len(), 11, "4 PCMU + 4 G.722, nothing on hold, 3 after it");
    let pts: Vec<u8> = packets.iter().map(|p| p.payload_type).collect();
    assert_eq!(pts, [0, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9]);
    let seq: Vec<u16> = packets.iter().map(|p| p.sequence).collect();
    assert!(seq.windows(2).all(|w| w[1] == w[0].wrapping_add(1)), "sequence numbers run on: {seq:?}");
    let ts: Vec<u32> = packets.iter().map(|p| p.timestamp.wrapping_sub(u32::MAX - 800)).collect();
    assert_eq!(ts, [0, 160, 320, 480, 640, 800, 960, 1120, 1920, 2080, 2240], "the clock runs through the hold");
    let markers: Vec<bool> = packets.iter().map(|p| p.marker).collect();
    assert_eq!(markers.iter().filter(|&&m| m).count(), 2, "a talkspurt at the start and after the hold: {markers:?}");
    assert!(packets[8].marker);
    // The G.722 payloads decode to the prompt's level.
    let mut dec = Decoder::new(AudioCodec::G722);
    let mut pcm = Vec::new();
    for p in &packets[4..8] {
        dec.decode(p.payload, &mut pcm);
    }
    let tail = &pcm[400..];
    assert!(tail.iter().all(|&v| (700..1300).contains(&v)), "G.722 carried the prompt: {:?}", &tail[..8]);
}

#[test]
fn srtp_forgeries_replays_and_floods_are_dropped_before_the_latch_and_the_node_sends_srtp() {
    use crate::core::srtp::{Inbound, MasterKey, Outbound, Suite};
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    let far = MasterKey::random(Suite::AesCm128HmacSha1_80);
    let node = MasterKey::random(Suite::AesCm128HmacSha1_80);
    let mut m = media((0, AudioCodec::Pcmu), Some(101), true);
    m.srtp = Some(CallKeys { remote: far.clone(), local: node.clone() });
    s.handle_command(Command::SetMedia(m), &mut out);
    assert!(s.is_secure());
    let mut caller_tx = Outbound::new(far);
    let mut genuine = rtp_from_caller(0, 1, 160, 4000);
    caller_tx.protect_rtp(&mut genuine).unwrap();
    let attacker: SocketAddr = "198.51.100.66:5000".parse().unwrap();
    // Before the caller's first packet, an attacker who knows the port: plain RTP,
    // SRTP under a key of its own, and 10,000 packets of noise with an RTP header.
    s.handle_datagram(t0, attacker, &rtp_from_caller(0, 1, 160, 9000), &mut out);
    let mut wrong = rtp_from_caller(0, 2, 320, 9000);
    Outbound::new(MasterKey::random(Suite::AesCm128HmacSha1_80)).protect_rtp(&mut wrong).unwrap();
    s.handle_datagram(t0, attacker, &wrong, &mut out);
    for k in 0..10_000u32 {
        let mut junk = rtp_from_caller(0, k as u16, k * 160, 0);
        junk.extend_from_slice(&k.to_be_bytes());
        for (i, b) in junk[12..].iter_mut().enumerate() {
            *b = (k as usize * 31 + i * 7) as u8;
        }
        s.handle_datagram(t0, attacker, &junk, &mut out);
    }
    assert!(out.events.iter().all(|e| !matches!(e, Event::Latched(_))), "nothing latched");
    assert!(out.heard.is_empty(), "nothing heard");
    s.handle_datagram(t0, caller(), &genuine, &mut out);
    assert!(out.events.contains(&Event::Latched(caller())), "the caller's own packet latches");
    // A replay of it from the attacker's address, and from the caller's.
    s.handle_datagram(t0, attacker, &genuine, &mut out);
    s.handle_datagram(t0, caller(), &genuine, &mut out);
    let c = s.take_counters();
    assert_eq!(c.srtp_dropped.of(SrtpError::Auth), 10_002);
    assert_eq!(c.srtp_dropped.of(SrtpError::Replay), 2);
    assert_eq!((c.packets_in, c.srtp_in, c.foreign), (1, 1, 0), "no forged packet got as far as the latch");
    assert_eq!(s.target(), Some(caller()));
    let heard: Vec<i16> = out.heard.iter().flat_map(|h| h.pcm.iter().copied()).collect();
    assert!(heard.iter().all(|v| (v - 4000).abs() < 200), "only the caller is heard");
    // What the node sends is SRTP under its own key.
    out.clear();
    s.handle_command(Command::Play { id: 1, pcm: vec![1000i16; 160 * 3].into(), barge_in: None }, &mut out);
    run_ticks(&mut s, t0, 0, 3, &mut out);
    assert_eq!(out.transmit.len(), 3);
    let mut far_rx = Inbound::new(node);
    let mut plain = Vec::new();
    for t in &out.transmit {
        assert!(rtp::parse(&t.data).unwrap().payload != [linear_to_ulaw(1000); 160], "not in the clear");
        far_rx.unprotect_rtp(&t.data, &mut plain).unwrap();
        assert_eq!(rtp::parse(&plain).unwrap().payload, &[linear_to_ulaw(1000); 160][..]);
    }
    // A re-offer back to plain RTP (an `optional` call's re-INVITE without keys).
    let mut m = media((0, AudioCodec::Pcmu), Some(101), true);
    m.srtp = None;
    s.handle_command(Command::SetMedia(m), &mut out);
    s.handle_datagram(t0 + MS20, caller(), &rtp_from_caller(0, 2, 320, 4000), &mut out);
    assert_eq!(s.take_counters().packets_in, 1);
}

#[test]
fn negotiated_payload_types_decide_what_is_heard() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    // Without negotiation G.722 (PT 9) is not taken, as before.
    let mut enc = Encoder::new(AudioCodec::G722);
    let mut payload = Vec::new();
    enc.encode(&[3000; 160], &mut payload);
    let g722 = |seq: u16, payload: &[u8]| {
        rtp::build(RtpHeader { marker: false, payload_type: 9, sequence: seq, timestamp: seq as u32 * 160, ssrc: 5 }, payload)
    };
    s.handle_datagram(t0, caller(), &g722(1, &payload), &mut out);
    assert_eq!(s.take_counters().unsupported_payload, 1);
    // Nor G.729 (PT 18): the node keeps answering in PCMU.
    let g729 = rtp::build(RtpHeader { marker: false, payload_type: 18, sequence: 1, timestamp: 0, ssrc: 5 }, &[0u8; 20]);
    s.handle_datagram(t0, caller(), &g729, &mut out);
    assert_eq!(s.take_counters().unsupported_payload, 1);
    assert_eq!(s.outbound_codec(), AudioCodec::Pcmu);
    s.handle_command(Command::SetMedia(media((9, AudioCodec::G722), Some(101), true)), &mut out);
    for k in 2..10u16 {
        enc.encode(&[3000; 160], &mut payload);
        s.handle_datagram(t0 + MS20 * k as u32, caller(), &g722(k, &payload), &mut out);
    }
    let c = s.take_counters();
    assert_eq!((c.packets_in, c.unsupported_payload), (8, 0));
    let heard: Vec<i16> = out.heard.iter().flat_map(|h| h.pcm.iter().copied()).collect();
    assert_eq!(heard.len(), 8 * 160, "G.722 is heard at the call's 8 kHz");
    assert!(out.heard.iter().all(|h| h.wide.len() == 2 * h.pcm.len()), "with its own 16 kHz audio beside it");
    assert!(heard[640..].iter().all(|&v| (2500..3500).contains(&v)), "{:?}", &heard[640..650]);
    // A payload type the negotiation did not name is not decoded.
    s.handle_datagram(t0 + MS20 * 11, caller(), &rtp_from_caller(18, 11, 11 * 160, 0), &mut out);
    assert_eq!(s.take_counters().unsupported_payload, 1);
}

#[test]
fn sequence_and_timestamp_continue_across_prompts_and_silence() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    s.handle_command(Command::SetTarget(caller()), &mut out);
    s.handle_command(Command::Play { id: 1, pcm: vec![1000i16; 480].into(), barge_in: None }, &mut out);
    run_ticks(&mut s, t0, 0, 5, &mut out); // 3 frames of prompt, 2 of silence
    s.handle_command(Command::Play { id: 2, pcm: vec![2000i16; 320].into(), barge_in: None }, &mut out);
    run_ticks(&mut s, t0, 5, 8, &mut out);
    let packets: Vec<_> = out.transmit.iter().map(|t| rtp::parse(&t.data).unwrap().clone()).collect();
    assert_eq!(packets.len(), 5);
    let seqs: Vec<u16> = packets.iter().map(|p| p.sequence).collect();
    assert_eq!(seqs, vec![65530, 65531, 65532, 65533, 65534], "sequence continues across prompts");
    let ts: Vec<u32> = packets.iter().map(|p| p.timestamp.wrapping_sub(u32::MAX - 800)).collect();
    assert_eq!(ts, vec![0, 160, 320, 800, 960], "timestamps follow the clock through the silence");
    let markers: Vec<bool> = packets.iter().map(|p| p.marker).collect();
    assert_eq!(markers, vec![true, false, false, true, false], "marker at each talkspurt start");
    assert!(packets.iter().all(|p| p.ssrc == 0x1234 && p.payload_type == 0));
    let ended: Vec<_> = out.events.iter().filter(|e| matches!(e, Event::PlaybackEnded { .. })).collect();
    assert_eq!(ended.len(), 2);
}

#[test]
fn barge_in_cuts_within_one_frame() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    s.handle_command(Command::SetTarget(caller()), &mut out);
    s.handle_command(Command::Play { id: 1, pcm: vec![8000i16; 8000].into(), barge_in: None }, &mut out);
    s.handle_command(Command::Stream { pcm: vec![3000; 1600], wide: Vec::new(), mark: None }, &mut out);
    run_ticks(&mut s, t0, 0, 10, &mut out);
    out.clear();
    s.handle_command(Command::Stop, &mut out);
    assert_eq!(out.events, vec![Event::PlaybackEnded { id: 1, outcome: PlaybackOutcome::Stopped, played_ms: 200 }]);
    run_ticks(&mut s, t0, 10, 11, &mut out);
    assert!(out.transmit.is_empty(), "the next frame after stop is silent");
    assert_eq!(s.stream_queued(), 0, "queued TTS is flushed too");

    s.handle_command(Command::Play { id: 2, pcm: vec![8000i16; 8000].into(), barge_in: None }, &mut out);
    run_ticks(&mut s, t0, 11, 12, &mut out);
    s.handle_command(Command::Play { id: 3, pcm: vec![-8000i16; 8000].into(), barge_in: None }, &mut out);
    out.transmit.clear();
    run_ticks(&mut s, t0, 12, 13, &mut out);
    let p = rtp::parse(&out.transmit[0].data).unwrap().payload.to_vec();
    assert_eq!(p, vec![linear_to_ulaw(-8000); 160], "the next frame is the new prompt");
    assert!(out.events.contains(&Event::PlaybackEnded { id: 2, outcome: PlaybackOutcome::Interrupted, played_ms: 20 }));
}

#[test]
fn heard_audio_is_decoded_by_payload_type_and_reply_follows_codec() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    s.handle_datagram(t0, caller(), &rtp_from_caller(0, 1, 0, 4000), &mut out);
    s.handle_datagram(t0 + MS20, caller(), &rtp_from_caller(8, 2, 160, -4000), &mut out);
    assert_eq!(out.heard.len(), 2);
    assert!((out.heard[0].pcm[0] - 4000).abs() < 200);
    assert!((out.heard[1].pcm[0] + 4000).abs() < 200);
    assert!(out.events.contains(&Event::CodecChanged(AudioCodec::Pcma)));
    s.handle_command(Command::Play { id: 1, pcm: vec![100i16; 160].into(), barge_in: None }, &mut out);
    run_ticks(&mut s, t0, 0, 1, &mut out);
    assert_eq!(rtp::parse(&out.transmit[0].data).unwrap().payload_type, 8, "we answer in PCMA now");
}

#[test]
fn junk_rtcp_foreign_and_unknown_payloads_are_counted_not_played() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    s.handle_datagram(t0, caller(), &rtp_from_caller(0, 1, 0, 4000), &mut out);
    s.handle_datagram(t0, caller(), &[0xde, 0xad], &mut out);
    s.handle_datagram(t0, caller(), &[0x81, 200, 0, 6, 0, 0, 0, 1], &mut out);
    s.handle_datagram(t0, "10.9.9.9:1".parse().unwrap(), &rtp_from_caller(0, 2, 160, 1), &mut out);
    s.handle_datagram(t0, caller(), &rtp_from_caller(13, 3, 320, 1), &mut out);
    let c = s.take_counters();
    assert_eq!((c.packets_in, c.malformed, c.rtcp, c.foreign, c.unsupported_payload), (1, 1, 1, 1, 1));
    assert_eq!(out.heard.len(), 1);
    assert_eq!(s.take_counters(), Counters::default(), "counters are deltas");
}

#[test]
fn latches_to_the_source_and_sends_there() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    s.handle_command(Command::SetTarget("192.168.1.2:4000".parse().unwrap()), &mut out);
    let nat: SocketAddr = "203.0.113.1:50000".parse().unwrap();
    s.handle_datagram(t0, nat, &rtp_from_caller(0, 1, 0, 0), &mut out);
    assert!(out.events.contains(&Event::Latched(nat)));
    s.handle_command(Command::Play { id: 1, pcm: vec![1i16; 160].into(), barge_in: None }, &mut out);
    run_ticks(&mut s, t0, 0, 1, &mut out);
    assert_eq!(out.transmit[0].to, nat);
}

#[test]
fn echo_returns_what_the_caller_said() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    s.handle_command(Command::SetEcho(true), &mut out);
    s.handle_datagram(t0, caller(), &rtp_from_caller(0, 1, 0, 6000), &mut out);
    run_ticks(&mut s, t0, 0, 1, &mut out);
    assert_eq!(out.transmit[0].to, caller());
    assert_eq!(rtp::parse(&out.transmit[0].data).unwrap().payload, &[linear_to_ulaw(6000); 160][..]);
}

#[test]
fn outbound_and_inbound_share_the_timeline() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    s.handle_command(Command::SetTarget(caller()), &mut out);
    run_ticks(&mut s, t0, 0, 50, &mut out); // one second of nothing
    s.handle_command(Command::Play { id: 1, pcm: vec![1i16; 160].into(), barge_in: None }, &mut out);
    s.handle_datagram(t0 + MS20 * 50, caller(), &rtp_from_caller(0, 1, 12345, 0), &mut out);
    run_ticks(&mut s, t0, 50, 51, &mut out);
    assert_eq!(out.played[0].pos, 8000, "sent at 1 s");
    let talk = out.heard.iter().find(|h| !h.concealed).unwrap();
    // Heard at 1 s minus the 40 ms hold the buffer allows for late packets.
    assert!((7680..=8000).contains(&talk.pos), "heard at {}", talk.pos);
}

/// Real speech (espeak-ng, 8 kHz; see testdata/README.md) and where it begins.
pub(super) fn speech() -> (Vec<i16>, usize) {
    let wav = hound::WavReader::new(&include_bytes!("../../../testdata/speech-8k.wav")[..]).unwrap();
    let pcm: Vec<i16> = wav.into_samples::<i16>().map(|s| s.unwrap()).collect();
    let onset = pcm.iter().position(|s| s.abs() > 300).unwrap();
    (pcm, onset)
}

/// Opus loss in the decoder's order: a lost packet is rebuilt from the next one's
/// FEC copy, a run of two or three by concealment then FEC, before the packet after
/// them is decoded; a run longer than MAX_REBUILT_PACKETS is left to silence.
#[cfg(feature = "opus")]
#[test]
fn lost_opus_packets_are_rebuilt_in_the_decoders_order() {
    let (speech, onset) = speech();
    let speech = &speech[onset..];
    let frames: Vec<&[i16]> = speech.chunks_exact(FRAME_SAMPLES).take(100).collect();
    // As a far end that takes FEC asks (useinbandfec=1): the packets carry it.
    let mut enc = Encoder::with_prefs(AudioCodec::Opus, OpusPrefs { inband_fec: true, ..Default::default() });
    let packets: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| {
            let mut p = Vec::new();
            enc.encode(f, &mut p);
            p
        })
        .collect();
    // What the same packets decode to with nothing lost.
    let mut dec = Decoder::new(AudioCodec::Opus);
    let mut clean = Vec::new();
    packets.iter().for_each(|p| assert!(dec.decode(p, &mut clean)));
    let lost = |k: usize| k == 20 || k == 40 || k == 41 || (60..=62).contains(&k) || (80..=87).contains(&k);
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    let mut m = media((111, AudioCodec::Opus), Some(101), true);
    m.receive = vec![(111, AudioCodec::Opus)];
    s.handle_command(Command::SetMedia(m), &mut out);
    let mut heard = Vec::new();
    for (k, p) in packets.iter().enumerate() {
        let now = t0 + MS20 * k as u32;
        if !lost(k) {
            let ts = 1000 + k as u32 * 960;
            let data = rtp::build(RtpHeader { marker: false, payload_type: 111, sequence: k as u16, timestamp: ts, ssrc: 7 }, p);
            s.handle_datagram(now, caller(), &data, &mut out);
        }
        s.handle_tick(now, &mut out);
        heard.append(&mut out.heard);
    }
    s.handle_tick(t0 + MS20 * 110, &mut out);
    heard.append(&mut out.heard);
    let c = s.take_counters();
    assert_eq!((c.fec_recovered, c.plc_concealed), (3, 3), "FEC for the last of each run, concealment before it");
    let live: Vec<&Heard> = heard.iter().filter(|h| !h.late).collect();
    let at = |k: usize| live.iter().find(|h| h.pos == k as u64 * 160).unwrap_or_else(|| panic!("frame {k} on the timeline"));
    let loud = |pcm: &[i16]| pcm.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / pcm.len() as f64;
    // Against the clean decode of the same frame (the codec's delay included).
    for k in [20, 40, 41, 60, 62] {
        let h = at(k);
        assert!(!h.concealed && h.wide.len() == 320, "frame {k} was rebuilt in time, wideband");
        assert!(loud(&h.pcm) > 1e-3 * loud(&clean[k * 160..k * 160 + 160]), "frame {k} is not silence");
    }
    // The second concealed frame of a run is the decoder's too, though libopus has
    // faded it out by then (measured: near silence by its second 20 ms).
    assert!(!at(61).concealed);
    assert!((80..=87).all(|k| at(k).concealed), "a long dropout is silence");
    // The caller's audio is exactly what libopus gives when used as its API asks:
    // for a run of lost packets, concealment for all but the last, FEC from the
    // next packet for the last, then that packet. (Decoding the next packet first
    // and its FEC copy after, as the node did, leaves another decoder state.)
    let mut dec = Decoder::new(AudioCodec::Opus);
    let mut want = Vec::new();
    let mut last = None;
    for (k, p) in packets.iter().enumerate().filter(|(k, _)| !lost(*k)) {
        let gap = last.map_or(0, |l| k - l - 1);
        if (1..=MAX_REBUILT_PACKETS as usize).contains(&gap) {
            (1..gap).for_each(|_| assert_eq!(dec.conceal(160, &mut want, None), Some(true)));
            assert_eq!(dec.recover(p, 160, &mut want, None), Some(true));
        } else {
            want.resize(want.len() + 160 * gap, 0);
        }
        assert!(dec.decode(p, &mut want));
        last = Some(k);
    }
    let live_pcm: Vec<i16> = live.iter().flat_map(|h| h.pcm.iter().copied()).collect();
    assert_eq!(live.first().map(|h| h.pos), Some(0));
    let differs = live_pcm.iter().zip(&want).position(|(a, b)| a != b);
    assert!(live_pcm.len() >= want.len() && differs.is_none(), "the caller's audio differs from libopus's from sample {differs:?}");
}

/// The caller sends `pcm` from `from_frame` on, one PCMU packet per tick.
fn caller_speaks(s: &mut Session, t0: Instant, from_frame: u64, pcm: &[i16], out: &mut Outputs) {
    for (k, f) in pcm.chunks(FRAME_SAMPLES).enumerate() {
        let k = from_frame + k as u64;
        let mut payload = Vec::new();
        let mut frame = [0i16; FRAME_SAMPLES];
        frame[..f.len()].copy_from_slice(f);
        Codec::Pcmu.encode_into(&frame, &mut payload);
        let data =
            rtp::build(RtpHeader { marker: false, payload_type: 0, sequence: k as u16, timestamp: k as u32 * 160, ssrc: 7 }, &payload);
        s.handle_datagram(t0 + MS20 * k as u32, caller(), &data, out);
        s.handle_tick(t0 + MS20 * k as u32, out);
    }
}

fn signals(out: &Outputs) -> Vec<Signal> {
    out.events.iter().filter_map(|e| if let Event::Signal(s) = e { Some(*s) } else { None }).collect()
}

#[test]
fn speech_onset_and_end_are_found_in_real_speech() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    let (pcm, onset) = speech();
    let mut audio = vec![0i16; 8000];
    audio.extend(&pcm);
    audio.extend(vec![0i16; 8000]);
    caller_speaks(&mut s, t0, 0, &audio, &mut out);
    let sig = signals(&out);
    let Some(Signal::SpeechStarted { pos }) = sig.first().copied() else { panic!("no speech found: {sig:?}") };
    let truth = (8000 + onset) as i64;
    // The network is sure some 50 ms in; the onset is walked back to where the level rose.
    assert!((pos as i64 - truth).abs() <= 160, "onset at {pos}, true onset {truth} (20 ms = 160)");
    let Some(Signal::SpeechStopped { pos: end, .. }) = sig.last().copied() else { panic!("speech never ended: {sig:?}") };
    let last_voice = 8000 + pcm.iter().rposition(|s| s.abs() > 300).unwrap() as i64;
    assert!((end as i64 - last_voice).abs() <= 1600, "end at {end}, last voice at {last_voice}");
    assert!(!sig.iter().any(|s| matches!(s, Signal::Dtmf { .. })), "speech is no digit: {sig:?}");
}

#[test]
fn barge_in_cuts_the_prompt_when_the_caller_speaks_long_enough() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    s.handle_command(Command::SetTarget(caller()), &mut out);
    let barge = std::time::Duration::from_millis(200);
    s.handle_command(Command::Play { id: 9, pcm: vec![3000i16; 8000 * 10].into(), barge_in: Some(barge) }, &mut out);
    let (pcm, onset) = speech();
    let mut audio = vec![0i16; 4000];
    audio.extend(&pcm);
    caller_speaks(&mut s, t0, 0, &audio, &mut out);
    assert!(out.events.contains(&Event::PlaybackStarted { id: 9, pos: 0 }));
    let (played_ms, at) = out
        .events
        .iter()
        .find_map(|e| match e {
            Event::PlaybackEnded { id: 9, outcome: PlaybackOutcome::BargeIn, played_ms } => Some(*played_ms),
            _ => None,
        })
        .map(|ms| (ms, ms))
        .expect("barge-in");
    let prompt_frames = out.played.iter().filter(|p| p.source == FrameSource::Prompt).count() as u64;
    assert_eq!(played_ms, prompt_frames * 20, "played ms is what went out");
    let onset_ms = (4000 + onset) as u64 / 8;
    // The cut comes after 200 ms of speech, within the VAD's latency (< 100 ms).
    assert!(at >= onset_ms + 200 - 20 && at <= onset_ms + 200 + 100, "cut at {at} ms, speech at {onset_ms} ms");
}

#[test]
fn without_barge_in_the_caller_talks_over_the_prompt() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    s.handle_command(Command::SetTarget(caller()), &mut out);
    s.handle_command(Command::Play { id: 1, pcm: vec![3000i16; 8000 * 10].into(), barge_in: None }, &mut out);
    caller_speaks(&mut s, t0, 0, &speech().0, &mut out);
    assert!(signals(&out).iter().any(|s| matches!(s, Signal::SpeechStarted { .. })));
    assert!(!out.events.iter().any(|e| matches!(e, Event::PlaybackEnded { .. })));
}

#[test]
fn telephone_events_become_digits_and_do_not_reach_the_audio() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    let mut seq = 0u16;
    for (n, d) in "19#".chars().enumerate() {
        let ts = 10_000 + n as u32 * 4000;
        for (marker, p) in crate::core::analysis::telephone_event::digit_packets(d, 800, 160, 10).unwrap() {
            seq += 1;
            let data = rtp::build(RtpHeader { marker, payload_type: TELEPHONE_EVENT_PT, sequence: seq, timestamp: ts, ssrc: 5 }, &p);
            s.handle_datagram(t0, caller(), &data, &mut out);
        }
    }
    let ends: Vec<_> = signals(&out)
        .into_iter()
        .filter_map(|s| match s {
            Signal::Dtmf { digit, end: true, duration_ms, source, .. } => Some((digit, duration_ms, source)),
            _ => None,
        })
        .collect();
    use crate::core::analysis::DtmfSource::Rfc4733;
    assert_eq!(ends, vec![('1', 100, Rfc4733), ('9', 100, Rfc4733), ('#', 100, Rfc4733)]);
    assert!(out.heard.is_empty(), "events are not audio");
    let c = s.take_counters();
    assert_eq!((c.telephone_event_duplicates, c.unsupported_payload), (6, 0));
}
fn fixture(bytes: &[u8]) -> Vec<i16> {
    hound::WavReader::new(bytes).unwrap().into_samples::<i16>().map(|s| s.unwrap()).collect()
}

/// The caller's side of a speakerphone: the prompt as it went out, back 150 ms
/// later at -10 dB, plus what the caller says.
fn echo_call(caller_says: Option<&[i16]>) -> (Outputs, Counters) {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    s.handle_command(Command::SetTarget(caller()), &mut out);
    let prompt = fixture(include_bytes!("../../../testdata/speech-8k.wav"));
    s.handle_command(Command::Play { id: 1, pcm: prompt.clone().into(), barge_in: Some(std::time::Duration::from_millis(200)) }, &mut out);
    let frames = prompt.len() / FRAME_SAMPLES + 20;
    let mut sent: Vec<i16> = Vec::new();
    let gain = 10f64.powf(-10.0 / 20.0);
    let mut counters = Counters::default();
    for k in 0..frames as u64 {
        s.handle_tick(t0 + MS20 * k as u32, &mut out);
        // What went out this tick (silence when nothing did), decoded as the caller hears it.
        let mut frame = [0i16; FRAME_SAMPLES];
        if let Some(t) = out.transmit.pop() {
            let p = rtp::parse(&t.data).unwrap();
            let mut pcm = Vec::new();
            Codec::Pcmu.decode_into(p.payload, &mut pcm);
            frame.copy_from_slice(&pcm);
        }
        out.transmit.clear();
        sent.extend(frame);
        let base = k as usize * FRAME_SAMPLES;
        let back: Vec<i16> = (0..FRAME_SAMPLES)
            .map(|i| {
                let n = base + i;
                let echo = if n >= 1200 { sent[n - 1200] as f64 * gain } else { 0.0 };
                let talk = caller_says.and_then(|c| c.get(n)).copied().unwrap_or(0) as f64;
                (echo + talk).clamp(-32768.0, 32767.0) as i16
            })
            .collect();
        let mut payload = Vec::new();
        Codec::Pcmu.encode_into(&back, &mut payload);
        let data =
            rtp::build(RtpHeader { marker: false, payload_type: 0, sequence: k as u16, timestamp: k as u32 * 160, ssrc: 7 }, &payload);
        s.handle_datagram(t0 + MS20 * k as u32, caller(), &data, &mut out);
        counters.barge_in_echo += s.take_counters().barge_in_echo;
    }
    (out, counters)
}

#[test]
fn the_prompt_s_own_echo_does_not_barge_in_but_speech_over_it_does() {
    let (out, c) = echo_call(None);
    assert!(signals(&out).iter().any(|s| matches!(s, Signal::SpeechStarted { .. })), "the detector hears the echo as speech");
    let ended: Vec<_> = out.events.iter().filter(|e| matches!(e, Event::PlaybackEnded { .. })).collect();
    assert!(
        matches!(ended[..], [Event::PlaybackEnded { outcome: PlaybackOutcome::Finished, .. }]),
        "the echo alone must not cut the prompt: {ended:?}"
    );
    assert!(c.barge_in_echo >= 1, "the guard says it held a barge-in back");

    // Someone else's voice over the same echo, from 0.8 s on.
    let other = fixture(include_bytes!("../../../testdata/speech2-8k.wav"));
    let mut says = vec![0i16; 6400];
    says.extend(&other);
    let (out, _) = echo_call(Some(&says));
    let cut = out.events.iter().find_map(|e| match e {
        Event::PlaybackEnded { outcome: PlaybackOutcome::BargeIn, played_ms, .. } => Some(*played_ms),
        _ => None,
    });
    let onset_ms = (6400 + other.iter().position(|s| s.abs() > 300).unwrap()) as u64 / 8;
    let cut = cut.expect("real speech over the echo barges in");
    assert!(cut >= onset_ms + 180 && cut <= onset_ms + 200 + 150, "cut at {cut} ms, the caller began at {onset_ms} ms");
}

#[test]
fn marks_follow_the_stream_and_a_barge_in_on_it_clears_the_rest() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    s.handle_command(Command::SetTarget(caller()), &mut out);
    s.handle_command(Command::StreamBargeIn(Some(Duration::from_millis(200))), &mut out);
    // Ten seconds of TTS with a mark after every second.
    for m in 0..10 {
        s.handle_command(Command::Stream { pcm: vec![2500; 8000], wide: Vec::new(), mark: Some(m) }, &mut out);
    }
    let (pcm, onset) = speech();
    let mut audio = vec![0i16; 16000 + 4000];
    audio.extend(&pcm);
    caller_speaks(&mut s, t0, 0, &audio, &mut out);
    let fates: Vec<MarkFate> = out.events.iter().filter_map(|e| if let Event::Mark(f) = e { Some(*f) } else { None }).collect();
    let played: Vec<_> = fates.iter().filter_map(|f| if let MarkFate::Played(m) = f { Some(*m) } else { None }).collect();
    let cleared: Vec<_> = fates.iter().filter_map(|f| if let MarkFate::Cleared(m) = f { Some(*m) } else { None }).collect();
    let onset_s = (20000 + onset) as f64 / 8000.0;
    assert!(out.events.contains(&Event::StreamBargedIn), "the caller's speech cut the stream");
    // Marks played in order up to the cut, every later one cleared, none twice.
    assert_eq!(played, (0..played.len() as u64).collect::<Vec<_>>());
    assert_eq!(cleared, (played.len() as u64..10).collect::<Vec<_>>());
    assert_eq!(played.len(), (onset_s + 0.2).floor() as usize, "marks up to the cut (speech at {onset_s:.2} s)");
    let sent_ms = s.stream_sent() / 8;
    assert!(sent_ms as f64 >= (onset_s + 0.18) * 1000.0 && (sent_ms as f64) <= (onset_s + 0.35) * 1000.0, "stream cut at {sent_ms} ms");
}
