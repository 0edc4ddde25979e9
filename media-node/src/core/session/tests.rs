//! The session as a whole (its parts' own tests beside them), and the helpers those
//! tests share: a session with fixed origins, a caller's packets, ticks, settings.
#![cfg(test)]
use super::*;
use crate::core::analysis::Signal;
use crate::core::codec::OpusPrefs;
use crate::core::g711::{linear_to_ulaw, Codec};
use crate::core::playback::MarkFate;
use crate::core::rtp::{self, RtpHeader};
use std::time::Duration;

pub(super) const MS20: Duration = Duration::from_millis(20);

pub(super) fn caller() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

pub(super) fn session(t0: Instant) -> Session {
    let cfg = SessionConfig {
        ssrc: 0x1234,
        initial_sequence: 65530,
        initial_timestamp: u32::MAX - 800,
        symmetric_rtp: true,
        jitter: JitterConfig::default(),
        analysis: AnalysisConfig::default(),
        telephone_event_pt: TELEPHONE_EVENT_PT,
        wall_start: std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        stopwatch: Instant::now,
        processing: Default::default(),
    };
    Session::new(cfg, t0)
}

pub(super) fn rtp_from_caller(pt: u8, seq: u16, ts: u32, sample: i16) -> Vec<u8> {
    let payload = match pt {
        8 => vec![crate::core::g711::linear_to_alaw(sample); 160],
        _ => vec![linear_to_ulaw(sample); 160],
    };
    rtp::build(RtpHeader { marker: false, payload_type: pt, sequence: seq, timestamp: ts, ssrc: 99 }, &payload)
}

pub(super) fn run_ticks(s: &mut Session, t0: Instant, from: u64, to: u64, out: &mut Outputs) {
    for k in from..to {
        s.handle_tick(t0 + MS20 * k as u32, out);
    }
}

pub(super) fn media(send: (u8, AudioCodec), te: Option<u8>, sends: bool) -> MediaSettings {
    MediaSettings {
        send,
        opus: OpusPrefs::default(),
        receive: vec![(0, AudioCodec::Pcmu), (9, AudioCodec::G722), (8, AudioCodec::Pcma)],
        telephone_event_pt: te,
        telephone_event_clock: send.1.rtp_clock(),
        sends,
        srtp: None,
        rtcp: RtcpTarget::Separate(None),
        ptime_ms: 20,
    }
}

/// A session whose far end is known, sending `send` at `ptime` as SDP agreed.
pub(super) fn sending_in(t0: Instant, send: (u8, AudioCodec), ptime: u32) -> (Session, Outputs) {
    let mut s = session(t0);
    let mut out = Outputs::default();
    s.handle_command(Command::SetTarget(caller()), &mut out);
    let mut m = media(send, Some(101), true);
    m.ptime_ms = ptime;
    s.handle_command(Command::SetMedia(m), &mut out);
    (s, out)
}

pub(super) fn far_rtcp() -> SocketAddr {
    "127.0.0.1:40001".parse().unwrap()
}

#[test]
fn barge_in_cuts_within_one_frame() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    s.handle_command(Command::SetTarget(caller()), &mut out);
    s.handle_command(Command::Play { id: 1, pcm: vec![8000i16; 8000].into(), barge_in: None }, &mut out);
    s.handle_command(Command::Stream { pcm: vec![3000; 1600], wide: Vec::new(), mark: None }, &mut out);
    run_ticks(&mut s, t0, 0, 10, &mut out);
    out.clear();
    s.handle_command(Command::Stop, &mut out);
    assert_eq!(out.events, vec![Event::PlaybackEnded { id: 1, outcome: PlaybackOutcome::Stopped, played_ms: 200 }]);
    run_ticks(&mut s, t0, 10, 11, &mut out);
    assert!(out.transmit.is_empty(), "the next frame after stop is silent");
    assert_eq!(s.stream_queued(), 0, "queued TTS is flushed too");

    s.handle_command(Command::Play { id: 2, pcm: vec![8000i16; 8000].into(), barge_in: None }, &mut out);
    run_ticks(&mut s, t0, 11, 12, &mut out);
    s.handle_command(Command::Play { id: 3, pcm: vec![-8000i16; 8000].into(), barge_in: None }, &mut out);
    out.transmit.clear();
    run_ticks(&mut s, t0, 12, 13, &mut out);
    let p = rtp::parse(&out.transmit[0].data).unwrap().payload.to_vec();
    assert_eq!(p, vec![linear_to_ulaw(-8000); 160], "the next frame is the new prompt");
    assert!(out.events.contains(&Event::PlaybackEnded { id: 2, outcome: PlaybackOutcome::Interrupted, played_ms: 20 }));
}

