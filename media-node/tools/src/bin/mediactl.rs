//! mediactl: a small CLI for people operating media nodes.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use media_proto::pb::media_service_client::MediaServiceClient;
use media_proto::pb::*;
use media_tools::demo::{self, DemoOptions};

#[derive(Parser)]
#[command(name = "mediactl", about = "Operate media nodes: allocate, release, play, listen, stats, demo")]
struct Cli {
    /// gRPC address of a node (or of the pool's Service).
    #[arg(long, global = true, env = "MEDIA_SERVICE_TARGET_GRPC_URL", default_value = "http://127.0.0.1:13031")]
    grpc: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Reserve an RTP port for a call.
    Allocate {
        #[arg(long, default_value = "")]
        call_id: String,
    },
    /// End the call on a port.
    Release { port: u32 },
    /// Play a URI (file://, data:, control://) on a call; waits for the end of playback.
    Play {
        port: u32,
        uri: String,
        #[arg(long, default_value = "")]
        target: String,
    },
    /// Listen to the caller and write what was heard to a WAV file.
    Listen {
        port: u32,
        #[arg(long, default_value_t = 16000)]
        rate: u32,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value = "listen.wav")]
        out: PathBuf,
    },
    /// Print the node's key figures from its metrics endpoint.
    Stats {
        #[arg(long, env = "MEDIA_SERVICE_METRICS_URL", default_value = "http://127.0.0.1:13032/metrics")]
        metrics_url: String,
    },
    /// Load run: N concurrent calls with prompt, live listen and recording; prints
    /// loss, pacing jitter, latency in to listener, AllocatePort latency and the
    /// engine's CPU and memory. See BENCHMARKS.md.
    Load {
        #[arg(long, default_value_t = 100)]
        calls: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// gRPC URL of a running node; without it the media-node binary beside this one is started.
        #[arg(long)]
        target: Option<String>,
        #[arg(long, default_value = "load-output")]
        work: PathBuf,
        /// Ramp: run each of these call counts in turn (e.g. 250,500,1000) and report
        /// the largest that holds (loss < 0.1 %, p99 jitter < 2 ms). Overrides --calls.
        #[arg(long, value_delimiter = ',')]
        ramp: Vec<usize>,
        /// Also run the same calls through rtpengine (Debian's rtpengine-daemon, in
        /// userspace) and print the CPU-per-call ratio.
        #[arg(long)]
        compare_rtpengine: bool,
        /// Only rtpengine.
        #[arg(long, conflicts_with = "compare_rtpengine")]
        rtpengine_only: bool,
        /// Pin the engine to these CPUs (taskset -c), e.g. 0; run mediactl itself on
        /// the others (taskset -c 1 mediactl load ...) for a clean per-core figure.
        #[arg(long)]
        engine_cpus: Option<String>,
        /// Leave out the live listener (to see its cost).
        #[arg(long)]
        no_listen: bool,
        /// Leave out the recording (to see its cost).
        #[arg(long)]
        no_record: bool,
        /// Subscribe to each call's events (StreamCallEvents), as a voice agent does.
        #[arg(long)]
        events: bool,
        /// Start the node with its call analysis off (MEDIA_VAD=false,
        /// MEDIA_INBAND_DTMF=false), to see what the analysis costs.
        #[arg(long, conflicts_with = "target")]
        no_analysis: bool,
        /// The callers' codec: PCMU (default, no SDP), PCMA, G722 or opus (set up by
        /// NegotiateSdp; rtpengine transcodes it to PCMU for the agent).
        #[arg(long, default_value = "PCMU", value_parser = parse_codec)]
        codec: media_node::core::codec::AudioCodec,
        /// The callers speak SRTP, keyed by SDES in the SDP (AES_CM_128_HMAC_SHA1_80);
        /// rtpengine then does SDES for the same calls (plain RTP to the agent).
        #[arg(long)]
        srtp: bool,
        /// Calls set up per second (AllocatePort is timed at this rate).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        allocate_rate: u32,
        /// Time this many AllocatePorts on their own before the calls (then release
        /// them), for a p99 from enough samples; 0 times the calls' own.
        #[arg(long, default_value_t = 0)]
        allocations: usize,
        /// The node's admission control (MEDIA_MAX_LOAD_PERCENT, 0 off) for a node
        /// this tool starts; left out, the node's default. Calls it refuses at set-up
        /// are counted and left out of the figures.
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=100))]
        max_load_percent: Option<u32>,
        /// Share of the time the callers talk, in turns (0.4: 4 s of every 10 s, the
        /// line's noise between, as a caller who listens to the bot); 1 talks all the
        /// time.
        #[arg(long, default_value_t = 1.0)]
        talk_share: f64,
    },
    /// Play a whole demo call. Without --target, starts a standalone node on loopback.
    Demo {
        /// gRPC URL of a running node to call instead of an embedded one.
        #[arg(long)]
        target: Option<String>,
        #[arg(long, default_value = "demo-output")]
        out: PathBuf,
        #[arg(long, default_value_t = 4.0)]
        seconds: f64,
        /// The caller's codec: PCMU (default, no SDP), or PCMA, G722, opus negotiated
        /// by SDP offer/answer (opus needs the opus feature).
        #[arg(long, default_value = "PCMU", value_parser = parse_codec)]
        codec: media_node::core::codec::AudioCodec,
    },
}

