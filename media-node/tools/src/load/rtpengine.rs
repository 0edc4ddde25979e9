//! rtpengine as the engine under load (Debian's `rtpengine-daemon`, userspace only),
//! driven over its ng protocol: offer/answer between the caller and an "agent" socket
//! that stands in for the listener, `play media` for the prompt, `start recording`,
//! `delete`. The same calls as the media node's, measured the same way.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use media_node::audio::decode::wav_bytes;

use super::never_silent;
use super::options::{Engine, LoadOptions, ENGINE_RTP_PORT_MIN, RTPENGINE_NG_PORT, RTPENGINE_RTP_PORT_MAX};
use super::procfs::{engine_command, EngineProcess};
use super::report::{loss, summarise, CallResult, EngineUsage, LoadReport};
use crate::analysis::{synth_prompt, synth_speech};
use crate::caller::RtpCaller;
use crate::ng::{codec_sdp, pcmu_sdp, sdp_audio_port, Bencode, NgClient};
use media_node::core::codec::AudioCodec;

fn start_rtpengine(work: &Path, cpus: Option<&str>) -> anyhow::Result<EngineProcess> {
    let rec = work.join("rtpengine-recordings");
    std::fs::create_dir_all(&rec)?;
    let log = std::fs::File::create(work.join("rtpengine.log"))?;
    // Userspace only (--table=-1: no kernel forwarding), on loopback, recording to pcap
    // files (the only recording method that needs neither the kernel module nor the
    // separate recording daemon).
    let child = engine_command(Path::new("rtpengine"), cpus)
        .args(["--foreground", "--log-stderr", "--log-level=4", "--table=-1", "--interface=127.0.0.1"])
        .arg(format!("--listen-ng=127.0.0.1:{RTPENGINE_NG_PORT}"))
        .arg(format!("--port-min={ENGINE_RTP_PORT_MIN}"))
        .arg(format!("--port-max={RTPENGINE_RTP_PORT_MAX}"))
        .args(["--delete-delay=0", "--recording-method=pcap"])
        .arg(format!("--recording-dir={}", rec.display()))
        .arg(format!("--pidfile={}", work.join("rtpengine.pid").display()))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting rtpengine (Debian package rtpengine-daemon)")?;
    Ok(EngineProcess(child))
}

