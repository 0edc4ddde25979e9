//! Streams that must not move a call's state, on the real `media-node` binary over
//! real UDP (issue 33): validly keyed SRTP copies of the caller's own packets sent from
//! another address (just ahead of the real ones, and far ahead in sequence), forged
//! RTCP reports from another port of the far end's host on a plain call, and empty
//! Opus payloads. Each was measured to silence the caller, skew the far-end metrics or
//! cost the node concealment before the fix.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_tests::envtest::media_node_binary;
use fleet_tests::process::NodeProcess;
use fleet_tests::{collect_listen, metric_value, pcm_of};
use media_node::core::g711::linear_to_ulaw;
use media_node::core::rtcp;
use media_node::core::rtp::{self, RtpHeader};
use media_node::core::srtp::{MasterKey, Outbound, Suite};
use media_proto::pb::*;
use tokio::net::UdpSocket;

fn offer(caller: SocketAddr, proto: &str, extra: &str) -> String {
    format!(
        "v=0\r\no=trunk 9 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} {proto} 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n{extra}a=sendrecv\r\n",
        caller.port()
    )
}

fn tone_packet(seq: u16, ssrc: u32) -> Vec<u8> {
    let payload: Vec<u8> =
        (0..160).map(|n| linear_to_ulaw((8000.0 * (2.0 * std::f64::consts::PI * 440.0 * n as f64 / 8000.0).sin()) as i16)).collect();
    rtp::build(RtpHeader { marker: false, payload_type: 0, sequence: seq, timestamp: u32::from(seq) * 160, ssrc }, &payload)
}

/// 20 ms frames of the listener's 8 kHz stream that carry the caller's tone.
fn tone_frames(pcm: &[i16]) -> usize {
    pcm.chunks_exact(160).filter(|f| f.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / 160.0 > 1000.0 * 1000.0).count()
}

