//! The load tool measures what it says, against the real engines: a media node (in
//! process, driven through --target) and rtpengine (Debian's rtpengine-daemon, started
//! by the tool and driven over its ng protocol). Small runs: these check the
//! measurements, not the speed (BENCHMARKS.md has the figures).

use fleet_tests::{metric_value, TestNode};
use media_tools::load::{run, CallParts, Engine, LoadOptions};

/// The load tool starts rtpengine on fixed ports (its ng port and RTP range), so the
/// tests that run it take turns.
static RTPENGINE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn options(engine: Engine, target: Option<String>, work: &std::path::Path) -> LoadOptions {
    LoadOptions {
        calls: 4,
        seconds: 2.0,
        target,
        work_dir: work.to_path_buf(),
        engine,
        engine_cpus: None,
        parts: CallParts::default(),
        allocate_rate: 1000,
        allocations: 0,
        codec: media_node::core::codec::AudioCodec::Pcmu,
        srtp: false,
        max_load_percent: None,
        talk_share: 1.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_run_against_a_media_node_measures_loss_jitter_and_latency() {
    let node = TestNode::start(22900, 20).await;
    let work = tempfile::tempdir().unwrap();
    // Three AllocatePorts timed on their own first (then released), and the report's
    // percentiles are of those three.
    // With a call-events subscriber per call, as a voice agent has.
    let opts = LoadOptions {
        allocations: 3,
        parts: CallParts { events: true, ..CallParts::default() },
        ..options(Engine::MediaNode, Some(format!("http://{}", node.running.grpc_addr)), work.path())
    };
    let r = run(opts).await.unwrap();
    assert_eq!(r.engine, "media-node");
    assert_eq!(r.allocate_samples, 3, "the p50/p99 are of the allocations timed on their own: {r}");
    // Those three were released as well as the calls' own ports.
    let m = node.metrics().await;
    assert!(m.lines().any(|l| l == "media_ports{state=\"allocated\"} 0"), "no port left allocated:\n{m}");
    assert!(r.node_to_caller_loss < 0.05, "{r}");
    // Every packet's audio reached the listener, in between 0 and 100 ms.
    assert!(r.listener_frames >= 4 * 95, "{r}");
    assert!(r.latency_p50_ms > 0.0 && r.latency_p99_ms < 100.0, "{r}");
    assert!(r.jitter_max_ms < 100.0 && r.allocate_p50_ms > 0.0, "{r}");
    assert!(r.usage.is_none(), "not measured for a node the tool did not start");
    // Each subscriber saw its prompt start and finish at least.
    assert!(r.events >= 4 * 2, "{r}");
    // Without the node's metrics, what the caller sent is measured against what the
    // listeners heard.
    assert!(r.caller_to_node_loss.is_some_and(|l| l < 0.05), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_run_drives_rtpengine_over_its_ng_protocol() {
    let work = tempfile::tempdir().unwrap();
    let _turn = RTPENGINE.lock().await;
    // Long enough that rtpengine's few tens of ms of CPU show in both of /proc's 10 ms
    // tick counts (in 2 s its system time read 0 now and then).
    let r = run(LoadOptions { seconds: 6.0, ..options(Engine::Rtpengine, None, work.path()) })
        .await
        .expect("rtpengine (Debian's rtpengine-daemon) runs the calls");
    assert_eq!(r.engine, "rtpengine");
    // rtpengine relayed the caller to the agent socket, and played the prompt back.
    assert!(r.caller_to_node_loss.is_some_and(|l| l < 0.05) && r.node_to_caller_loss < 0.05, "{r}");
    assert!(r.listener_frames >= 4 * 95, "{r}");
    let usage = r.usage.expect("rtpengine's CPU is read from /proc");
    assert!(usage.user_seconds > 0.0 && usage.system_seconds > 0.0, "user and system CPU apart: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_runs_in_g722_through_sdp_on_the_node_and_transcoded_by_rtpengine() {
    use media_node::core::codec::AudioCodec;
    let node = TestNode::start(22940, 20).await;
    let work = tempfile::tempdir().unwrap();
    let opts = LoadOptions {
        codec: AudioCodec::G722,
        ..options(Engine::MediaNode, Some(format!("http://{}", node.running.grpc_addr)), work.path())
    };
    let r = run(opts).await.expect("G.722 calls set up by NegotiateSdp");
    assert_eq!(r.codec, "G722");
    // The node decoded every caller's G.722 for its listener and sent G.722 back.
    assert!(r.listener_frames >= 4 * 95 && r.node_to_caller_loss < 0.05, "{r}");
    assert_eq!(metric_value(&node.metrics().await, "media_sdp_negotiations_total{codec=\"G722\"}"), 4.0);

    let work = tempfile::tempdir().unwrap();
    let _turn = RTPENGINE.lock().await;
    let r = run(LoadOptions { codec: AudioCodec::G722, ..options(Engine::Rtpengine, None, work.path()) })
        .await
        .expect("rtpengine transcodes G.722");
    // rtpengine relayed the callers' G.722 to the agent as PCMU: every packet arrived.
    assert!(r.caller_to_node_loss.is_some_and(|l| l < 0.05) && r.node_to_caller_loss < 0.05, "{r}");
    println!("{r}");
}

/// `--srtp`: the callers' SDES keys reach the node and rtpengine, each decrypts what the
/// callers send and encrypts what it plays (the caller's socket checks every packet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_runs_over_srtp_on_the_node_and_through_rtpengine_sdes() {
    let node = TestNode::start(22960, 20).await;
    let work = tempfile::tempdir().unwrap();
    let opts = LoadOptions { srtp: true, ..options(Engine::MediaNode, Some(format!("http://{}", node.running.grpc_addr)), work.path()) };
    let r = run(opts).await.expect("SRTP calls set up by NegotiateSdp");
    assert!(r.srtp && r.listener_frames >= 4 * 95 && r.node_to_caller_loss < 0.05, "{r}");
    let m = node.metrics().await;
    assert_eq!(metric_value(&m, "media_sdp_negotiations_by_transport_total{policy=\"optional\",transport=\"srtp\"}"), 4.0);
    assert!(metric_value(&m, "media_srtp_authenticated_total") >= 4.0 * 95.0, "the callers' SRTP authenticated");
    assert_eq!(metric_value(&m, "media_srtp_dropped_total{reason=\"auth\"}"), 0.0);

    let work = tempfile::tempdir().unwrap();
    let _turn = RTPENGINE.lock().await;
    let r = run(LoadOptions { srtp: true, ..options(Engine::Rtpengine, None, work.path()) }).await.expect("rtpengine does SDES");
    // rtpengine decrypted the callers' SRTP for the plain agent, and its SRTP prompt
    // authenticated at the callers.
    assert!(r.caller_to_node_loss.is_some_and(|l| l < 0.05) && r.node_to_caller_loss < 0.05, "{r}");
    println!("{r}");
}
