//! Two sessions back to back in memory (str0m's style of test): each side's datagrams
//! are handed to the other at made-up times, and each side's offer/answer goes through
//! its own `Negotiation`, so whole calls (SRTP, re-offers, hold, DTMF both ways,
//! barge-in) run without a socket, deterministically.
#![cfg(test)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::SeedableRng;

use super::tests::speech;
use super::*;
use crate::core::analysis::{DtmfSource, Signal};
use crate::core::dtmf_out::DigitSender;
use crate::core::negotiation::{Negotiation, Outcome, Remote, Request};
use crate::core::playback::PlaybackOutcome;
use crate::core::rtp;
use crate::core::srtp::sdes::SrtpPolicy;

struct Party {
    addr: SocketAddr,
    session: Session,
    negotiation: Negotiation,
    prefer: Vec<AudioCodec>,
    out: Outputs,
    /// The other side's audio as this side's jitter buffer released it.
    heard: Vec<i16>,
    events: Vec<Event>,
    /// Every RTP datagram this side sent, when.
    sent: Vec<(Instant, Vec<u8>)>,
}

impl Party {
    fn new(name: &str, port: u16, ssrc: u32, t0: Instant) -> Party {
        let cfg = SessionConfig {
            ssrc,
            initial_sequence: 65_000,
            initial_timestamp: ssrc.wrapping_mul(7),
            symmetric_rtp: true,
            jitter: JitterConfig::default(),
            analysis: AnalysisConfig::default(),
            telephone_event_pt: TELEPHONE_EVENT_PT,
            wall_start: std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            stopwatch: || Instant::now(),
            processing: Default::default(),
        };
        Party {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            session: Session::new(cfg, t0),
            negotiation: Negotiation::new(name, port),
            prefer: vec![AudioCodec::G722, AudioCodec::Pcmu, AudioCodec::Pcma],
            out: Outputs::default(),
            heard: Vec::new(),
            events: Vec::new(),
            sent: Vec::new(),
        }
    }

    fn command(&mut self, cmd: Command) {
        self.session.handle_command(cmd, &mut self.out);
    }

    /// One negotiation step on this side, applied as the call task applies it.
    fn negotiate(&mut self, remote: Remote, policy: SrtpPolicy, rng: &mut rand::rngs::StdRng) -> String {
        let request = Request { remote, policy, prefer: self.prefer.clone(), ip: self.addr.ip() };
        match self.negotiation.negotiate(request, rng).expect("negotiates") {
            Outcome::Offered { local_sdp } => local_sdp,
            Outcome::Agreed(a) => {
                self.command(Command::SetMedia(a.media.clone()));
                if let Some(to) = a.remote() {
                    self.command(Command::SetTarget(to));
                }
                a.local_sdp
            }
        }
    }

    fn signals(&self) -> impl Iterator<Item = &Signal> {
        self.events.iter().filter_map(|e| if let Event::Signal(s) = e { Some(s) } else { None })
    }

    fn digits(&self) -> String {
        self.signals()
            .filter_map(|s| match s {
                Signal::Dtmf { digit, end: true, source: DtmfSource::Rfc4733, .. } => Some(*digit),
                _ => None,
            })
            .collect()
    }

    fn ended(&self, id: PlaybackId) -> Option<(PlaybackOutcome, u64)> {
        self.events.iter().find_map(|e| match e {
            Event::PlaybackEnded { id: i, outcome, played_ms } if *i == id => Some((*outcome, *played_ms)),
            _ => None,
        })
    }

    /// Headers of what this side sent from `since` on.
    fn sent_headers(&self, since: Instant) -> Vec<rtp::RtpHeader> {
        self.sent.iter().filter(|(t, _)| *t >= since).map(|(_, d)| rtp::parse(d).unwrap().header()).collect()
    }
}

struct TwoParty {
    now: Instant,
    a: Party,
    b: Party,
    rng: rand::rngs::StdRng,
}