#[test]
fn echo_returns_what_the_caller_said() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    s.handle_command(Command::SetEcho(true), &mut out);
    s.handle_datagram(t0, caller(), &rtp_from_caller(0, 1, 0, 6000), &mut out);
    run_ticks(&mut s, t0, 0, 1, &mut out);
    assert_eq!(out.transmit[0].to, caller());
    assert_eq!(rtp::parse(&out.transmit[0].data).unwrap().payload, &[linear_to_ulaw(6000); 160][..]);
}

#[test]
fn outbound_and_inbound_share_the_timeline() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    s.handle_command(Command::SetTarget(caller()), &mut out);
    run_ticks(&mut s, t0, 0, 50, &mut out); // one second of nothing
    s.handle_command(Command::Play { id: 1, pcm: vec![1i16; 160].into(), barge_in: None }, &mut out);
    s.handle_datagram(t0 + MS20 * 50, caller(), &rtp_from_caller(0, 1, 12345, 0), &mut out);
    run_ticks(&mut s, t0, 50, 51, &mut out);
    assert_eq!(out.played[0].pos, 8000, "sent at 1 s");
    let talk = out.heard.iter().find(|h| !h.concealed).unwrap();
    // Heard at 1 s minus the 40 ms hold the buffer allows for late packets.
    assert!((7680..=8000).contains(&talk.pos), "heard at {}", talk.pos);
}

/// Real speech (espeak-ng, 8 kHz; see testdata/README.md) and where it begins.
pub(super) fn speech() -> (Vec<i16>, usize) {
    let wav = hound::WavReader::new(&include_bytes!("../../../testdata/speech-8k.wav")[..]).unwrap();
    let pcm: Vec<i16> = wav.into_samples::<i16>().map(|s| s.unwrap()).collect();
    let onset = pcm.iter().position(|s| s.abs() > 300).unwrap();
    (pcm, onset)
}

/// The caller sends `pcm` from `from_frame` on, one PCMU packet per tick.
pub(super) fn caller_speaks(s: &mut Session, t0: Instant, from_frame: u64, pcm: &[i16], out: &mut Outputs) {
    for (k, f) in pcm.chunks(FRAME_SAMPLES).enumerate() {
        let k = from_frame + k as u64;
        let mut payload = Vec::new();
        let mut frame = [0i16; FRAME_SAMPLES];
        frame[..f.len()].copy_from_slice(f);
        Codec::Pcmu.encode_into(&frame, &mut payload);
        let data =
            rtp::build(RtpHeader { marker: false, payload_type: 0, sequence: k as u16, timestamp: k as u32 * 160, ssrc: 7 }, &payload);
        s.handle_datagram(t0 + MS20 * k as u32, caller(), &data, out);
        s.handle_tick(t0 + MS20 * k as u32, out);
    }
}

pub(super) fn signals(out: &Outputs) -> Vec<Signal> {
    out.events.iter().filter_map(|e| if let Event::Signal(s) = e { Some(*s) } else { None }).collect()
}

