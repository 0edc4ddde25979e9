//! Hostile callers, as an adversary would try them, each over real UDP and gRPC: the
//! node must keep serving a normal call afterwards, serve no one but its caller, write
//! nothing outside its roots, and keep its memory bounded.

use std::time::Duration;

use base64::Engine;
use fleet_tests::*;
use media_node::core::g711::Codec;
use media_node::core::rtp::{self, RtpHeader};
use media_proto::pb::*;
use tonic::Code;

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap();
    kb / 1024.0
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// After whatever was tried: a prompt still reaches the caller and the caller is
/// still heard.
async fn still_serves(node: &mut TestNode, call_id: &str) {
    let (port, node_rtp, caller) = node.call(call_id).await;
    let listen = node.listen(port, 8000).await;
    let speech = synth_speech(8000, 1.0, 8);
    caller.send_speech(node_rtp, &speech, Codec::Pcmu, 5).await.unwrap();
    node.write_prompt("after.wav", &synth_prompt(8000, 0.3), 8000);
    assert_eq!(node.play(port, "file://after.wav").await.unwrap().message, "finished");
    sleep_ms(100).await;
    node.client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
    let (frames, _) = listen.await.unwrap();
    let (c, _) = best_correlation(&speech, &pcm_of(&frames), 8000);
    assert!(c > 0.95, "a normal call is heard afterwards: {c}");
    assert!(caller.received_count() >= 10, "and hears its prompt");
}

#[tokio::test]
async fn a_flood_of_random_and_forged_datagrams_moves_nothing() {
    let mut node = TestNode::start(26000, 10).await;
    let (port, node_rtp, caller) = node.call("flood-1").await;
    let listen = node.listen(port, 8000).await;
    // The caller speaks first: its address is latched.
    let speech = synth_speech(8000, 0.5, 2);
    caller.send_speech(node_rtp, &speech, Codec::Pcmu, 7).await.unwrap();
    let before = rss_mb();
    let attacker = RtpCaller::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let rtcp: std::net::SocketAddr = format!("127.0.0.1:{}", port + 1).parse().unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for k in 0..20_000u32 {
        let r = next();
        let len = (r % 1400) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if k % 2 == 0 {
            // Valid-looking RTP: loud audio, any sequence, timestamp and SSRC.
            let h =
                RtpHeader { marker: r & 1 == 1, payload_type: 0, sequence: next() as u16, timestamp: next() as u32, ssrc: next() as u32 };
            bytes = rtp::build(h, &[0x80; 160]);
        }
        let to = if k % 5 == 0 { rtcp } else { node_rtp };
        attacker.socket.send_to(&bytes, to).await.unwrap();
        if k % 20 == 0 {
            tokio::task::yield_now().await;
        }
    }
    sleep_ms(300).await;
    node.write_prompt("p.wav", &synth_prompt(8000, 0.3), 8000);
    assert_eq!(node.play(port, "file://p.wav").await.unwrap().message, "finished");
    sleep_ms(100).await;
    let grown = rss_mb() - before;
    let m = node.metrics().await;
    node.client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
    let (frames, _) = listen.await.unwrap();
    assert_eq!(attacker.received_count(), 0, "the latch did not move: nothing went to the attacker");
    assert!(caller.received_count() >= 15, "the prompt went to the caller");
    let pcm = pcm_of(&frames);
    // The attacker's audio is a constant 0x80 byte (a loud level); none reached the listener.
    let mut loud = Vec::new();
    Codec::Pcmu.decode_into(&[0x80], &mut loud);
    let loud = loud[0];
    assert!(!pcm.windows(100).any(|w| w.iter().all(|&s| s == loud)), "the attacker was heard");
    // 8,000 forged RTP packets went to the RTP port; a busy 2-core host's socket
    // buffer drops some of a flood sent this fast (5,570 arrived in one suite run
    // beside a build), and every one that arrived must be counted as foreign.
    assert!(metric_value(&m, "media_rtp_foreign_total") >= 3_000.0, "the forged RTP was seen and dropped as foreign: {m}");
    assert!(grown < 64.0, "memory grew {grown:.1} MB under the flood");
    still_serves(&mut node, "flood-2").await;
}

