//! SRTP against an attacker, on the real `media-node` binary over real UDP: a caller
//! with SDES keys speaks while an attacker who knows the call's port sends plain RTP,
//! SRTP under a key of its own, a flood of 10,000 forged packets and replays of the
//! caller's own packets. Nothing of it is heard, the latch stays on the caller, the call
//! goes on through a rekey by re-offer, and the counters say what happened. The keys
//! never reach the log or the metrics, and no copy of them is left in the process's
//! memory once the call ends.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use fleet_tests::envtest::media_node_binary;
use fleet_tests::process::NodeProcess;
use fleet_tests::{best_correlation, collect_listen, metric_value, pcm_of};
use media_node::core::g711::{linear_to_ulaw, ulaw_to_linear};
use media_node::core::rtp::{self, RtpHeader};
use media_node::core::srtp::{Inbound, MasterKey, Outbound, Suite};
use media_proto::pb::*;
use tokio::net::UdpSocket;

const SUITE: &str = "AES_CM_128_HMAC_SHA1_80";

fn offer(caller: SocketAddr, key: &MasterKey) -> String {
    format!(
        "v=0\r\no=trunk 9 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=crypto:1 {SUITE} inline:{}\r\na=sendrecv\r\n",
        caller.port(),
        key.inline().as_str()
    )
}

/// The node's key from its answer's crypto line (base64, and its bytes).
fn answer_key(answer: &str) -> (String, Vec<u8>) {
    let b64 = answer.lines().find_map(|l| l.strip_prefix(&format!("a=crypto:1 {SUITE} inline:"))).expect("crypto line in the answer");
    (b64.to_string(), base64::engine::general_purpose::STANDARD.decode(b64).unwrap())
}

fn bytes_of(key: &MasterKey) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(key.inline().as_bytes()).unwrap()
}

fn pcmu_packet(seq: u16, ssrc: u32, pcm: &[i16]) -> Vec<u8> {
    let payload: Vec<u8> = pcm.iter().map(|&s| linear_to_ulaw(s)).collect();
    rtp::build(RtpHeader { marker: seq == 0, payload_type: 0, sequence: seq, timestamp: seq as u32 * 160, ssrc }, &payload)
}