/// A node process (gRPC on `grpc`, metrics on the port above, UDP in `udp`) with one
/// call allocated: its temp dir (assets under it), the process, a client, the port.
async fn node_with_a_call(
    grpc: u16,
    udp: (u16, u16),
    call_id: &str,
) -> (tempfile::TempDir, NodeProcess, media_proto::pb::media_service_client::MediaServiceClient<tonic::transport::Channel>, u32) {
    let tmp = tempfile::tempdir().unwrap();
    let node = NodeProcess::spawn(std::process::Command::new(media_node_binary()), grpc, grpc + 1, udp, tmp.path(), &[]);
    node.ready().await;
    let mut client = node.client().await;
    let port = client.allocate_port(AllocatePortRequest { call_id: call_id.into() }).await.unwrap().into_inner().rtp_port;
    (tmp, node, client, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_copies_from_another_address_neither_silence_the_caller_nor_push_its_window() {
    let (_tmp, node, mut client, port) = node_with_a_call(30312, (30300, 30309), "copies").await;
    let node_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let far = MasterKey::generate(Suite::AesCm128HmacSha1_80, &mut rand::rng());
    let crypto = format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}\r\n", far.inline().as_str());
    let sdp = offer(caller.local_addr().unwrap(), "RTP/SAVP", &crypto);
    client.negotiate_sdp(NegotiateSdpRequest { server_rtp_port: port, remote_sdp: sdp, ..Default::default() }).await.unwrap();
    let listen = collect_listen(
        client.record_audio(RecordAudioRequest { server_rtp_port: port, target_sample_rate: Some(8000) }).await.unwrap().into_inner(),
    );

    // 165 packets of the caller's tone; the caller latches with its first five. Then
    // every one of the next 45 comes from the attacker's address just ahead of the
    // caller's own; then three of the caller's stream 31,200 ahead in sequence, keyed,
    // from the attacker; then 115 more of the caller's.
    let ssrc = 0x5eed_0002;
    let mut tx = Outbound::new(far);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for seq in 0..165u16 {
        tick.tick().await;
        if seq == 50 {
            for k in 0..3 {
                let mut ahead = tone_packet(31_200 + k, ssrc);
                tx.protect_rtp(&mut ahead).unwrap();
                attacker.send_to(&ahead, node_addr).await.unwrap();
            }
        }
        let mut p = tone_packet(seq, ssrc);
        tx.protect_rtp(&mut p).unwrap();
        if (5..50).contains(&seq) {
            attacker.send_to(&p, node_addr).await.unwrap();
        }
        caller.send_to(&p, node_addr).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = node.metrics().await;
    client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
    let (frames, _) = listen.await.unwrap();
    let heard = tone_frames(&pcm_of(&frames));
    // The first and last frame of the stream may be cut by the listener's start and
    // the jitter buffer's hold; everything else is heard.
    assert!(heard as f64 >= 0.95 * 165.0, "the agent heard {heard} of the caller's 165 frames");
    assert_eq!(metric_value(&metrics, "media_rtp_foreign_total"), 48.0, "45 copies and 3 far ahead, refused by the latch");
    assert_eq!(metric_value(&metrics, "media_srtp_authenticated_total"), 165.0, "every one of the caller's packets taken");
    let dropped = metric_value(&metrics, "media_srtp_dropped_total");
    assert_eq!(dropped, 0.0, "no real packet a replay or too old");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_rtcp_from_another_port_of_the_far_ends_host_moves_nothing_on_a_plain_call() {
    let (tmp, node, mut client, port) = node_with_a_call(30332, (30320, 30329), "rtcp-forged").await;
    let node_rtp: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let node_rtcp: SocketAddr = format!("127.0.0.1:{}", port + 1).parse().unwrap();
    let (rtp_sock, rtcp_sock) = fleet_tests::rtp_socket_pair().await;
    let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sdp = offer(rtp_sock.local_addr().unwrap(), "RTP/AVP", "");
    client.negotiate_sdp(NegotiateSdpRequest { server_rtp_port: port, remote_sdp: sdp, ..Default::default() }).await.unwrap();

    // The node's SSRC, from what it sends.
    let node_ssrc: Arc<Mutex<Option<u32>>> = Default::default();
    let (sock, seen) = (rtp_sock.clone(), node_ssrc.clone());
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok(n) = sock.recv(&mut buf).await {
            if let Ok(p) = rtp::parse(&buf[..n]) {
                *seen.lock().unwrap() = Some(p.ssrc);
            }
        }
    });
    let playing = fleet_tests::play_long_prompt(client.clone(), &tmp.path().join("assets"), port, 9.0);
    // The far end sends RTP and, from its own RTCP port, one honest report.
    let ssrc = 0x5eed_0003;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for seq in 0..400u16 {
        tick.tick().await;
        rtp_sock.send_to(&tone_packet(seq, ssrc), node_rtp).await.unwrap();
        let Some(node) = *node_ssrc.lock().unwrap() else { continue };
        let about_node = |fraction_lost, jitter| rtcp::ReportBlock {
            ssrc: node,
            fraction_lost,
            cumulative_lost: 0,
            extended_max: 0,
            jitter,
            lsr: 0,
            dlsr: 0,
        };
        if seq == 100 {
            rtcp_sock.send_to(&rtcp::report(ssrc, None, &[about_node(0, 8)], "far"), node_rtcp).await.unwrap();
        }
        // From seq 150 on, an attacker on the far end's host sends 24 reports that the
        // node's audio is 99.6 % lost with huge jitter, in the far end's own SSRC.
        if (150..174).contains(&seq) {
            attacker.send_to(&rtcp::report(ssrc, None, &[about_node(255, 1 << 30)], "far"), node_rtcp).await.unwrap();
        }
    }
    let metrics = node.metrics().await;
    // What the node sends reaches the far end's RTCP port, never the attacker's.
    let mut buf = [0u8; 2048];
    let (mut to_far, mut to_attacker) = (0, 0);
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(10), rtcp_sock.recv(&mut buf)).await {
        to_far += 1;
    }
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(10), attacker.recv(&mut buf)).await {
        to_attacker += 1;
    }
    client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
    let _ = playing.await;
    assert_eq!(metric_value(&metrics, "media_rtcp_far_end_fraction_lost_count"), 1.0, "only the far end's own report was read");
    assert_eq!(metric_value(&metrics, "media_rtcp_far_end_fraction_lost_sum"), 0.0);
    assert!(metric_value(&metrics, "media_rtcp_far_end_jitter_seconds_sum") < 0.01, "no forged jitter");
    assert_eq!(metric_value(&metrics, "media_rtp_foreign_total"), 24.0, "each forged report refused and counted");
    assert!(to_far >= 1, "the node's reports go to the far end's RTCP port");
    assert_eq!(to_attacker, 0, "and none to the attacker's");
}

