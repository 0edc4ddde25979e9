//! Call recordings over real UDP: one timeline with each sound where it really
//! happened (mono and stereo), to disk and to a real S3 protocol server (s3s), and
//! never lost when storage is down, even across a node restart.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use fleet_tests::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use fleet_tests::*;
use media_node::core::g711::Codec;
use media_node::recording::store::S3Settings;
use media_proto::pb::*;
use tonic::Code;

/// What the scripted call did, as the client saw it.
struct Script {
    /// When the caller's first burst was sent and the bot's first packet arrived.
    caller_first_sent: Instant,
    bot_first_heard: Instant,
}

/// Caller: +12000 for 300 ms at 0.5 s and at 2.0 s. Bot: a 400 ms prompt (-6000)
/// asked for at 1.0 s, and a 600 ms prompt at 1.8 s that the caller talks over.
async fn scripted_call(node: &mut TestNode, port: u32, node_rtp: SocketAddr, caller: &RtpCaller) -> Script {
    node.write_prompt("bot1.wav", &vec![-6000i16; 3200], 8000);
    node.write_prompt("bot2.wav", &vec![-6000i16; 4800], 8000);
    let mut speech = vec![0i16; 8000 * 3];
    speech[4000..6400].fill(12000);
    speech[16000..18400].fill(12000);
    let start = Instant::now();
    let mut c1 = node.client.clone();
    let mut c2 = node.client.clone();
    let bot = async move {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        c1.play_audio(PlayAudioRequest {
            audio_uri: "file://bot1.wav".into(),
            server_rtp_port: port,
            rtp_target_addr: String::new(),
            barge_in_ms: None,
        })
        .await
        .unwrap();
        tokio::time::sleep_until((start + Duration::from_millis(1800)).into()).await;
        c2.play_audio(PlayAudioRequest {
            audio_uri: "file://bot2.wav".into(),
            server_rtp_port: port,
            rtp_target_addr: String::new(),
            barge_in_ms: None,
        })
        .await
        .unwrap();
    };
    let (sent, ()) = tokio::join!(caller.send_speech(node_rtp, &speech, Codec::Pcmu, 77), bot);
    sent.unwrap();
    sleep_ms(700).await;
    let bot_first_heard = caller.take_received().first().expect("bot audio reached the caller").at;
    Script { caller_first_sent: start + Duration::from_millis(500), bot_first_heard }
}

fn onset(x: &[i16], from: usize, pred: impl Fn(i16) -> bool) -> usize {
    from + x[from..].iter().position(|&s| pred(s)).expect("onset found")
}

fn read_wav(path: &Path) -> (hound::WavSpec, Vec<i16>) {
    let r = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let spec = r.spec();
    (spec, r.into_samples::<i16>().map(|s| s.unwrap()).collect())
}

fn check_timeline(caller: &[i16], bot: &[i16], rate: u32, script: &Script) {
    let ms = |n: usize| n as f64 * 1000.0 / rate as f64;
    let c1 = onset(caller, 0, |s| s > 4000);
    let c2 = onset(caller, c1 + rate as usize, |s| s > 4000);
    let b1 = onset(bot, 0, |s| s < -3000);
    // The caller's bursts were sent exactly 1.5 s apart.
    assert!((ms(c2 - c1) - 1500.0).abs() <= 20.0, "caller bursts {} ms apart in the recording", ms(c2 - c1));
    // The bot spoke when its first packet reached the caller, relative to the caller's burst.
    let expected = script.bot_first_heard.duration_since(script.caller_first_sent).as_secs_f64() * 1000.0;
    let got = ms(b1) - ms(c1);
    assert!((got - expected).abs() <= 20.0, "bot placed {got:.1} ms after the caller, really {expected:.1} ms");
    assert!(b1 > c1 && b1 < c2, "caller, bot, caller: interleaved as they spoke, not one side after the other");
}

async fn stop_recording(node: &mut TestNode, port: u32) -> StopRecordingResponse {
    node.client
        .stop_recording(StopRecordingRequest { server_rtp_port: port })
        .await
        .map(|r| r.into_inner())
        .unwrap_or_else(|e| panic!("StopRecording: {e}"))
}