fn parse_codec(s: &str) -> Result<media_node::core::codec::AudioCodec, String> {
    media_node::core::codec::AudioCodec::from_name(s)
        .ok_or_else(|| format!("{s:?}: PCMU, PCMA, G722 or opus (opus needs the opus feature)"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Demo { target, out, seconds, codec } => {
            let report = demo::run(DemoOptions { target, out_dir: out, speech_seconds: seconds, codec }).await?;
            print!("{report}");
            Ok(())
        }
        Cmd::Stats { metrics_url } => stats(&metrics_url).await,
        Cmd::Load {
            calls,
            seconds,
            target,
            work,
            ramp,
            compare_rtpengine,
            rtpengine_only,
            engine_cpus,
            no_listen,
            no_record,
            events,
            no_analysis,
            codec,
            srtp,
            allocate_rate,
            allocations,
            max_load_percent,
            talk_share,
        } => {
            anyhow::ensure!((0.0..=1.0).contains(&talk_share), "--talk-share must be between 0 and 1");
            use media_tools::load::{self, CallParts, Engine, LoadOptions};
            let parts = CallParts { listen: !no_listen, record: !no_record, events, analysis: !no_analysis };
            let levels = if ramp.is_empty() { vec![calls] } else { ramp };
            let mut engines = Vec::new();
            if !rtpengine_only {
                engines.push(Engine::MediaNode);
            }
            if compare_rtpengine || rtpengine_only {
                engines.push(Engine::Rtpengine);
            }
            let mut all = Vec::new();
            for engine in engines {
                let (reports, best) = load::ramp(
                    LoadOptions {
                        calls,
                        seconds,
                        target: target.clone(),
                        work_dir: work.clone(),
                        engine,
                        engine_cpus: engine_cpus.clone(),
                        parts,
                        allocate_rate,
                        allocations,
                        codec,
                        srtp,
                        max_load_percent,
                        talk_share,
                    },
                    &levels,
                )
                .await?;
                if levels.len() > 1 {
                    match best {
                        Some(n) => println!("{}: the largest level that held: {n} calls", engine.name()),
                        None => println!("{}: no level held", engine.name()),
                    }
                }
                all.push(reports);
            }
            if let [ours, theirs] = all.as_slice() {
                for (a, b) in ours.iter().zip(theirs) {
                    if let (Some(x), Some(y)) = (a.cpu_ms_per_call_second(), b.cpu_ms_per_call_second()) {
                        println!("{} calls: CPU per call media-node/rtpengine = {x:.3}/{y:.3} ms per call-second = {:.2}", a.calls, x / y);
                    }
                    // User space alone: what a real NIC leaves of each engine's cost.
                    if let (Some(x), Some(y)) = (a.user_ms_per_call_second(), b.user_ms_per_call_second()) {
                        println!("{} calls: user-space CPU per call media-node/rtpengine = {x:.3}/{y:.3} ms = {:.2}", a.calls, x / y);
                    }
                }
            }
            Ok(())
        }
        cmd => {
            let mut c = MediaServiceClient::connect(cli.grpc.clone()).await.with_context(|| format!("connecting to {}", cli.grpc))?;
            match cmd {
                Cmd::Allocate { call_id } => {
                    let r = c.allocate_port(AllocatePortRequest { call_id }).await?.into_inner();
                    println!("{}:{}", r.advertised_ip, r.rtp_port);
                }
                Cmd::Release { port } => {
                    c.release_port(ReleasePortRequest { rtp_port: port }).await?;
                    println!("released {port}");
                }
                Cmd::Play { port, uri, target } => {
                    let r = c
                        .play_audio(PlayAudioRequest { audio_uri: uri, server_rtp_port: port, rtp_target_addr: target, barge_in_ms: None })
                        .await?
                        .into_inner();
                    println!("{}", r.message);
                }
                Cmd::Listen { port, rate, seconds, out } => {
                    let mut s =
                        c.record_audio(RecordAudioRequest { server_rtp_port: port, target_sample_rate: Some(rate) }).await?.into_inner();
                    let mut pcm: Vec<i16> = Vec::new();
                    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(seconds);
                    while let Ok(Ok(Some(f))) = tokio::time::timeout_at(deadline, s.message()).await {
                        pcm.extend(f.audio_data.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])));
                    }
                    demo::write_wav(&out, &pcm, rate)?;
                    println!("wrote {} ({:.1} s)", out.display(), pcm.len() as f64 / rate as f64);
                }
                Cmd::Demo { .. } | Cmd::Stats { .. } | Cmd::Load { .. } => unreachable!("handled above"),
            }
            Ok(())
        }
    }
}

/// Prints the node's key figures from its /metrics.
async fn stats(url: &str) -> anyhow::Result<()> {
    let rest = url.strip_prefix("http://").context("metrics URL must start with http://")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/metrics".into()));
    let (_, body) = media_tools::http::get(host, &path).await.with_context(|| format!("reading {url}"))?;
    let wanted = [
        "media_sessions_active",
        "media_ports",
        "media_rtp_packets_total",
        "media_rtp_malformed_total",
        "media_rtp_lost_samples_total",
        "media_rtp_late_packets_total",
        "media_listeners_active",
        "media_recording_uploads_pending",
    ];
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        if wanted.iter().any(|w| line.starts_with(w)) {
            println!("{line}");
        }
    }
    Ok(())
}