#[cfg(feature = "opus")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_opus_payloads_are_refused_and_counted() {
    let (_tmp, node, mut client, port) = node_with_a_call(30352, (30340, 30349), "empty-opus").await;
    let node_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sdp = format!(
        "v=0\r\no=ua 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\na=sendrecv\r\n",
        caller.local_addr().unwrap().port()
    );
    let r = client.negotiate_sdp(NegotiateSdpRequest { server_rtp_port: port, remote_sdp: sdp, ..Default::default() }).await.unwrap();
    assert_eq!(r.into_inner().media.unwrap().codec, "opus");
    let listen = collect_listen(
        client.record_audio(RecordAudioRequest { server_rtp_port: port, target_sample_rate: Some(16000) }).await.unwrap().into_inner(),
    );
    for seq in 0..50u16 {
        let p =
            rtp::build(RtpHeader { marker: false, payload_type: 111, sequence: seq * 4, timestamp: u32::from(seq) * 3840, ssrc: 9 }, &[]);
        caller.send_to(&p, node_addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = node.metrics().await;
    client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
    let (frames, _) = listen.await.unwrap();
    assert_eq!(metric_value(&metrics, "media_rtp_decode_errors_total{codec=\"opus\"}"), 50.0);
    assert_eq!(metric_value(&metrics, "media_rtp_plc_concealed_total") + metric_value(&metrics, "media_rtp_fec_recovered_total"), 0.0);
    assert!(pcm_of(&frames).iter().all(|&s| s == 0), "nothing but silence reached the agent");
}

/// Sixteen listeners that stopped reading (an agent that reconnected and left its old
/// streams open, sixteen times) hold every slot of a call: the agent's new stream is
/// refused and hears nothing. Once the call is full, a listener that has lost every
/// frame for over a second is ended, with a status saying why, to make room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_listeners_make_room_for_an_agent_that_reconnects() {
    let (_tmp, node, mut client, port) = node_with_a_call(30372, (30360, 30369), "stalled").await;
    let node_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let caller = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let sdp = offer(caller.local_addr().unwrap(), "RTP/AVP", "");
    client.negotiate_sdp(NegotiateSdpRequest { server_rtp_port: port, remote_sdp: sdp, ..Default::default() }).await.unwrap();
    // The caller talks throughout: every listener gets a frame each 20 ms.
    let talker = caller.clone();
    let talking = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for seq in 0..1000u16 {
            tick.tick().await;
            talker.send_to(&tone_packet(seq, 0x5eed_0004), node_addr).await.unwrap();
        }
    });
    // Sixteen streams on one connection, never read. Small HTTP/2 windows make them
    // stall in seconds (with a client's defaults, 2 MB a stream, it takes a minute).
    let channel = tonic::transport::Endpoint::from_shared("http://127.0.0.1:30372".to_string())
        .unwrap()
        .initial_stream_window_size(Some(4096))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .unwrap();
    let mut stalled_client = media_proto::pb::media_service_client::MediaServiceClient::new(channel);
    let mut stalled = Vec::new();
    for _ in 0..16 {
        let s = stalled_client.record_audio(RecordAudioRequest { server_rtp_port: port, target_sample_rate: Some(16000) }).await;
        stalled.push(s.expect("a slot is free").into_inner());
    }
    let mut agent = node.client().await;
    let full = agent.record_audio(RecordAudioRequest { server_rtp_port: port, target_sample_rate: Some(16000) }).await;
    assert_eq!(full.err().map(|s| s.code()), Some(tonic::Code::ResourceExhausted), "sixteen live listeners fill the call");
    // Their queues fill (HTTP/2's window, then the node's 2 s queue); once one has lost
    // every frame for a second, the agent gets its slot.
    let mut attached = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Ok(s) = agent.record_audio(RecordAudioRequest { server_rtp_port: port, target_sample_rate: Some(16000) }).await {
            attached = Some(s.into_inner());
            break;
        }
    }
    let listen = collect_listen(attached.expect("the agent got a slot within 10 s"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics = node.metrics().await;
    client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
    talking.abort();
    let (frames, _) = listen.await.unwrap();
    // 16 kHz frames of 20 ms: at least 1.5 s of the caller's tone in 2 s.
    let heard = pcm_of(&frames);
    let tone = heard.chunks_exact(320).filter(|f| f.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / 320.0 > 1000.0 * 1000.0).count();
    assert!(tone >= 75, "the agent heard {tone} frames of the caller");
    assert_eq!(metric_value(&metrics, "media_listeners_evicted_total"), 1.0, "one stalled listener made room");
    // The evicted stream ends with a status saying why (after the frames it had queued).
    let mut why = None;
    for mut s in stalled {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), s.message()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Err(status)) => {
                    why = Some(status);
                    break;
                }
                _ => break,
            }
        }
        if why.is_some() {
            break;
        }
    }
    let why = why.expect("one stalled stream ended with a status");
    assert_eq!(why.code(), tonic::Code::ResourceExhausted);
    assert!(why.message().contains("ended to make room"), "{}", why.message());
}