#[tokio::test]
async fn mono_and_stereo_recordings_keep_everyone_in_place() {
    for (i, (format, rate)) in [("mono", 8000u32), ("stereo", 16000u32)].into_iter().enumerate() {
        let mut node = TestNode::start(22600 + i as u16 * 20, 20).await;
        let (port, node_rtp, caller) = node.call(&format!("rec-{format}")).await;
        node.client
            .start_recording(StartRecordingRequest {
                server_rtp_port: port,
                output_uri: "file://calls".into(),
                sample_rate: Some(rate),
                format: Some(format.into()),
                call_id: format!("rec-{format}"),
                trace_id: "trace-1".into(),
            })
            .await
            .unwrap();
        let script = scripted_call(&mut node, port, node_rtp, &caller).await;
        let stop = stop_recording(&mut node, port).await;
        assert!(stop.success && !stop.spooled);
        assert!(
            stop.recording_uri.starts_with("file://calls/") && stop.recording_uri.ends_with(&format!("/rec-{format}.wav")),
            "{}",
            stop.recording_uri
        );
        let path = node.assets_path().join("recordings").join(stop.recording_uri.trim_start_matches("file://"));
        let (spec, samples) = read_wav(&path);
        assert_eq!(spec.sample_rate, rate);
        if format == "mono" {
            assert_eq!(spec.channels, 1);
            check_timeline(
                &samples,
                &samples.iter().map(|&s| if s < -3000 && s > -9000 { s } else { 0 }).collect::<Vec<_>>(),
                rate,
                &script,
            );
            // Where the caller talks over the bot, both are heard (mixed, not replaced).
            let c2 = onset(&samples, 2 * rate as usize, |s| s > 4000);
            let overlap = &samples[c2 + 80..c2 + 400];
            assert!(overlap.iter().all(|&s| (4000..8500).contains(&s)), "caller over bot mixes to about +6000");
        } else {
            assert_eq!(spec.channels, 2);
            let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
            let right: Vec<i16> = samples.iter().skip(1).step_by(2).copied().collect();
            assert!(left.iter().all(|&s| s > -2000), "no bot audio on the caller's channel");
            assert!(right.iter().all(|&s| s < 2000), "no caller audio on the bot's channel");
            check_timeline(&left, &right, rate, &script);
        }
        // A second segment in the same call gets its own file.
        node.client
            .start_recording(StartRecordingRequest {
                server_rtp_port: port,
                output_uri: "file://calls".into(),
                call_id: format!("rec-{format}"),
                ..Default::default()
            })
            .await
            .unwrap();
        sleep_ms(300).await;
        let second = stop_recording(&mut node, port).await;
        assert!(second.recording_uri.ends_with(&format!("/rec-{format}-2.wav")), "{}", second.recording_uri);
    }
}