impl TwoParty {
    fn new() -> TwoParty {
        let t0 = Instant::now();
        TwoParty {
            now: t0,
            a: Party::new("a", 30_000, 0xa, t0),
            b: Party::new("b", 30_002, 0xb, t0),
            rng: rand::rngs::StdRng::seed_from_u64(42),
        }
    }

    /// `a` offers, `b` answers, `a` takes the answer.
    fn a_calls_b(&mut self, a_policy: SrtpPolicy, b_policy: SrtpPolicy) {
        let offer = self.a.negotiate(Remote::Nothing, a_policy, &mut self.rng);
        let answer = self.b.negotiate(Remote::Offer(offer), b_policy, &mut self.rng);
        self.a.negotiate(Remote::Answer(answer), a_policy, &mut self.rng);
        self.deliver();
    }

    /// Runs both sessions for `ms`, each woken at its own poll_timeout, every datagram
    /// arriving at once at the other side.
    fn run(&mut self, ms: u64) {
        let until = self.now + Duration::from_millis(ms);
        loop {
            let next = self.a.session.poll_timeout().min(self.b.session.poll_timeout());
            if next > until {
                break;
            }
            self.now = next.max(self.now);
            for p in [&mut self.a, &mut self.b] {
                if p.session.poll_timeout() <= self.now {
                    p.session.handle_tick(self.now, &mut p.out);
                }
            }
            self.deliver();
        }
        self.now = until;
    }

    /// Hands each side's datagrams to the other (RTCP from the odd port) and keeps
    /// what each heard and was told.
    fn deliver(&mut self) {
        let now = self.now;
        for _ in 0..2 {
            let (from, to) = (&mut self.a, &mut self.b);
            hand_over(now, from, to);
            let (from, to) = (&mut self.b, &mut self.a);
            hand_over(now, from, to);
        }
        for p in [&mut self.a, &mut self.b] {
            for h in p.out.heard.drain(..).filter(|h| !h.late) {
                p.heard.extend_from_slice(&h.pcm);
            }
            p.events.append(&mut p.out.events);
            p.out.played.clear();
        }
    }
}

fn hand_over(now: Instant, from: &mut Party, to: &mut Party) {
    for t in from.out.transmit.drain(..) {
        assert_eq!(t.to, to.addr, "sent to the other side");
        if !rtp::is_rtcp(&t.data) {
            from.sent.push((now, t.data.clone()));
        }
        to.session.handle_datagram(now, from.addr, &t.data, &mut to.out);
    }
    let rtcp_from = SocketAddr::new(from.addr.ip(), from.addr.port() + 1);
    for t in from.out.rtcp.drain(..) {
        to.session.handle_rtcp(now, rtcp_from, &t.data);
    }
}

/// The best normalised correlation of `b` against `a` over lags up to `max_lag`.
fn correlation(a: &[i16], b: &[i16], max_lag: usize) -> f64 {
    (0..=max_lag)
        .map(|lag| {
            let n = a.len().min(b.len().saturating_sub(lag));
            let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
            for i in 0..n {
                let (x, y) = (f64::from(a[i]), f64::from(b[i + lag]));
                ab += x * y;
                aa += x * x;
                bb += y * y;
            }
            if aa > 0.0 && bb > 0.0 {
                ab / (aa * bb).sqrt()
            } else {
                0.0
            }
        })
        .fold(0.0, f64::max)
}

fn voice(seconds: f64) -> Vec<i16> {
    // Two partials an octave and a fifth apart, like a sustained vowel.
    (0..(seconds * 8000.0) as usize)
        .map(|i| {
            let t = i as f64 / 8000.0;
            (6000.0 * (2.0 * std::f64::consts::PI * 220.0 * t).sin() + 3000.0 * (2.0 * std::f64::consts::PI * 660.0 * t).sin()) as i16
        })
        .collect()
}