/// A TTS client sends four half seconds of audio, each with its mark, and keeps its
/// stream open; the agent stops the audio 0.7 s in. The node had read only about 0.6 s
/// ahead of playout, so the marks further ahead were never answered (m1 played, the
/// rest silent). Every mark is now answered, in order: played or cleared, then the
/// final response once the client half-closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mark_is_answered_after_a_cut_even_those_the_node_had_not_read() {
    let (_tmp, _node, mut client, port) = node_with_a_call(30392, (30380, 30389), "marks-cut").await;
    let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let control = |uri: &str| PlayAudioRequest {
        audio_uri: uri.into(),
        server_rtp_port: port,
        rtp_target_addr: caller.local_addr().unwrap().to_string(),
        barge_in_ms: None,
    };
    client.play_audio(control("control://set_target")).await.unwrap();
    let tts = fleet_tests::synth_speech(16000, 2.0, 7);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    for (i, c) in tts.chunks(8000).enumerate() {
        let req = StreamAudioToCallRequest {
            call_id: "marks-cut".into(),
            audio_chunk: c.iter().flat_map(|s| s.to_le_bytes()).collect(),
            mark: format!("m{}", i + 1),
            ..Default::default()
        };
        tx.send(req).await.unwrap();
    }
    let mut replies = client.stream_audio_to_call(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    tokio::time::sleep(Duration::from_millis(700)).await;
    client.play_audio(control("control://stop_audio")).await.unwrap();
    let mut acks = Vec::new();
    let last = loop {
        let r = tokio::time::timeout(Duration::from_secs(2), replies.message()).await;
        let Ok(r) = r else {
            // The client half-closes only now: the final answer waits for it.
            drop(tx);
            break tokio::time::timeout(Duration::from_secs(5), replies.message()).await.expect("the final answer").unwrap().unwrap();
        };
        let r = r.unwrap().expect("a response");
        if r.mark.is_empty() {
            break r;
        }
        acks.push((r.mark, r.mark_cleared));
    };
    // Every mark answered once, in order: what had gone out by the stop (m1, at 0.5 s;
    // m2 too on a machine slow to stop) played, the rest cleared, m4 (which the node had
    // not read) among them.
    let names: Vec<&str> = acks.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(names, ["m1", "m2", "m3", "m4"], "every mark answered once, in order: {acks:?}");
    let played = acks.iter().take_while(|(_, cleared)| !cleared).count();
    assert!((1..=2).contains(&played) && acks[played..].iter().all(|(_, cleared)| *cleared), "{acks:?}");
    assert!(!last.success);
    assert_eq!(last.error_message, "interrupted by barge-in (stop or new prompt)");
    client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
}

