//! A node killed hard (kill -9, as an OOM kill or SIGKILL after the grace period would)
//! in the middle of recording a call: at its next start on the same spool, what reached
//! the disk is recovered as a valid WAV, stored where the recording was to go, and
//! flagged as cut short.

use std::path::Path;
use std::process::Child;
use std::time::Duration;

mod common;

use media_node::core::g711::Codec;
use media_proto::pb::media_service_client::MediaServiceClient;
use media_proto::pb::*;
use media_tools::analysis::{best_correlation, synth_speech};
use media_tools::caller::RtpCaller;
use media_tools::files::files_under;
use media_tools::prometheus::metric_value;

const GRPC: u16 = 22571;
const HTTP: u16 = 22572;

fn start_node(root: &Path) -> Child {
    common::node_command(GRPC, HTTP, 22550, 22560)
        .env("ASSETS_BASE_PATH", root.join("assets"))
        .env("RECORDINGS_SPOOL_DIR", root.join("spool"))
        .env("RECORDINGS_ROOT", root.join("recordings"))
        .spawn()
        .expect("media-node starts")
}

/// Polls `f` ten times a second until it yields, or panics naming what never came.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(what: &str, secs: u64, mut f: impl FnMut() -> F) -> T {
    for _ in 0..secs * 10 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within {secs} s");
}

async fn ready() {
    eventually("the node is ready", 20, || async {
        let (status, _) = media_tools::http::get(&format!("127.0.0.1:{HTTP}"), "/readyz").await.ok()?;
        (status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_recording_in_progress_survives_kill_9() {
    let root = std::env::temp_dir().join(format!("kill9-{}", std::process::id()));
    std::fs::create_dir_all(root.join("assets")).unwrap();
    let mut node = start_node(&root);
    ready().await;
    let mut client = MediaServiceClient::connect(format!("http://127.0.0.1:{GRPC}")).await.unwrap();
    let port = client.allocate_port(AllocatePortRequest { call_id: "cut-short".into() }).await.unwrap().into_inner().rtp_port;
    client
        .start_recording(StartRecordingRequest {
            server_rtp_port: port,
            output_uri: "file://calls".into(),
            call_id: "cut-short".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let caller = RtpCaller::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let speech = synth_speech(8000, 3.0, 5);
    caller.send_speech(format!("127.0.0.1:{port}").parse().unwrap(), &speech, Codec::Pcmu, 42).await.unwrap();
    // The recording is written half a second behind the call: let it reach the disk.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(files_under(&root.join("spool"), ".wav.part").len(), 1, "the recording is being written");
    node.kill().unwrap(); // SIGKILL: no drain, no finalising
    node.wait().unwrap();

    let mut node = start_node(&root);
    ready().await;
    let stored = eventually("the recording cut short is stored", 20, || async {
        let found = files_under(&root.join("recordings").join("calls"), "cut-short.wav");
        (found.len() == 1).then(|| found[0].clone())
    })
    .await;
    let metrics = media_tools::http::get(&format!("127.0.0.1:{HTTP}"), "/metrics").await.unwrap().1;
    node.kill().unwrap();
    node.wait().unwrap();

    let reader = hound::WavReader::open(&stored).expect("a valid WAV");
    let seconds = reader.duration() as f64 / reader.spec().sample_rate as f64;
    let pcm: Vec<i16> = reader.into_samples().map(|s| s.unwrap()).collect();
    assert!(seconds >= 2.0, "what reached the disk is there: {seconds:.2} s of 3 s (+1 s after)");
    let caller_side: Vec<i16> = if pcm.len() as f64 > seconds * 8000.0 * 1.5 { pcm.iter().step_by(2).copied().collect() } else { pcm };
    let (c, _) = best_correlation(&speech[..8000], &caller_side, 8000 * 2);
    assert!(c > 0.9, "it is the caller's audio: correlation {c}");
    assert_eq!(metric_value(&metrics, "media_recordings_recovered_total"), 1.0);
    assert_eq!(metric_value(&metrics, "media_recording_spool_orphans"), 0.0);
    assert!(files_under(&root.join("spool"), "").is_empty(), "nothing left behind in the spool");
    std::fs::remove_dir_all(&root).ok();
}
