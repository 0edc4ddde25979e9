//! A load run: N concurrent calls against a media engine, each with a caller sending
//! 20 ms PCMU speech, a prompt played back to the caller, a live listener on the
//! caller's audio and a recording. Measures what decides a fleet's cost: loss both
//! ways, pacing jitter of what the engine sends, latency from an RTP packet in to its
//! audio out to the listener, AllocatePort latency, and the engine's CPU seconds and
//! peak RSS (from /proc, for a process this tool started).
//!
//! The engine is a media node, or rtpengine (Debian's `rtpengine-daemon`, userspace,
//! driven over its ng protocol: offer/answer between the caller and an "agent" socket
//! that stands in for the listener, `play media` for the prompt, `start recording`,
//! `delete`), so both are measured the same way in one run. The figures go to
//! BENCHMARKS.md; nothing here asserts a speed.

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    MediaNode,
    Rtpengine,
}

impl Engine {
    pub fn name(&self) -> &'static str {
        match self {
            Engine::MediaNode => "media-node",
            Engine::Rtpengine => "rtpengine",
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub calls: usize,
    pub seconds: f64,
    /// gRPC URL of a running node; None starts the media-node binary beside this one.
    pub target: Option<String>,
    pub work_dir: PathBuf,
    pub engine: Engine,
    /// Pin the engine to these CPUs (`taskset -c`), e.g. "0", so its CPU share is a
    /// real per-core figure and the load generator (run on the others) does not
    /// disturb it.
    pub engine_cpus: Option<String>,
    /// Which parts of a call run (all by default); turning one off shows its cost.
    pub parts: CallParts,
    /// Calls set up per second (AllocatePort, or rtpengine's offer), each one timed.
    pub allocate_rate: u32,
    /// AllocatePorts timed on their own before the calls (then released), so the
    /// p99 comes from enough samples; 0 times the calls' own allocations instead.
    /// Media node only.
    pub allocations: usize,
}

impl LoadOptions {
    /// The gap between two call set-ups at `allocate_rate`.
    fn setup_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.allocate_rate.max(1) as f64)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallParts {
    /// A live RecordAudio listener at 16 kHz.
    pub listen: bool,
    /// A mono recording.
    pub record: bool,
}

impl Default for CallParts {
    fn default() -> Self {
        CallParts { listen: true, record: true }
    }
}

/// A command for the engine binary, pinned to `cpus` when given.
fn engine_command(bin: &std::path::Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c).arg(bin);
            cmd
        }
        None => Command::new(bin),
    }
}

/// What counts as holding up: under 0.1 % loss both ways and 2 ms p99 pacing jitter.
pub const MAX_LOSS: f64 = 0.001;
pub const MAX_JITTER_P99_MS: f64 = 2.0;

