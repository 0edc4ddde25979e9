//! The call-events stream over real UDP with real audio: espeak-ng speech for the
//! voice detector and the node's barge-in, RFC 4733 digits sent as RTP, in-band
//! digits made by sox, a caller that goes silent, and a subscriber too slow to keep up.

use std::time::{Duration, Instant, SystemTime};

use fleet_tests::voice::{espeak_8k, sox_dtmf_8k};
use fleet_tests::*;
use media_node::core::analysis::telephone_event::digit_packets;
use media_node::core::g711::Codec;
use media_node::core::rtp::{self, RtpHeader};
use media_proto::pb::call_event::Event as E;
use media_proto::pb::*;

fn wall(e: &CallEvent) -> SystemTime {
    let t = e.wall_time.unwrap();
    SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32)
}

fn digits(events: &[CallEvent], source: &str) -> String {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Some(E::Dtmf(d)) if d.end && d.source == source => Some(d.digit.clone()),
            _ => None,
        })
        .collect()
}

async fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    for _ in 0..secs * 20 {
        if f() {
            return;
        }
        sleep_ms(50).await;
    }
    panic!("timed out waiting for {what}");
}

/// Converts a moment on the test's monotonic clock to the wall clock.
struct Clocks {
    mono: Instant,
    wall: SystemTime,
}

impl Clocks {
    fn now() -> Clocks {
        Clocks { mono: Instant::now(), wall: SystemTime::now() }
    }
    fn wall_of(&self, t: Instant) -> SystemTime {
        self.wall + t.duration_since(self.mono)
    }
}