#[test]
fn speech_onset_and_end_are_found_in_real_speech() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    let (pcm, onset) = speech();
    let mut audio = vec![0i16; 8000];
    audio.extend(&pcm);
    audio.extend(vec![0i16; 8000]);
    caller_speaks(&mut s, t0, 0, &audio, &mut out);
    let sig = signals(&out);
    let Some(Signal::SpeechStarted { pos, .. }) = sig.first().copied() else { panic!("no speech found: {sig:?}") };
    let truth = (8000 + onset) as i64;
    // The network is sure some 50 ms in; the onset is walked back to where the level rose.
    assert!((pos as i64 - truth).abs() <= 160, "onset at {pos}, true onset {truth} (20 ms = 160)");
    let Some(Signal::SpeechStopped { pos: end, .. }) = sig.last().copied() else { panic!("speech never ended: {sig:?}") };
    let last_voice = 8000 + pcm.iter().rposition(|s| s.abs() > 300).unwrap() as i64;
    assert!((end as i64 - last_voice).abs() <= 1600, "end at {end}, last voice at {last_voice}");
    assert!(!sig.iter().any(|s| matches!(s, Signal::Dtmf { .. })), "speech is no digit: {sig:?}");
}

#[test]
fn barge_in_cuts_the_prompt_when_the_caller_speaks_long_enough() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    s.handle_command(Command::SetTarget(caller()), &mut out);
    let barge = std::time::Duration::from_millis(200);
    s.handle_command(Command::Play { id: 9, pcm: vec![3000i16; 8000 * 10].into(), barge_in: Some(barge) }, &mut out);
    let (pcm, onset) = speech();
    let mut audio = vec![0i16; 4000];
    audio.extend(&pcm);
    caller_speaks(&mut s, t0, 0, &audio, &mut out);
    assert!(out.events.contains(&Event::PlaybackStarted { id: 9, pos: 0 }));
    let (played_ms, at) = out
        .events
        .iter()
        .find_map(|e| match e {
            Event::PlaybackEnded { id: 9, outcome: PlaybackOutcome::BargeIn, played_ms } => Some(*played_ms),
            _ => None,
        })
        .map(|ms| (ms, ms))
        .expect("barge-in");
    let prompt_frames = out.played.iter().filter(|p| p.source == FrameSource::Prompt).count() as u64;
    assert_eq!(played_ms, prompt_frames * 20, "played ms is what went out");
    let onset_ms = (4000 + onset) as u64 / 8;
    // The cut comes after 200 ms of speech, within the VAD's latency (< 100 ms).
    assert!(at >= onset_ms + 200 - 20 && at <= onset_ms + 200 + 100, "cut at {at} ms, speech at {onset_ms} ms");
}

#[test]
fn without_barge_in_the_caller_talks_over_the_prompt() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    s.handle_command(Command::SetTarget(caller()), &mut out);
    s.handle_command(Command::Play { id: 1, pcm: vec![3000i16; 8000 * 10].into(), barge_in: None }, &mut out);
    caller_speaks(&mut s, t0, 0, &speech().0, &mut out);
    assert!(signals(&out).iter().any(|s| matches!(s, Signal::SpeechStarted { .. })));
    assert!(!out.events.iter().any(|e| matches!(e, Event::PlaybackEnded { .. })));
}