#[tokio::test]
async fn every_path_escape_spelling_is_refused_and_nothing_is_written_outside() {
    let mut node = TestNode::start(26020, 10).await;
    let outside = node.assets_path().parent().unwrap().join(format!("hostile-secret-{}.wav", std::process::id()));
    std::fs::write(&outside, wav_bytes(&[9000; 800], 8000)).unwrap();
    std::os::unix::fs::symlink(&outside, node.assets_path().join("link.wav")).unwrap();
    std::os::unix::fs::symlink(node.assets_path().parent().unwrap(), node.assets_path().join("up")).unwrap();
    // And one inside the recordings root, pointing out of it.
    std::fs::create_dir_all(node.assets_path().join("recordings")).unwrap();
    std::os::unix::fs::symlink(node.assets_path().parent().unwrap(), node.assets_path().join("recordings").join("up")).unwrap();
    let name = outside.file_name().unwrap().to_str().unwrap().to_string();
    let (port, _, caller) = node.call("escape-1").await;
    let long = format!("file://{}", "a/".repeat(50_000));
    let uris = [
        format!("file://../{name}"),
        format!("file:///../{name}"),
        format!("file://./../{name}"),
        format!("file://x/../../{name}"),
        format!("file://%2e%2e/{name}"),
        format!("file://%2E%2E%2F{name}"),
        format!("file://..%2f{name}"),
        format!("file://..\\{name}"),
        format!("file://{}", outside.display()),
        format!("file://up/{name}"),
        "file://link.wav".into(),
        format!("file://../{name}\0.wav"),
        "file://\0".into(),
        long,
        format!("http://127.0.0.1:1/{name}"),
        "https://example.com/a.wav".into(),
        format!("FILE://../{name}"),
    ];
    for uri in &uris {
        let r = node.play(port, uri).await;
        let shown: String = uri.chars().take(40).collect();
        let err = r.expect_err(&format!("{shown:?} must not play"));
        assert!(matches!(err.code(), Code::InvalidArgument | Code::NotFound), "{shown:?}: {:?} {}", err.code(), err.message());
        assert!(err.message().len() < 1024);
    }
    assert_eq!(caller.received_count(), 0, "not one frame of the secret was sent");
    let before: Vec<_> = std::fs::read_dir(node.assets_path().parent().unwrap()).unwrap().flatten().map(|e| e.path()).collect();
    let outputs = [
        "file://../out".to_string(),
        "file:///../out".into(),
        "file://x/../../out".into(),
        "file://up/out".into(),
        "file://up".into(),
        "file://a\0b".into(),
        "s3://bucket/../../x".into(),
        "s3://bucket/a/./b".into(),
        "s3://../x".into(),
        "s3://Bucket/x".into(),
        format!("s3://bucket/{}", "x/".repeat(50_000)),
        "http://127.0.0.1:1/x".into(),
    ];
    for out in &outputs {
        let r = node
            .client
            .start_recording(StartRecordingRequest {
                server_rtp_port: port,
                output_uri: out.clone(),
                call_id: "escape-1".into(),
                ..Default::default()
            })
            .await;
        let shown: String = out.chars().take(30).collect();
        let err = r.expect_err(&format!("{shown:?} must be refused"));
        assert_eq!(err.code(), Code::InvalidArgument, "{shown:?}: {}", err.message());
    }
    node.client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
    let after: Vec<_> = std::fs::read_dir(node.assets_path().parent().unwrap()).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(before.len(), after.len(), "nothing was written beside the node's roots");
    std::fs::remove_file(&outside).unwrap();
    still_serves(&mut node, "escape-2").await;
}

/// A WAV whose header says whatever it is told.
fn lying_wav(channels: u16, rate: u32, bits: u16, format: u16, data_len: u32, payload: &[u8]) -> Vec<u8> {
    media_tools::wav::with_header(media_tools::wav::Header { channels, rate, bits, float: format == 3, data_len }, payload)
}