fn ms_between(a: SystemTime, b: SystemTime) -> i64 {
    match b.duration_since(a) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_speech_is_found_and_barges_in_on_the_prompt() {
    let mut node = TestNode::start(30000, 10).await;
    node.write_prompt("long.wav", &synth_prompt(8000, 8.0), 8000);
    let (port, node_rtp, caller) = node.call("events-speech").await;
    let (events, _sub) = node.subscribe(port).await;

    let play = node.play_with_barge_in(port, "file://long.wav", 100);
    // One second of silence, then a sentence, then silence: what a caller does who
    // waits for the bot and then talks over it.
    let speech = espeak_8k("Hello, I would like to check the balance of my account please.");
    // Where the sound begins (about -56 dBFS), and where the last loud part ends.
    let onset = speech.iter().position(|s| s.abs() > 50).unwrap();
    let last = speech.iter().rposition(|s| s.abs() > 300).unwrap();
    let lead = 8000;
    let mut audio = vec![0i16; lead];
    audio.extend(&speech);
    audio.extend(vec![0i16; 8000]);
    let clocks = Clocks::now();
    let sent = caller.send_speech_timed(node_rtp, &audio, Codec::Pcmu, 42).await.unwrap();
    // A frame's send time plus where in the frame the sample is.
    let truth = |sample: usize| clocks.wall_of(sent[sample / 160]) + Duration::from_micros((sample % 160) as u64 * 125);

    let reply = tokio::time::timeout(Duration::from_secs(10), play).await.expect("PlayAudio answers").unwrap().unwrap();
    assert_eq!(reply.message, "interrupted by the caller's speech (barge-in)");

    wait_until("speech_stopped", 5, || events.lock().unwrap().iter().any(|e| matches!(e.event, Some(E::SpeechStopped(_))))).await;
    let ev = events.lock().unwrap().clone();
    let started = ev.iter().find(|e| matches!(e.event, Some(E::SpeechStarted(_)))).expect("speech_started");
    let stopped = ev.iter().find(|e| matches!(e.event, Some(E::SpeechStopped(_)))).unwrap();
    let onset_err = ms_between(truth(lead + onset), wall(started));
    let end_err = ms_between(truth(lead + last), wall(stopped));
    println!("speech_started {onset_err:+} ms from the true onset, speech_stopped {end_err:+} ms from the last voiced sample");
    assert!(onset_err.abs() <= 100, "speech_started {onset_err} ms from the true onset");
    assert!(end_err.abs() <= 200, "speech_stopped {end_err} ms from the end of speech");
    assert_eq!(digits(&ev, "inband"), "", "speech is no digit");

    // The cut: what the reply and the event say was played is what the caller got.
    let finished = ev
        .iter()
        .find_map(|e| match &e.event {
            Some(E::PlaybackFinished(f)) => Some((e, f.clone())),
            _ => None,
        })
        .expect("playback_finished");
    assert_eq!(finished.1.reason, "barge_in");
    assert_eq!(finished.1.played_ms, reply.played_ms);
    assert!(ev.iter().any(|e| matches!(&e.event, Some(E::PlaybackStarted(p)) if p.audio_uri == "file://long.wav")));
    let got = caller.take_received();
    let prompt_packets = got.iter().filter(|p| p.pcm.iter().any(|&s| s != 0)).count() as u64;
    assert!(
        (prompt_packets * 20).abs_diff(reply.played_ms) <= 20,
        "the caller received {prompt_packets} packets of the prompt, the node says {} ms",
        reply.played_ms
    );
    // The cut comes once the caller has spoken 100 ms, plus a frame or two of
    // scheduling on a busy machine.
    let last_prompt = got.iter().filter(|p| p.pcm.iter().any(|&s| s != 0)).map(|p| p.at).max().unwrap();
    let cut_after_onset = ms_between(truth(lead + onset), clocks.wall_of(last_prompt));
    println!("barge-in (100 ms of speech asked): the last prompt packet reached the caller {cut_after_onset} ms after the speech onset");
    assert!(cut_after_onset <= 100 + 50, "the prompt went on {cut_after_onset} ms after the onset");
    assert!(cut_after_onset >= 60, "cut before the caller had spoken long enough ({cut_after_onset} ms)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc4733_and_inband_digits_are_reported() {
    let mut node = TestNode::start(30010, 10).await;
    let (port, node_rtp, caller) = node.call("events-dtmf").await;
    let (events, _sub) = node.subscribe(port).await;

    // RFC 4733: each digit's updates every 50 ms, three end packets, as a trunk sends.
    let mut seq = 100u16;
    for (n, d) in "159#".chars().enumerate() {
        let ts = 80_000 + n as u32 * 8000;
        for (marker, payload) in digit_packets(d, 1280, 400, 10).unwrap() {
            seq = seq.wrapping_add(1);
            let data = rtp::build(RtpHeader { marker, payload_type: 101, sequence: seq, timestamp: ts, ssrc: 77 }, &payload);
            caller.socket.send_to(&data, node_rtp).await.unwrap();
            sleep_ms(20).await;
        }
        sleep_ms(100).await;
    }
    // In-band: sox's tones in the audio, 80 ms each with 80 ms between.
    let tones = sox_dtmf_8k("2468*0", 80, 80);
    let mut audio = vec![0i16; 1600];
    audio.extend(&tones);
    audio.extend(vec![0i16; 1600]);
    caller.send_speech(node_rtp, &audio, Codec::Pcmu, 78).await.unwrap();

    wait_until("every digit", 5, || digits(&events.lock().unwrap(), "inband").len() >= 6).await;
    let ev = events.lock().unwrap().clone();
    assert_eq!(digits(&ev, "rfc4733"), "159#");
    assert_eq!(digits(&ev, "inband"), "2468*0");
    for e in &ev {
        if let Some(E::Dtmf(d)) = &e.event {
            if d.end && d.source == "rfc4733" {
                assert_eq!(d.duration_ms, 160, "1280 timestamp units at 8 kHz");
            }
            if d.end && d.source == "inband" {
                assert!((60..=110).contains(&d.duration_ms), "an 80 ms tone measured {} ms", d.duration_ms);
            }
        }
    }
    let key_downs = ev.iter().filter(|e| matches!(&e.event, Some(E::Dtmf(d)) if !d.end)).count();
    assert_eq!(key_downs, 10, "one key-down per digit");
    assert_eq!(node.metric("media_dtmf_digits_total{source=\"rfc4733\"}").await, 4.0);
    assert_eq!(node.metric("media_dtmf_digits_total{source=\"inband\"}").await, 6.0);
    assert_eq!(node.metric("media_rtp_telephone_event_duplicates_total").await, 8.0, "two repeated ends per digit, counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_caller_times_out_and_resumes() {
    let mut node = TestNode::start_with(30020, 10, |c| c.analysis.media_timeout = Some(Duration::from_millis(800))).await;
    let (port, node_rtp, caller) = node.call("events-timeout").await;
    let (events, sub) = node.subscribe(port).await;
    caller.send_speech(node_rtp, &vec![0i16; 1600], Codec::Pcmu, 1).await.unwrap();
    wait_until("media_timeout", 5, || events.lock().unwrap().iter().any(|e| matches!(e.event, Some(E::MediaTimeout(_))))).await;
    caller.send_speech(node_rtp, &vec![0i16; 800], Codec::Pcmu, 1).await.unwrap();
    wait_until("media_resumed", 5, || events.lock().unwrap().iter().any(|e| matches!(e.event, Some(E::MediaResumed(_))))).await;
    let ev = events.lock().unwrap().clone();
    let timeouts: Vec<u64> =
        ev.iter().filter_map(|e| if let Some(E::MediaTimeout(t)) = &e.event { Some(t.silent_ms) } else { None }).collect();
    assert_eq!(timeouts.len(), 1, "reported once: {timeouts:?}");
    assert!((800..1000).contains(&timeouts[0]), "silent for {} ms", timeouts[0]);
    // The call's end ends every subscriber's stream.
    node.client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), sub).await.expect("the events stream ends with the call").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_loses_its_own_events_only() {
    let mut node = TestNode::start(30030, 10).await;
    let (port, node_rtp, caller) = node.call("events-slow").await;
    let (fast, _f) = node.subscribe(port).await;
    // The slow one asks for the stream and then does not read it for a while; its
    // small HTTP/2 window makes the node's side of its stream fill up soon.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.running.grpc_addr))
        .unwrap()
        .initial_stream_window_size(Some(2048))
        .initial_connection_window_size(Some(2048))
        .connect()
        .await
        .unwrap();
    let mut slow = media_service_client::MediaServiceClient::new(channel)
        .stream_call_events(StreamCallEventsRequest { server_rtp_port: port })
        .await
        .expect("StreamCallEvents")
        .into_inner();
    let digits_sent = 1500u32;
    let mut seq = 0u16;
    for n in 0..digits_sent {
        let d = b"0123456789*#"[n as usize % 12] as char;
        for (marker, payload) in digit_packets(d, 160, 160, 10).unwrap().into_iter().take(2) {
            seq = seq.wrapping_add(1);
            let data = rtp::build(RtpHeader { marker, payload_type: 101, sequence: seq, timestamp: n * 1000, ssrc: 9 }, &payload);
            caller.socket.send_to(&data, node_rtp).await.unwrap();
        }
        if n % 10 == 0 {
            sleep_ms(5).await;
        }
    }
    let total = 2 * digits_sent as usize;
    wait_until("the fast subscriber to get every event", 20, || fast.lock().unwrap().len() >= total).await;
    let f = fast.lock().unwrap().clone();
    assert!(f.iter().all(|e| !matches!(e.event, Some(E::EventsLost(_)))), "the fast subscriber lost nothing");
    assert_eq!(digits(&f, "rfc4733").len(), digits_sent as usize);

    let (mut got, mut lost) = (0u64, 0u64);
    while got + lost < total as u64 {
        let e = tokio::time::timeout(Duration::from_secs(5), slow.message()).await.expect("the slow stream goes on").unwrap().unwrap();
        match e.event {
            Some(E::EventsLost(l)) => lost += l.count,
            Some(E::Dtmf(_)) => got += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    println!("slow subscriber: {got} events, {lost} lost");
    assert!(lost > 0, "a subscriber that did not read lost events");
    assert_eq!(got + lost, total as u64, "every event is either delivered or counted as lost");
    assert_eq!(node.metric("media_call_events_lost_total").await, lost as f64);
    // The call went on: it still answers.
    assert_eq!(node.play(port, "control://stop_audio").await.unwrap().message, "stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_marks_are_acknowledged_as_played_and_cleared_by_the_caller_s_barge_in() {
    let mut node = TestNode::start(30040, 10).await;
    let (_port, node_rtp, caller) = node.call("events-marks").await;
    // Eight seconds of TTS (16 kHz), a mark after each half second, sent as fast as the
    // node takes it; the node's barge-in at 150 ms.
    let tts = synth_prompt(16000, 8.0);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let feeder = tokio::spawn(async move {
        for (i, c) in tts.chunks(8000).enumerate() {
            let req = StreamAudioToCallRequest {
                call_id: "events-marks".into(),
                audio_chunk: c.iter().flat_map(|s| s.to_le_bytes()).collect(),
                mark: format!("m{i}"),
                barge_in_ms: Some(150),
                ..Default::default()
            };
            if tx.send(req).await.is_err() {
                break;
            }
        }
        // Keep the stream open until the node ends it.
        tokio::time::sleep(Duration::from_secs(20)).await;
        drop(tx);
    });
    // The node answers the call's headers once it has the first message (the feeder's).
    let mut replies =
        node.client.stream_audio_to_call(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("StreamAudioToCall").into_inner();
    // The caller waits two seconds, then speaks.
    let mut audio = vec![0i16; 16000];
    let speech = espeak_8k("No, that is not what I asked for.");
    // Where the sound begins (about -56 dBFS), and where the last loud part ends.
    let onset = speech.iter().position(|s| s.abs() > 50).unwrap();
    audio.extend(&speech);
    let clocks = Clocks::now();
    let sent = caller.send_speech_timed(node_rtp, &audio, Codec::Pcmu, 5).await.unwrap();

    let mut acks: Vec<(String, bool, u64)> = Vec::new();
    let last = loop {
        let r = tokio::time::timeout(Duration::from_secs(10), replies.message()).await.expect("an answer").unwrap().expect("a response");
        if r.mark.is_empty() {
            break r;
        }
        acks.push((r.mark, r.mark_cleared, r.played_ms));
    };
    feeder.abort();
    assert!(!last.success);
    assert_eq!(last.error_message, "interrupted by the caller's speech (barge-in)");
    let names: Vec<&str> = acks.iter().map(|(m, _, _)| m.as_str()).collect();
    // Marks are acknowledged once each, in order (those of chunks the node never took,
    // held back by its flow control, as cleared once the stream was cut).
    assert_eq!(names, (0..acks.len()).map(|i| format!("m{i}")).collect::<Vec<_>>(), "marks acknowledged once, in order");
    let played: Vec<_> = acks.iter().take_while(|(_, cleared, _)| !cleared).collect();
    assert!(acks[played.len()..].iter().all(|(_, cleared, _)| *cleared), "once one is cleared, the rest are");
    assert!(played.len() >= 3 && acks.len() > played.len(), "marks played before the cut and cleared by it: {acks:?}");
    // Each played mark came when its half second had gone out.
    for (i, (_, _, ms)) in played.iter().enumerate() {
        assert!((*ms as i64 - 500 * (i as i64 + 1)).abs() <= 20, "mark {i} acknowledged at {ms} ms of audio");
    }
    // What the node says went out is what the caller got.
    let got = caller.take_received();
    let tts_packets = got.iter().filter(|p| p.pcm.iter().any(|&s| s != 0)).count() as u64;
    assert!((tts_packets * 20).abs_diff(last.played_ms) <= 40, "caller got {tts_packets} packets, the node says {} ms", last.played_ms);
    let onset_at = clocks.wall_of(sent[(16000 + onset) / 160]);
    let last_tts = clocks.wall_of(got.iter().filter(|p| p.pcm.iter().any(|&s| s != 0)).map(|p| p.at).max().unwrap());
    let cut = ms_between(onset_at, last_tts);
    println!(
        "TTS barge-in (150 ms asked): cut {cut} ms after the speech onset; {} marks played, {} cleared",
        played.len(),
        acks.len() - played.len()
    );
    assert!((100..=300).contains(&cut), "cut {cut} ms after the onset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digits_the_node_sends_are_decoded_by_the_far_end() {
    use media_node::core::analysis::inband_dtmf::{ToneDetector, ToneDigit};
    use media_node::core::analysis::telephone_event::{EventReceiver, Received};
    let mut node = TestNode::start(30050, 10).await;
    let (port, _, caller) = node.call("events-dtmf-out").await;

    // RFC 4733: telephone-events on payload type 101, decoded as a receiver would.
    let r = node
        .client
        .send_dtmf(SendDtmfRequest { server_rtp_port: port, digits: "1234#".into(), duration_ms: 120, inband: false })
        .await
        .unwrap()
        .into_inner();
    assert!(r.success, "{}", r.message);
    sleep_ms(100).await;
    let got = caller.take_received();
    let mut rx = EventReceiver::default();
    let mut out = Vec::new();
    let seqs: Vec<u16> = got.iter().filter(|p| p.payload_type == 101).map(|p| p.sequence).collect();
    assert!(!seqs.is_empty(), "telephone-events reached the caller");
    assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)), "one sequence, no gaps: {seqs:?}");
    // The caller's collector keeps decoded audio only; re-read the events from the wire.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    node.client
        .play_audio(PlayAudioRequest {
            audio_uri: "control://set_target".into(),
            server_rtp_port: port,
            rtp_target_addr: sock.local_addr().unwrap().to_string(),
            barge_in_ms: None,
        })
        .await
        .unwrap();
    let mut client = node.client.clone();
    let send = tokio::spawn(async move {
        client.send_dtmf(SendDtmfRequest { server_rtp_port: port, digits: "90*".into(), duration_ms: 0, inband: false }).await
    });
    let mut buf = [0u8; 1500];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), sock.recv(&mut buf)).await else { break };
        let p = rtp::parse(&buf[..n]).unwrap();
        assert_eq!(p.payload_type, 101);
        rx.on_packet(Instant::now(), p.timestamp, p.payload, &mut out);
    }
    assert!(send.await.unwrap().unwrap().into_inner().success);
    let ends: Vec<_> = out
        .iter()
        .filter_map(|e| if let Received::Ended { digit, duration, end_seen, .. } = e { Some((*digit, *duration, *end_seen)) } else { None })
        .collect();
    assert_eq!(ends, vec![('9', 800, true), ('0', 800, true), ('*', 800, true)], "100 ms each, ends seen");
    assert_eq!(rx.duplicates, 6, "each end sent three times");

    // In-band: tones in the audio, found by the Q.24 detector in what the caller heard.
    node.client
        .play_audio(PlayAudioRequest {
            audio_uri: "control://set_target".into(),
            server_rtp_port: port,
            rtp_target_addr: caller.local_addr().to_string(),
            barge_in_ms: None,
        })
        .await
        .unwrap();
    caller.take_received();
    let r = node
        .client
        .send_dtmf(SendDtmfRequest { server_rtp_port: port, digits: "5A#".into(), duration_ms: 80, inband: true })
        .await
        .unwrap()
        .into_inner();
    assert!(r.success, "{}", r.message);
    sleep_ms(100).await;
    let heard = timeline(&caller.take_received());
    let mut d = ToneDetector::default();
    let mut found = Vec::new();
    d.push(0, &heard, &mut found);
    d.push(heard.len() as u64, &[0; 800], &mut found);
    let digits: String = found.iter().filter_map(|e| if let ToneDigit::Ended { digit, .. } = e { Some(*digit) } else { None }).collect();
    assert_eq!(digits, "5A#");

    let bad = node.client.send_dtmf(SendDtmfRequest { server_rtp_port: port, digits: "12x".into(), duration_ms: 0, inband: false }).await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_s_latency_is_measured_from_the_caller_s_speech_end() {
    let mut node = TestNode::start(30060, 10).await;
    node.write_prompt("answer.wav", &synth_prompt(8000, 0.5), 8000);
    let (port, node_rtp, caller) = node.call("events-turn").await;
    let (events, _sub) = node.subscribe(port).await;
    let speech = espeak_8k("What is my balance?");
    let mut audio = speech.clone();
    audio.extend(vec![0i16; 8000]);
    let sender = tokio::spawn(async move { caller.send_speech(node_rtp, &audio, Codec::Pcmu, 8).await.unwrap() });
    wait_until("speech_stopped", 10, || events.lock().unwrap().iter().any(|e| matches!(e.event, Some(E::SpeechStopped(_))))).await;
    // The agent thinks for 300 ms after the node said the caller stopped.
    sleep_ms(300).await;
    assert_eq!(node.play(port, "file://answer.wav").await.unwrap().message, "finished");
    let ev = events.lock().unwrap().clone();
    let stopped = ev.iter().find(|e| matches!(e.event, Some(E::SpeechStopped(_)))).unwrap();
    let turn = ev
        .iter()
        .find_map(|e| if let Some(E::TurnLatency(t)) = &e.event { Some((e.clone(), *t)) } else { None })
        .expect("a turn_latency event");
    let t = turn.1;
    println!("turn: agent {} ms (speech end to prompt in), media {} ms (to first RTP out)", t.agent_ms, t.media_ms);
    assert_eq!(t.total_ms, t.agent_ms + t.media_ms);
    // Speech end to the prompt's arrival: the detector's silence time (400 ms) and the
    // agent's 300 ms at least.
    assert!(t.agent_ms >= 650, "agent stage {} ms", t.agent_ms);
    assert!(t.agent_ms <= 400 + 300 + 500, "agent stage {} ms", t.agent_ms);
    assert!(t.media_ms <= 60, "the first packet goes out on the next frame: {} ms", t.media_ms);
    assert!(turn.0.media_time_ms > stopped.media_time_ms);
    sender.await.unwrap();
    assert!(node.metric("media_turn_latency_seconds_count{stage=\"total\"}").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quality_reports_the_loss_the_caller_s_network_caused() {
    let mut node = TestNode::start(30070, 10).await;
    let (port, node_rtp, caller) = node.call("events-quality").await;
    let (events, _sub) = node.subscribe(port).await;
    // 11 s of speech-like audio, every tenth packet lost on the way.
    let speech = synth_speech(8000, 11.0, 4);
    let start = tokio::time::Instant::now();
    let mut payload = Vec::new();
    for (k, f) in speech.chunks(160).enumerate() {
        tokio::time::sleep_until(start + Duration::from_millis(20 * k as u64)).await;
        if k % 10 == 9 {
            continue;
        }
        Codec::Pcmu.encode_into(f, &mut payload);
        let h = RtpHeader { marker: k == 0, payload_type: 0, sequence: k as u16, timestamp: k as u32 * 160, ssrc: 6 };
        caller.socket.send_to(&rtp::build(h, &payload), node_rtp).await.unwrap();
    }
    wait_until("two quality reports", 8, || events.lock().unwrap().iter().filter(|e| matches!(e.event, Some(E::Quality(_)))).count() >= 2)
        .await;
    let q: Vec<Quality> =
        events.lock().unwrap().iter().filter_map(|e| if let Some(E::Quality(q)) = &e.event { Some(*q) } else { None }).collect();
    let full = q[1];
    println!("quality with 10 % loss: {full:?}");
    assert!((7.0..=13.0).contains(&full.loss_percent), "loss {} %", full.loss_percent);
    // G.107 with 10 % random loss and no concealment: Ie,eff = 95*10/(10+4.3) = 66 -> MOS about 1.5.
    assert!(full.r_factor < 35.0 && full.mos < 2.0, "{full:?}");
    assert!((-40.0..=-6.0).contains(&full.caller_level_dbfs), "caller level {}", full.caller_level_dbfs);
    assert_eq!(full.bot_level_dbfs, -100.0, "the bot said nothing");
}

/// The strongest DTMF frequency's power in `pcm` (Goertzel, at 8 kHz).
fn dtmf_power(pcm: &[i16]) -> f64 {
    use media_node::core::goertzel::power_at;
    [697.0, 770.0, 852.0, 941.0, 1209.0, 1336.0, 1477.0, 1633.0].iter().map(|&f| power_at(pcm, 8000, f)).fold(0.0, f64::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redaction_silences_the_caller_s_digits_for_the_agent_and_the_recording() {
    use media_node::core::analysis::inband_dtmf::{ToneDetector, ToneDigit};
    let mut node = TestNode::start(30100, 10).await;
    let (port, node_rtp, caller) = node.call("events-redact").await;
    let (events, _sub) = node.subscribe(port).await;
    let listen = node.listen(port, 8000).await;
    node.client
        .start_recording(StartRecordingRequest {
            server_rtp_port: port,
            output_uri: "file://calls".into(),
            sample_rate: Some(8000),
            format: Some("mono".into()),
            call_id: "events-redact".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let on = node.client.set_dtmf_redaction(SetDtmfRedactionRequest { server_rtp_port: port, enabled: true }).await.unwrap().into_inner();
    assert!(on.success, "{}", on.message);
    let bad = node.client.set_dtmf_redaction(SetDtmfRedactionRequest { server_rtp_port: port + 2, enabled: true }).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::NotFound);

    // A caller says something, keys a card number's first digits (sox tones, 100 ms
    // each with 100 ms between), and goes on speaking.
    let before = espeak_8k("My card number is");
    let after = espeak_8k("that is all");
    let tones = sox_dtmf_8k("4111", 100, 100);
    let mut audio = vec![0i16; 4000];
    audio.extend(&before);
    let tone_at = audio.len();
    audio.extend(&tones);
    audio.extend(&after);
    audio.extend(vec![0i16; 4000]);
    caller.send_speech(node_rtp, &audio, Codec::Pcmu, 79).await.unwrap();
    wait_until("the digits", 5, || digits(&events.lock().unwrap(), "inband").len() >= 4).await;
    assert_eq!(digits(&events.lock().unwrap(), "inband"), "4111", "the events still arrive");
    let stop = node.client.stop_recording(StopRecordingRequest { server_rtp_port: port }).await.unwrap().into_inner();
    node.client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
    let (frames, _) = listen.await.unwrap();
    let heard = pcm_of(&frames);
    let path = node.assets_path().join("recordings").join(stop.recording_uri.trim_start_matches("file://"));
    let (recorded, rate) = fleet_tests::voice::read_wav(&path);
    assert_eq!(rate, 8000);

    let onset = |x: &[i16]| x.iter().position(|s| s.abs() > 1000).expect("speech");
    for (what, out) in [("the agent's stream", &heard), ("the recording", &recorded)] {
        let lag = onset(out) as i64 - onset(&audio) as i64;
        let at = |i: usize| (i as i64 + lag) as usize;
        // Each tone's place holds no DTMF energy, and the detector finds no digit there.
        for k in 0..4 {
            let (t0, t1) = (tone_at + k * 1600, tone_at + k * 1600 + 800);
            let input = dtmf_power(&audio[t0..t1]);
            let left = dtmf_power(&out[at(t0)..at(t1)]);
            assert!(input > 1e5 && left <= input * 1e-4, "{what}: digit {k} kept {left:.1} of {input:.1}");
        }
        let mut found = Vec::new();
        ToneDetector::default().push(0, out, &mut found);
        assert!(found.iter().all(|d| !matches!(d, ToneDigit::Started { .. })), "{what}: {found:?}");
        // The speech around the digits is all there.
        for (part, from) in [(&before, 4000usize), (&after, tone_at + tones.len())] {
            let (corr, _) = best_correlation(part, &out[at(from).saturating_sub(80)..], 160);
            assert!(corr > 0.9, "{what}: speech kept (correlation {corr:.3})");
        }
    }
    let silenced = node.metric("media_dtmf_redacted_seconds_total").await;
    assert!((0.5..=0.75).contains(&silenced), "4 tones of 100 ms plus margins: {silenced} s silenced");
}

/// A whole utterance as one StreamAudioToCall: `seconds` of 16 kHz TTS, a mark after
/// each half second, and the stream closed after the last chunk.
fn utterance(call_id: &str, seconds: f64, prefix: &str) -> Vec<StreamAudioToCallRequest> {
    synth_prompt(16000, seconds)
        .chunks(8000)
        .enumerate()
        .map(|(i, c)| StreamAudioToCallRequest {
            call_id: call_id.into(),
            audio_chunk: c.iter().flat_map(|s| s.to_le_bytes()).collect(),
            mark: format!("{prefix}{i}"),
            barge_in_ms: None,
            ..Default::default()
        })
        .collect()
}

async fn answers(mut replies: tonic::Streaming<StreamAudioToCallResponse>) -> (Vec<(String, bool, u64)>, StreamAudioToCallResponse) {
    let mut acks = Vec::new();
    loop {
        let r = tokio::time::timeout(Duration::from_secs(10), replies.message()).await.expect("an answer").unwrap().expect("a response");
        if r.mark.is_empty() {
            return (acks, r);
        }
        acks.push((r.mark, r.mark_cleared, r.played_ms));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_tts_stream_plays_out_and_its_marks_are_played_not_cleared() {
    let mut node = TestNode::start(30110, 10).await;
    let (_port, _node_rtp, caller) = node.call("events-replace").await;
    // The first utterance (2 s) is all sent at once; the node queues it and plays it.
    let first = node
        .client
        .stream_audio_to_call(tokio_stream::iter(utterance("events-replace", 2.0, "a")))
        .await
        .expect("first StreamAudioToCall")
        .into_inner();
    let first = tokio::spawn(answers(first));
    sleep_ms(500).await;
    // A second one takes over while most of the first is still queued.
    let second = node
        .client
        .stream_audio_to_call(tokio_stream::iter(utterance("events-replace", 1.0, "b")))
        .await
        .expect("second StreamAudioToCall")
        .into_inner();
    let (acks_a, last_a) = first.await.unwrap();
    let (acks_b, last_b) = answers(second).await;
    // The node had taken part of the first (its flow control holds the rest in the
    // sender): what it took still went out, and every mark in it was played, at its
    // half second, not cleared; the marks of what it never took are answered too, as
    // cleared, after them (every mark answered, in order); the sender learns it was
    // taken over.
    assert_eq!(last_a.error_message, "another StreamAudioToCall took over this call");
    let names: Vec<&str> = acks_a.iter().map(|a| a.0.as_str()).collect();
    assert_eq!(names, ["a0", "a1", "a2", "a3"], "every mark of the first answered once, in order");
    let played = acks_a.iter().take_while(|a| !a.1).count();
    assert!(played >= 2, "marks queued when the second came played: {acks_a:?}");
    assert!(acks_a[played..].iter().all(|a| a.1), "the rest cleared: {acks_a:?}");
    for (i, (name, _, ms)) in acks_a[..played].iter().enumerate() {
        assert!((*ms as i64 - 500 * (i as i64 + 1)).abs() <= 20, "{name} at {ms} ms");
    }
    assert!(last_a.played_ms >= acks_a.last().unwrap().2, "first: {} ms played", last_a.played_ms);
    // The second's marks count its own audio, which began after the first's.
    assert!(last_b.success, "{}", last_b.error_message);
    assert_eq!(acks_b.iter().map(|a| (a.0.as_str(), a.1)).collect::<Vec<_>>(), [("b0", false), ("b1", false)]);
    assert!((acks_b[0].2 as i64 - 500).abs() <= 20 && last_b.played_ms.abs_diff(1000) <= 20, "{acks_b:?} {}", last_b.played_ms);
    // What both say they played is what the caller got.
    let got = caller.take_received().iter().filter(|p| p.pcm.iter().any(|&s| s != 0)).count() as u64;
    let said = (last_a.played_ms + last_b.played_ms) / 20;
    assert!(got.abs_diff(said) <= 2, "the caller got {got} packets of 20 ms, the streams say {said}");
}

/// A baresip-style offer: Opus at 48000 with telephone-event at 8000 beside it (as
/// baresip and FreeSWITCH offer). The node answers telephone-event/8000, reads the
/// caller's digits on that clock, and sends its own on it.
#[cfg(feature = "opus")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digits_both_ways_beside_opus_at_telephone_event_8000() {
    use media_node::core::analysis::telephone_event::{EventReceiver, Received};
    let mut node = TestNode::start(30360, 10).await;
    let port = node.client.allocate_port(AllocatePortRequest { call_id: "opus-te8k".into() }).await.unwrap().into_inner().rtp_port;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let offer = format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 111 101\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 stereo=1;sprop-stereo=1\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n",
        sock.local_addr().unwrap().port()
    );
    let r = node
        .client
        .negotiate_sdp(NegotiateSdpRequest { server_rtp_port: port, remote_sdp: offer, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let media = r.media.unwrap();
    assert_eq!((media.codec.as_str(), media.telephone_event_payload_type), ("opus", 101));
    assert!(r.local_sdp.contains("a=rtpmap:101 telephone-event/8000\r\n"), "{}", r.local_sdp);
    let (events, _task) = node.subscribe(port).await;
    let node_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut seq = 0u16;
    for (n, d) in "42".chars().enumerate() {
        for (marker, p) in digit_packets(d, 800, 160, 10).unwrap() {
            seq += 1;
            let ts = 50_000 + n as u32 * 4000;
            let data = rtp::build(RtpHeader { marker, payload_type: 101, sequence: seq, timestamp: ts, ssrc: 77 }, &p);
            sock.send_to(&data, node_addr).await.unwrap();
            sleep_ms(20).await;
        }
    }
    wait_until("both digits", 5, || digits(&events.lock().unwrap(), "rfc4733") == "42").await;
    let durations: Vec<u32> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match &e.event {
            Some(E::Dtmf(d)) if d.end => Some(d.duration_ms),
            _ => None,
        })
        .collect();
    assert_eq!(durations, [100, 100], "800 samples at 8000 are 100 ms");
    // The node's digits on the same clock.
    let mut client = node.client.clone();
    let send = tokio::spawn(async move {
        client.send_dtmf(SendDtmfRequest { server_rtp_port: port, digits: "7".into(), duration_ms: 100, inband: false }).await
    });
    let (mut rx, mut out, mut buf) = (EventReceiver::default(), Vec::new(), [0u8; 1500]);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), sock.recv(&mut buf)).await else { break };
        let p = rtp::parse(&buf[..n]).unwrap();
        if p.payload_type == 101 {
            rx.on_packet(Instant::now(), p.timestamp, p.payload, &mut out);
        }
    }
    assert!(send.await.unwrap().unwrap().into_inner().success);
    let ends: Vec<_> =
        out.iter().filter_map(|e| if let Received::Ended { digit, duration, .. } = e { Some((*digit, *duration)) } else { None }).collect();
    assert_eq!(ends, vec![('7', 800)], "100 ms in 8 kHz units, not 48 kHz ones");
    println!("DTMF beside Opus at telephone-event/8000: the caller's 42 read at 100 ms each, the node's 7 sent as 800 samples");
}
