//! Harness for tests that cross process boundaries: a media node on loopback with its
//! own assets folder and port range, a gRPC client to it, and plain HTTP reads.

pub mod envtest;
pub mod helm;
pub mod process;
pub mod rabbitmq;
pub mod s3;
pub mod speakerphone;
pub mod voice;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use media_node::config::NodeConfig;
use media_node::server::{self, RunningNode};
use media_proto::pb::media_service_client::MediaServiceClient;
use media_proto::pb::*;
use tonic::transport::Channel;

pub use media_node::audio::decode::wav_bytes;
pub use media_tools::analysis::{aligned_correlation, best_correlation, rms, synth_prompt, synth_speech};
pub use media_tools::caller::{timeline, RtpCaller};

/// This package's folder (`tests/`), read at run time: cargo test sets
/// CARGO_MANIFEST_DIR for the test process. The build-time value is only a fallback,
/// since a test binary from a shared build cache may have been built in another
/// checkout of the repository, and would read that checkout's files.
pub fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")), std::path::PathBuf::from)
}

pub struct TestNode {
    pub running: RunningNode,
    pub client: MediaServiceClient<Channel>,
    pub assets: tempfile::TempDir,
}

fn play_audio(
    mut client: MediaServiceClient<Channel>,
    port: u32,
    uri: &str,
    barge_in_ms: Option<u32>,
) -> impl std::future::Future<Output = Result<PlayAudioResponse, tonic::Status>> {
    let request = PlayAudioRequest { audio_uri: uri.into(), server_rtp_port: port, rtp_target_addr: String::new(), barge_in_ms };
    async move { client.play_audio(request).await.map(|r| r.into_inner()) }
}

/// A call's events as they arrive (`TestNode::subscribe`).
pub type Events = std::sync::Arc<std::sync::Mutex<Vec<CallEvent>>>;

impl TestNode {
    /// Subscribes to the call's events: they gather in `Events` until the stream ends.
    pub async fn subscribe(&mut self, port: u32) -> (Events, tokio::task::JoinHandle<()>) {
        let mut stream =
            self.client.stream_call_events(StreamCallEventsRequest { server_rtp_port: port }).await.expect("StreamCallEvents").into_inner();
        let events: Events = Default::default();
        let sink = events.clone();
        let task = tokio::spawn(async move {
            while let Ok(Some(e)) = stream.message().await {
                sink.lock().unwrap().push(e);
            }
        });
        (events, task)
    }

    /// A node on loopback owning ports [port_min, port_min + span).
    pub async fn start(port_min: u16, span: u16) -> TestNode {
        Self::start_with(port_min, span, |_| {}).await
    }

    pub async fn start_with(port_min: u16, span: u16, tweak: impl FnOnce(&mut NodeConfig)) -> TestNode {
        let assets = tempfile::tempdir().expect("temp assets dir");
        let mut cfg = NodeConfig::loopback(assets.path().to_path_buf(), port_min, port_min + span - 1);
        tweak(&mut cfg);
        let running = server::start(cfg).await.expect("node starts");
        let client = MediaServiceClient::connect(format!("http://{}", running.grpc_addr)).await.expect("gRPC connects");
        TestNode { running, client, assets }
    }

