//! The demo call: a caller speaks (speech-like audio as PCMU RTP over real UDP), an
//! agent listens live over RecordAudio, the bot plays a prompt back, and what each
//! side heard is written as WAV files. With no target, a standalone node is started
//! in-process on loopback.

use media_node::core::codec::{AudioCodec, Decoder};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use media_proto::pb::media_service_client::MediaServiceClient;
use media_proto::pb::*;
use tonic::transport::Channel;

use crate::analysis::{best_correlation, rms, synth_prompt, synth_speech};
use crate::caller::{timeline, RtpCaller};
use media_node::audio::decode::{wav_bytes, wav_to_call_pcm};
use media_node::config::NodeConfig;
use media_node::core::resample;

pub struct DemoOptions {
    /// gRPC URL of a running node; None starts one on loopback.
    pub target: Option<String>,
    pub out_dir: PathBuf,
    pub speech_seconds: f64,
    /// The caller's codec: PCMU (no SDP, as a caller that never negotiates), or PCMA,
    /// G722, opus set up by the node's NegotiateSdp answering the caller's offer.
    pub codec: AudioCodec,
}

#[derive(Debug)]
pub struct DemoReport {
    pub port: u32,
    pub advertised_ip: String,
    pub packets_sent: usize,
    pub packets_received: usize,
    /// How closely the agent's live audio matches what the caller said (0..1).
    pub agent_correlation: f64,
    /// How closely what the caller heard matches the prompt (0..1).
    pub caller_correlation: f64,
    pub prompt_outcome: String,
    /// The call recording (a path on the embedded node, else its URI), then the side files.
    pub files: Vec<PathBuf>,
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "call on {}:{}", self.advertised_ip, self.port)?;
        writeln!(f, "  caller sent {} RTP packets, received {} back", self.packets_sent, self.packets_received)?;
        writeln!(f, "  prompt: {}", self.prompt_outcome)?;
        writeln!(f, "  agent heard the caller with correlation {:.3}", self.agent_correlation)?;
        writeln!(f, "  caller heard the prompt with correlation {:.3}", self.caller_correlation)?;
        for p in &self.files {
            writeln!(f, "  wrote {}", p.display())?;
        }
        Ok(())
    }
}

const PROMPT_RATE: u32 = 22050;

fn write_prompt(assets: &Path) -> anyhow::Result<Vec<u8>> {
    let dir = assets.join("prompts");
    std::fs::create_dir_all(&dir)?;
    let wav = wav_bytes(&synth_prompt(PROMPT_RATE, 2.0), PROMPT_RATE);
    std::fs::write(dir.join("welcome.wav"), &wav)?;
    Ok(wav)
}

pub fn write_wav(path: &Path, pcm: &[i16], rate: u32) -> anyhow::Result<()> {
    std::fs::write(path, wav_bytes(pcm, rate)).with_context(|| format!("writing {}", path.display()))
}

pub async fn run(opts: DemoOptions) -> anyhow::Result<DemoReport> {
    std::fs::create_dir_all(&opts.out_dir).with_context(|| format!("creating {}", opts.out_dir.display()))?;
    let assets = opts.out_dir.join("assets");
    let prompt_wav = write_prompt(&assets)?;
    let (endpoint, embedded) = match &opts.target {
        Some(t) => (t.clone(), None),
        None => {
            let mut cfg = NodeConfig::loopback(assets.clone(), 21000, 21999);
            cfg.recording.recordings_root = opts.out_dir.join("recordings");
            cfg.recording.spool_dir = opts.out_dir.join("spool");
            let node = media_node::server::start(cfg).await?;
            (format!("http://{}", node.grpc_addr), Some(node))
        }
    };
    let result = call(&endpoint, &opts, embedded.is_some(), &prompt_wav).await;
    if let Some(node) = embedded {
        node.stop().await?;
    }
    result
}

