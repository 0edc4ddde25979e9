//! The media node as the engine under load: started beside this tool (or given by
//! --target), its calls set up through AllocatePort at the asked rate, each with a
//! caller, a prompt, a live listener and a recording as the options say; its own
//! counters and histograms read from /metrics at the end.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use media_node::audio::decode::wav_bytes;
use media_node::core::codec::AudioCodec;
use media_proto::pb::media_service_client::MediaServiceClient;
use media_proto::pb::*;
use tonic::transport::Channel;

use super::never_silent;
use super::options::{Engine, LoadOptions, ENGINE_RTP_PORT_MIN, NODE_GRPC_PORT, NODE_METRICS_PORT};
use super::procfs::{engine_command, EngineProcess};
use super::report::{loss, summarise, CallResult, EngineUsage, LoadReport};
use crate::analysis::{synth_prompt, synth_speech};
use crate::caller::RtpCaller;
use crate::prometheus::{histogram_quantile, metric_value};

fn start_node(
    work: &Path,
    calls: usize,
    cpus: Option<&str>,
    analysis: bool,
    max_load: Option<u32>,
) -> anyhow::Result<(EngineProcess, String)> {
    let bin = std::env::current_exe()?.with_file_name("media-node");
    let assets = work.join("assets");
    std::fs::create_dir_all(&assets)?;
    let max = ENGINE_RTP_PORT_MIN as u32 + (calls as u32 * 2 + 100).min(19998);
    let mut cmd = engine_command(&bin, cpus);
    if let Some(p) = max_load {
        cmd.env("MEDIA_MAX_LOAD_PERCENT", p.to_string());
    }
    let child = cmd
        .env("MEDIA_SERVICE_GRPC_PORT", NODE_GRPC_PORT.to_string())
        .env("MEDIA_SERVICE_METRICS_PORT", NODE_METRICS_PORT.to_string())
        .env("MEDIA_SERVICE_LISTEN_ADDRESS", "127.0.0.1")
        .env("RTP_SERVICE_LISTEN_ADDRESS", "127.0.0.1")
        .env("RTP_SERVICE_PORT_MIN", ENGINE_RTP_PORT_MIN.to_string())
        .env("RTP_SERVICE_PORT_MAX", max.to_string())
        .env("ASSETS_BASE_PATH", &assets)
        .env("RECORDINGS_SPOOL_DIR", work.join("spool"))
        .env("RECORDINGS_ROOT", work.join("recordings"))
        .env("MEDIA_VAD", analysis.to_string())
        .env("MEDIA_INBAND_DTMF", analysis.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok((EngineProcess(child), format!("http://127.0.0.1:{NODE_GRPC_PORT}")))
}

pub(super) async fn run(opts: LoadOptions) -> anyhow::Result<LoadReport> {
    std::fs::create_dir_all(&opts.work_dir)?;
    let (node, endpoint) = match &opts.target {
        Some(t) => (None, t.clone()),
        None => {
            let (n, e) = start_node(
                &opts.work_dir,
                opts.calls + opts.allocations,
                opts.engine_cpus.as_deref(),
                opts.parts.analysis,
                opts.max_load_percent,
            )?;
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
    let usage_before = node.as_ref().and_then(EngineProcess::usage);
    let wall = Instant::now();

    let speech = never_silent(super::in_turns(synth_speech(8000, opts.seconds, 3), 8000, opts.talk_share));
    let mut tasks = Vec::new();
    let mut calls_ms = Vec::with_capacity(opts.calls);
    let mut refused = Vec::new();
    let start = tokio::time::Instant::now();
    // Each call starts as soon as its port is allocated, as calls arrive in production:
    // the node's admission control then weighs the calls that came before.
    for n in 0..opts.calls {
        tokio::time::sleep_until(start + interval * n as u32).await;
        let t = Instant::now();
        let a = match client.clone().allocate_port(AllocatePortRequest { call_id: format!("load-{n}") }).await {
            Ok(a) => {
                calls_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                a.into_inner()
            }
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                refused.push(s.message().to_string());
                continue;
            }
            Err(s) => return Err(s.into()),
        };
        let i = tasks.len();
        let mut c = client.clone();
        let speech = speech.clone();
        let prompt_uri = prompt_uri.clone();
        let parts = opts.parts;
        let codec = opts.codec;
        let srtp = opts.srtp;
        tasks.push(tokio::spawn(async move {
            let ip: IpAddr = a.advertised_ip.parse()?;
            let node_rtp = SocketAddr::new(ip, a.rtp_port as u16);
            let caller = RtpCaller::bind(SocketAddr::new(ip, 0)).await?;
            c.play_audio(PlayAudioRequest {
                audio_uri: "control://set_target".into(),
                server_rtp_port: a.rtp_port,
                rtp_target_addr: caller.local_addr().to_string(),
                barge_in_ms: None,
            })
            .await?;
            if codec != AudioCodec::Pcmu || srtp {
                // The caller's offer in its codec (with its SDES key under --srtp); the
                // node answers and sends in it.
                let key = srtp.then(|| {
                    media_node::core::srtp::MasterKey::generate(media_node::core::srtp::Suite::AesCm128HmacSha1_80, &mut rand::rng())
                });
                let offer = match &key {
                    Some(k) => crate::ng::srtp_sdp(caller.local_addr(), i as u64, codec, k),
                    None => crate::ng::codec_sdp(caller.local_addr(), i as u64, codec),
                };
                let r = c
                    .negotiate_sdp(NegotiateSdpRequest { server_rtp_port: a.rtp_port, remote_sdp: offer, ..Default::default() })
                    .await?
                    .into_inner();
                anyhow::ensure!(r.media.as_ref().is_some_and(|m| m.codec == codec.name()), "the node did not agree on {}", codec.name());
                if let Some(k) = key {
                    let theirs =
                        crate::ng::sdp_crypto_key(&r.local_sdp).ok_or_else(|| anyhow::anyhow!("no crypto line in the node's answer"))?;
                    caller.use_srtp(k, theirs);
                }
            }
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
            let events = if parts.events {
                Some(c.stream_call_events(StreamCallEventsRequest { server_rtp_port: a.rtp_port }).await?.into_inner())
            } else {
                None
            };
            let subscriber = tokio::spawn(async move {
                let Some(mut events) = events else { return 0 };
                let mut n = 0u64;
                while let Ok(Some(_)) = events.message().await {
                    n += 1;
                }
                n
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
                    .play_audio(PlayAudioRequest {
                        audio_uri: prompt_uri,
                        server_rtp_port: a.rtp_port,
                        rtp_target_addr: String::new(),
                        barge_in_ms: None,
                    })
                    .await
            });
            let sent_at = caller.send_speech_as(node_rtp, &speech, codec, i as u32).await?;
            let _ = play.await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            if parts.record {
                c.stop_recording(StopRecordingRequest { server_rtp_port: a.rtp_port }).await?;
            }
            c.release_port(ReleasePortRequest { rtp_port: a.rtp_port }).await?;
            let listener_arrivals = listener.await.unwrap_or_default();
            let events = subscriber.await.unwrap_or_default();
            let received = caller.take_received();
            let failed = caller.srtp_failures.load(std::sync::atomic::Ordering::Relaxed);
            anyhow::ensure!(failed == 0, "{failed} of the node's SRTP packets did not authenticate at the caller");
            anyhow::Ok(CallResult {
                sent_at,
                expected_from_node: speech.len().div_ceil(160),
                received_arrivals: received.iter().map(|p| p.at).collect(),
                listener_arrivals,
                events,
            })
        }));
    }
    let alloc_ms = timed_alone.unwrap_or(calls_ms);
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await??);
    }
    let usage = match (&usage_before, node.as_ref().and_then(EngineProcess::usage)) {
        (Some(before), Some(after)) => Some(EngineUsage::between(before, &after)),
        _ => None,
    };
    let wall = wall.elapsed().as_secs_f64();
    let metrics = match node {
        Some(_) => crate::http::get(&format!("127.0.0.1:{NODE_METRICS_PORT}"), "/metrics").await.ok().map(|(_, body)| body),
        None => None,
    };
    let node_in = metrics.as_deref().map(|body| metric_value(body, "media_rtp_packets_total{direction=\"in\"}"));
    let lateness = metrics.as_deref().map(|body| {
        (
            histogram_quantile(body, "media_rtp_send_lateness_seconds", 0.5),
            histogram_quantile(body, "media_rtp_send_lateness_seconds", 0.99),
        )
    });

    let sent: usize = results.iter().map(|r| r.sent_at.len()).sum();
    // What the node took in (its own counter) against what the callers sent; for a
    // node given by --target (whose metrics this tool does not know), what the
    // listeners heard of it, as for rtpengine.
    let caller_to_node_loss = match node_in {
        Some(n) => Some(loss(sent, n)),
        None if opts.parts.listen => Some(loss(sent, results.iter().map(|r| r.listener_arrivals.len()).sum::<usize>() as f64)),
        None => None,
    };
    let mut report = summarise(Engine::MediaNode, &opts, &results, alloc_ms, caller_to_node_loss, usage, wall);
    report.send_lateness_ms = lateness.map(|(a, b)| (a * 1000.0, b * 1000.0));
    report.refused = refused.len();
    report.refusal = refused.into_iter().next();
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