#[test]
fn telephone_events_become_digits_and_do_not_reach_the_audio() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    let mut seq = 0u16;
    for (n, d) in "19#".chars().enumerate() {
        let ts = 10_000 + n as u32 * 4000;
        for (marker, p) in crate::core::analysis::telephone_event::digit_packets(d, 800, 160, 10).unwrap() {
            seq += 1;
            let data = rtp::build(RtpHeader { marker, payload_type: TELEPHONE_EVENT_PT, sequence: seq, timestamp: ts, ssrc: 5 }, &p);
            s.handle_datagram(t0, caller(), &data, &mut out);
        }
    }
    let ends: Vec<_> = signals(&out)
        .into_iter()
        .filter_map(|s| match s {
            Signal::Dtmf { digit, end: true, duration_ms, source, .. } => Some((digit, duration_ms, source)),
            _ => None,
        })
        .collect();
    use crate::core::analysis::DtmfSource::Rfc4733;
    assert_eq!(ends, vec![('1', 100, Rfc4733), ('9', 100, Rfc4733), ('#', 100, Rfc4733)]);
    assert!(out.heard.is_empty(), "events are not audio");
    let c = s.take_counters();
    assert_eq!((c.telephone_event_duplicates, c.unsupported_payload), (6, 0));
}
/// An Opus call whose far end offered telephone-event/8000 (baresip, FreeSWITCH): its
/// digits are read on 8 kHz, and the node's go out on it (durations and timestamps in
/// 8 kHz units while the audio counts at 48 kHz).
#[cfg(feature = "opus")]
#[test]
fn telephone_event_at_8000_beside_opus_counts_on_its_own_clock_both_ways() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    s.handle_command(Command::SetTarget(caller()), &mut out);
    let mut m = media((111, AudioCodec::Opus), Some(101), true);
    m.receive.push((111, AudioCodec::Opus));
    m.telephone_event_clock = 8000;
    s.handle_command(Command::SetMedia(m), &mut out);
    for (marker, p) in crate::core::analysis::telephone_event::digit_packets('7', 800, 160, 10).unwrap() {
        let data = rtp::build(RtpHeader { marker, payload_type: 101, sequence: 1, timestamp: 10_000, ssrc: 5 }, &p);
        s.handle_datagram(t0, caller(), &data, &mut out);
    }
    let ends: Vec<_> = signals(&out)
        .into_iter()
        .filter_map(|s| if let Signal::Dtmf { digit, end: true, duration_ms, .. } = s { Some((digit, duration_ms)) } else { None })
        .collect();
    assert_eq!(ends, vec![('7', 100)], "800 samples at 8000 are 100 ms");
    s.handle_command(Command::SendDigits(crate::core::dtmf_out::DigitSender::new("5", 800, 480).unwrap()), &mut out);
    out.transmit.clear();
    run_ticks(&mut s, t0, 0, 10, &mut out);
    let events: Vec<_> = out
        .transmit
        .iter()
        .map(|t| rtp::parse(&t.data).unwrap())
        .filter(|p| p.payload_type == 101)
        .map(|p| (p.timestamp, u16::from_be_bytes([p.payload[2], p.payload[3]])))
        .collect();
    assert_eq!(events.len(), 7, "five updates, the end three times");
    assert!(events.iter().all(|(ts, _)| *ts == events[0].0), "one event, one timestamp");
    let durations: Vec<u16> = events.iter().map(|(_, d)| *d).collect();
    assert_eq!(durations, [160, 320, 480, 640, 800, 800, 800], "durations in 8 kHz units, not 48 kHz");
}

pub(super) fn fixture(bytes: &[u8]) -> Vec<i16> {
    hound::WavReader::new(bytes).unwrap().into_samples::<i16>().map(|s| s.unwrap()).collect()
}

/// The caller's side of a speakerphone: the prompt as it went out, back 150 ms
/// later at -10 dB, plus what the caller says.
fn echo_call(caller_says: Option<&[i16]>) -> (Outputs, Counters) {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    s.handle_command(Command::SetTarget(caller()), &mut out);
    let prompt = fixture(include_bytes!("../../../testdata/speech-8k.wav"));
    s.handle_command(Command::Play { id: 1, pcm: prompt.clone().into(), barge_in: Some(std::time::Duration::from_millis(200)) }, &mut out);
    let frames = prompt.len() / FRAME_SAMPLES + 20;
    let mut sent: Vec<i16> = Vec::new();
    let gain = 10f64.powf(-10.0 / 20.0);
    let mut counters = Counters::default();
    for k in 0..frames as u64 {
        s.handle_tick(t0 + MS20 * k as u32, &mut out);
        // What went out this tick (silence when nothing did), decoded as the caller hears it.
        let mut frame = [0i16; FRAME_SAMPLES];
        if let Some(t) = out.transmit.pop() {
            let p = rtp::parse(&t.data).unwrap();
            let mut pcm = Vec::new();
            Codec::Pcmu.decode_into(p.payload, &mut pcm);
            frame.copy_from_slice(&pcm);
        }
        out.transmit.clear();
        sent.extend(frame);
        let base = k as usize * FRAME_SAMPLES;
        let back: Vec<i16> = (0..FRAME_SAMPLES)
            .map(|i| {
                let n = base + i;
                let echo = if n >= 1200 { sent[n - 1200] as f64 * gain } else { 0.0 };
                let talk = caller_says.and_then(|c| c.get(n)).copied().unwrap_or(0) as f64;
                (echo + talk).clamp(-32768.0, 32767.0) as i16
            })
            .collect();
        let mut payload = Vec::new();
        Codec::Pcmu.encode_into(&back, &mut payload);
        let data =
            rtp::build(RtpHeader { marker: false, payload_type: 0, sequence: k as u16, timestamp: k as u32 * 160, ssrc: 7 }, &payload);
        s.handle_datagram(t0 + MS20 * k as u32, caller(), &data, &mut out);
        counters.barge_in_echo += s.take_counters().barge_in_echo;
    }
    (out, counters)
}