#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub engine: &'static str,
    pub calls: usize,
    pub seconds: f64,
    pub caller_to_node_loss: f64,
    pub node_to_caller_loss: f64,
    pub jitter_p50_ms: f64,
    pub jitter_p99_ms: f64,
    pub jitter_max_ms: f64,
    /// AllocatePorts a second the run asked for, and how many were timed.
    pub allocate_rate: u32,
    pub allocate_samples: usize,
    pub allocate_p50_ms: f64,
    pub allocate_p99_ms: f64,
    /// The node's own pacing: how late packets left against their schedule, p50 and
    /// p99 as histogram bucket bounds (from its /metrics), free of the receiver's noise.
    pub send_lateness_ms: Option<(f64, f64)>,
    /// AllocatePort as the node timed it (its handler, without the client and the
    /// transport), p50 and p99 as histogram bucket bounds.
    pub allocate_in_node_ms: Option<(f64, f64)>,
    pub parts: CallParts,
    /// From an RTP packet sent by the caller to its audio reaching the listener.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub node_cpu_seconds: Option<f64>,
    pub node_peak_rss_mb: Option<f64>,
    pub listener_frames: u64,
    /// Wall time of the whole run (allocation, calls, teardown), for CPU share.
    pub wall_seconds: f64,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match (self.engine, self.parts.listen, self.parts.record) {
            ("rtpengine", ..) => "play media + relay to the agent + pcap recording",
            (_, true, true) => "prompt + live listen 16 kHz + mono recording",
            (_, true, false) => "prompt + live listen 16 kHz, no recording",
            (_, false, true) => "prompt + mono recording, no listener",
            (_, false, false) => "prompt only, no listener, no recording",
        };
        writeln!(f, "{}: {} calls for {:.0} s ({what} each)", self.engine, self.calls, self.seconds)?;
        writeln!(
            f,
            "  loss caller->engine {:.3} %, engine->caller {:.3} %",
            self.caller_to_node_loss * 100.0,
            self.node_to_caller_loss * 100.0
        )?;
        writeln!(
            f,
            "  pacing jitter of what it sends: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            self.jitter_p50_ms, self.jitter_p99_ms, self.jitter_max_ms
        )?;
        if let Some((p50, p99)) = self.send_lateness_ms {
            writeln!(f, "  node-side send lateness (its own pacing): p50 <= {p50:.2} ms, p99 <= {p99:.2} ms")?;
        }
        writeln!(
            f,
            "  latency RTP in -> listener: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            self.latency_p50_ms, self.latency_p99_ms, self.latency_max_ms
        )?;
        if self.engine == "media-node" {
            writeln!(
                f,
                "  AllocatePort at {}/s ({} timed): p50 {:.3} ms, p99 {:.3} ms",
                self.allocate_rate, self.allocate_samples, self.allocate_p50_ms, self.allocate_p99_ms
            )?;
            if let Some((p50, p99)) = self.allocate_in_node_ms {
                writeln!(f, "    of which in the node's handler: p50 <= {p50:.3} ms, p99 <= {p99:.3} ms")?;
            }
        }
        if let (Some(cpu), Some(rss)) = (self.node_cpu_seconds, self.node_peak_rss_mb) {
            let share = cpu / self.wall_seconds.max(1e-9);
            writeln!(
                f,
                "  CPU {:.2} s over {:.1} s ({:.1} % of one core), {:.2} ms of CPU per call-second, peak RSS {:.1} MB",
                cpu,
                self.wall_seconds,
                share * 100.0,
                self.cpu_ms_per_call_second().unwrap_or(f64::NAN),
                rss
            )?;
            writeln!(f, "  => about {:.0} such calls per core at this load", self.calls as f64 / share.max(1e-9))?;
        }
        writeln!(
            f,
            "  listener frames received {}; holds up (loss < 0.1 %, p99 jitter < 2 ms): {}",
            self.listener_frames,
            if self.holds() { "yes" } else { "no" }
        )
    }
}

impl LoadReport {
    /// Under 0.1 % loss both ways and 2 ms p99 pacing jitter.
    pub fn holds(&self) -> bool {
        !(self.caller_to_node_loss >= MAX_LOSS) && self.node_to_caller_loss < MAX_LOSS && self.jitter_p99_ms < MAX_JITTER_P99_MS
    }

    /// CPU per call per second of call: comparable across engines and run lengths.
    pub fn cpu_ms_per_call_second(&self) -> Option<f64> {
        self.node_cpu_seconds.map(|c| c * 1000.0 / (self.calls.max(1) as f64 * self.seconds.max(1e-9)))
    }
}

