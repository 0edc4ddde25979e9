//! A load run: N concurrent calls against a media node, each with a caller sending
//! 20 ms PCMU speech, a prompt played back by the node, a live listener on the
//! caller's audio and a mixed recording. Measures what decides a fleet's cost: loss
//! both ways, pacing jitter of what the node sends, AllocatePort latency, and the
//! node's CPU seconds and peak RSS (read from /proc when the node runs as a process
//! we started). The figures go to BENCHMARKS.md; nothing here asserts a speed.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use media_proto::pb::media_service_client::MediaServiceClient;
use media_proto::pb::*;
use tonic::transport::Channel;

use crate::audio::analysis::{synth_prompt, synth_speech};
use crate::audio::decode::wav_bytes;
use crate::core::g711::Codec;
use crate::tools::caller::RtpCaller;

pub struct LoadOptions {
    pub calls: usize,
    pub seconds: f64,
    /// gRPC URL of a running node; None starts the media-node binary beside this one.
    pub target: Option<String>,
    pub work_dir: PathBuf,
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub calls: usize,
    pub seconds: f64,
    pub caller_to_node_loss: f64,
    pub node_to_caller_loss: f64,
    pub jitter_p50_ms: f64,
    pub jitter_p99_ms: f64,
    pub jitter_max_ms: f64,
    pub allocate_p50_ms: f64,
    pub allocate_p99_ms: f64,
    pub node_cpu_seconds: Option<f64>,
    pub node_peak_rss_mb: Option<f64>,
    pub listener_frames: u64,
    /// Wall time of the whole run (allocation, calls, teardown), for CPU share.
    pub wall_seconds: f64,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "calls {} for {:.0} s (prompt + live listen 16 kHz + mono recording each)", self.calls, self.seconds)?;
        writeln!(f, "  loss caller->node {:.3} %, node->caller {:.3} %", self.caller_to_node_loss * 100.0, self.node_to_caller_loss * 100.0)?;
        writeln!(f, "  node pacing jitter p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms", self.jitter_p50_ms, self.jitter_p99_ms, self.jitter_max_ms)?;
        writeln!(f, "  AllocatePort p50 {:.3} ms, p99 {:.3} ms", self.allocate_p50_ms, self.allocate_p99_ms)?;
        if let (Some(cpu), Some(rss)) = (self.node_cpu_seconds, self.node_peak_rss_mb) {
            let share = cpu / self.wall_seconds.max(1e-9);
            writeln!(f, "  node CPU {:.2} s over {:.1} s ({:.1} % of one core), peak RSS {:.1} MB", cpu, self.wall_seconds, share * 100.0, rss)?;
            writeln!(f, "  => about {:.0} such calls per core at this load", self.calls as f64 / share.max(1e-9))?;
        }
        writeln!(f, "  listener frames received {}", self.listener_frames)
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// (CPU seconds, peak RSS MB) of a process, from /proc.
fn proc_usage(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kb: f64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some((ticks / 100.0, hwm_kb / 1024.0))
}

