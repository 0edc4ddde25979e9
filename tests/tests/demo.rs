//! The README's main job: `mediactl demo` on the embedded default.

use media_tools::demo::{run, DemoOptions};

#[tokio::test]
async fn demo_call_runs_on_an_embedded_node_and_writes_its_recording() {
    let out = tempfile::tempdir().unwrap();
    let report = run(DemoOptions { target: None, out_dir: out.path().to_path_buf(), speech_seconds: 2.0, codec: Default::default() })
        .await
        .expect("demo runs");
    assert_eq!(report.prompt_outcome, "finished");
    assert!(report.agent_correlation > 0.95, "{report}");
    assert!(report.caller_correlation > 0.95, "{report}");
    let recording = &report.files[0];
    assert!(recording.starts_with(out.path().join("recordings/demo")), "{}", recording.display());
    let r = hound::WavReader::open(recording).expect("the call recording is a WAV");
    let seconds = r.duration() as f64 / r.spec().sample_rate as f64;
    assert!(seconds >= 2.0, "the recording covers the call: {seconds} s");
    for f in &report.files[1..] {
        assert!(f.is_file(), "{}", f.display());
    }
}

/// `mediactl demo --codec G722`: the same call, its caller's offer answered by the node.
#[tokio::test]
async fn demo_call_in_g722_negotiated_by_sdp() {
    let out = tempfile::tempdir().unwrap();
    let codec = media_node::core::codec::AudioCodec::G722;
    let report = run(DemoOptions { target: None, out_dir: out.path().to_path_buf(), speech_seconds: 2.0, codec }).await.expect("demo runs");
    assert_eq!(report.prompt_outcome, "finished");
    // Through G.722 and the call's 8 kHz inside, both ways.
    assert!(report.agent_correlation > 0.9 && report.caller_correlation > 0.9, "{report}");
}
