//! Faults a node meets in the field, injected for real into the `media-node` binary:
//!
//! - a spool disk that fills up in the middle of a recorded call: the node runs under a
//!   file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored), so its writes past the limit fail
//!   with EFBIG exactly where a full disk's would fail with ENOSPC, without needing root
//!   to mount a small filesystem;
//! - storage that answers every request 5 s late (a TCP proxy in front of a real S3
//!   protocol server), with big recordings waiting in the spool.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_tests::envtest::{eventually, media_node_binary};
use fleet_tests::process::NodeProcess;
use fleet_tests::rabbitmq::{consume, Broker, Received};
use fleet_tests::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use fleet_tests::{collect_listen, pcm_of};
use media_node::core::g711::Codec;
use media_node::recording::RecordingJob;
use media_proto::events::{CallRecordingAvailableEvent, GenericEvent};
use media_proto::pb::*;
use media_tools::analysis::{best_correlation, synth_speech};
use media_tools::caller::RtpCaller;
use media_tools::files::files_under;
use media_tools::wav::Header;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The node's environment for S3 at `endpoint`, with the test server's credentials.
fn storage_env(endpoint: String) -> Vec<(&'static str, String)> {
    vec![("BUCKET_ENDPOINT_URL", endpoint), ("BUCKET_ACCESS_KEY_ID", ACCESS_KEY.into()), ("BUCKET_SECRET_ACCESS_KEY", SECRET_KEY.into())]
}

fn events(received: &Received, key: &str) -> Vec<Vec<u8>> {
    received.lock().unwrap().iter().filter(|(k, _)| k == key).map(|(_, b)| b.clone()).collect()
}