/// One 64 KB StreamAudioToCall message of Ogg Opus whose packets are one byte each:
/// a TOC saying SILK 60 ms and no frame data, which libopus conceals as 60 ms (about
/// 32,000 packets, half an hour of audio). The node decoded a whole message before any
/// back-pressure applied; it now decodes as playback takes audio, so its memory does
/// not follow what a few bytes decode to. Then an Ogg stream cut inside a page, and
/// one with garbage after its last page: each ends as bad audio, not success.
#[cfg(feature = "opus")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ogg_opus_decode_bomb_costs_no_memory_and_unfinished_streams_are_bad_audio() {
    use media_node::audio::ogg::page;
    use media_proto::pb::stream_audio_to_call_request::AudioFormat;
    let (_tmp, node, mut client, port) = node_with_a_call(30412, (30400, 30409), "ogg-bomb").await;
    let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let set_target = PlayAudioRequest {
        audio_uri: "control://set_target".into(),
        server_rtp_port: port,
        rtp_target_addr: caller.local_addr().unwrap().to_string(),
        barge_in_ms: None,
    };
    client.play_audio(set_target).await.unwrap();
    let mut head = b"OpusHead".to_vec();
    head.extend_from_slice(&[1, 1, 0, 0]);
    head.extend_from_slice(&48000u32.to_le_bytes());
    head.extend_from_slice(&[0, 0, 0]);
    let mut stream = page(9, 0, 0, 2, &[&head]);
    stream.extend(page(9, 1, 0, 0, &[b"OpusTags\0\0\0\0\0\0\0\0"]));
    // TOC: SILK narrowband 60 ms (config 3), code 0; no frame follows.
    let bomb = [0x18u8];
    let packets: Vec<&[u8]> = vec![&bomb; 255];
    let mut seq = 2;
    while stream.len() + 800 < 64 * 1024 {
        stream.extend(page(9, seq, 0, 0, &packets));
        seq += 1;
    }
    let msg = |chunk: Vec<u8>| StreamAudioToCallRequest {
        call_id: "ogg-bomb".into(),
        audio_chunk: chunk,
        audio_format: AudioFormat::OggOpus as i32,
        ..Default::default()
    };
    let peak_before = node.memory_kib("VmHWM:");
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(msg(stream)).await.unwrap();
    let mut replies = client.stream_audio_to_call(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    // Three seconds of it play; then the agent stops it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let peak = node.memory_kib("VmHWM:");
    let stop = PlayAudioRequest {
        audio_uri: "control://stop_audio".into(),
        server_rtp_port: port,
        rtp_target_addr: String::new(),
        barge_in_ms: None,
    };
    client.play_audio(stop).await.unwrap();
    drop(tx);
    let last = tokio::time::timeout(Duration::from_secs(10), replies.message()).await.unwrap().unwrap().unwrap();
    assert!(!last.success && last.played_ms >= 2000, "it played until stopped: {last:?}");
    let grew_mib = (peak.saturating_sub(peak_before)) as f64 / 1024.0;
    println!("Ogg Opus decode bomb (64 KB, {} packets of 60 ms): peak RSS +{grew_mib:.1} MiB", (seq - 2) * 255);
    assert!(grew_mib < 32.0, "the node's peak memory grew {grew_mib:.1} MiB");

    // A page cut short, and 2 KB of garbage after the last page: bad audio.
    let mut good = page(9, 0, 0, 2, &[&head]);
    good.extend(page(9, 1, 0, 0, &[b"OpusTags\0\0\0\0\0\0\0\0"]));
    let whole = page(9, 2, 0, 0, &[&[0x1b, 0x01, 0]]);
    for (what, tail) in [("cut short", whole[..whole.len() - 2].to_vec()), ("garbage after it", vec![0x5a; 2048])] {
        let msgs = vec![msg(good.clone()), msg(tail)];
        let mut r = client.stream_audio_to_call(tokio_stream::iter(msgs)).await.unwrap().into_inner();
        let last = tokio::time::timeout(Duration::from_secs(10), r.message()).await.unwrap().unwrap().unwrap();
        assert!(!last.success, "{what}: {last:?}");
        assert!(last.error_message.starts_with("bad audio: at the stream's end"), "{what}: {}", last.error_message);
    }
    client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
}