#[test]
fn a_negotiated_srtp_call_carries_audio_both_ways_under_keys() {
    let mut call = TwoParty::new();
    call.a_calls_b(SrtpPolicy::Required, SrtpPolicy::Optional);
    assert!(call.a.session.is_secure() && call.b.session.is_secure());
    assert_eq!(call.a.session.outbound_codec(), AudioCodec::G722);
    let (a_says, b_says) = (voice(2.0), speech().0);
    call.a.command(Command::Play { id: 1, pcm: a_says.clone().into(), barge_in: None });
    call.b.command(Command::Play { id: 2, pcm: b_says[..16_000].to_vec().into(), barge_in: None });
    // Long enough for RTCP's first report (2.5 to 7.5 s).
    call.run(8000);
    // Windows 1000 samples into what was heard, searched 1600 either way of that.
    assert!(correlation(&a_says[4000..8000], &call.b.heard[3000..], 1600) > 0.9, "b hears a");
    assert!(correlation(&b_says[4000..8000], &call.a.heard[3000..], 1600) > 0.9, "a hears b");
    for p in [&mut call.a, &mut call.b] {
        let c = p.session.take_counters();
        assert!(c.srtp_in > 100, "{}", c.srtp_in);
        assert_eq!((c.srtp_dropped.total(), c.foreign, c.malformed), (0, 0, 0));
        assert!(c.rtcp_sent > 0, "reports went out");
    }
    assert_eq!(call.a.ended(1), Some((PlaybackOutcome::Finished, 2000)));
}

#[test]
fn a_re_offer_changes_the_codec_mid_call_and_numbering_runs_on() {
    let mut call = TwoParty::new();
    call.a_calls_b(SrtpPolicy::Off, SrtpPolicy::Off);
    let says = voice(4.0);
    call.a.command(Command::Play { id: 1, pcm: says.clone().into(), barge_in: None });
    call.run(1000);
    let switch = call.now;
    call.b.prefer = vec![AudioCodec::Pcmu];
    let offer = call.a.negotiate(Remote::Nothing, SrtpPolicy::Off, &mut call.rng);
    let answer = call.b.negotiate(Remote::Offer(offer), SrtpPolicy::Off, &mut call.rng);
    call.a.negotiate(Remote::Answer(answer), SrtpPolicy::Off, &mut call.rng);
    call.run(2000);
    assert!(call.a.events.contains(&Event::CodecChanged(AudioCodec::Pcmu)));
    assert!(call.b.events.contains(&Event::CodecChanged(AudioCodec::Pcmu)));
    let headers = call.a.sent_headers(call.now - Duration::from_secs(3));
    let pts: Vec<u8> = headers.iter().map(|h| h.payload_type).collect();
    let first_pcmu = pts.iter().position(|&p| p == 0).expect("PCMU after the re-offer");
    assert!(pts[..first_pcmu].iter().all(|&p| p == 9) && pts[first_pcmu..].iter().all(|&p| p == 0), "{pts:?}");
    assert!(headers.windows(2).all(|w| w[1].sequence == w[0].sequence.wrapping_add(1)), "no gap in sequence numbers");
    // After the switch b still hears a's voice, now through PCMU.
    let at = (switch - call.b.session.started()).as_millis() as usize * 8 + 4000;
    assert!(correlation(&says[at..at + 4000], &call.b.heard[at - 1000..], 1600) > 0.9);
}