/// Which of `needles` the process's writable memory holds (SRTP_DEBUG=1 prints where;
/// None when the kernel does not let this process read another's memory).
fn memory_holds(pid: u32, needles: &[&[u8]]) -> Option<Vec<bool>> {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut found = vec![false; needles.len()];
    let mut readable = false;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else { continue };
        if !perms.starts_with("rw") {
            continue;
        }
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (u64::from_str_radix(a, 16).unwrap(), u64::from_str_radix(b, 16).unwrap());
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        readable = true;
        for (i, n) in needles.iter().enumerate() {
            if let Some(at) = buf.windows(n.len()).position(|w| w == *n) {
                found[i] = true;
                if std::env::var_os("SRTP_DEBUG").is_some() {
                    eprintln!("needle {i} in {line} at +{at:#x}: {:02x?}", &buf[at.saturating_sub(48)..(at + 80).min(buf.len())]);
                }
            }
        }
    }
    readable.then_some(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attacker_on_the_port_is_never_heard_never_latched_and_the_keys_never_leak() {
    let tmp = tempfile::tempdir().unwrap();
    let node = NodeProcess::spawn(
        std::process::Command::new(media_node_binary()),
        30252,
        30253,
        (30240, 30249),
        tmp.path(),
        &[("RUST_LOG", "debug".into())],
    );
    node.ready().await;
    let mut client = node.client().await;
    let prompt = fleet_tests::synth_speech(8000, 1.0, 3);
    std::fs::write(tmp.path().join("assets/prompt.wav"), fleet_tests::wav_bytes(&prompt, 8000)).unwrap();
    let alloc = client.allocate_port(AllocatePortRequest { call_id: "srtp-attack".into() }).await.unwrap().into_inner();
    let port = alloc.rtp_port;
    let node_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let caller = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let attacker = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());

    let far1 = MasterKey::generate(Suite::AesCm128HmacSha1_80, &mut rand::rng());
    let negotiate = |sdp: String| NegotiateSdpRequest { server_rtp_port: port, remote_sdp: sdp, ..Default::default() };
    let answer = client.negotiate_sdp(negotiate(offer(caller.local_addr().unwrap(), &far1))).await.unwrap().into_inner();
    assert_eq!(answer.media.unwrap().srtp_suite, SUITE);
    let (node_b64, node_key) = answer_key(&answer.local_sdp);
    let listen = collect_listen(
        client.record_audio(RecordAudioRequest { server_rtp_port: port, target_sample_rate: Some(8000) }).await.unwrap().into_inner(),
    );

    // What reaches the caller and the attacker from the node.
    let to_caller: Arc<Mutex<Vec<Vec<u8>>>> = Default::default();
    let to_attacker: Arc<Mutex<usize>> = Default::default();
    let (c, sink) = (caller.clone(), to_caller.clone());
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok(n) = c.recv(&mut buf).await {
            sink.lock().unwrap().push(buf[..n].to_vec());
        }
    });
    let (a, count) = (attacker.clone(), to_attacker.clone());
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while a.recv(&mut buf).await.is_ok() {
            *count.lock().unwrap() += 1;
        }
    });

    // The caller speaks a sentence as SRTP, 20 ms a packet; halfway, a re-offer brings
    // its new key and it switches at once (its packets under the old key still in flight).
    let speech = fleet_tests::voice::espeak_8k("I would like to change the address on my account, please.");
    let frames: Vec<&[i16]> = speech.chunks_exact(160).collect();
    let ssrc = 0x5eed_0001;
    let far2 = MasterKey::generate(Suite::AesCm128HmacSha1_80, &mut rand::rng());
    let mut tx = Outbound::new(far1.clone());
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let rekey_at = frames.len() / 2;
    let mut node_b64_after = String::new();
    for (i, f) in frames.iter().enumerate() {
        tick.tick().await;
        let mut p = pcmu_packet(i as u16, ssrc, f);
        tx.protect_rtp(&mut p).unwrap();
        caller.send_to(&p, node_addr).await.unwrap();
        sent.push(p);
        match i {
            // Plain RTP and SRTP under the attacker's own key: a 1 kHz tone, from the
            // attacker's address, numbered just ahead of the caller.
            10 => {
                let tone: Vec<i16> =
                    (0..160).map(|n| (12000.0 * (2.0 * std::f64::consts::PI * 1000.0 * n as f64 / 8000.0).sin()) as i16).collect();
                let mut wrong = Outbound::new(MasterKey::generate(Suite::AesCm128HmacSha1_80, &mut rand::rng()));
                for k in 0..50u16 {
                    attacker.send_to(&pcmu_packet(i as u16 + 1 + k, ssrc, &tone), node_addr).await.unwrap();
                    let mut p = pcmu_packet(i as u16 + 1 + k, ssrc, &tone);
                    wrong.protect_rtp(&mut p).unwrap();
                    attacker.send_to(&p, node_addr).await.unwrap();
                }
            }
            // The flood: 10,000 forged SRTP packets with the caller's SSRC, numbered
            // ahead of it, paced at 10 a millisecond (so the kernel drops none of them).
            20 => {
                let attacker = attacker.clone();
                tokio::spawn(async move {
                    for k in 0..10_000u32 {
                        let mut junk = pcmu_packet((2000 + k % 500) as u16, ssrc, &[0; 160]);
                        for (j, b) in junk[12..].iter_mut().enumerate() {
                            *b = (k as usize).wrapping_mul(2654435761).wrapping_add(j * 40503) as u8;
                        }
                        junk.extend_from_slice(&k.to_be_bytes()[..2]);
                        attacker.send_to(&junk, node_addr).await.unwrap();
                        if k % 10 == 9 {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                });
            }
            _ if i == rekey_at => {
                let r = client.negotiate_sdp(negotiate(offer(caller.local_addr().unwrap(), &far2))).await.unwrap().into_inner();
                node_b64_after = answer_key(&r.local_sdp).0;
                tx.rekey(far2.clone());
            }
            _ => {}
        }
    }
    assert_eq!(node_b64_after, node_b64, "the node's own key goes on through the re-offer (same suite)");
    // Replays of every packet the caller sent, from the attacker's address.
    for p in &sent {
        attacker.send_to(p, node_addr).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The call goes on: a prompt plays to the caller, as SRTP under the node's key.
    let played = client
        .play_audio(PlayAudioRequest {
            audio_uri: "file://prompt.wav".into(),
            server_rtp_port: port,
            rtp_target_addr: String::new(),
            barge_in_ms: None,
        })
        .await
        .expect("the call is alive after the attack")
        .into_inner();
    assert_eq!(played.message, "finished");
    let metrics = node.metrics().await;
    let holds = memory_holds(node.child.id(), &[&node_key, &bytes_of(&far1), &bytes_of(&far2)]);
    client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();

    // Counted exactly: 100 + 10,000 forgeries, every replay, and each of the caller's
    // packets authenticated once (through the rekey: no gap).
    let drops = |reason: &str| metric_value(&metrics, &format!("media_srtp_dropped_total{{reason=\"{reason}\"}}"));
    assert_eq!(drops("auth"), 10_100.0);
    assert_eq!(drops("replay") + drops("too_old"), sent.len() as f64, "every replay refused");
    assert_eq!(metric_value(&metrics, "media_srtp_authenticated_total"), sent.len() as f64, "every caller packet, under both keys");
    assert_eq!(metric_value(&metrics, "media_rtp_foreign_total"), 0.0, "no forged packet got as far as the latch");
    assert_eq!(metric_value(&metrics, "media_calls_by_transport{transport=\"srtp\"}"), 1.0);

    // Nothing of the attacker was heard; the caller was, throughout.
    let (frames_heard, _) = listen.await.unwrap();
    let heard = pcm_of(&frames_heard);
    let start = heard.iter().position(|s| s.abs() > 300).expect("the caller was heard");
    let from = speech.iter().position(|s| s.abs() > 300).unwrap();
    let len = (speech.len() - from - 800).min(heard.len() - start - 800);
    let (c, lag) = best_correlation(&speech[from..from + len], &heard[start.saturating_sub(400)..], 800);
    assert!(c > 0.9, "the caller's whole sentence was heard: correlation {c:.3} at lag {lag}");
    let tone_power = media_node::core::goertzel::power_at(&heard, 8000, 1000.0);
    let speech_power = media_node::core::goertzel::power_at(&speech, 8000, 1000.0);
    assert!(tone_power <= speech_power * 1.5, "no 1 kHz tone from the attacker: {tone_power} against the speech's own {speech_power}");

    // The latch stayed on the caller: the prompt went to it, none to the attacker.
    assert_eq!(*to_attacker.lock().unwrap(), 0, "nothing was sent to the attacker");
    let got = to_caller.lock().unwrap().clone();
    assert!(got.len() >= 45, "the caller got the 1 s prompt: {} packets", got.len());
    let mut rx = Inbound::new(MasterKey::new(Suite::AesCm128HmacSha1_80, &node_key).unwrap());
    let mut plain = Vec::new();
    let mut pcm = Vec::new();
    for p in &got {
        rx.unprotect_rtp(p, &mut plain).expect("the node's packets are SRTP under its key");
        pcm.extend(rtp::parse(&plain).unwrap().payload.iter().map(|&b| ulaw_to_linear(b)));
    }
    let (c, _) = best_correlation(&pcm[..6000], &prompt, 800);
    assert!(c > 0.9, "the caller decrypted the prompt: {c:.3}");

    // No key in the log or the metrics, in any form the node knows them.
    let log = node.log();
    assert!(log.contains("SDP negotiated"), "the log is the node's");
    for secret in [node_b64.as_str(), far1.inline().as_str(), far2.inline().as_str()] {
        assert!(!log.contains(secret) && !metrics.contains(secret), "a key leaked");
        assert!(!log.contains(&secret[..16]), "part of a key leaked");
    }
    // The keys are wiped: while the call ran its memory held the keys in use (so the
    // scan can see them) but no longer the caller's first key, 64 packets after the
    // rekey; after the call, no copy of any.
    match holds {
        None => eprintln!("note: /proc/<pid>/mem is not readable here; the memory check did not run"),
        Some(during) => {
            assert_eq!(during, [true, false, true], "the scan finds the live keys, and the replaced one is gone");
            let mut after = Vec::new();
            for _ in 0..20 {
                after = memory_holds(node.child.id(), &[&node_key, &bytes_of(&far1), &bytes_of(&far2)]).unwrap();
                if after == [false, false, false] {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            assert_eq!(after, [false, false, false], "no copy of the node's key, the first or the second far key after the call");
        }
    }
}

/// RTCP both ways on an SRTP call, on the real binary over real UDP: the far end gets
/// SRTCP sender reports on the port above its RTP port, under the node's key, that
/// count what it received and report on what it sent; its own reports (SRTCP to the
/// node's odd port) give the node the round trip; a plain, forged report is dropped
/// and counted; at the end, a BYE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srtcp_reports_flow_both_ways_and_give_the_round_trip() {
    use media_node::core::rtcp;
    let tmp = tempfile::tempdir().unwrap();
    let node = NodeProcess::spawn(std::process::Command::new(media_node_binary()), 30262, 30263, (30254, 30259), tmp.path(), &[]);
    node.ready().await;
    let mut client = node.client().await;
    let port = client.allocate_port(AllocatePortRequest { call_id: "srtcp".into() }).await.unwrap().into_inner().rtp_port;
    let node_rtp: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let node_rtcp: SocketAddr = format!("127.0.0.1:{}", port + 1).parse().unwrap();
    // The far end's RTP port and the RTCP port above it (RFC 3550 §11).
    let (rtp_sock, rtcp_sock) = fleet_tests::rtp_socket_pair().await;
    let far = MasterKey::generate(Suite::AesCm128HmacSha1_80, &mut rand::rng());
    let answer = client
        .negotiate_sdp(NegotiateSdpRequest {
            server_rtp_port: port,
            remote_sdp: offer(rtp_sock.local_addr().unwrap(), &far),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (_, node_key) = answer_key(&answer.local_sdp);
    let node_key = MasterKey::new(Suite::AesCm128HmacSha1_80, &node_key).unwrap();

    // What the node sends on RTP: its SSRC and how many packets.
    let received: Arc<Mutex<(Option<u32>, u32, u16)>> = Default::default();
    let (sock, sink, key) = (rtp_sock.clone(), received.clone(), node_key.clone());
    tokio::spawn(async move {
        let mut rx = Inbound::new(key);
        let (mut buf, mut plain) = ([0u8; 2048], Vec::new());
        while let Ok(n) = sock.recv(&mut buf).await {
            if rx.unprotect_rtp(&buf[..n], &mut plain).is_ok() {
                let p = rtp::parse(&plain).unwrap();
                let mut r = sink.lock().unwrap();
                *r = (Some(p.ssrc), r.1 + 1, p.sequence);
            }
        }
    });
    let playing = fleet_tests::play_long_prompt(client.clone(), &tmp.path().join("assets"), port, 9.0);

    // The far end speaks for 8 s, every 10th packet lost on the way, and reads the
    // node's reports as they come.
    let ssrc = 0x5eed_0002;
    let mut tx = Outbound::new(far.clone());
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut rx = Inbound::new(node_key.clone());
    let mut reports = Vec::new();
    let mut buf = [0u8; 1500];
    let mut plain = Vec::new();
    let mut last_sent = 0u16;
    for i in 0..400u16 {
        tick.tick().await;
        if i % 10 != 7 {
            let mut p = pcmu_packet(i, ssrc, &[1000; 160]);
            tx.protect_rtp(&mut p).unwrap();
            rtp_sock.send_to(&p, node_rtp).await.unwrap();
            last_sent = i;
        }
        while let Ok(n) = rtcp_sock.try_recv(&mut buf) {
            rx.unprotect_rtcp(&buf[..n], &mut plain).expect("SRTCP under the node's key");
            reports.push((
                last_sent,
                received.lock().unwrap().1,
                rtcp::parse(&plain).expect("a compound packet"),
                std::time::Instant::now(),
            ));
        }
    }
    assert!(!reports.is_empty(), "a report every 2.5-7.5 s, the first within 3.75 s");
    let (sent_then, got_then, last, arrived) = reports.last().unwrap().clone();
    let (node_ssrc, _, _) = *received.lock().unwrap();
    let (sr_ssrc, sr_ntp) = last.sender.expect("a sender report: the node is sending");
    assert_eq!(Some(sr_ssrc), node_ssrc, "the report is about the node's RTP stream");
    let block = last.blocks.iter().find(|b| b.ssrc == ssrc).expect("a block about the far end");
    assert!(block.extended_max.abs_diff(u32::from(sent_then)) <= 2, "{} against {sent_then}", block.extended_max);
    let lost = block.cumulative_lost as f64 / block.extended_max as f64;
    assert!((0.07..0.13).contains(&lost), "a tenth lost: {} of {}", block.cumulative_lost, block.extended_max);
    assert!(block.fraction_lost > 10 && block.fraction_lost < 40, "{}", block.fraction_lost);
    let now_ntp = rtcp::ntp(std::time::SystemTime::now());
    assert!((now_ntp >> 32).abs_diff(sr_ntp >> 32) <= 10, "the report carries wall-clock NTP time");
    // The SR's packet count came in while the far end counted its own.
    assert!(got_then > 0 && block.jitter < 8000, "{got_then}, jitter {}", block.jitter);

    // The far end's SR with a block echoing the node's last SR and how long it held it
    // (DLSR): SRTCP to the node's odd port. A plain copy of it, forged, goes to the
    // muxed port.
    let held = ((arrived.elapsed().as_nanos() << 16) / 1_000_000_000) as u32;
    let their = rtcp::SenderInfo { ntp: now_ntp, rtp_timestamp: 0, packets: 400, octets: 64000 };
    let echo = rtcp::ReportBlock {
        ssrc: sr_ssrc,
        fraction_lost: 13,
        cumulative_lost: 2,
        extended_max: 1,
        jitter: 40,
        lsr: rtcp::ntp_middle(sr_ntp),
        dlsr: held,
    };
    let report = rtcp::report(ssrc, Some(their), &[echo], "far-end");
    rtp_sock.send_to(&report, node_rtp).await.unwrap();
    let mut secured = report.clone();
    tx.protect_rtcp(&mut secured).unwrap();
    rtcp_sock.send_to(&secured, node_rtcp).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = node.metrics().await;
    assert_eq!(metric_value(&metrics, "media_rtcp_round_trip_seconds_count"), 1.0, "one round trip, from the genuine report");
    let rtt = metric_value(&metrics, "media_rtcp_round_trip_seconds_sum");
    eprintln!(
        "{} reports; the last: {} of {} lost, fraction {}/256, jitter {}; round trip from the echo {rtt:.3} s",
        reports.len(),
        block.cumulative_lost,
        block.extended_max,
        block.fraction_lost,
        block.jitter
    );
    // Loopback, less the time the far end held the report; the far end reads its
    // socket every 20 ms, so that much of the hold is not in DLSR.
    assert!((0.0..0.05).contains(&rtt), "round trip {rtt} s on loopback");
    assert_eq!(metric_value(&metrics, "media_rtcp_far_end_fraction_lost_sum"), 13.0 / 256.0);
    assert_eq!(metric_value(&metrics, "media_srtp_dropped_total{reason=\"auth\"}"), 1.0, "the plain report is dropped");
    assert!(metric_value(&metrics, "media_rtcp_sent_total") >= reports.len() as f64);

    client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
    let _ = playing.await;
    let mut bye = false;
    for _ in 0..20 {
        while let Ok(n) = rtcp_sock.try_recv(&mut buf) {
            rx.unprotect_rtcp(&buf[..n], &mut plain).unwrap();
            bye |= rtcp::parse(&plain).unwrap().bye;
        }
        if bye {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(bye, "a BYE when the call ends");
}