#[tokio::test]
async fn recording_requests_are_validated() {
    let mut node = TestNode::start(22660, 10).await;
    let (port, _, _caller) = node.call("rec-bad").await;
    let bad = [
        ("s3://calls/../x", None, None),
        ("file://../outside", None, None),
        ("ftp://x/y", None, None),
        ("file://ok", Some(44100), None),
        ("file://ok", None, Some("flac")),
    ];
    for (uri, rate, format) in bad {
        let err = node
            .client
            .start_recording(StartRecordingRequest {
                server_rtp_port: port,
                output_uri: uri.into(),
                sample_rate: rate,
                format: format.map(String::from),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{uri} {rate:?} {format:?}");
    }
    let err = node.client.stop_recording(StopRecordingRequest { server_rtp_port: port }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "no recording is running");
    let err = node.client.start_recording(StartRecordingRequest { server_rtp_port: port + 2, ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    node.client
        .start_recording(StartRecordingRequest { server_rtp_port: port, output_uri: "file://ok".into(), ..Default::default() })
        .await
        .unwrap();
    let err = node
        .client
        .start_recording(StartRecordingRequest { server_rtp_port: port, output_uri: "file://ok".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "one recording at a time");
    // Releasing the call finalises the recording by itself.
    node.client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
    let day_dirs = walk(&node.assets_path().join("recordings/ok"));
    for _ in 0..40 {
        if !walk(&node.assets_path().join("recordings/ok")).is_empty() {
            break;
        }
        sleep_ms(100).await;
    }
    let files = walk(&node.assets_path().join("recordings/ok"));
    assert_eq!(files.len(), 1, "released call's recording stored: {files:?} (was {day_dirs:?})");
    assert!(read_wav(&files[0]).1.len() < 8000 * 5);
}

#[tokio::test]
async fn audio_held_up_on_the_way_still_reaches_the_recording() {
    let mut node = TestNode::start(22720, 10).await;
    let (port, node_rtp, caller) = node.call("held-up").await;
    let listen = node.listen(port, 8000).await;
    node.client
        .start_recording(StartRecordingRequest {
            server_rtp_port: port,
            output_uri: "file://calls".into(),
            call_id: "held-up".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Packets 25 to 39 (300 ms of speech) are held up and arrive together with packet
    // 40: far past the live stream's 40 ms hold, well within the recording's lag.
    let speech = synth_speech(8000, 2.0, 5);
    let held = |k: usize| if (25..40).contains(&k) { 40 } else { k };
    caller.send_speech_scheduled(node_rtp, &speech, Codec::Pcmu, 9, |k| Duration::from_millis(20 * held(k) as u64)).await.unwrap();
    sleep_ms(100).await;
    let stop = stop_recording(&mut node, port).await;
    let recovered = node.metric("media_rtp_recovered_samples_total").await;
    node.client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();

    // The live stream moved on: silence where the held audio was due, nothing twice.
    let (frames, _) = listen.await.unwrap();
    let live = pcm_of(&frames);
    let (_, lag) = best_correlation(&speech, &live, 8000);
    let (head, _) = best_correlation(&speech[..25 * 160], &live[lag..], 0);
    let (tail, _) = best_correlation(&speech[40 * 160..], &live[lag + 40 * 160..], 0);
    // A shifted tail correlates near 0; 0.8 leaves room for a loaded machine's own late packets.
    assert!(head > 0.8 && tail > 0.8, "the live stream kept its timeline (late audio would push the rest back): {head:.3} {tail:.3}");
    // Where the held audio was due, each frame is silence (filled after the hold) or
    // the right audio (a loaded node may not have filled it before the burst came),
    // never anything else.
    for k in 25..40 {
        let frame = &live[lag + k * 160..lag + (k + 1) * 160];
        let right = best_correlation(&speech[k * 160..(k + 1) * 160], frame, 0).0 > 0.9;
        assert!(frame.iter().all(|&s| s == 0) || right, "live frame {k} is neither silence nor the caller's audio");
    }

    // The recording has all of it, in its place.
    assert!(recovered >= 160.0, "late audio went to the recording: {recovered} samples");
    let path = node.assets_path().join("recordings").join(stop.recording_uri.trim_start_matches("file://"));
    let (_, samples) = read_wav(&path);
    // Each part within 20 ms of its place: a node correcting its placement after a
    // first packet that came late may move the rest by a few milliseconds.
    let (c, lag) = aligned_correlation(&speech, &samples, 8000, 1600, 160);
    assert!(c > 0.95, "the recording matches what was said: correlation {c}");
    let held_part = &speech[25 * 160..40 * 160];
    let (c_held, _) = best_correlation(held_part, &samples[lag + 25 * 160 - 160..], 320);
    assert!(c_held > 0.95, "the held-up 300 ms sit where they were spoken (within 20 ms): correlation {c_held}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else if p.extension().is_some_and(|x| x == "wav") {
                out.push(p);
            }
        }
    }
    out
}

fn s3_settings(s3: &S3Server) -> S3Settings {
    S3Settings {
        endpoint: Some(s3.endpoint()),
        region: Some("us-east-1".into()),
        access_key_id: Some(ACCESS_KEY.into()),
        secret_access_key: Some(SECRET_KEY.into()),
    }
}

#[tokio::test]
async fn s3_recordings_survive_storage_outage_and_node_restart() {
    let store_root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(store_root.path().join("calls")).unwrap();
    let s3_addr: SocketAddr = "127.0.0.1:22690".parse().unwrap();
    let s3 = S3Server::start(store_root.path(), s3_addr).await;
    let spool = tempfile::tempdir().unwrap();
    let settings = s3_settings(&s3);
    let spool_dir = spool.path().to_path_buf();
    let configure = move |c: &mut media_node::config::NodeConfig| {
        c.recording.s3 = settings.clone();
        c.recording.spool_dir = spool_dir.clone();
    };

    // Storage up: StopRecording answers once the object is in S3.
    let mut node = TestNode::start_with(22700, 10, configure.clone()).await;
    let (port, node_rtp, caller) = node.call("s3-call-1").await;
    node.client
        .start_recording(StartRecordingRequest {
            server_rtp_port: port,
            output_uri: "s3://calls/recordings".into(),
            call_id: "s3-call-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    caller.send_speech(node_rtp, &synth_speech(8000, 1.0, 4), Codec::Pcmu, 1).await.unwrap();
    // The last packet leaves at 980 ms and carries audio to 1 s: stop after it has played.
    sleep_ms(100).await;
    let stop = node.client.stop_recording(StopRecordingRequest { server_rtp_port: port }).await.unwrap().into_inner();
    assert!(!stop.spooled, "stored at once while storage is up");
    let key = stop.recording_uri.strip_prefix("s3://calls/").unwrap().to_string();
    assert!(key.starts_with("recordings/") && key.ends_with("/s3-call-1.wav"), "{key}");
    let (spec, samples) = read_wav(&store_root.path().join("calls").join(&key));
    assert_eq!(spec.sample_rate, 8000);
    assert!(samples.len() >= 8000, "the whole second is there");

    // Storage down: the recording is spooled, and StopRecording still says where it will be.
    s3.stop();
    let (port, node_rtp, caller) = node.call("s3-call-2").await;
    node.client
        .start_recording(StartRecordingRequest {
            server_rtp_port: port,
            output_uri: "s3://calls/recordings".into(),
            call_id: "s3-call-2".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let speech = synth_speech(8000, 2.0, 9);
    caller.send_speech(node_rtp, &speech, Codec::Pcmu, 2).await.unwrap();
    sleep_ms(100).await;
    let stop = node.client.stop_recording(StopRecordingRequest { server_rtp_port: port }).await.unwrap().into_inner();
    assert!(stop.spooled, "kept in the spool while storage is down");
    assert!(node.metric("media_recording_uploads_pending").await >= 1.0);
    let key = stop.recording_uri.strip_prefix("s3://calls/").unwrap().to_string();
    // How the caller's audio fared on the way in (a loaded machine delays packets).
    let mut arrival = String::new();
    for m in ["media_rtp_late_packets_total", "media_rtp_lost_samples_total", "media_rtp_recovered_samples_total"] {
        arrival += &format!(" {m}={}", node.metric(m).await);
    }

    // The node restarts before storage is back.
    node.running.stop().await.unwrap();
    let spooled = walk(spool.path());
    assert!(spooled.len() == 1, "the finished recording waits in the spool");
    let spooled = std::fs::read(&spooled[0]).unwrap();
    let node = TestNode::start_with(22700, 10, configure).await;
    let s3 = S3Server::start(store_root.path(), s3_addr).await;
    let object = store_root.path().join("calls").join(&key);
    for _ in 0..100 {
        if object.exists() && walk(spool.path()).is_empty() {
            break;
        }
        sleep_ms(100).await;
    }
    assert!(std::fs::read(&object).unwrap() == spooled, "the store holds exactly what was spooled");
    let (_, samples) = read_wav(&object);
    // Each part within 20 ms of its place (see aligned_correlation).
    let (c, _) = aligned_correlation(&speech, &samples, 8000, 1600, 160);
    assert!(c > 0.9, "the recording arrived complete and playable: correlation {c};{arrival}");
    assert!(walk(spool.path()).is_empty(), "the spool copy goes once the store has it");
    assert_eq!(node.metric("media_recording_uploads_pending").await, 0.0);
    drop(s3);
}