struct NodeProcess(Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_node(work: &std::path::Path, calls: usize) -> anyhow::Result<(NodeProcess, String)> {
    let bin = std::env::current_exe()?.with_file_name("media-node");
    let assets = work.join("assets");
    std::fs::create_dir_all(&assets)?;
    let max = 10000 + (calls as u32 * 2 + 100).min(19998);
    let child = Command::new(&bin)
        .env("MEDIA_SERVICE_GRPC_PORT", "29031")
        .env("MEDIA_SERVICE_METRICS_PORT", "29032")
        .env("MEDIA_SERVICE_LISTEN_ADDRESS", "127.0.0.1")
        .env("RTP_SERVICE_LISTEN_ADDRESS", "127.0.0.1")
        .env("RTP_SERVICE_PORT_MIN", "10000")
        .env("RTP_SERVICE_PORT_MAX", max.to_string())
        .env("ASSETS_BASE_PATH", &assets)
        .env("RECORDINGS_SPOOL_DIR", work.join("spool"))
        .env("RECORDINGS_ROOT", work.join("recordings"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok((NodeProcess(child), "http://127.0.0.1:29031".into()))
}

struct CallResult {
    sent: usize,
    received_arrivals: Vec<Instant>,
    expected_from_node: usize,
    listener_frames: u64,
}


pub async fn run(opts: LoadOptions) -> anyhow::Result<LoadReport> {
    std::fs::create_dir_all(&opts.work_dir)?;
    let (node, endpoint) = match &opts.target {
        Some(t) => (None, t.clone()),
        None => {
            let (n, e) = start_node(&opts.work_dir, opts.calls)?;
            (Some(n), e)
        }
    };
    let channel = {
        let mut tries = 0;
        loop {
            match Channel::from_shared(endpoint.clone())?.connect().await {
                Ok(c) => break c,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let client = MediaServiceClient::new(channel);
    let prompt_uri = format!(
        "data:audio/wav;base64,{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, wav_bytes(&synth_prompt(8000, opts.seconds), 8000))
    );
    let cpu_before = node.as_ref().and_then(|n| proc_usage(n.0.id()));
    let wall = Instant::now();

    // Allocation at a steady rate of 1,000 a second, measured one by one.
    let mut alloc_ms = Vec::new();
    let mut ports = Vec::new();
    let tick = Duration::from_micros(1000);
    let start = tokio::time::Instant::now();
    for i in 0..opts.calls {
        tokio::time::sleep_until(start + tick * i as u32).await;
        let t = Instant::now();
        let a = client.clone().allocate_port(AllocatePortRequest { call_id: format!("load-{i}") }).await?.into_inner();
        alloc_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        ports.push(a);
    }

    let speech = synth_speech(8000, opts.seconds, 3);
    let mut tasks = Vec::new();
    for (i, a) in ports.into_iter().enumerate() {
        let mut c = client.clone();
        let speech = speech.clone();
        let prompt_uri = prompt_uri.clone();
        tasks.push(tokio::spawn(async move {
            let ip: IpAddr = a.advertised_ip.parse()?;
            let node_rtp = SocketAddr::new(ip, a.rtp_port as u16);
            let caller = RtpCaller::bind(SocketAddr::new(ip, 0)).await?;
            c.play_audio(PlayAudioRequest { audio_uri: "control://set_target".into(), server_rtp_port: a.rtp_port, rtp_target_addr: caller.local_addr().to_string() }).await?;
            let mut listen = c.record_audio(RecordAudioRequest { server_rtp_port: a.rtp_port, target_sample_rate: Some(16000) }).await?.into_inner();
            let listener = tokio::spawn(async move {
                let mut frames = 0u64;
                while let Ok(Some(_)) = listen.message().await {
                    frames += 1;
                }
                frames
            });
            c.start_recording(StartRecordingRequest { server_rtp_port: a.rtp_port, output_uri: "file://load".into(), call_id: format!("load-{i}"), ..Default::default() }).await?;
            let mut player = c.clone();
            let play = tokio::spawn(async move {
                player.play_audio(PlayAudioRequest { audio_uri: prompt_uri, server_rtp_port: a.rtp_port, rtp_target_addr: String::new() }).await
            });
            let sent = caller.send_speech(node_rtp, &speech, Codec::Pcmu, i as u32).await?;
            let _ = play.await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.stop_recording(StopRecordingRequest { server_rtp_port: a.rtp_port }).await?;
            c.release_port(ReleasePortRequest { rtp_port: a.rtp_port }).await?;
            let listener_frames = listener.await.unwrap_or(0);
            let received = caller.take_received();
            anyhow::Ok(CallResult {
                sent,
                expected_from_node: speech.len().div_ceil(160),
                received_arrivals: received.iter().map(|p| p.at).collect(),
                listener_frames,
            })
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await??);
    }
    let usage = node.as_ref().and_then(|n| proc_usage(n.0.id()));
    let wall = wall.elapsed().as_secs_f64();
    let node_in = match node {
        Some(_) => super::http::get("127.0.0.1:29032", "/metrics")
            .await
            .ok()
            .map(|(_, body)| super::http::metric_value(&body, "media_rtp_packets_total{direction=\"in\"}")),
        None => None,
    };

    let mut jitter = Vec::new();
    let (mut sent, mut expected, mut received, mut frames) = (0usize, 0usize, 0usize, 0u64);
    for r in &results {
        sent += r.sent;
        expected += r.expected_from_node;
        received += r.received_arrivals.len();
        frames += r.listener_frames;
        for w in r.received_arrivals.windows(2) {
            jitter.push((w[1].duration_since(w[0]).as_secs_f64() * 1000.0 - 20.0).abs());
        }
    }
    // What the node took in (its own counter) against what the callers sent.
    let caller_to_node_loss = node_in.map_or(f64::NAN, |n| (1.0 - n / sent.max(1) as f64).max(0.0));
    Ok(LoadReport {
        calls: opts.calls,
        seconds: opts.seconds,
        caller_to_node_loss,
        node_to_caller_loss: (1.0 - received as f64 / expected.max(1) as f64).max(0.0),
        jitter_p50_ms: percentile(&mut jitter, 0.5),
        jitter_p99_ms: percentile(&mut jitter, 0.99),
        jitter_max_ms: percentile(&mut jitter, 1.0),
        allocate_p50_ms: percentile(&mut alloc_ms, 0.5),
        allocate_p99_ms: percentile(&mut alloc_ms, 0.99),
        node_cpu_seconds: match (cpu_before, usage) {
            (Some((a, _)), Some((b, _))) => Some(b - a),
            _ => None,
        },
        node_peak_rss_mb: usage.map(|u| u.1),
        listener_frames: frames,
        wall_seconds: wall,
    })
}