/// The upper bound of the bucket holding quantile `q` of a Prometheus histogram.
fn histogram_quantile(text: &str, name: &str, q: f64) -> f64 {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    let total = buckets.last().map_or(0.0, |b| b.1);
    buckets.iter().find(|b| b.1 >= q * total).map_or(f64::NAN, |b| b.0)
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

struct EngineProcess(Child);

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_node(work: &std::path::Path, calls: usize, cpus: Option<&str>) -> anyhow::Result<(EngineProcess, String)> {
    let bin = std::env::current_exe()?.with_file_name("media-node");
    let assets = work.join("assets");
    std::fs::create_dir_all(&assets)?;
    let max = 10000 + (calls as u32 * 2 + 100).min(19998);
    let child = engine_command(&bin, cpus)
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
    Ok((EngineProcess(child), "http://127.0.0.1:29031".into()))
}

struct CallResult {
    sent_at: Vec<Instant>,
    received_arrivals: Vec<Instant>,
    expected_from_node: usize,
    /// When each frame (or relayed packet) reached the listener.
    listener_arrivals: Vec<Instant>,
}

/// Speech with a low noise floor, so every packet carries audio a listener can tell
/// from the silence a node plays while no packet is due.
fn never_silent(mut pcm: Vec<i16>) -> Vec<i16> {
    for (i, s) in pcm.iter_mut().enumerate() {
        *s = s.saturating_add(if i % 2 == 0 { 64 } else { -64 });
    }
    pcm
}

/// Latency of packet i = when the listener got the i-th frame with audio in it - when
/// packet i left (one 20 ms frame per packet).
fn latencies(r: &CallResult, out: &mut Vec<f64>) {
    for (sent, heard) in r.sent_at.iter().zip(&r.listener_arrivals) {
        out.push(heard.saturating_duration_since(*sent).as_secs_f64() * 1000.0);
    }
}

pub async fn run(opts: LoadOptions) -> anyhow::Result<LoadReport> {
    match opts.engine {
        Engine::MediaNode => run_media_node(opts).await,
        Engine::Rtpengine => run_rtpengine(opts).await,
    }
}

/// Runs each level in turn (a fresh engine each time) and returns every report and the
/// largest level that held.
pub async fn ramp(opts: LoadOptions, levels: &[usize]) -> anyhow::Result<(Vec<LoadReport>, Option<usize>)> {
    let mut reports = Vec::new();
    let mut best = None;
    for &calls in levels {
        let r = match run(LoadOptions { calls, work_dir: opts.work_dir.join(format!("{}-{calls}", opts.engine.name())), ..opts.clone() })
            .await
        {
            Ok(r) => r,
            Err(e) => {
                // A saturated engine stops answering: that level did not hold, and no
                // larger one will.
                println!("{}: {calls} calls failed: {e:#}\n", opts.engine.name());
                break;
            }
        };
        println!("{r}");
        if r.holds() {
            best = Some(calls);
        }
        reports.push(r);
    }
    Ok((reports, best))
}

fn summarise(
    engine: Engine,
    opts: &LoadOptions,
    results: &[CallResult],
    mut alloc_ms: Vec<f64>,
    caller_to_engine_loss: f64,
    usage: (Option<(f64, f64)>, Option<(f64, f64)>),
    wall: f64,
) -> LoadReport {
    let mut jitter = Vec::new();
    let mut latency = Vec::new();
    let (mut expected, mut received, mut frames) = (0usize, 0usize, 0u64);
    for r in results {
        expected += r.expected_from_node;
        received += r.received_arrivals.len();
        frames += r.listener_arrivals.len() as u64;
        for w in r.received_arrivals.windows(2) {
            jitter.push((w[1].duration_since(w[0]).as_secs_f64() * 1000.0 - 20.0).abs());
        }
        latencies(r, &mut latency);
    }
    LoadReport {
        engine: engine.name(),
        calls: opts.calls,
        seconds: opts.seconds,
        caller_to_node_loss: caller_to_engine_loss,
        node_to_caller_loss: (1.0 - received as f64 / expected.max(1) as f64).max(0.0),
        jitter_p50_ms: percentile(&mut jitter, 0.5),
        jitter_p99_ms: percentile(&mut jitter, 0.99),
        jitter_max_ms: percentile(&mut jitter, 1.0),
        allocate_rate: opts.allocate_rate,
        allocate_samples: alloc_ms.len(),
        allocate_p50_ms: percentile(&mut alloc_ms, 0.5),
        allocate_p99_ms: percentile(&mut alloc_ms, 0.99),
        latency_p50_ms: percentile(&mut latency, 0.5),
        latency_p99_ms: percentile(&mut latency, 0.99),
        latency_max_ms: percentile(&mut latency, 1.0),
        node_cpu_seconds: match usage {
            (Some((a, _)), Some((b, _))) => Some(b - a),
            _ => None,
        },
        node_peak_rss_mb: usage.1.map(|u| u.1),
        listener_frames: frames,
        wall_seconds: wall,
        send_lateness_ms: None,
        allocate_in_node_ms: None,
        parts: opts.parts,
    }
}

async fn run_media_node(opts: LoadOptions) -> anyhow::Result<LoadReport> {
    std::fs::create_dir_all(&opts.work_dir)?;
    let (node, endpoint) = match &opts.target {
        Some(t) => (None, t.clone()),
        None => {
            let (n, e) = start_node(&opts.work_dir, opts.calls + opts.allocations, opts.engine_cpus.as_deref())?;
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
    // A node this tool started plays the prompt from its assets folder (through its
    // prompt cache, as production prompts are played); a node given by --target gets
    // it inline as a data: URI.
    let prompt_wav = wav_bytes(&synth_prompt(8000, opts.seconds), 8000);
    let prompt_uri = if node.is_some() {
        std::fs::write(opts.work_dir.join("assets").join("load-prompt.wav"), &prompt_wav)?;
        "file://load-prompt.wav".to_string()
    } else {
        format!("data:audio/wav;base64,{}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &prompt_wav))
    };
    // AllocatePort on its own first, when asked: as many as were asked for, at the
    // same rate, then all released (before the CPU count starts).
    let interval = opts.setup_interval();
    let timed_alone = if opts.allocations > 0 {
        let (ms, ports) = allocate_paced(&client, opts.allocations, interval, "alloc").await?;
        for a in ports {
            client.clone().release_port(ReleasePortRequest { rtp_port: a.rtp_port }).await?;
        }
        Some(ms)
    } else {
        None
    };
    let cpu_before = node.as_ref().and_then(|n| proc_usage(n.0.id()));
    let wall = Instant::now();

    let (calls_ms, ports) = allocate_paced(&client, opts.calls, interval, "load").await?;
    let alloc_ms = timed_alone.unwrap_or(calls_ms);

    let speech = never_silent(synth_speech(8000, opts.seconds, 3));
    let mut tasks = Vec::new();
    for (i, a) in ports.into_iter().enumerate() {
        let mut c = client.clone();
        let speech = speech.clone();
        let prompt_uri = prompt_uri.clone();
        let parts = opts.parts;
        tasks.push(tokio::spawn(async move {
            let ip: IpAddr = a.advertised_ip.parse()?;
            let node_rtp = SocketAddr::new(ip, a.rtp_port as u16);
            let caller = RtpCaller::bind(SocketAddr::new(ip, 0)).await?;
            c.play_audio(PlayAudioRequest {
                audio_uri: "control://set_target".into(),
                server_rtp_port: a.rtp_port,
                rtp_target_addr: caller.local_addr().to_string(),
            })
            .await?;
            let listen = if parts.listen {
                Some(
                    c.record_audio(RecordAudioRequest { server_rtp_port: a.rtp_port, target_sample_rate: Some(16000) }).await?.into_inner(),
                )
            } else {
                None
            };
            let listener = tokio::spawn(async move {
                let Some(mut listen) = listen else { return Vec::new() };
                // Frames that carry the caller's (never silent) audio, in order; frames
                // of pure silence are the node filling time before, between or after
                // packets, and are not any packet's audio.
                let mut arrivals = Vec::new();
                while let Ok(Some(f)) = listen.message().await {
                    if f.audio_data.iter().any(|&b| b != 0) {
                        arrivals.push(Instant::now());
                    }
                }
                arrivals
            });
            if parts.record {
                c.start_recording(StartRecordingRequest {
                    server_rtp_port: a.rtp_port,
                    output_uri: "file://load".into(),
                    call_id: format!("load-{i}"),
                    ..Default::default()
                })
                .await?;
            }
            let mut player = c.clone();
            let play = tokio::spawn(async move {
                player
                    .play_audio(PlayAudioRequest { audio_uri: prompt_uri, server_rtp_port: a.rtp_port, rtp_target_addr: String::new() })
                    .await
            });
            let sent_at = caller.send_speech_timed(node_rtp, &speech, Codec::Pcmu, i as u32).await?;
            let _ = play.await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            if parts.record {
                c.stop_recording(StopRecordingRequest { server_rtp_port: a.rtp_port }).await?;
            }
            c.release_port(ReleasePortRequest { rtp_port: a.rtp_port }).await?;
            let listener_arrivals = listener.await.unwrap_or_default();
            let received = caller.take_received();
            anyhow::Ok(CallResult {
                sent_at,
                expected_from_node: speech.len().div_ceil(160),
                received_arrivals: received.iter().map(|p| p.at).collect(),
                listener_arrivals,
            })
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await??);
    }
    let usage = node.as_ref().and_then(|n| proc_usage(n.0.id()));
    let wall = wall.elapsed().as_secs_f64();
    let metrics = match node {
        Some(_) => super::http::get("127.0.0.1:29032", "/metrics").await.ok().map(|(_, body)| body),
        None => None,
    };
    let node_in = metrics.as_deref().map(|body| super::http::metric_value(body, "media_rtp_packets_total{direction=\"in\"}"));
    let lateness = metrics.as_deref().map(|body| {
        (
            histogram_quantile(body, "media_rtp_send_lateness_seconds", 0.5),
            histogram_quantile(body, "media_rtp_send_lateness_seconds", 0.99),
        )
    });

    let sent: usize = results.iter().map(|r| r.sent_at.len()).sum();
    // What the node took in (its own counter) against what the callers sent.
    let caller_to_node_loss = node_in.map_or(f64::NAN, |n| (1.0 - n / sent.max(1) as f64).max(0.0));
    let mut report = summarise(Engine::MediaNode, &opts, &results, alloc_ms, caller_to_node_loss, (cpu_before, usage), wall);
    report.send_lateness_ms = lateness.map(|(a, b)| (a * 1000.0, b * 1000.0));
    report.allocate_in_node_ms = metrics.as_deref().map(|body| {
        let q = |p| histogram_quantile(body, "media_allocate_port_duration_seconds", p) * 1000.0;
        (q(0.5), q(0.99))
    });
    Ok(report)
}

/// `n` AllocatePorts at a steady pace, one at a time, each timed (ms).
async fn allocate_paced(
    client: &MediaServiceClient<Channel>,
    n: usize,
    interval: Duration,
    prefix: &str,
) -> anyhow::Result<(Vec<f64>, Vec<AllocatePortResponse>)> {
    let mut ms = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    let start = tokio::time::Instant::now();
    for i in 0..n {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let t = Instant::now();
        let a = client.clone().allocate_port(AllocatePortRequest { call_id: format!("{prefix}-{i}") }).await?.into_inner();
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        ports.push(a);
    }
    Ok((ms, ports))
}

/// rtpengine's ng control port in load runs.
const RTPENGINE_NG: &str = "127.0.0.1:29033";

fn start_rtpengine(work: &std::path::Path, cpus: Option<&str>) -> anyhow::Result<EngineProcess> {
    let rec = work.join("rtpengine-recordings");
    std::fs::create_dir_all(&rec)?;
    let log = std::fs::File::create(work.join("rtpengine.log"))?;
    // Userspace only (--table=-1: no kernel forwarding), on loopback, recording to pcap
    // files (the only recording method that needs neither the kernel module nor the
    // separate recording daemon).
    let child = engine_command(std::path::Path::new("rtpengine"), cpus)
        .args(["--foreground", "--log-stderr", "--log-level=4", "--table=-1", "--interface=127.0.0.1"])
        .arg(format!("--listen-ng={RTPENGINE_NG}"))
        .args(["--port-min=10000", "--port-max=19999", "--delete-delay=0", "--recording-method=pcap"])
        .arg(format!("--recording-dir={}", rec.display()))
        .arg(format!("--pidfile={}", work.join("rtpengine.pid").display()))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting rtpengine (Debian package rtpengine-daemon)")?;
    Ok(EngineProcess(child))
}

async fn rtpengine_ready(ng: SocketAddr) -> anyhow::Result<()> {
    use super::ng::Bencode;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let mut msg = b"ping0 ".to_vec();
    Bencode::dict([("command", Bencode::str("ping"))]).encode(&mut msg);
    let mut buf = [0u8; 512];
    for _ in 0..50 {
        socket.send_to(&msg, ng).await?;
        if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_millis(100), socket.recv_from(&mut buf)).await {
            if buf[..n].windows(4).any(|w| w == b"pong") {
                return Ok(());
            }
        }
    }
    anyhow::bail!("rtpengine did not answer ping on {ng}")
}

async fn run_rtpengine(opts: LoadOptions) -> anyhow::Result<LoadReport> {
    use super::ng::{pcmu_sdp, sdp_audio_port, Bencode, NgClient};
    std::fs::create_dir_all(&opts.work_dir)?;
    let engine = start_rtpengine(&opts.work_dir, opts.engine_cpus.as_deref())?;
    let ng: SocketAddr = RTPENGINE_NG.parse()?;
    rtpengine_ready(ng).await?;
    let prompt = opts.work_dir.join("prompt.wav");
    std::fs::write(&prompt, wav_bytes(&synth_prompt(8000, opts.seconds), 8000))?;
    let prompt = prompt.canonicalize()?.display().to_string();
    let cpu_before = proc_usage(engine.0.id());
    let wall = Instant::now();

    // Set up every call first (at the rate AllocatePort is paced at), then run the
    // media, so both engines carry all N calls at once.
    let speech = never_silent(synth_speech(8000, opts.seconds, 3));
    let start = tokio::time::Instant::now();
    let interval = opts.setup_interval();
    let media_start = start + interval * opts.calls as u32 + Duration::from_millis(500);
    let mut tasks = Vec::new();
    for i in 0..opts.calls {
        let (speech, prompt) = (speech.clone(), prompt.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + interval * i as u32).await;
            let mut ctl = NgClient::connect(ng).await?;
            let caller = RtpCaller::bind("127.0.0.1:0".parse()?).await?;
            let agent = RtpCaller::bind("127.0.0.1:0".parse()?).await?;
            let call_id = format!("load-{i}");
            let (from, to) = (format!("caller-{i}"), format!("agent-{i}"));
            let base =
                |cmd: &str| vec![("command", Bencode::str(cmd)), ("call-id", Bencode::str(&call_id)), ("from-tag", Bencode::str(&from))];
            let mut offer = base("offer");
            offer.push(("sdp", Bencode::str(&pcmu_sdp(caller.local_addr(), i as u64))));
            offer.push(("ICE", Bencode::str("remove")));
            offer.push(("record call", Bencode::str("yes")));
            ctl.command(Bencode::dict(offer)).await?;
            let mut answer = base("answer");
            answer.push(("to-tag", Bencode::str(&to)));
            answer.push(("sdp", Bencode::str(&pcmu_sdp(agent.local_addr(), i as u64))));
            let answered = ctl.command(Bencode::dict(answer)).await?;
            let sdp = answered.get("sdp").and_then(Bencode::as_str).unwrap_or_default();
            let port = sdp_audio_port(sdp).ok_or_else(|| anyhow::anyhow!("no audio port in rtpengine's answer"))?;
            let engine_rtp = SocketAddr::new("127.0.0.1".parse()?, port);
            tokio::time::sleep_until(media_start).await;
            // The prompt goes to the caller (the party of from-tag) while it talks.
            let mut play = base("play media");
            play.push(("file", Bencode::str(&prompt)));
            ctl.command(Bencode::dict(play)).await?;
            let sent_at = caller.send_speech_timed(engine_rtp, &speech, Codec::Pcmu, i as u32).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            ctl.command(Bencode::dict(base("delete"))).await?;
            let received = caller.take_received();
            let relayed = agent.take_received();
            anyhow::Ok(CallResult {
                sent_at,
                expected_from_node: speech.len().div_ceil(160),
                received_arrivals: received.iter().map(|p| p.at).collect(),
                listener_arrivals: relayed.iter().map(|p| p.at).collect(),
            })
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await??);
    }
    let usage = proc_usage(engine.0.id());
    let wall = wall.elapsed().as_secs_f64();
    let sent: usize = results.iter().map(|r| r.sent_at.len()).sum();
    let relayed: usize = results.iter().map(|r| r.listener_arrivals.len()).sum();
    let loss = (1.0 - relayed as f64 / sent.max(1) as f64).max(0.0);
    Ok(summarise(Engine::Rtpengine, &opts, &results, Vec::new(), loss, (cpu_before, usage), wall))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_come_from_bucket_bounds() {
        let text = "x_bucket{le=\"0.001\"} 90\nx_bucket{le=\"0.002\"} 99\nx_bucket{le=\"0.005\"} 100\nx_bucket{le=\"+Inf\"} 100\n";
        assert_eq!(histogram_quantile(text, "x", 0.5), 0.001);
        assert_eq!(histogram_quantile(text, "x", 0.99), 0.002);
        assert_eq!(histogram_quantile(text, "x", 1.0), 0.005);
    }
}
