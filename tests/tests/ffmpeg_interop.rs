//! Interop with a far end nobody here wrote: ffmpeg (Debian's package, installed by
//! the test script) sends PCMU RTP to the node and records what the node plays.
//! ffmpeg sends and receives on different ports, so the node runs with symmetric RTP
//! off, as it would for any asymmetric peer.

use std::process::{Command, Stdio};
use std::time::Duration;

use fleet_tests::*;
use media_proto::pb::*;

fn tone(freq: f64, rate: u32, n: usize) -> Vec<i16> {
    (0..n).map(|i| (10000.0 * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin()) as i16).collect()
}

#[tokio::test]
async fn ffmpeg_sends_pcmu_and_records_what_the_node_plays() {
    let ffmpeg = which_ffmpeg().expect("ffmpeg is installed by scripts/test (apt-get install ffmpeg)");
    let mut node = TestNode::start_with(22300, 10, |c| c.symmetric_rtp = false).await;
    let prompt = synth_prompt(8000, 3.0);
    node.write_prompt("prompt.wav", &prompt, 8000);
    let alloc = node.client.allocate_port(AllocatePortRequest { call_id: "ffmpeg-1".into() }).await.unwrap().into_inner();
    let port = alloc.rtp_port;
    let recv_port = 22340u16;
    node.client
        .play_audio(PlayAudioRequest {
            audio_uri: "control://set_target".into(),
            server_rtp_port: port,
            rtp_target_addr: format!("127.0.0.1:{recv_port}"),
            barge_in_ms: None,
        })
        .await
        .unwrap();

    // ffmpeg as the receiving far end, described by SDP as a SIP phone would.
    let dir = tempfile::tempdir().unwrap();
    let sdp = dir.path().join("call.sdp");
    std::fs::write(
        &sdp,
        format!("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=call\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {recv_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"),
    )
    .unwrap();
    let heard_wav = dir.path().join("heard.wav");
    let mut receiver = Command::new(&ffmpeg)
        .args(["-hide_banner", "-loglevel", "error", "-protocol_whitelist", "file,udp,rtp,srtp", "-i"])
        .arg(&sdp)
        .args(["-t", "2", "-ar", "8000", "-ac", "1", "-y"])
        .arg(&heard_wav)
        .stdin(Stdio::null())
        .spawn()
        .expect("ffmpeg receiver starts");
    // Ready once its RTP socket is bound: what the node plays before that would be lost,
    // and a busy machine can take a second or more to start ffmpeg.
    fleet_tests::envtest::eventually("ffmpeg's RTP socket is bound", 30, || async { udp_port_bound(recv_port).then_some(()) }).await;

    let listen = node.listen(port, 16000).await;
    // ffmpeg as the sending far end: a 440 Hz tone as PCMU RTP, paced in real time.
    let sender = Command::new(&ffmpeg)
        .args(["-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "sine=frequency=440:duration=2:sample_rate=8000"])
        .args(["-ac", "1", "-ar", "8000", "-acodec", "pcm_mulaw", "-f", "rtp"])
        .arg(format!("rtp://127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("ffmpeg sender starts");
    sleep_ms(500).await;
    let played = node
        .client
        .play_audio(PlayAudioRequest {
            audio_uri: "file://prompt.wav".into(),
            server_rtp_port: port,
            rtp_target_addr: String::new(),
            barge_in_ms: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(played.message, "finished");

    let sender_ok = tokio::task::spawn_blocking(move || wait_with_timeout(sender, Duration::from_secs(20))).await.unwrap();
    let receiver_ok = tokio::task::spawn_blocking(move || wait_with_timeout_ref(&mut receiver, Duration::from_secs(20))).await.unwrap();
    assert!(sender_ok, "ffmpeg sender exited cleanly");
    assert!(receiver_ok, "ffmpeg receiver exited cleanly");
    node.client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();

    // What the node heard from ffmpeg: the 440 Hz tone.
    let (frames, _) = listen.await.unwrap();
    let heard = pcm_of(&frames);
    let voiced: Vec<i16> = heard.iter().copied().skip_while(|&s| s.abs() < 500).take(16000).collect();
    assert!(voiced.len() >= 16000, "the node heard ffmpeg's tone for at least a second");
    let (c, _) = best_correlation(&tone(440.0, 16000, 8000), &voiced, 40);
    assert!(c > 0.95, "the node decoded ffmpeg's PCMU as a 440 Hz tone: {c}");

    // What ffmpeg heard from the node: the prompt.
    let bytes = std::fs::read(&heard_wav).expect("ffmpeg wrote what it heard");
    let mut reader = hound::WavReader::new(std::io::Cursor::new(bytes)).unwrap();
    assert_eq!(reader.spec().sample_rate, 8000);
    let got: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
    assert!(got.len() >= 8000, "ffmpeg recorded {} samples", got.len());
    let (c, _) = best_correlation(&got[..8000], &prompt, 16000);
    assert!(c > 0.9, "ffmpeg heard the prompt: {c}");
}

/// ffmpeg as the sending far end: `wav` as mono RTP in real time, encoded as `codec`
/// (ffmpeg's own arguments) to the node's `port`.
fn ffmpeg_rtp_sender(wav: &std::path::Path, codec: &[&str], port: u32) -> std::process::Child {
    let ffmpeg = which_ffmpeg().expect("ffmpeg is installed by scripts/test (apt-get install ffmpeg)");
    Command::new(&ffmpeg)
        .args(["-hide_banner", "-loglevel", "error", "-re", "-i"])
        .arg(wav)
        .args(["-ac", "1"])
        .args(codec)
        .args(["-f", "rtp"])
        .arg(format!("rtp://127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("ffmpeg sender starts")
}

/// The node plays `file://prompt.wav` to the end while ffmpeg sends, then both ffmpeg
/// ends must exit cleanly.
async fn play_while_ffmpeg_sends(node: &mut TestNode, port: u32, sender: std::process::Child, mut receiver: std::process::Child) {
    assert_eq!(node.play(port, "file://prompt.wav").await.unwrap().message, "finished");
    let sender_ok = tokio::task::spawn_blocking(move || wait_with_timeout(sender, Duration::from_secs(30))).await.unwrap();
    let receiver_ok = tokio::task::spawn_blocking(move || wait_with_timeout_ref(&mut receiver, Duration::from_secs(30))).await.unwrap();
    assert!(sender_ok && receiver_ok, "ffmpeg exited cleanly");
}

/// What each end heard of a call NegotiateSdp set up: ffmpeg sends `speech` (8 kHz,
/// written as a WAV at `wav_rate` and encoded by `sender_args`) to the node's `port`
/// while the node plays `prompt.wav` to ffmpeg's receiver (`receiver_sdp`, on
/// `recv_port`). Returns the 16 kHz listener's audio, ffmpeg's decoding of the node's
/// audio at 8 kHz, and the node's metrics at the end.
async fn exchange_with_ffmpeg(
    node: &mut TestNode,
    port: u32,
    (receiver_sdp, recv_port): (&str, u16),
    speech: &[i16],
    (wav_rate, sender_args): (u32, &[&str]),
) -> (Vec<i16>, Vec<i16>, String) {
    use media_node::core::resample::convert;
    let dir = tempfile::tempdir().unwrap();
    let (receiver, heard_wav) = ffmpeg_rtp_receiver(dir.path(), receiver_sdp, recv_port, 8000).await;
    let speech_wav = dir.path().join("speech.wav");
    std::fs::write(&speech_wav, media_node::audio::decode::wav_bytes(&convert(speech, 8000, wav_rate), wav_rate)).unwrap();
    let listen = node.listen(port, 16000).await;
    let sender = ffmpeg_rtp_sender(&speech_wav, sender_args, port);
    play_while_ffmpeg_sends(node, port, sender, receiver).await;
    let m = node.metrics().await;
    node.client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
    let heard = pcm_of(&listen.await.unwrap().0);
    let (got, rate) = fleet_tests::voice::read_wav(&heard_wav);
    assert_eq!(rate, 8000);
    (heard, got, m)
}

/// How well `heard` carries `reference`: both from where the sound first passes
/// |s| > 300, a `window` of the reference against up to 100 ms of lag either side.
fn onset_correlation(reference: &[i16], heard: &[i16], window: usize) -> (f64, usize) {
    let start = heard.iter().position(|s| s.abs() > 300).expect("sound was heard");
    let from = reference.iter().position(|s| s.abs() > 300).expect("the reference has sound");
    best_correlation(&reference[from..from + window], &heard[start.saturating_sub(400)..], 800)
}

/// ffmpeg as the receiving far end of a call, described by `sdp` (one codec per
/// m-line: ffmpeg takes one), recording 2.5 s at `rate` to the returned WAV; ready
/// once its RTP socket is bound.
async fn ffmpeg_rtp_receiver(dir: &std::path::Path, sdp: &str, port: u16, rate: u32) -> (std::process::Child, std::path::PathBuf) {
    ffmpeg_rtp_receiver_for(dir, sdp, port, rate, 2.5).await
}

/// As `ffmpeg_rtp_receiver`, recording `seconds`.
async fn ffmpeg_rtp_receiver_for(
    dir: &std::path::Path,
    sdp: &str,
    port: u16,
    rate: u32,
    seconds: f64,
) -> (std::process::Child, std::path::PathBuf) {
    let ffmpeg = which_ffmpeg().expect("ffmpeg is installed by scripts/test (apt-get install ffmpeg)");
    let sdp_path = dir.join("call.sdp");
    std::fs::write(&sdp_path, sdp).unwrap();
    let heard_wav = dir.join("heard.wav");
    let receiver = Command::new(&ffmpeg)
        .args(["-hide_banner", "-loglevel", "error", "-protocol_whitelist", "file,udp,rtp", "-i"])
        .arg(&sdp_path)
        .args(["-t", &seconds.to_string(), "-ar", &rate.to_string(), "-ac", "1", "-y"])
        .arg(&heard_wav)
        .stdin(Stdio::null())
        .spawn()
        .expect("ffmpeg receiver starts");
    fleet_tests::envtest::eventually("ffmpeg's RTP socket is bound", 30, || async { udp_port_bound(port).then_some(()) }).await;
    (receiver, heard_wav)
}

/// Whether some socket on this machine is bound to UDP `port` (from /proc/net/udp).
fn udp_port_bound(port: u16) -> bool {
    let want = format!(":{port:04X}");
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .any(|table| table.lines().skip(1).any(|l| l.split_whitespace().nth(1).is_some_and(|local| local.ends_with(&want))))
}

fn which_ffmpeg() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join("ffmpeg")).find(|p| p.is_file())
}

fn wait_with_timeout(mut child: std::process::Child, limit: Duration) -> bool {
    wait_with_timeout_ref(&mut child, limit)
}

fn wait_with_timeout_ref(child: &mut std::process::Child, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs ffmpeg over files (no pipes to deadlock on): `args` with `{in}` and `{out}`.
fn ffmpeg_convert(input: &[u8], args: &[&str]) -> Vec<u8> {
    let ffmpeg = which_ffmpeg().expect("ffmpeg is installed by scripts/test (apt-get install ffmpeg)");
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::write(&src, input).unwrap();
    let args: Vec<String> = args.iter().map(|a| a.replace("{in}", src.to_str().unwrap()).replace("{out}", dst.to_str().unwrap())).collect();
    let out = Command::new(ffmpeg).args(["-hide_banner", "-loglevel", "error", "-y"]).args(&args).output().unwrap();
    assert!(out.status.success(), "ffmpeg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(dst).unwrap()
}

/// Our G.722 (libg722 through ezk-g722) against a second implementation, ffmpeg's own
/// encoder and decoder: each decodes what the other encoded, speech correlates, and a
/// 6 kHz tone (gone on any 8 kHz path) survives both ways.
#[test]
fn g722_matches_ffmpegs_implementation_both_ways() {
    use media_node::core::g722::{G722Decoder, G722Encoder};
    use media_node::core::goertzel::power_at;
    let speech = synth_speech(16000, 2.0, 21);
    let high = tone(6000.0, 16000, 32000);
    let source: Vec<i16> = speech.iter().zip(&high).map(|(s, h)| (*s as i32 / 2 + *h as i32 / 4) as i16).collect();
    let raw: Vec<u8> = source.iter().flat_map(|s| s.to_le_bytes()).collect();

    // ffmpeg encodes, we decode (packet by packet, as RTP would bring it).
    let g722 = ffmpeg_convert(&raw, &["-f", "s16le", "-ar", "16000", "-ac", "1", "-i", "{in}", "-c:a", "g722", "-f", "g722", "{out}"]);
    assert_eq!(g722.len(), source.len() / 2, "64 kbit/s: a byte for two samples");
    let mut dec = G722Decoder::new();
    let (mut heard, mut out) = (Vec::new(), Vec::new());
    for packet in g722.chunks(160) {
        dec.decode_into(packet, &mut out);
        heard.extend_from_slice(&out);
    }
    let (c, lag) = best_correlation(&source[..16000], &heard, 200);
    assert!(c > 0.9, "we decode ffmpeg's G.722: correlation {c} at lag {lag}");
    let tone_only = &high[8000..24000];
    assert!(power_at(&heard[8000..24000], 16000, 6000.0) > 0.1 * power_at(tone_only, 16000, 6000.0) / 16.0, "6 kHz survives ffmpeg -> us");

    // We encode, ffmpeg decodes.
    let mut enc = G722Encoder::new();
    let (mut ours, mut bytes) = (Vec::new(), Vec::new());
    for frame in source.chunks(320) {
        enc.encode_into(frame, &mut bytes);
        ours.extend_from_slice(&bytes);
    }
    let pcm = ffmpeg_convert(&ours, &["-f", "g722", "-i", "{in}", "-f", "s16le", "-ar", "16000", "-ac", "1", "{out}"]);
    let theirs: Vec<i16> = pcm.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    let (c, lag) = best_correlation(&source[..16000], &theirs, 200);
    assert!(c > 0.9, "ffmpeg decodes our G.722: correlation {c} at lag {lag}");
    assert!(power_at(&theirs[8000..24000], 16000, 6000.0) > 0.1 * power_at(tone_only, 16000, 6000.0) / 16.0, "6 kHz survives us -> ffmpeg");
}

/// A G.722 call set up by SDP offer/answer, with ffmpeg as the far end both ways: its
/// offer is answered by NegotiateSdp, it sends G.722 speech (espeak-ng) that the
/// listener hears, and it decodes the prompt the node plays in G.722.
#[tokio::test]
async fn a_g722_call_negotiated_by_sdp_with_ffmpeg_as_the_far_end() {
    use media_node::core::resample::convert;
    // ffmpeg sends G.722 in bursts of three 20 ms packets every 60-70 ms: the default
    // playout hold (40 ms) takes them all (it used to lose half of them).
    let mut node = TestNode::start_with(30120, 10, |c| c.symmetric_rtp = false).await;
    let prompt = synth_speech(8000, 3.0, 5);
    node.write_prompt("prompt.wav", &prompt, 8000);
    let alloc = node.client.allocate_port(AllocatePortRequest { call_id: "ffmpeg-g722".into() }).await.unwrap().into_inner();
    let port = alloc.rtp_port;
    let recv_port = 30135u16;
    // The far end's offer, as a desk phone writes it: G.722 first, G.711, events.
    let offer = format!(
        "v=0\r\no=phone 77 1 IN IP4 127.0.0.1\r\ns=call\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {recv_port} RTP/AVP 9 0 8 101\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
    );
    let r = node
        .client
        .negotiate_sdp(NegotiateSdpRequest {
            server_rtp_port: port,
            remote_sdp: offer.clone(),
            remote_type: 0,
            preferred_codecs: vec!["G722".into(), "PCMU".into()],
            ..Default::default()
        })
        .await
        .expect("NegotiateSdp answers the offer")
        .into_inner();
    let media = r.media.expect("what was agreed");
    assert_eq!((media.codec.as_str(), media.payload_type, media.telephone_event_payload_type), ("G722", 9, 101));
    assert_eq!(media.remote_rtp_addr, format!("127.0.0.1:{recv_port}"));
    assert!(r.local_sdp.contains(&format!("m=audio {port} RTP/AVP 9 101\r\n")), "{}", r.local_sdp);
    assert!(r.local_sdp.contains("c=IN IP4 127.0.0.1\r\n") && r.local_sdp.contains("a=rtpmap:9 G722/8000\r\n"), "{}", r.local_sdp);

    // ffmpeg receives what the node sends, as the answer agreed it (ffmpeg takes one
    // codec per m-line, so its SDP names the agreed one, as a phone applies an answer),
    // and sends a spoken sentence (espeak-ng, at 16 kHz) as G.722 RTP in real time.
    let agreed = offer.replace("RTP/AVP 9 0 8 101", "RTP/AVP 9 101").replace("a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n", "");
    let speech = fleet_tests::voice::espeak_8k("The balance of your account is four hundred and twelve pounds.");
    let (heard, got, m) =
        exchange_with_ffmpeg(&mut node, port, (&agreed, recv_port), &speech, (16000, &["-ar", "16000", "-acodec", "g722"])).await;

    // The node decoded ffmpeg's G.722: the listener hears the sentence (espeak-ng's
    // is telephone-band; the wideband tests below carry what is above it).
    let (c, lag) = onset_correlation(&convert(&speech, 8000, 16000), &heard, 16000);
    assert!(c > 0.85, "the listener heard ffmpeg's G.722 speech: correlation {c:.3} at lag {lag}");
    assert_eq!(metric_value(&m, "media_rtp_unsupported_payload_total"), 0.0, "every G.722 packet was taken");
    let late = metric_value(&m, "media_rtp_late_packets_total");
    assert!(late <= 3.0, "{late} of ffmpeg's bursty packets came too late for the live stream");
    assert_eq!(metric_value(&m, "media_sdp_negotiations_total{codec=\"G722\"}"), 1.0);

    // ffmpeg decoded the node's G.722: it heard the prompt.
    let begin = got.iter().position(|s| s.abs() > 300).expect("ffmpeg heard audio");
    let (c, lag) = best_correlation(&got[begin..begin + 8000], &prompt, 16000);
    assert!(c > 0.85, "ffmpeg heard the prompt through G.722: correlation {c:.3} at lag {lag}");
}

/// A G.711 call set up by SDP, PCMA chosen from a trunk's offer, with ffmpeg as the far
/// end both ways: it sends a spoken sentence that the 16 kHz listener hears, and decodes
/// the prompt the node plays in PCMA.
#[tokio::test]
async fn a_pcma_call_negotiated_by_sdp_with_ffmpeg_as_the_far_end() {
    use media_node::core::resample::convert;
    let mut node = TestNode::start_with(30280, 10, |c| c.symmetric_rtp = false).await;
    let prompt = synth_speech(8000, 3.0, 7);
    node.write_prompt("prompt.wav", &prompt, 8000);
    let alloc = node.client.allocate_port(AllocatePortRequest { call_id: "ffmpeg-pcma".into() }).await.unwrap().into_inner();
    let port = alloc.rtp_port;
    let recv_port = 30295u16;
    // A European trunk's offer: A-law first, no rtpmap for the static types.
    let offer = format!(
        "v=0\r\no=trunk 4 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {recv_port} RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\na=sendrecv\r\n"
    );
    let r = node.client.negotiate_sdp(NegotiateSdpRequest {
        server_rtp_port: port,
        remote_sdp: offer.clone(),
        preferred_codecs: vec!["PCMA".into()],
        ..Default::default()
    });
    let media = r.await.expect("NegotiateSdp answers the offer").into_inner().media.expect("what was agreed");
    assert_eq!((media.codec.as_str(), media.payload_type), ("PCMA", 8));
    let speech = fleet_tests::voice::espeak_8k("Press one to speak to an agent, or stay on the line.");
    let receiver = offer.replace("RTP/AVP 8 0 101", "RTP/AVP 8");
    let (heard, got, m) =
        exchange_with_ffmpeg(&mut node, port, (&receiver, recv_port), &speech, (8000, &["-ar", "8000", "-acodec", "pcm_alaw"])).await;
    let (c, lag) = onset_correlation(&convert(&speech, 8000, 16000), &heard, 16000);
    println!("PCMA: the listener's speech correlates {c:.3} (lag {lag})");
    assert!(c > 0.9, "the 16 kHz listener heard ffmpeg's PCMA speech: correlation {c:.3} at lag {lag}");
    assert_eq!(metric_value(&m, "media_rtp_unsupported_payload_total") + metric_value(&m, "media_rtp_decode_errors_total"), 0.0);
    let begin = got.iter().position(|s| s.abs() > 300).expect("ffmpeg heard audio");
    let (c, lag) = best_correlation(&got[begin..begin + 8000], &prompt, 16000);
    println!("PCMA: ffmpeg's decoding of the prompt correlates {c:.3} (lag {lag})");
    assert!(c > 0.9, "ffmpeg heard the prompt through PCMA: correlation {c:.3} at lag {lag}");
}

#[cfg(feature = "opus")]
/// An Opus call (RFC 7587) set up by SDP with ffmpeg (libopus) as the far end: its
/// offer is answered, it sends Opus speech the listener hears, and it decodes the
/// prompt the node sends as Opus on the 48 kHz RTP clock.
#[tokio::test]
async fn an_opus_call_negotiated_by_sdp_with_ffmpeg_libopus_as_the_far_end() {
    use media_node::core::resample::convert;
    let mut node = TestNode::start_with(30170, 10, |c| c.symmetric_rtp = false).await;
    let prompt = synth_speech(8000, 3.0, 6);
    node.write_prompt("prompt.wav", &prompt, 8000);
    let alloc = node.client.allocate_port(AllocatePortRequest { call_id: "ffmpeg-opus".into() }).await.unwrap().into_inner();
    let port = alloc.rtp_port;
    let recv_port = 30185u16;
    // A WebRTC gateway's offer on plain RTP: Opus only, events at 48 kHz.
    let offer = format!(
        "v=0\r\no=gw 5 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {recv_port} RTP/AVP 111 126\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:126 telephone-event/48000\r\na=sendrecv\r\n"
    );
    let r = node
        .client
        .negotiate_sdp(NegotiateSdpRequest { server_rtp_port: port, remote_sdp: offer.clone(), ..Default::default() })
        .await
        .expect("NegotiateSdp answers the offer")
        .into_inner();
    let media = r.media.expect("what was agreed");
    assert_eq!((media.codec.as_str(), media.payload_type, media.clock_rate, media.telephone_event_payload_type), ("opus", 111, 48000, 126));
    assert!(r.local_sdp.contains("a=rtpmap:111 opus/48000/2\r\n"), "{}", r.local_sdp);

    let dir = tempfile::tempdir().unwrap();
    let (receiver, heard_wav) = ffmpeg_rtp_receiver(dir.path(), &offer.replace(" 111 126\r\n", " 111\r\n"), recv_port, 48000).await;

    let speech = fleet_tests::voice::espeak_8k("Please hold while I check the status of your order.");
    let speech_wav = dir.path().join("speech.wav");
    std::fs::write(&speech_wav, media_node::audio::decode::wav_bytes(&convert(&speech, 8000, 48000), 48000)).unwrap();
    let listen = node.listen(port, 8000).await;
    let sender = ffmpeg_rtp_sender(
        &speech_wav,
        &["-ar", "48000", "-acodec", "libopus", "-b:a", "32k", "-application", "voip", "-payload_type", "111"],
        port,
    );
    play_while_ffmpeg_sends(&mut node, port, sender, receiver).await;
    let m = node.metrics().await;
    node.client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();

    let (frames, _) = listen.await.unwrap();
    let heard = pcm_of(&frames);
    let (c, lag) = onset_correlation(&speech, &heard, 8000);
    println!("Opus: the listener's speech correlates {c:.3} (lag {lag})");
    assert!(c > 0.85, "the listener heard ffmpeg's Opus speech: correlation {c:.3} at lag {lag}");
    assert_eq!(metric_value(&m, "media_rtp_unsupported_payload_total") + metric_value(&m, "media_rtp_decode_errors_total"), 0.0);

    let bytes = std::fs::read(&heard_wav).expect("ffmpeg wrote what it heard");
    let mut reader = hound::WavReader::new(std::io::Cursor::new(bytes)).unwrap();
    let got: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
    let got8 = convert(&got, 48000, 8000);
    let begin = got8.iter().position(|s| s.abs() > 300).expect("ffmpeg heard audio");
    let (c, lag) = best_correlation(&got8[begin..begin + 8000], &prompt, 16000);
    println!("Opus: ffmpeg's decoding of the prompt correlates {c:.3} (lag {lag})");
    assert!(c > 0.85, "ffmpeg heard the prompt through Opus: correlation {c:.3} at lag {lag}");
}

/// Prompts in FLAC, MP3, Ogg Vorbis and Ogg Opus (made by ffmpeg from one 16 kHz WAV) play as
/// the WAV does: the caller hears each, and a file that only claims to be one is
/// INVALID_ARGUMENT saying so.
#[tokio::test]
async fn flac_mp3_ogg_vorbis_and_ogg_opus_prompts_play_like_the_wav() {
    use media_node::core::resample::convert;
    let mut node = TestNode::start(30190, 10).await;
    let source = synth_speech(16000, 1.5, 8);
    let wav = media_node::audio::decode::wav_bytes(&source, 16000);
    let formats: [(&str, &[&str], f64); 5] = [
        ("prompt.flac", &["-i", "{in}", "-c:a", "flac", "-f", "flac", "{out}"], 0.98),
        // MP3 is lossy, and its encoder delay (about 70 ms here) is played, not trimmed.
        ("prompt.mp3", &["-i", "{in}", "-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3", "{out}"], 0.85),
        ("prompt.ogg", &["-i", "{in}", "-c:a", "libvorbis", "-q:a", "5", "-f", "ogg", "{out}"], 0.9),
        // Ogg Opus through libopus, mono and stereo (downmixed by the decoder); its
        // pre-skip is trimmed, as players do.
        ("prompt.opus", &["-i", "{in}", "-c:a", "libopus", "-b:a", "32k", "-f", "ogg", "{out}"], 0.85),
        ("prompt-stereo.opus", &["-i", "{in}", "-ac", "2", "-c:a", "libopus", "-b:a", "48k", "-f", "ogg", "{out}"], 0.85),
    ];
    let (port, _, caller) = node.call("prompt-formats").await;
    let want = convert(&source, 16000, 8000);
    for (name, args, min) in formats {
        std::fs::write(node.assets_path().join(name), ffmpeg_convert(&wav, args)).unwrap();
        caller.take_received();
        let r = node.play(port, &format!("file://{name}")).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.message, "finished", "{name}");
        let heard: Vec<i16> = caller.take_received().iter().flat_map(|p| p.pcm.iter().copied()).collect();
        let (c, lag) = best_correlation(&want[..6000], &heard, 4000);
        println!("{name}: the caller's audio correlates {c:.3} with the source (lag {lag})");
        assert!(c > min, "{name}: correlation {c:.3} at lag {lag}");
        if name.ends_with(".opus") {
            assert!(lag <= 2, "{name}: the encoder's pre-skip is trimmed (lag {lag})");
        }
    }
    std::fs::write(node.assets_path().join("fake.mp3"), b"ID3 this is no mp3 at all").unwrap();
    let e = node.play(port, "file://fake.mp3").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("not a WAV, FLAC, MP3, Ogg Vorbis or Ogg Opus prompt"), "{}", e.message());
}

/// A G.729 call set up by SDP. ffmpeg has a G.729 decoder but no G.729 RTP
/// depacketizer (nor an encoder), so the far end is the test's own socket: what the
/// node sent it is fed to ffmpeg's decoder as a G.729 bitstream and compared with the
/// prompt, and the caller's G.729 (g729-sys's encoder) reaches the listener.
#[tokio::test]
async fn a_g729_call_negotiated_by_sdp_decoded_by_ffmpeg() {
    use media_node::core::codec::AudioCodec;
    let mut node = TestNode::start(30200, 10).await;
    let prompt = fleet_tests::voice::espeak_8k("Your call is important to us. Please stay on the line.");
    node.write_prompt("prompt.wav", &prompt, 8000);
    let (port, node_rtp, caller) = node.call("g729").await;
    // A low-bandwidth trunk's offer: G.729 with Annex B, then G.711.
    let far = caller.local_addr();
    let offer = format!(
        "v=0\r\no=trunk 9 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {p} RTP/AVP 18 0 101\r\na=rtpmap:18 G729/8000\r\na=fmtp:18 annexb=yes\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\n",
        ip = far.ip(),
        p = far.port()
    );
    let r = node
        .client
        .negotiate_sdp(NegotiateSdpRequest {
            server_rtp_port: port,
            remote_sdp: offer,
            preferred_codecs: vec!["G729".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.media.unwrap().codec, "G729");
    assert!(r.local_sdp.contains("a=fmtp:18 annexb=no\r\n"), "{}", r.local_sdp);
    let listen = node.listen(port, 8000).await;
    let speech = fleet_tests::voice::espeak_8k("I would like to speak to an agent about my invoice.");
    let (sent, played) = tokio::join!(caller.send_speech_as(node_rtp, &speech, AudioCodec::G729, 7), node.play(port, "file://prompt.wav"));
    sent.unwrap();
    assert_eq!(played.unwrap().message, "finished");
    let got = caller.take_received();
    node.client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();

    // The listener heard the caller's G.729 speech.
    let (frames, _) = listen.await.unwrap();
    let heard = pcm_of(&frames);
    let (c, lag) = onset_correlation(&speech, &heard, 8000);
    println!("G.729: the listener's speech correlates {c:.3} (lag {lag})");
    assert!(c > 0.7, "the listener heard the caller's G.729: correlation {c:.3} at lag {lag}");
    // What the node sent is G.729 that ffmpeg's decoder turns into the prompt.
    assert!(got.len() >= 100 && got.iter().all(|p| p.payload_type == 18 && p.payload.len() == 20), "{} packets", got.len());
    let bitstream: Vec<u8> = got.iter().flat_map(|p| p.payload.iter().copied()).collect();
    let pcm = ffmpeg_convert(&bitstream, &["-f", "g729", "-i", "{in}", "-f", "s16le", "-ar", "8000", "-ac", "1", "{out}"]);
    let theirs: Vec<i16> = pcm.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    let begin = theirs.iter().position(|s| s.abs() > 300).expect("ffmpeg decoded audio");
    let (c, lag) = best_correlation(&theirs[begin..begin + 8000], &prompt, 16000);
    println!("G.729: ffmpeg's decoding of the node's G.729 correlates {c:.3} with the prompt (lag {lag})");
    assert!(c > 0.7, "ffmpeg decoded the node's G.729 as the prompt: correlation {c:.3} at lag {lag}");
}

/// An SRTP call (RFC 3711, keys by SDES, RFC 4568) with ffmpeg as the far end both
/// ways through its `srtp://` protocol, AES_CM_128_HMAC_SHA1_80: its RTP/SAVP offer
/// carries its key, the node answers with a fresh key of its own; ffmpeg sends SRTP
/// speech that the listener hears, and decrypts and decodes the prompt the node plays.
#[tokio::test]
async fn an_srtp_call_keyed_by_sdes_with_ffmpeg_as_the_far_end_both_ways() {
    use media_node::core::resample::convert;
    use media_node::core::srtp::{MasterKey, Suite};
    let mut node = TestNode::start_with(30220, 10, |c| c.symmetric_rtp = false).await;
    let prompt = synth_speech(8000, 3.0, 5);
    node.write_prompt("prompt.wav", &prompt, 8000);
    let alloc = node.client.allocate_port(AllocatePortRequest { call_id: "ffmpeg-srtp".into() }).await.unwrap().into_inner();
    let port = alloc.rtp_port;
    let recv_port = 30235u16;
    let suite = "AES_CM_128_HMAC_SHA1_80";
    let ffmpeg_key = MasterKey::generate(Suite::AesCm128HmacSha1_80, &mut rand::rng()).inline().to_string();
    let offer = format!(
        "v=0\r\no=trunk 5 1 IN IP4 127.0.0.1\r\ns=call\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {recv_port} RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=crypto:1 {suite} inline:{ffmpeg_key}\r\na=ptime:20\r\na=sendrecv\r\n"
    );
    let r = node
        .client
        .negotiate_sdp(NegotiateSdpRequest { server_rtp_port: port, remote_sdp: offer, ..Default::default() })
        .await
        .expect("NegotiateSdp answers the SRTP offer")
        .into_inner();
    let media = r.media.expect("what was agreed");
    assert_eq!((media.codec.as_str(), media.srtp_suite.as_str()), ("PCMU", suite));
    assert!(r.local_sdp.contains(&format!("m=audio {port} RTP/SAVP 0 101\r\n")), "{}", r.local_sdp);
    let prefix = format!("a=crypto:1 {suite} inline:");
    let node_key = r.local_sdp.lines().find_map(|l| l.strip_prefix(&prefix)).expect("the answer's crypto line").to_string();
    assert_ne!(node_key, ffmpeg_key, "the node sends under a key of its own");

    // ffmpeg receives the node's SRTP, keyed by the answer's crypto line.
    let dir = tempfile::tempdir().unwrap();
    let theirs = format!(
        "v=0\r\no=trunk 5 1 IN IP4 127.0.0.1\r\ns=call\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {recv_port} RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\na=crypto:1 {suite} inline:{node_key}\r\n"
    );
    let (receiver, heard_wav) = ffmpeg_rtp_receiver(dir.path(), &theirs, recv_port, 8000).await;

    // ffmpeg sends a spoken sentence as SRTP under its own key, in real time.
    let speech = fleet_tests::voice::espeak_8k("Please hold while I look up your booking reference.");
    let speech_wav = dir.path().join("speech.wav");
    std::fs::write(&speech_wav, media_node::audio::decode::wav_bytes(&speech, 8000)).unwrap();
    let listen = node.listen(port, 16000).await;
    let ffmpeg = which_ffmpeg().expect("ffmpeg is installed by scripts/test (apt-get install ffmpeg)");
    let sender = Command::new(&ffmpeg)
        .args(["-hide_banner", "-loglevel", "error", "-re", "-i"])
        .arg(&speech_wav)
        .args(["-ac", "1", "-ar", "8000", "-acodec", "pcm_mulaw", "-f", "rtp", "-srtp_out_suite", suite, "-srtp_out_params", &ffmpeg_key])
        .arg(format!("srtp://127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("ffmpeg sender starts");
    play_while_ffmpeg_sends(&mut node, port, sender, receiver).await;
    let m = node.metrics().await;
    node.client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();

    // ffmpeg packs 1024 samples of PCMU per packet: about 24 for the sentence.
    let authenticated = metric_value(&m, "media_srtp_authenticated_total");
    assert!(authenticated >= 20.0, "ffmpeg's SRTP authenticated: {authenticated} packets");
    // ffmpeg also sends an SRTCP sender report to the RTCP port: it authenticated too.
    let rtcp = metric_value(&m, "media_rtcp_packets_total");
    assert!(rtcp >= 1.0, "ffmpeg's SRTCP report was taken");
    assert_eq!(metric_value(&m, "media_rtp_packets_total{direction=\"in\"}") + rtcp, authenticated, "every packet taken was SRTP or SRTCP");
    for reason in ["auth", "replay", "malformed"] {
        assert_eq!(metric_value(&m, &format!("media_srtp_dropped_total{{reason=\"{reason}\"}}")), 0.0, "{reason}");
    }
    assert_eq!(metric_value(&m, "media_calls_by_transport{transport=\"srtp\"}"), 1.0);
    assert_eq!(metric_value(&m, "media_sdp_negotiations_by_transport_total{policy=\"optional\",transport=\"srtp\"}"), 1.0);

    // The node decrypted ffmpeg's SRTP: the listener hears the sentence.
    let (frames, _) = listen.await.unwrap();
    let heard = pcm_of(&frames);
    let (c, lag) = onset_correlation(&convert(&speech, 8000, 16000), &heard, 16000);
    assert!(c > 0.85, "the listener heard ffmpeg's SRTP speech: correlation {c:.3} at lag {lag}");

    // ffmpeg decrypted and decoded the node's SRTP: it heard the prompt.
    let bytes = std::fs::read(&heard_wav).expect("ffmpeg wrote what it heard");
    let mut reader = hound::WavReader::new(std::io::Cursor::new(bytes)).unwrap();
    let got: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
    let begin = got.iter().position(|s| s.abs() > 300).expect("ffmpeg heard audio");
    let (c, lag) = best_correlation(&got[begin..begin + 8000], &prompt, 16000);
    assert!(c > 0.9, "ffmpeg heard the prompt through SRTP: correlation {c:.3} at lag {lag}");
}

/// StreamAudioToCall in Ogg Opus (as ffmpeg's libopus writes a TTS engine's .opus, cut
/// into 700-byte chunks across pages) and in raw Opus packets: the caller hears the
/// speech as it does from 16 kHz PCM; a packet libopus refuses ends the stream saying
/// so, after what came before it played; an unknown format is INVALID_ARGUMENT.
#[tokio::test]
async fn tts_streams_in_ogg_opus_and_raw_opus_packets_reach_the_caller() {
    use media_node::core::resample::convert;
    use media_proto::pb::stream_audio_to_call_request::AudioFormat;
    let mut node = TestNode::start(30470, 10).await;
    let (_, _, caller) = node.call("tts-opus").await;
    let speech = synth_speech(16000, 2.0, 11);
    let want = convert(&speech, 16000, 8000);
    let msg = |chunk: &[u8], format: AudioFormat| StreamAudioToCallRequest {
        call_id: "tts-opus".into(),
        audio_chunk: chunk.to_vec(),
        audio_format: format as i32,
        ..Default::default()
    };
    let ogg = ffmpeg_convert(
        &media_node::audio::decode::wav_bytes(&speech, 16000),
        &["-i", "{in}", "-c:a", "libopus", "-b:a", "32k", "-f", "ogg", "{out}"],
    );
    assert!(ogg.starts_with(b"OggS"));
    let msgs: Vec<_> = ogg.chunks(700).map(|c| msg(c, AudioFormat::OggOpus)).collect();
    let mut r = node.client.stream_audio_to_call(tokio_stream::iter(msgs)).await.unwrap().into_inner();
    let end = r.message().await.unwrap().expect("a final response");
    assert!(end.success, "{}", end.error_message);
    assert!((1900..2100).contains(&end.played_ms), "{} ms played", end.played_ms);
    sleep_ms(100).await;
    let heard: Vec<i16> = caller.take_received().iter().flat_map(|p| p.pcm.iter().copied()).collect();
    let (c, lag) = best_correlation(&want[..12000], &heard, 800);
    println!("Ogg Opus TTS: the caller's audio correlates {c:.3} with the speech (lag {lag})");
    assert!(c > 0.85, "Ogg Opus TTS reached the caller: {c:.3} at lag {lag}");

    // Raw packets, 20 ms each, encoded at 16 kHz; then one libopus refuses.
    let mut enc = media_node::core::opus::OpusEncoder::new(16000, 32000, 0).unwrap();
    let mut msgs: Vec<_> = speech
        .chunks_exact(320)
        .map(|f| {
            let mut p = Vec::new();
            enc.encode(f, &mut p);
            msg(&p, AudioFormat::OpusPackets)
        })
        .collect();
    let good = msgs.len();
    msgs.push(msg(&[0x03, 0x00], AudioFormat::OpusPackets));
    msgs.push(msg(&[0xfc; 40], AudioFormat::OpusPackets));
    let mut r = node.client.stream_audio_to_call(tokio_stream::iter(msgs)).await.unwrap().into_inner();
    let end = r.message().await.unwrap().expect("a final response");
    assert!(!end.success);
    assert_eq!(end.error_message, format!("bad audio: audio_chunk {}: libopus refused an Opus packet (2 bytes)", good + 1));
    sleep_ms(100).await;
    let heard: Vec<i16> = caller.take_received().iter().flat_map(|p| p.pcm.iter().copied()).collect();
    assert!(heard.len() >= 15_500, "the packets before the bad one played: {} samples", heard.len());
    let (c, lag) = best_correlation(&want[..12000], &heard, 800);
    println!("raw Opus TTS: {c:.3} (lag {lag})");
    assert!(c > 0.85, "raw Opus TTS reached the caller: {c:.3}");

    let mut odd = msg(b"", AudioFormat::Unspecified);
    odd.audio_format = 9;
    let e = node.client.stream_audio_to_call(tokio_stream::iter(vec![odd])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(e.message(), "audio_format 9 is not one the node knows");
}

/// The strongest `freq` in any 100 ms of `x` (at `rate`), windows 50 ms apart.
fn peak_at(x: &[i16], rate: u32, freq: f64) -> f64 {
    let w = rate as usize / 10;
    (0..x.len().saturating_sub(w))
        .step_by(w / 2)
        .map(|i| media_node::core::goertzel::power_at(&x[i..i + w], rate, freq))
        .fold(0.0, f64::max)
}

/// Wideband both ways, end to end over real UDP, with ffmpeg as the far end of a call
/// set up by SDP (`offer_media`: its m= section; `receiver_media`: the agreed codec
/// alone, as ffmpeg takes one).
/// - In: ffmpeg sends a sentence and then a 6 kHz tone (its own encoder's arguments in
///   `ffmpeg_codec`, from a WAV at `wav_rate`). The agent's 16 kHz listener and a 16 kHz
///   recording carry the sentence and the tone at close to its level; an 8 kHz listener
///   of the same call, the telephone-band path every call had before, carries none of it.
/// - Out: the node plays a 16 kHz prompt with a 6 kHz tone, then a 16 kHz TTS stream
///   with a 5 kHz one; ffmpeg decodes both tones, and the recording's bot channel has them.
async fn a_wideband_call_carries_16k_both_ways(
    port_min: u16,
    offer_media: &str,
    receiver_media: &str,
    wav_rate: u32,
    ffmpeg_codec: &[&str],
) {
    use media_node::core::resample::convert;
    use media_proto::pb::stream_audio_to_call_request::AudioFormat;
    let mut node = TestNode::start_with(port_min, 10, |c| c.symmetric_rtp = false).await;
    let alloc = node.client.allocate_port(AllocatePortRequest { call_id: "wideband".into() }).await.unwrap().into_inner();
    let port = alloc.rtp_port;
    let head = "v=0\r\no=far 9 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n";
    let offer = format!("{head}{offer_media}a=sendrecv\r\n");
    let r = node.client.negotiate_sdp(NegotiateSdpRequest { server_rtp_port: port, remote_sdp: offer, ..Default::default() }).await;
    let media = r.expect("NegotiateSdp answers the offer").into_inner().media.expect("what was agreed");
    println!("wideband: agreed {} at {}", media.codec, media.clock_rate);
    let recv_port: u16 = media.remote_rtp_addr.rsplit(':').next().unwrap().parse().unwrap();
    let wide16 = node.listen(port, 16000).await;
    let narrow8 = node.listen(port, 8000).await;
    let rec = StartRecordingRequest {
        server_rtp_port: port,
        output_uri: "file://calls".into(),
        sample_rate: Some(16000),
        format: Some("stereo".into()),
        call_id: "wideband".into(),
        ..Default::default()
    };
    node.client.start_recording(rec).await.unwrap();

    // The caller: a sentence (espeak-ng), a breath, then 1.5 s of a 6 kHz tone: speech
    // tells where the audio is, the tone is what only a wideband path can carry.
    let speech = convert(&fleet_tests::voice::espeak_8k("Your parcel will arrive on Thursday."), 8000, 16000);
    let high = tone(6000.0, 16000, 24000);
    let source: Vec<i16> = [vec![0; 4000], speech.clone(), vec![0; 4000], high.iter().map(|s| s / 2).collect(), vec![0; 8000]].concat();
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("caller.wav");
    std::fs::write(&wav, media_node::audio::decode::wav_bytes(&convert(&source, 16000, wav_rate), wav_rate)).unwrap();
    // The node: a 16 kHz prompt (a 6 kHz tone), then 16 kHz TTS (a 5 kHz tone); ffmpeg
    // records less than the 3.4 s they last (it waits for packets until it has it all).
    let prompt: Vec<i16> = [vec![0; 3200], tone(6000.0, 16000, 19200).iter().map(|s| s / 2).collect()].concat();
    node.write_prompt("prompt.wav", &prompt, 16000);
    let tts: Vec<i16> = tone(5000.0, 16000, 32000).iter().map(|s| s / 2).collect();
    let (receiver, heard_wav) = ffmpeg_rtp_receiver_for(dir.path(), &format!("{head}{receiver_media}"), recv_port, 16000, 2.6).await;
    let sender = ffmpeg_rtp_sender(&wav, ffmpeg_codec, port);
    assert_eq!(node.play(port, "file://prompt.wav").await.unwrap().message, "finished");
    let chunks: Vec<StreamAudioToCallRequest> = tts
        .chunks(3200)
        .map(|c| StreamAudioToCallRequest {
            call_id: "wideband".into(),
            audio_chunk: c.iter().flat_map(|s| s.to_le_bytes()).collect(),
            audio_format: AudioFormat::PcmS16le16k as i32,
            ..Default::default()
        })
        .collect();
    let mut responses = node.client.stream_audio_to_call(tokio_stream::iter(chunks)).await.unwrap().into_inner();
    let mut last = None;
    while let Some(r) = responses.message().await.unwrap() {
        last = Some(r);
    }
    assert!(last.expect("a final response").success, "the TTS played");
    let sender_ok = tokio::task::spawn_blocking(move || wait_with_timeout(sender, Duration::from_secs(30))).await.unwrap();
    let mut receiver = receiver;
    let receiver_ok = tokio::task::spawn_blocking(move || wait_with_timeout_ref(&mut receiver, Duration::from_secs(30))).await.unwrap();
    assert!(sender_ok && receiver_ok, "ffmpeg exited cleanly");
    sleep_ms(300).await;
    let stop = node.client.stop_recording(StopRecordingRequest { server_rtp_port: port }).await.unwrap().into_inner();
    let m = node.metrics().await;
    node.client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
    assert_eq!(metric_value(&m, "media_rtp_unsupported_payload_total") + metric_value(&m, "media_rtp_decode_errors_total"), 0.0);

    // In: the caller's audio at the agent and in the recording's caller channel.
    let heard16 = pcm_of(&wide16.await.unwrap().0);
    let heard8 = pcm_of(&narrow8.await.unwrap().0);
    let path = node.assets_path().join("recordings").join(stop.recording_uri.trim_start_matches("file://"));
    let mut wav = hound::WavReader::open(&path).unwrap();
    assert_eq!((wav.spec().sample_rate, wav.spec().channels), (16000, 2));
    let both: Vec<i16> = wav.samples::<i16>().map(Result::unwrap).collect();
    let (rec_caller, rec_bot): (Vec<i16>, Vec<i16>) = both.chunks_exact(2).map(|f| (f[0], f[1])).unzip();
    let sent = peak_at(&source, 16000, 6000.0);
    let (c, lag) = onset_correlation(&speech, &heard16, 16000);
    println!("wideband: the 16 kHz listener's speech correlates {c:.3} (lag {lag})");
    assert!(c > 0.85, "the 16 kHz listener heard the sentence: {c:.3} at lag {lag}");
    let (c, lag) = onset_correlation(&speech, &rec_caller, 16000);
    println!("wideband: the 16 kHz recording's speech correlates {c:.3} (lag {lag})");
    assert!(c > 0.85, "the 16 kHz recording has the sentence: {c:.3} at lag {lag}");
    let at6 = |x: &[i16]| peak_at(x, 16000, 6000.0);
    let (l16, r16, l8) = (at6(&heard16) / sent, at6(&rec_caller) / sent, at6(&convert(&heard8, 8000, 16000)) / sent);
    println!(
        "wideband in: 6 kHz power kept, of what was sent: listener 16 kHz {l16:.3}, recording 16 kHz {r16:.3}, listener 8 kHz {l8:.6}"
    );
    assert!(l16 > 0.3, "the 6 kHz tone reached the agent's 16 kHz stream: {l16:.3} of its power");
    assert!(r16 > 0.3, "the 6 kHz tone is in the 16 kHz recording: {r16:.3} of its power");
    assert!(l8 < 0.01, "an 8 kHz path cannot carry it: {l8:.6}");

    // Out: what ffmpeg decoded of the node's prompt and TTS, and the bot channel.
    let (theirs, rate) = fleet_tests::voice::read_wav(&heard_wav);
    assert_eq!(rate, 16000);
    let (p6, t5) = (peak_at(&prompt, 16000, 6000.0), peak_at(&tts, 16000, 5000.0));
    let (f6, f5) = (peak_at(&theirs, 16000, 6000.0) / p6, peak_at(&theirs, 16000, 5000.0) / t5);
    let (b6, b5) = (peak_at(&rec_bot, 16000, 6000.0) / p6, peak_at(&rec_bot, 16000, 5000.0) / t5);
    println!(
        "wideband out: power kept at ffmpeg: prompt's 6 kHz {f6:.3}, TTS's 5 kHz {f5:.3}; in the recording's bot channel {b6:.3}, {b5:.3}"
    );
    assert!(f6 > 0.3 && f5 > 0.3, "the caller heard the prompt's and the TTS's 16 kHz audio: {f6:.3}, {f5:.3}");
    assert!(b6 > 0.3 && b5 > 0.3, "the recording has what the caller heard: {b6:.3}, {b5:.3}");
}

/// G.722 from ffmpeg's own encoder, offered as a desk phone does (static type 9).
#[tokio::test]
async fn a_g722_call_carries_16k_audio_both_ways() {
    let offer = "m=audio 30255 RTP/AVP 9 0 101\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n";
    let receiver = "m=audio 30255 RTP/AVP 9\r\na=rtpmap:9 G722/8000\r\n";
    a_wideband_call_carries_16k_both_ways(30240, offer, receiver, 16000, &["-ar", "16000", "-acodec", "g722"]).await;
}

#[cfg(feature = "opus")]
/// Opus from ffmpeg's libopus at 48 kHz, offered as a WebRTC gateway does.
#[tokio::test]
async fn an_opus_call_carries_16k_audio_both_ways() {
    let offer =
        "m=audio 30275 RTP/AVP 111 126\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1\r\na=rtpmap:126 telephone-event/48000\r\n";
    let receiver = "m=audio 30275 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n";
    let args = ["-ar", "48000", "-acodec", "libopus", "-b:a", "32k", "-application", "voip", "-payload_type", "111"];
    a_wideband_call_carries_16k_both_ways(30260, offer, receiver, 48000, &args).await;
}