async fn call(endpoint: &str, opts: &DemoOptions, local_assets: bool, prompt_wav: &[u8]) -> anyhow::Result<DemoReport> {
    let channel = Channel::from_shared(endpoint.to_string())?.connect().await.with_context(|| format!("connecting to {endpoint}"))?;
    let mut client = MediaServiceClient::new(channel);
    let call_id = format!("demo-{}", std::process::id());
    let alloc = client.allocate_port(AllocatePortRequest { call_id: call_id.clone() }).await?.into_inner();
    let node_ip: IpAddr = alloc.advertised_ip.parse().context("advertised_ip from AllocatePort")?;
    let node_rtp = SocketAddr::new(node_ip, alloc.rtp_port as u16);
    let bind_ip: IpAddr = if node_ip.is_loopback() { node_ip } else { "0.0.0.0".parse()? };
    let caller = RtpCaller::bind(SocketAddr::new(bind_ip, 0)).await?;
    let caller_addr =
        SocketAddr::new(if node_ip.is_loopback() { node_ip } else { local_ip_towards(node_rtp)? }, caller.local_addr().port());

    client
        .play_audio(PlayAudioRequest {
            audio_uri: "control://set_target".into(),
            server_rtp_port: alloc.rtp_port,
            rtp_target_addr: caller_addr.to_string(),
            barge_in_ms: None,
        })
        .await?;
    if opts.codec != AudioCodec::Pcmu {
        let offer = crate::ng::codec_sdp(caller_addr, 1, opts.codec);
        let r = client
            .negotiate_sdp(NegotiateSdpRequest { server_rtp_port: alloc.rtp_port, remote_sdp: offer, ..Default::default() })
            .await?
            .into_inner();
        let agreed = r.media.map(|m| m.codec).unwrap_or_default();
        if agreed != opts.codec.name() {
            bail!("the node agreed on {agreed:?}, not {}", opts.codec.name());
        }
    }

    // Record the call: file:// on the embedded node, the node's default elsewhere.
    client
        .start_recording(StartRecordingRequest {
            server_rtp_port: alloc.rtp_port,
            output_uri: if local_assets { "file://demo".into() } else { String::new() },
            call_id: call_id.clone(),
            ..Default::default()
        })
        .await?;

    // The agent's live listener.
    let mut listen =
        client.record_audio(RecordAudioRequest { server_rtp_port: alloc.rtp_port, target_sample_rate: Some(16000) }).await?.into_inner();
    let agent = tokio::spawn(async move {
        let mut pcm: Vec<i16> = Vec::new();
        while let Ok(Some(frame)) = listen.message().await {
            pcm.extend(frame.audio_data.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])));
        }
        pcm
    });

    let speech = synth_speech(8000, opts.speech_seconds, 7);
    let sender = {
        let socket_caller = &caller;
        let speech = speech.clone();
        let codec = opts.codec;
        async move { socket_caller.send_speech_as(node_rtp, &speech, codec, 0x5eed).await.map(|s| s.len()) }
    };
    let prompt_uri = if local_assets {
        "file://prompts/welcome.wav".to_string()
    } else {
        format!("data:audio/wav;base64,{}", base64::engine::general_purpose::STANDARD.encode(prompt_wav))
    };
    let mut play_client = client.clone();
    let port = alloc.rtp_port;
    let player = async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        play_client
            .play_audio(PlayAudioRequest {
                audio_uri: prompt_uri,
                server_rtp_port: port,
                rtp_target_addr: String::new(),
                barge_in_ms: None,
            })
            .await
    };
    let (sent, played) = tokio::join!(sender, player);
    let packets_sent = sent?;
    let played = played?.into_inner();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let recording = client.stop_recording(StopRecordingRequest { server_rtp_port: alloc.rtp_port }).await?.into_inner();
    client.release_port(ReleasePortRequest { rtp_port: alloc.rtp_port }).await?;
    let agent_pcm = agent.await?;
    let received = caller.take_received();
    if received.is_empty() {
        bail!("the caller received no RTP from the node at {node_rtp}");
    }
    let caller_heard = if opts.codec == AudioCodec::Pcmu {
        timeline(&received)
    } else {
        // Decoded in arrival order (loopback does not reorder), as the caller's phone would.
        let mut dec = Decoder::new(opts.codec);
        let mut pcm = Vec::new();
        for p in &received {
            dec.decode(&p.payload, &mut pcm);
        }
        pcm
    };

    let speech16 = resample::convert(&speech, 8000, 16000);
    let (agent_correlation, _) = best_correlation(&speech16, &agent_pcm, 16000);
    let prompt8 = wav_to_call_pcm(prompt_wav)?;
    let (caller_correlation, _) = best_correlation(&prompt8, &caller_heard, 800);

    let mut files =
        vec![opts.out_dir.join("agent-heard-16k.wav"), opts.out_dir.join("caller-heard-8k.wav"), opts.out_dir.join("caller-said-8k.wav")];
    write_wav(&files[0], &agent_pcm, 16000)?;
    write_wav(&files[1], &caller_heard, 8000)?;
    write_wav(&files[2], &speech, 8000)?;
    let recording_path = match recording.recording_uri.strip_prefix("file://") {
        Some(rel) if local_assets => opts.out_dir.join("recordings").join(rel),
        _ => PathBuf::from(&recording.recording_uri),
    };
    files.insert(0, recording_path);
    if rms(&agent_pcm) < 1.0 {
        bail!("the agent's stream carried only silence");
    }
    Ok(DemoReport {
        port: alloc.rtp_port,
        advertised_ip: alloc.advertised_ip,
        packets_sent,
        packets_received: received.len(),
        agent_correlation,
        caller_correlation,
        prompt_outcome: played.message,
        files,
    })
}

/// The local address the OS would use to reach `peer` (no packet is sent).
fn local_ip_towards(peer: SocketAddr) -> anyhow::Result<IpAddr> {
    let s = std::net::UdpSocket::bind(SocketAddr::new(if peer.is_ipv4() { "0.0.0.0".parse()? } else { "::".parse()? }, 0))?;
    s.connect(peer)?;
    Ok(s.local_addr()?.ip())
}