/// The spool fills up mid-call: the call goes on (the caller is still heard live), the
/// recording fails loudly (a metric, an event, one log line, DATA_LOSS at StopRecording)
/// and what reached the disk is stored at once as a valid WAV flagged cut short. The node
/// does not crash and takes the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_fails_the_recording_loudly_and_the_call_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let broker = Broker::start().await;
    let received: Received = Default::default();
    let _consumer = consume(&broker.url(), "faults-full-spool", received.clone()).await.unwrap();
    // Storage is fine (it is elsewhere); only the node's local spool is full.
    let store_root = root.join("s3");
    std::fs::create_dir_all(store_root.join("calls")).unwrap();
    let s3 = S3Server::start(&store_root, "127.0.0.1:27089".parse().unwrap()).await;
    // 96 KiB per file: 6 s of an 8 kHz mono recording, then every write fails with EFBIG.
    let mut shell = Command::new("bash");
    shell.args(["-c", "trap '' XFSZ; ulimit -f 96; exec \"$0\"", media_node_binary().to_str().unwrap()]);
    let node = NodeProcess::spawn(
        shell,
        27090,
        27091,
        (27000, 27010),
        root,
        &[vec![("RABBITMQ_URL", broker.url())], storage_env(s3.endpoint())].concat(),
    );
    node.ready().await;
    let mut client = node.client().await;

    let port = client.allocate_port(AllocatePortRequest { call_id: "full-spool".into() }).await.unwrap().into_inner().rtp_port;
    client
        .start_recording(StartRecordingRequest {
            server_rtp_port: port,
            output_uri: "s3://calls/faults".into(),
            sample_rate: Some(8000),
            format: Some("wav".into()),
            call_id: "full-spool".into(),
            ..Default::default()
        })
        .await
        .expect("StartRecording");
    let listener = collect_listen(
        client.record_audio(RecordAudioRequest { server_rtp_port: port, target_sample_rate: Some(8000) }).await.unwrap().into_inner(),
    );
    let caller = RtpCaller::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let speech = synth_speech(8000, 10.0, 11);
    caller.send_speech(format!("127.0.0.1:{port}").parse().unwrap(), &speech, Codec::Pcmu, 77).await.unwrap();

    // Loud: counted, published, logged once.
    assert_eq!(node.metric("media_recordings_failed_total").await, 1.0, "the failure is counted once");
    let failed = eventually("call.media.recording.failed reaches the platform", 20, || async {
        events(&received, "call.media.recording.failed").into_iter().next()
    })
    .await;
    let ev = GenericEvent::decode(failed.as_slice()).unwrap();
    let payload: serde_json::Value = serde_json::from_str(&ev.payload_json).unwrap();
    assert_eq!(ev.trace_id, "full-spool");
    assert_eq!(payload["callId"], "full-spool");
    assert!(payload["uri"].as_str().unwrap().starts_with("s3://calls/faults/"), "{payload}");
    let kept = payload["secondsKept"].as_f64().unwrap();
    assert!((4.0..7.0).contains(&kept), "about 6 s fit in the spool: {payload}");
    assert!(payload["reason"].as_str().unwrap().to_lowercase().contains("too large"), "the OS's reason: {payload}");
    let log = node.log();
    assert_eq!(log.matches("recording failed: the spool cannot be written").count(), 1, "one log line, not one per write:\n{log}");

    // StopRecording says what happened.
    let err = client.stop_recording(StopRecordingRequest { server_rtp_port: port }).await.expect_err("the recording failed");
    assert_eq!(err.code(), tonic::Code::DataLoss, "{err:?}");
    assert!(err.message().contains("cut short"), "{}", err.message());

    // What was kept is stored, flagged cut short, and is the caller's audio.
    let body = eventually("call.recording.available for what was kept", 20, || async {
        events(&received, "call.recording.available").into_iter().next()
    })
    .await;
    let available = CallRecordingAvailableEvent::decode(body.as_slice()).unwrap();
    assert_eq!(available.call_id, "full-spool");
    assert!(available.cut_short, "flagged cut short: {available:?}");
    let stored = files_under(&store_root.join("calls").join("faults"), ".wav");
    assert_eq!(stored.len(), 1, "{stored:?}");
    let reader = hound::WavReader::open(&stored[0]).expect("a valid WAV");
    let seconds = reader.duration() as f64 / reader.spec().sample_rate as f64;
    let pcm: Vec<i16> = reader.into_samples().map(|s| s.unwrap()).collect();
    assert!((4.0..7.0).contains(&seconds), "{seconds:.2} s kept");
    assert!((seconds - kept).abs() < 0.01, "the event said what was kept: {kept} s, the WAV holds {seconds:.3} s");
    let (c, _) = best_correlation(&speech[8000..16000], &pcm, 8000 * 3);
    assert!(c > 0.9, "it is the caller's audio: correlation {c}");

    // The call went on: the live listener heard all of the 10 s, not only the 6 s recorded.
    client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
    let (frames, _) = tokio::time::timeout(Duration::from_secs(10), listener).await.expect("the listener ends with the call").unwrap();
    let heard = pcm_of(&frames);
    assert!(heard.len() >= 8000 * 9, "the caller was heard for {:.1} s of 10 s", heard.len() as f64 / 8000.0);
    let (c, _) = best_correlation(&speech[8 * 8000..9 * 8000], &heard, heard.len() - 8000);
    assert!(c > 0.9, "the caller's 9th second, after the spool was full, was heard live: correlation {c}");
    assert!(files_under(&root.join("spool"), "").is_empty(), "nothing left in the spool");

    // And the node takes the next call (a prompt played to a new caller).
    let prompt = synth_speech(8000, 0.5, 3);
    std::fs::write(root.join("assets").join("hi.wav"), fleet_tests::wav_bytes(&prompt, 8000)).unwrap();
    let port = client.allocate_port(AllocatePortRequest { call_id: "after".into() }).await.unwrap().into_inner().rtp_port;
    let caller = RtpCaller::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let played = client
        .play_audio(PlayAudioRequest {
            audio_uri: "file://hi.wav".into(),
            server_rtp_port: port,
            rtp_target_addr: caller.local_addr().to_string(),
            barge_in_ms: None,
        })
        .await
        .expect("PlayAudio on the next call");
    assert_eq!(played.into_inner().message, "finished");
    assert!(caller.received_count() >= 20, "the next caller heard the prompt: {} packets", caller.received_count());
    drop(node);
    s3.stop();
}

/// A TCP proxy that holds every request back `delay` before passing it on: the first
/// bytes the client sends after each answer (or at the start) wait, the rest of the
/// request then flows. Answers flow back at once.
async fn slow_proxy(listen: u16, upstream: std::net::SocketAddr, delay: Duration) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(("127.0.0.1", listen)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else { return };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let answered = Arc::new(std::sync::atomic::AtomicBool::new(true));
                let a = answered.clone();
                let up = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if a.swap(false, std::sync::atomic::Ordering::SeqCst) {
                            tokio::time::sleep(delay).await;
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                };
                let down = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        answered.store(true, std::sync::atomic::Ordering::SeqCst);
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    })
}

/// A finished recording of `bytes` of audio waiting in the spool, as a node that could
/// not reach storage left it: WAV and manifest.
fn spool_recording(spool: &Path, name: &str, bytes: usize) -> RecordingJob {
    let wav = spool.join(format!("{name}.wav"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&wav).unwrap());
    let header = Header { channels: 1, rate: 8000, bits: 16, float: false, data_len: bytes as u32 };
    f.write_all(&media_tools::wav::with_header(header, &[])).unwrap();
    // Not all zeros: a store that compressed or skipped runs would show in the sizes.
    let mut x: u32 = 0x1234_5678;
    let mut block = vec![0u8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        for b in block.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        let n = left.min(block.len());
        f.write_all(&block[..n]).unwrap();
        left -= n;
    }
    f.flush().unwrap();
    drop(f);
    let job = RecordingJob {
        wav: wav.clone(),
        kind: "s3".into(),
        target: "calls".into(),
        key: format!("slow/{name}.wav"),
        call_id: name.into(),
        trace_id: name.into(),
        bytes: std::fs::metadata(&wav).unwrap().len(),
        seconds: bytes as f64 / 16000.0,
        cut_short: false,
    };
    job.write_manifest().unwrap();
    job
}