#[tokio::test]
async fn data_uris_and_wav_headers_that_lie_get_clear_answers() {
    let mut node = TestNode::start(26040, 10).await;
    let (port, _, _caller) = node.call("lies-1").await;
    let audio = vec![0x10u8; 1600];
    let cases: Vec<(&str, Vec<u8>, &[Code])> = vec![
        ("0 channels", lying_wav(0, 8000, 16, 1, 1600, &audio), &[Code::InvalidArgument]),
        ("0 Hz", lying_wav(1, 0, 16, 1, 1600, &audio), &[Code::InvalidArgument]),
        ("1 Hz", lying_wav(1, 1, 16, 1, 1600, &audio), &[Code::InvalidArgument]),
        ("4 GHz", lying_wav(1, u32::MAX, 16, 1, 1600, &audio), &[Code::InvalidArgument]),
        ("0 bits", lying_wav(1, 8000, 0, 1, 1600, &audio), &[Code::InvalidArgument]),
        ("12 bits", lying_wav(1, 8000, 12, 1, 1600, &audio), &[Code::InvalidArgument, Code::Ok]),
        ("data past the end", lying_wav(1, 8000, 16, 1, u32::MAX, &audio), &[Code::InvalidArgument, Code::Ok]),
        ("8-bit", lying_wav(1, 8000, 8, 1, 1600, &audio), &[Code::Ok]),
        ("float", lying_wav(1, 8000, 32, 3, 1600, &audio), &[Code::Ok]),
        ("8 channels", lying_wav(8, 8000, 16, 1, 1600, &audio), &[Code::Ok]),
        ("not a WAV", b"MZ\x90\x00 this is not audio".to_vec(), &[Code::InvalidArgument]),
    ];
    for (what, wav, codes) in cases {
        let uri = format!("data:audio/wav;base64,{}", b64(&wav));
        let r = tokio::time::timeout(Duration::from_secs(20), node.play(port, &uri)).await.expect(what);
        let code = r.as_ref().err().map_or(Code::Ok, |e| e.code());
        assert!(codes.contains(&code), "{what}: {r:?}");
    }
    for (what, uri) in [
        ("bad base64", "data:audio/pcm;base64,@@@@".to_string()),
        ("no base64", "data:audio/pcm,AAAA".into()),
        ("odd bytes", format!("data:audio/pcm;base64,{}", b64(&[1, 2, 3]))),
        ("rate 0", "data:audio/pcm;rate=0;base64,AAAA".into()),
        ("rate words", "data:audio/pcm;rate=fast;base64,AAAA".into()),
    ] {
        let err = node.play(port, &uri).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {}", err.message());
    }
    // Past the request size limit (4 MB): refused by the transport, the call goes on.
    let big = format!("data:audio/pcm;base64,{}", "A".repeat(50 * 1024 * 1024));
    let err = node.play(port, &big).await.expect_err("a 50 MB request");
    assert!(matches!(err.code(), Code::ResourceExhausted | Code::OutOfRange | Code::InvalidArgument), "{:?} {}", err.code(), err.message());
    node.client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
    still_serves(&mut node, "lies-2").await;
}

#[tokio::test]
async fn hundreds_of_concurrent_allocations_to_exhaustion_and_back() {
    // 200 ports: 100 calls; no quarantine so they come straight back.
    let node = TestNode::start_with(26100, 200, |c| c.quarantine = Duration::ZERO).await;
    let tries = (0..300).map(|i| {
        let mut c = node.client.clone();
        tokio::spawn(async move { c.allocate_port(AllocatePortRequest { call_id: format!("rush-{i}") }).await })
    });
    let results: Vec<_> = futures_join(tries).await;
    let ports: std::collections::BTreeSet<u32> = results.iter().filter_map(|r| r.as_ref().ok()).map(|r| r.get_ref().rtp_port).collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let full = results.iter().filter(|r| r.as_ref().is_err_and(|e| e.code() == Code::ResourceExhausted)).count();
    assert_eq!((ok, full), (100, 200), "exactly the node's capacity is handed out");
    assert_eq!(ports.len(), 100, "each to one call");
    let releases = ports.iter().map(|&p| {
        let mut c = node.client.clone();
        tokio::spawn(async move { c.release_port(ReleasePortRequest { rtp_port: p }).await })
    });
    assert!(futures_join(releases).await.iter().all(|r| r.is_ok()));
    let again = (0..100).map(|i| {
        let mut c = node.client.clone();
        tokio::spawn(async move { c.allocate_port(AllocatePortRequest { call_id: format!("again-{i}") }).await })
    });
    assert_eq!(futures_join(again).await.iter().filter(|r| r.is_ok()).count(), 100, "all ports came back");
}