#[test]
fn hold_stops_the_held_sides_audio_and_resume_starts_a_new_talkspurt() {
    let mut call = TwoParty::new();
    call.a_calls_b(SrtpPolicy::Optional, SrtpPolicy::Optional);
    call.a.command(Command::Play { id: 1, pcm: voice(6.0).into(), barge_in: None });
    call.b.command(Command::Play { id: 2, pcm: voice(6.0).into(), barge_in: None });
    call.run(1000);
    // b puts a on hold: its re-offer says sendonly, a answers recvonly.
    let offer = call.b.negotiate(Remote::Nothing, SrtpPolicy::Optional, &mut call.rng).replace("a=sendrecv", "a=sendonly");
    let answer = call.a.negotiate(Remote::Offer(offer), SrtpPolicy::Optional, &mut call.rng);
    assert!(answer.contains("a=recvonly"), "{answer}");
    call.b.negotiate(Remote::Answer(answer), SrtpPolicy::Optional, &mut call.rng);
    let held = call.now;
    let last_before = call.a.sent_headers(held - Duration::from_secs(1)).last().unwrap().sequence;
    call.run(2000);
    assert!(call.a.sent_headers(held + Duration::from_millis(1)).is_empty(), "a sends nothing while held");
    assert!(call.b.sent_headers(held + Duration::from_millis(1)).len() > 90, "b still talks");
    // Resume.
    let offer = call.b.negotiate(Remote::Nothing, SrtpPolicy::Optional, &mut call.rng);
    let answer = call.a.negotiate(Remote::Offer(offer), SrtpPolicy::Optional, &mut call.rng);
    call.b.negotiate(Remote::Answer(answer), SrtpPolicy::Optional, &mut call.rng);
    let resumed = call.now;
    call.run(1000);
    let after = call.a.sent_headers(resumed);
    assert!(after.len() > 45, "a talks again: {}", after.len());
    assert!(after[0].marker && after[1..].iter().all(|h| !h.marker), "one new talkspurt");
    assert_eq!(after[0].sequence, last_before.wrapping_add(1), "sequence numbers waited on hold");
    assert!(call.a.session.is_secure(), "SRTP went on through both re-offers");
    assert_eq!(call.b.session.take_counters().srtp_dropped.total(), 0);
}

#[test]
fn digits_go_both_ways_as_telephone_events_while_audio_waits() {
    let mut call = TwoParty::new();
    call.a_calls_b(SrtpPolicy::Optional, SrtpPolicy::Optional);
    call.a.command(Command::Play { id: 1, pcm: voice(1.0).into(), barge_in: None });
    call.a.command(Command::SendDigits(DigitSender::new("12#", 800, 480).unwrap()));
    call.b.command(Command::SendDigits(DigitSender::new("*5", 800, 480).unwrap()));
    call.run(3000);
    assert_eq!(call.b.digits(), "12#");
    assert_eq!(call.a.digits(), "*5");
    for p in [&call.a, &call.b] {
        assert_eq!(p.events.iter().filter(|e| **e == Event::DigitsSent).count(), 1);
    }
    // a's prompt went out after its digits (it waited), and whole.
    assert_eq!(call.a.ended(1), Some((PlaybackOutcome::Finished, 1000)));
    let pts: Vec<u8> = call.a.sent_headers(call.now - Duration::from_secs(3)).iter().map(|h| h.payload_type).collect();
    let first_audio = pts.iter().position(|&p| p != TELEPHONE_EVENT_PT).unwrap();
    assert!(first_audio >= 3 * 7 && pts[first_audio..].iter().all(|&p| p != TELEPHONE_EVENT_PT), "{pts:?}");
}

#[test]
fn the_far_end_talking_over_a_prompt_barges_in_and_silence_does_not() {
    let mut call = TwoParty::new();
    call.a_calls_b(SrtpPolicy::Optional, SrtpPolicy::Optional);
    call.a.command(Command::Play { id: 1, pcm: voice(10.0).into(), barge_in: Some(Duration::from_millis(200)) });
    call.run(2000);
    assert_eq!(call.a.ended(1), None, "no speech, no barge-in");
    let (words, onset) = speech();
    let talks = call.now + Duration::from_micros(onset as u64 * 125);
    call.b.command(Command::Play { id: 2, pcm: words.into(), barge_in: None });
    call.run(2000);
    let (outcome, played_ms) = call.a.ended(1).expect("the prompt was cut");
    assert_eq!(outcome, PlaybackOutcome::BargeIn);
    // Cut at least the barge-in time after the far end began to speak, and within a
    // few frames and the jitter buffer's hold of that.
    let spoke_ms = (talks - call.a.session.started()).as_millis() as u64;
    assert!((spoke_ms + 200..=spoke_ms + 200 + 200).contains(&played_ms), "spoke at {spoke_ms} ms, cut at {played_ms} ms");
    assert!(call.a.signals().any(|s| matches!(s, Signal::SpeechStarted { .. })));
}