/// Storage answering each request 5 s late, with four 24 MB recordings waiting in the
/// spool and a call recorded meanwhile: every recording reaches storage whole, none is
/// cut and started over, StopRecording answers without waiting for the upload, and the
/// node's memory grows by less than one recording (uploads stream from the spool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_storage_gets_every_recording_with_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let store_root = root.join("s3");
    std::fs::create_dir_all(store_root.join("calls")).unwrap();
    let s3 = S3Server::start(&store_root, "127.0.0.1:27094".parse().unwrap()).await;
    let _proxy = slow_proxy(27095, s3.addr, Duration::from_secs(5)).await;
    std::fs::create_dir_all(root.join("spool")).unwrap();
    const RECORDING: usize = 24 * 1024 * 1024;
    let waiting: Vec<RecordingJob> = (0..4).map(|i| spool_recording(&root.join("spool"), &format!("waiting-{i}"), RECORDING)).collect();

    let node = NodeProcess::spawn(
        Command::new(media_node_binary()),
        27092,
        27093,
        (27020, 27030),
        root,
        &storage_env("http://127.0.0.1:27095".into()),
    );
    node.ready().await;
    let rss_at_start = node.memory_kib("VmRSS:");

    // A call recorded while storage is slow.
    let mut client = node.client().await;
    let port = client.allocate_port(AllocatePortRequest { call_id: "slow-live".into() }).await.unwrap().into_inner().rtp_port;
    client
        .start_recording(StartRecordingRequest {
            server_rtp_port: port,
            output_uri: "s3://calls/slow".into(),
            call_id: "slow-live".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let caller = RtpCaller::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    caller.send_speech(format!("127.0.0.1:{port}").parse().unwrap(), &synth_speech(8000, 2.0, 4), Codec::Pcmu, 9).await.unwrap();
    let asked = Instant::now();
    let stop = client
        .stop_recording(StopRecordingRequest { server_rtp_port: port })
        .await
        .expect("StopRecording answers while storage is slow")
        .into_inner();
    println!("StopRecording answered in {:.1} s: {stop:?}", asked.elapsed().as_secs_f64());
    let live_key = stop.recording_uri.strip_prefix("s3://calls/").expect("an s3 URI").to_string();
    client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();

    // Every recording arrives whole.
    let mut expected: Vec<(PathBuf, u64)> = waiting.iter().map(|j| (store_root.join("calls").join(&j.key), j.bytes)).collect();
    let started = Instant::now();
    eventually("every spooled recording reaches the slow storage", 240, || async {
        let done = expected.iter().all(|(p, bytes)| std::fs::metadata(p).is_ok_and(|m| m.len() == *bytes));
        let live = std::fs::metadata(store_root.join("calls").join(&live_key)).is_ok();
        (done && live).then_some(())
    })
    .await;
    println!("4 x 24 MB through 5 s-per-request storage in {:.1} s", started.elapsed().as_secs_f64());
    expected.push((store_root.join("calls").join(&live_key), 0));
    for (p, bytes) in &expected[..4] {
        let got = std::fs::read(p).unwrap();
        let sent = std::fs::read(root.join("spool").join(p.file_name().unwrap()));
        assert_eq!(got.len() as u64, *bytes);
        assert!(sent.is_err(), "the spool copy is removed once stored: {}", p.display());
    }
    let reader = hound::WavReader::open(&expected[4].0).expect("the live call's recording is a valid WAV");
    assert!(reader.duration() >= 8000, "the live call's recording holds its audio");
    eventually("nothing pending", 20, || async { (node.metric("media_recording_uploads_pending").await == 0.0).then_some(()) }).await;

    let peak = node.memory_kib("VmHWM:");
    let growth_mib = peak.saturating_sub(rss_at_start) as f64 / 1024.0;
    println!("node memory: {:.1} MiB at start, peak {:.1} MiB (+{growth_mib:.1} MiB)", rss_at_start as f64 / 1024.0, peak as f64 / 1024.0);
    assert!(
        growth_mib < (RECORDING / (1024 * 1024)) as f64,
        "uploads stream from the spool: memory grew by {growth_mib:.1} MiB for 4 x 24 MB in flight at once"
    );
    assert_eq!(node.metric("media_recordings_failed_total").await, 0.0);
    drop(node);
    s3.stop();
}