async fn futures_join<T: Send + 'static>(tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for t in tasks.collect::<Vec<_>>() {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_storm_of_prompts_on_one_call_ends_with_the_last_and_none_hangs() {
    let mut node = TestNode::start(26320, 10).await;
    let (port, _, caller) = node.call("storm-1").await;
    node.write_prompt("one.wav", &synth_prompt(8000, 1.0), 8000);
    let plays = (0..200).map(|_| {
        let mut c = node.client.clone();
        tokio::spawn(async move {
            c.play_audio(PlayAudioRequest {
                audio_uri: "file://one.wav".into(),
                server_rtp_port: port,
                rtp_target_addr: String::new(),
                barge_in_ms: None,
            })
            .await
        })
    });
    let answers = tokio::time::timeout(Duration::from_secs(30), futures_join(plays)).await.expect("every PlayAudio is answered");
    let messages: Vec<String> = answers.into_iter().map(|r| r.unwrap().into_inner().message).collect();
    assert_eq!(messages.iter().filter(|m| *m == "finished").count(), 1, "only the last one plays out");
    assert!(messages.iter().all(|m| m == "finished" || m.starts_with("interrupted")), "{messages:?}");
    sleep_ms(100).await;
    let n = caller.received_count();
    assert!((45..=80).contains(&n), "one second of prompt, not 200: {n} frames");
    node.client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
    still_serves(&mut node, "storm-2").await;
}

#[tokio::test]
async fn listeners_that_never_read_and_abandoned_or_oversized_tts_streams() {
    let mut node = TestNode::start(26340, 10).await;
    let (port, node_rtp, caller) = node.call("stall-1").await;
    let before = rss_mb();
    // Fifteen 48 kHz listeners that never read, and one that does. Each stalled one is
    // on a connection of its own, as separate misbehaving clients would be: on one
    // shared connection, unread streams use up the client's own HTTP/2 connection
    // window and stall every stream of that connection (client-side flow control, see
    // the README's limits).
    let mut stalled = Vec::new();
    for _ in 0..15 {
        let mut c =
            media_proto::pb::media_service_client::MediaServiceClient::connect(format!("http://{}", node.running.grpc_addr)).await.unwrap();
        let s = c.record_audio(RecordAudioRequest { server_rtp_port: port, target_sample_rate: Some(48000) }).await.unwrap();
        stalled.push((c, s));
    }
    let listen = node.listen(port, 8000).await;
    let speech = synth_speech(8000, 4.0, 4);
    caller.send_speech(node_rtp, &speech, Codec::Pcmu, 3).await.unwrap();
    // TTS: a 10 MB chunk (past the message limit), odd lengths, an unknown call, an
    // abandoned stream.
    let huge = vec![StreamAudioToCallRequest { call_id: "stall-1".into(), audio_chunk: vec![0u8; 10 * 1024 * 1024], ..Default::default() }];
    let r = node.client.stream_audio_to_call(tokio_stream::iter(huge)).await;
    let refused = match r {
        Err(e) => Some(e.code()),
        Ok(resp) => resp.into_inner().message().await.err().map(|e| e.code()),
    };
    assert!(matches!(refused, Some(Code::ResourceExhausted | Code::OutOfRange | Code::Internal | Code::Unknown)), "{refused:?}");
    let odd: Vec<_> = [1usize, 3, 333, 7, 1601]
        .iter()
        .map(|&n| StreamAudioToCallRequest { call_id: "stall-1".into(), audio_chunk: vec![0x11; n], ..Default::default() })
        .collect();
    let end = node.client.stream_audio_to_call(tokio_stream::iter(odd)).await.unwrap().into_inner().message().await.unwrap().unwrap();
    assert!(end.success, "{}", end.error_message);
    let unknown = vec![StreamAudioToCallRequest { call_id: "nobody".into(), audio_chunk: vec![0; 640], ..Default::default() }];
    assert_eq!(node.client.stream_audio_to_call(tokio_stream::iter(unknown)).await.unwrap_err().code(), Code::NotFound);
    for _ in 0..20 {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(StreamAudioToCallRequest { call_id: "stall-1".into(), audio_chunk: vec![0x22; 640], ..Default::default() }).await.unwrap();
        let r = node.client.stream_audio_to_call(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
        drop((tx, r)); // abandoned mid-stream
    }
    sleep_ms(300).await;
    let grown = rss_mb() - before;
    let m = node.metrics().await;
    node.client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
    let (frames, _) = listen.await.unwrap();
    let (c, _) = best_correlation(&speech, &pcm_of(&frames), 8000);
    assert!(c > 0.95, "the reading listener heard the call whatever the stalled ones did: {c}");
    // Fifteen stalled and one reading were all attached; the stalled ones hold at most
    // their HTTP/2 windows on the client side and LISTENER_QUEUE frames each here.
    assert_eq!(metric_value(&m, "media_listeners_active"), 16.0);
    assert!(grown < 64.0, "memory grew {grown:.1} MB");
    drop(stalled);
    still_serves(&mut node, "stall-2").await;
}