    pub fn write_prompt(&self, relative: &str, pcm: &[i16], rate: u32) {
        let path = self.assets.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, wav_bytes(pcm, rate)).unwrap();
    }

    pub fn assets_path(&self) -> &Path {
        self.assets.path()
    }

    /// Allocates a port and points its media at a fresh caller socket.
    pub async fn call(&mut self, call_id: &str) -> (u32, SocketAddr, RtpCaller) {
        let alloc = self.client.allocate_port(AllocatePortRequest { call_id: call_id.into() }).await.expect("allocate").into_inner();
        let caller = RtpCaller::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        self.client
            .play_audio(PlayAudioRequest {
                audio_uri: "control://set_target".into(),
                server_rtp_port: alloc.rtp_port,
                rtp_target_addr: caller.local_addr().to_string(),
                barge_in_ms: None,
            })
            .await
            .expect("set_target");
        let node_rtp: SocketAddr = format!("{}:{}", alloc.advertised_ip, alloc.rtp_port).parse().unwrap();
        (alloc.rtp_port, node_rtp, caller)
    }

    pub async fn play(&mut self, port: u32, uri: &str) -> Result<PlayAudioResponse, tonic::Status> {
        play_audio(self.client.clone(), port, uri, None).await
    }

    /// PlayAudio with the node's barge-in (`barge_in_ms`), run in the background: it
    /// answers when the prompt ends, however it ends.
    pub fn play_with_barge_in(
        &self,
        port: u32,
        uri: &str,
        barge_in_ms: u32,
    ) -> tokio::task::JoinHandle<Result<PlayAudioResponse, tonic::Status>> {
        tokio::spawn(play_audio(self.client.clone(), port, uri, Some(barge_in_ms)))
    }

    /// A RecordAudio listener on `port` at `rate`, collected in the background.
    pub async fn listen(&mut self, port: u32, rate: u32) -> tokio::task::JoinHandle<(Vec<Vec<u8>>, Vec<String>)> {
        let stream = self
            .client
            .record_audio(RecordAudioRequest { server_rtp_port: port, target_sample_rate: Some(rate) })
            .await
            .expect("RecordAudio");
        collect_listen(stream.into_inner())
    }

    pub async fn metrics(&self) -> String {
        http_get(self.running.http_addr, "/metrics").await.1
    }

    pub async fn metric(&self, name: &str) -> f64 {
        metric_value(&self.metrics().await, name)
    }
}

pub use media_tools::prometheus::metric_value;

/// GET from a test's node; panics with the reason when the node does not answer.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    media_tools::http::get(&addr.to_string(), path).await.expect("HTTP GET")
}

/// Collects a RecordAudio stream in the background: (frames, media types seen).
pub fn collect_listen(mut stream: tonic::Streaming<RecordAudioResponse>) -> tokio::task::JoinHandle<(Vec<Vec<u8>>, Vec<String>)> {
    tokio::spawn(async move {
        let mut frames = Vec::new();
        let mut types = Vec::new();
        while let Ok(Some(f)) = stream.message().await {
            if !types.contains(&f.media_type) {
                types.push(f.media_type.clone());
            }
            frames.push(f.audio_data.to_vec());
        }
        (frames, types)
    })
}

/// A far end's RTP socket on an even loopback port and its RTCP socket on the port
/// above (RFC 3550 §11).
pub async fn rtp_socket_pair() -> (std::sync::Arc<tokio::net::UdpSocket>, tokio::net::UdpSocket) {
    loop {
        let a = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let p = a.local_addr().unwrap().port();
        if p % 2 == 0 {
            if let Ok(b) = tokio::net::UdpSocket::bind(("127.0.0.1", p + 1)).await {
                return (std::sync::Arc::new(a), b);
            }
        }
    }
}

/// Plays `seconds` of synthetic speech on the call at `port` in the background (the
/// prompt is written into `assets` as long.wav): the node sends all the while.
pub fn play_long_prompt(
    mut client: MediaServiceClient<Channel>,
    assets: &Path,
    port: u32,
    seconds: f64,
) -> tokio::task::JoinHandle<Result<tonic::Response<PlayAudioResponse>, tonic::Status>> {
    let prompt = synth_speech(8000, seconds, 5);
    std::fs::write(assets.join("long.wav"), wav_bytes(&prompt, 8000)).unwrap();
    tokio::spawn(async move {
        client
            .play_audio(PlayAudioRequest {
                audio_uri: "file://long.wav".into(),
                server_rtp_port: port,
                rtp_target_addr: String::new(),
                barge_in_ms: None,
            })
            .await
    })
}

pub fn pcm_of(frames: &[Vec<u8>]) -> Vec<i16> {
    frames.iter().flat_map(|f| f.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]]))).collect()
}

/// A request marked as already forwarded: the node that gets it serves it itself (how
/// a test pins a call to a node, and checks that forwarding never takes a second hop).
pub fn pinned<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(media_node::grpc::peers::FORWARDED_HEADER, "the-test".parse().unwrap());
    r
}

pub async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

// Fixed ports in tests sit in 20000-29999, below the kernel's ephemeral range
// (32768-60999 here), so an outgoing connection or an OS-chosen port never takes them.