#[test]
fn the_prompt_s_own_echo_does_not_barge_in_but_speech_over_it_does() {
    let (out, c) = echo_call(None);
    let speech: Vec<_> = signals(&out).into_iter().filter(|s| matches!(s, Signal::SpeechStarted { .. })).collect();
    assert!(speech.is_empty(), "the bot's own echo is no speech: {speech:?}");
    let ended: Vec<_> = out.events.iter().filter(|e| matches!(e, Event::PlaybackEnded { .. })).collect();
    assert!(
        matches!(ended[..], [Event::PlaybackEnded { outcome: PlaybackOutcome::Finished, .. }]),
        "the echo alone must not cut the prompt: {ended:?}"
    );
    assert!(c.barge_in_echo >= 1, "the detector heard the echo as voice, and the guard held it back");

    // Someone else's voice over the same echo, from 0.8 s on.
    let other = fixture(include_bytes!("../../../testdata/speech2-8k.wav"));
    let mut says = vec![0i16; 6400];
    says.extend(&other);
    let (out, _) = echo_call(Some(&says));
    let cut = out.events.iter().find_map(|e| match e {
        Event::PlaybackEnded { outcome: PlaybackOutcome::BargeIn, played_ms, .. } => Some(*played_ms),
        _ => None,
    });
    let onset_ms = (6400 + other.iter().position(|s| s.abs() > 300).unwrap()) as u64 / 8;
    let cut = cut.expect("real speech over the echo barges in");
    assert!(cut >= onset_ms + 180 && cut <= onset_ms + 200 + 150, "cut at {cut} ms, the caller began at {onset_ms} ms");
}

#[test]
fn marks_follow_the_stream_and_a_barge_in_on_it_clears_the_rest() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let mut out = Outputs::default();
    s.handle_command(Command::SetTarget(caller()), &mut out);
    s.handle_command(Command::StreamBargeIn(Some(Duration::from_millis(200))), &mut out);
    // Ten seconds of TTS with a mark after every second.
    for m in 0..10 {
        s.handle_command(Command::Stream { pcm: vec![2500; 8000], wide: Vec::new(), mark: Some(m) }, &mut out);
    }
    let (pcm, onset) = speech();
    let mut audio = vec![0i16; 16000 + 4000];
    audio.extend(&pcm);
    caller_speaks(&mut s, t0, 0, &audio, &mut out);
    let fates: Vec<MarkFate> = out.events.iter().filter_map(|e| if let Event::Mark(f) = e { Some(*f) } else { None }).collect();
    let played: Vec<_> = fates.iter().filter_map(|f| if let MarkFate::Played(m) = f { Some(*m) } else { None }).collect();
    let cleared: Vec<_> = fates.iter().filter_map(|f| if let MarkFate::Cleared(m) = f { Some(*m) } else { None }).collect();
    let onset_s = (20000 + onset) as f64 / 8000.0;
    assert!(out.events.contains(&Event::StreamBargedIn), "the caller's speech cut the stream");
    // Marks played in order up to the cut, every later one cleared, none twice.
    assert_eq!(played, (0..played.len() as u64).collect::<Vec<_>>());
    assert_eq!(cleared, (played.len() as u64..10).collect::<Vec<_>>());
    assert_eq!(played.len(), (onset_s + 0.2).floor() as usize, "marks up to the cut (speech at {onset_s:.2} s)");
    let sent_ms = s.stream_sent() / 8;
    assert!(sent_ms as f64 >= (onset_s + 0.18) * 1000.0 && (sent_ms as f64) <= (onset_s + 0.35) * 1000.0, "stream cut at {sent_ms} ms");
}