/// Prompt decode bombs (`file://`): a FLAC of 700 s of silence at 192 kHz (425 KB, 268 MB
/// decoded at its rate), as sox writes it, and the same with its stated length zeroed
/// (unknown), asked for by four calls at once. The node decoded each request whole at
/// the source rate before the 600 s limit refused it; now the stated length is refused
/// before decoding, a prompt of unknown length is brought to the call's rate as it is
/// decoded, and concurrent requests share one decode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_decode_bombs_are_refused_without_the_memory_they_would_take() {
    let tmp = tempfile::tempdir().unwrap();
    let node = NodeProcess::spawn(std::process::Command::new(media_node_binary()), 30432, 30433, (30420, 30429), tmp.path(), &[]);
    node.ready().await;
    let bomb = tmp.path().join("assets/bomb.flac");
    let made = std::process::Command::new("sox")
        .args(["-D", "-n", "-r", "192000", "-b", "16", "-c", "1"])
        .arg(&bomb)
        .args(["trim", "0", "700"])
        .status()
        .expect("sox runs");
    assert!(made.success());
    // STREAMINFO's 36-bit total sample count (bytes 21-25 of the file) set to 0: unknown.
    let mut unknown = std::fs::read(&bomb).unwrap();
    assert_eq!(&unknown[..4], b"fLaC");
    unknown[21] &= 0xf0;
    unknown[22..26].fill(0);
    std::fs::write(tmp.path().join("assets/bomb-unknown.flac"), &unknown).unwrap();
    let mut client = node.client().await;
    let mut ports = Vec::new();
    for i in 0..4 {
        ports.push(client.allocate_port(AllocatePortRequest { call_id: format!("bomb-{i}") }).await.unwrap().into_inner().rtp_port);
    }
    let play = |port: u32, file: &str| PlayAudioRequest {
        audio_uri: format!("file://{file}"),
        server_rtp_port: port,
        rtp_target_addr: "127.0.0.1:9".into(),
        barge_in_ms: None,
    };
    let peak_before = node.memory_kib("VmHWM:");
    let mut asks = Vec::new();
    for &port in &ports {
        let mut c = client.clone();
        let req = play(port, "bomb-unknown.flac");
        asks.push(tokio::spawn(async move { c.play_audio(req).await }));
    }
    for a in asks {
        let e = a.await.unwrap().expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("the limit is 600 s"), "{}", e.message());
    }
    let grew_mib = node.memory_kib("VmHWM:").saturating_sub(peak_before) as f64 / 1024.0;
    println!("FLAC decode bomb (700 s at 192 kHz, unknown length) on 4 calls at once: peak RSS +{grew_mib:.1} MiB");
    assert!(grew_mib < 32.0, "the node's peak memory grew {grew_mib:.1} MiB");
    // Its stated length is refused before any of it is decoded.
    let stated = client.play_audio(play(ports[0], "bomb.flac")).await.expect_err("refused");
    assert!(stated.message().contains("prompt is 700 s long; the limit is 600 s"), "{}", stated.message());
    for port in ports {
        client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
    }
}