async fn rtpengine_ready(ng: SocketAddr) -> anyhow::Result<()> {
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

pub(super) async fn run(opts: LoadOptions) -> anyhow::Result<LoadReport> {
    std::fs::create_dir_all(&opts.work_dir)?;
    let engine = start_rtpengine(&opts.work_dir, opts.engine_cpus.as_deref())?;
    let ng = SocketAddr::from(([127, 0, 0, 1], RTPENGINE_NG_PORT));
    rtpengine_ready(ng).await?;
    let prompt = opts.work_dir.join("prompt.wav");
    std::fs::write(&prompt, wav_bytes(&synth_prompt(8000, opts.seconds), 8000))?;
    let prompt = prompt.canonicalize()?.display().to_string();
    let usage_before = engine.usage();
    let wall = Instant::now();

    // Set up every call first (at the rate AllocatePort is paced at), then run the
    // media, so both engines carry all N calls at once.
    let speech = never_silent(super::in_turns(synth_speech(8000, opts.seconds, 3), 8000, opts.talk_share));
    let start = tokio::time::Instant::now();
    let interval = opts.setup_interval();
    let media_start = start + interval * opts.calls as u32 + Duration::from_millis(500);
    let mut tasks = Vec::new();
    for i in 0..opts.calls {
        let (speech, prompt) = (speech.clone(), prompt.clone());
        let codec = opts.codec;
        let srtp = opts.srtp;
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
            // Under --srtp the caller offers RTP/SAVP with its SDES key; rtpengine offers
            // plain RTP/AVP to the agent and answers the caller with a key of its own, so
            // it decrypts what the caller sends and encrypts what it plays, as the node does.
            let key = srtp
                .then(|| media_node::core::srtp::MasterKey::generate(media_node::core::srtp::Suite::AesCm128HmacSha1_80, &mut rand::rng()));
            let sdp = match &key {
                Some(k) => crate::ng::srtp_sdp(caller.local_addr(), i as u64, codec, k),
                None => codec_sdp(caller.local_addr(), i as u64, codec),
            };
            offer.push(("sdp", Bencode::str(&sdp)));
            if srtp {
                offer.push(("transport-protocol", Bencode::str("RTP/AVP")));
            }
            if codec != AudioCodec::Pcmu {
                // The agent side speaks PCMU: rtpengine transcodes between the two.
                offer.push(("codec", Bencode::dict([("transcode", Bencode::List(vec![Bencode::str("PCMU")]))])));
            }
            offer.push(("ICE", Bencode::str("remove")));
            offer.push(("record call", Bencode::str("yes")));
            ctl.command(Bencode::dict(offer)).await?;
            let mut answer = base("answer");
            answer.push(("to-tag", Bencode::str(&to)));
            answer.push(("sdp", Bencode::str(&pcmu_sdp(agent.local_addr(), i as u64))));
            let answered = ctl.command(Bencode::dict(answer)).await?;
            let sdp = answered.get("sdp").and_then(Bencode::as_str).unwrap_or_default();
            let port = sdp_audio_port(sdp).ok_or_else(|| anyhow::anyhow!("no audio port in rtpengine's answer"))?;
            if let Some(k) = key {
                let theirs =
                    crate::ng::sdp_crypto_key(sdp).ok_or_else(|| anyhow::anyhow!("no crypto line in rtpengine's answer: {sdp}"))?;
                caller.use_srtp(k, theirs);
            }
            let engine_rtp = SocketAddr::new("127.0.0.1".parse()?, port);
            tokio::time::sleep_until(media_start).await;
            // The prompt goes to the caller (the party of from-tag) while it talks.
            let mut play = base("play media");
            play.push(("file", Bencode::str(&prompt)));
            ctl.command(Bencode::dict(play)).await?;
            let sent_at = caller.send_speech_as(engine_rtp, &speech, codec, i as u32).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            ctl.command(Bencode::dict(base("delete"))).await?;
            let received = caller.take_received();
            let relayed = agent.take_received();
            let failed = caller.srtp_failures.load(std::sync::atomic::Ordering::Relaxed);
            anyhow::ensure!(failed == 0, "{failed} of rtpengine's SRTP packets did not authenticate at the caller");
            anyhow::ensure!(
                !srtp || received.len() * 2 >= speech.len() / 160,
                "rtpengine played {} SRTP packets to the caller",
                received.len()
            );
            if codec != AudioCodec::Pcmu && !relayed.is_empty() {
                // Under overload rtpengine may pass some packets through untranscoded:
                // the run says how many, and fails only when it mostly did not transcode.
                let pcmu = relayed.iter().filter(|p| p.payload_type == 0).count();
                let others: std::collections::BTreeSet<u8> = relayed.iter().map(|p| p.payload_type).filter(|&pt| pt != 0).collect();
                anyhow::ensure!(
                    pcmu * 10 >= relayed.len() * 9,
                    "rtpengine relayed {} to the agent as PCMU for {pcmu} of {} packets (others: payload types {others:?})",
                    codec.name(),
                    relayed.len()
                );
            }
            anyhow::Ok(CallResult {
                sent_at,
                expected_from_node: speech.len().div_ceil(160),
                received_arrivals: received.iter().map(|p| p.at).collect(),
                listener_arrivals: relayed.iter().map(|p| p.at).collect(),
                events: 0,
            })
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await??);
    }
    let usage = match (&usage_before, engine.usage()) {
        (Some(before), Some(after)) => Some(EngineUsage::between(before, &after)),
        _ => None,
    };
    let wall = wall.elapsed().as_secs_f64();
    let sent: usize = results.iter().map(|r| r.sent_at.len()).sum();
    let relayed: usize = results.iter().map(|r| r.listener_arrivals.len()).sum();
    Ok(summarise(Engine::Rtpengine, &opts, &results, Vec::new(), Some(loss(sent, relayed as f64)), usage, wall))
}
