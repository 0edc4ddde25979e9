//! One call's media rules as a sans-IO state machine (str0m's shape).
//!
//! Inputs: a received datagram with its arrival time, a tick, a command. Outputs:
//! datagrams to send, the caller's audio for listeners, our own audio as sent, and
//! events. No socket, clock, task or file in here: the I/O layer feeds real time in,
//! tests feed made-up time in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::g711::Codec;
use super::jitter::{Heard, JitterBuffer, JitterConfig, RtpId, FRAME_SAMPLES};
use super::latch::{Latch, Verdict};
use super::pacer::Pacer;
use super::playback::{FrameSource, Playback, PlaybackId, PlaybackOutcome};
use super::rtp::{self, Datagram, RtpHeader};

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub ssrc: u32,
    pub initial_sequence: u16,
    pub initial_timestamp: u32,
    /// Symmetric RTP latching (see latch.rs); off for asymmetric peers.
    pub symmetric_rtp: bool,
    pub jitter: JitterConfig,
}

impl SessionConfig {
    /// Random SSRC, sequence and timestamp origins as RFC 3550 §5.1 asks.
    pub fn random(symmetric_rtp: bool, jitter: JitterConfig) -> SessionConfig {
        SessionConfig { ssrc: rand::random(), initial_sequence: rand::random(), initial_timestamp: rand::random(), symmetric_rtp, jitter }
    }
}

#[derive(Debug, Clone)]
pub enum Command {
    Play {
        id: PlaybackId,
        pcm: Arc<[i16]>,
    },
    /// Barge-in: cut the prompt and drop all queued audio.
    Stop,
    SetTarget(SocketAddr),
    /// A target given alongside a prompt: used only while nothing better is known.
    SuggestTarget(SocketAddr),
    SetEcho(bool),
    /// Streamed TTS, already at 8 kHz.
    Stream(Vec<i16>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    PlaybackEnded { id: PlaybackId, outcome: PlaybackOutcome },
    Latched(SocketAddr),
    CodecChanged(Codec),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub data: Vec<u8>,
    /// When the pacer wanted it sent (for the pacing-lateness metric).
    pub due: Instant,
}

/// Our own audio as it went out, at its timeline position (for the recording).
#[derive(Debug, Clone, PartialEq)]
pub struct Played {
    pub pos: u64,
    pub pcm: [i16; FRAME_SAMPLES],
    pub source: FrameSource,
}

/// What the session asks the I/O layer to do. Reused across calls: the I/O layer
/// drains each vector after every input.
#[derive(Debug, Default)]
pub struct Outputs {
    pub transmit: Vec<Transmit>,
    pub heard: Vec<Heard>,
    pub played: Vec<Played>,
    pub events: Vec<Event>,
}

impl Outputs {
    pub fn clear(&mut self) {
        self.transmit.clear();
        self.heard.clear();
        self.played.clear();
        self.events.clear();
    }
}

/// Counters since the last `take_counters`, so the I/O layer can add them to metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub malformed: u64,
    pub rtcp: u64,
    pub foreign: u64,
    pub unsupported_payload: u64,
    pub late: u64,
    pub lost_samples: u64,
    pub recovered_samples: u64,
    pub discontinuities: u64,
    pub frames_skipped: u64,
}

pub struct Session {
    start: Instant,
    ssrc: u32,
    sequence: u16,
    timestamp_origin: u32,
    latch: Latch,
    pacer: Pacer,
    jitter: JitterBuffer,
    playback: Playback,
    echo: bool,
    inbound_codec: Option<Codec>,
    outbound_codec: Codec,
    in_talkspurt: bool,
    counters: Counters,
    reported_jitter: super::jitter::JitterStats,
    reported_skips: u64,
    interarrival: super::interarrival::Interarrival,
    encode_buf: Vec<u8>,
}

impl Session {
    pub fn new(cfg: SessionConfig, start: Instant) -> Session {
        Session {
            start,
            ssrc: cfg.ssrc,
            sequence: cfg.initial_sequence,
            timestamp_origin: cfg.initial_timestamp,
            latch: Latch::new(cfg.symmetric_rtp),
            pacer: Pacer::new(start),
            jitter: JitterBuffer::new(cfg.jitter, start),
            playback: Playback::default(),
            echo: false,
            inbound_codec: None,
            outbound_codec: Codec::Pcmu,
            in_talkspurt: false,
            counters: Counters::default(),
            reported_jitter: Default::default(),
            reported_skips: 0,
            interarrival: Default::default(),
            encode_buf: Vec::with_capacity(FRAME_SAMPLES),
        }
    }

    pub fn started(&self) -> Instant {
        self.start
    }

    /// When the session next needs a tick.
    pub fn poll_timeout(&self) -> Instant {
        self.pacer.next_deadline()
    }

    pub fn target(&self) -> Option<SocketAddr> {
        self.latch.target()
    }

    pub fn outbound_codec(&self) -> Codec {
        self.outbound_codec
    }

    pub fn current_playback(&self) -> Option<PlaybackId> {
        self.playback.current()
    }

    /// Streamed samples waiting to be played (the I/O layer's back-pressure gauge).
    pub fn stream_queued(&self) -> usize {
        self.playback.stream_queued()
    }

    /// True when nothing is playing or queued.
    pub fn is_idle(&self) -> bool {
        self.playback.current().is_none() && self.playback.stream_queued() == 0
    }

    pub fn take_counters(&mut self) -> Counters {
        let j = self.jitter.stats;
        self.counters.late += (j.late + j.duplicate) - (self.reported_jitter.late + self.reported_jitter.duplicate);
        self.counters.lost_samples += j.lost_samples - self.reported_jitter.lost_samples;
        self.counters.recovered_samples += j.recovered_samples - self.reported_jitter.recovered_samples;
        self.counters.discontinuities += j.discontinuities - self.reported_jitter.discontinuities;
        self.counters.frames_skipped += self.pacer.skipped - self.reported_skips;
        self.reported_jitter = j;
        self.reported_skips = self.pacer.skipped;
        std::mem::take(&mut self.counters)
    }

    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8], out: &mut Outputs) {
        let packet = match rtp::classify(data) {
            Ok(Datagram::Rtp(p)) => p,
            Ok(Datagram::Rtcp) => {
                self.counters.rtcp += 1;
                return;
            }
            Err(_) => {
                self.counters.malformed += 1;
                return;
            }
        };
        match self.latch.on_packet(from) {
            Verdict::Accept => {}
            Verdict::Latched(addr) => out.events.push(Event::Latched(addr)),
            Verdict::Foreign => {
                self.counters.foreign += 1;
                return;
            }
        }
        let Some(codec) = Codec::from_payload_type(packet.payload_type) else {
            // telephone-event, comfort noise, a codec we did not offer: counted, not played.
            self.counters.unsupported_payload += 1;
            return;
        };
        self.counters.packets_in += 1;
        self.counters.bytes_in += data.len() as u64;
        if self.inbound_codec != Some(codec) {
            self.inbound_codec = Some(codec);
            if codec != self.outbound_codec {
                // Answer in the codec the caller speaks.
                self.outbound_codec = codec;
                out.events.push(Event::CodecChanged(codec));
            }
        }
        // The jitter buffer keeps the decoded audio, so it is decoded into its own Vec.
        let mut pcm = Vec::with_capacity(packet.payload.len());
        codec.decode_into(packet.payload, &mut pcm);
        if self.echo {
            self.playback.push_echo(&pcm);
        }
        self.interarrival.on_packet(now, packet.ssrc, packet.timestamp);
        self.jitter.on_packet(now, RtpId { ssrc: packet.ssrc, seq: packet.sequence, ts: packet.timestamp }, pcm, &mut out.heard);
    }

    /// RFC 3550 interarrival jitter of the caller's RTP so far, in seconds (None before
    /// any packet).
    pub fn interarrival_jitter(&self) -> Option<f64> {
        self.interarrival.has_data().then(|| self.interarrival.seconds())
    }

    pub fn handle_tick(&mut self, now: Instant, out: &mut Outputs) {
        self.jitter.on_tick(now, &mut out.heard);
        for index in self.pacer.due(now) {
            self.produce_frame(index, out);
        }
    }

    pub fn handle_command(&mut self, cmd: Command, out: &mut Outputs) {
        match cmd {
            Command::Play { id, pcm } => {
                if let Some(cut) = self.playback.play(id, pcm) {
                    out.events.push(Event::PlaybackEnded { id: cut, outcome: PlaybackOutcome::Interrupted });
                }
            }
            Command::Stop => {
                if let Some(cut) = self.playback.barge_in() {
                    out.events.push(Event::PlaybackEnded { id: cut, outcome: PlaybackOutcome::Stopped });
                }
            }
            Command::SetTarget(addr) => self.latch.set_target(addr),
            Command::SuggestTarget(addr) => self.latch.suggest_target(addr),
            Command::SetEcho(on) => {
                self.echo = on;
                if !on {
                    self.playback.clear_echo();
                }
            }
            Command::Stream(pcm) => self.playback.push_stream(&pcm),
        }
    }

    /// Ends the call: whatever plays is reported as cut by the call's end.
    pub fn close(&mut self, out: &mut Outputs) {
        if let Some(id) = self.playback.barge_in() {
            out.events.push(Event::PlaybackEnded { id, outcome: PlaybackOutcome::CallEnded });
        }
    }

    fn produce_frame(&mut self, index: u64, out: &mut Outputs) {
        let mut frame = [0i16; FRAME_SAMPLES];
        let (source, finished) = self.playback.next_frame(&mut frame);
        if let Some(id) = finished {
            out.events.push(Event::PlaybackEnded { id, outcome: PlaybackOutcome::Finished });
        }
        let Some(source) = source else {
            // Silence is not sent; the timestamp still advances with the clock, and
            // the next packet starts a new talkspurt.
            self.in_talkspurt = false;
            return;
        };
        let pos = index * FRAME_SAMPLES as u64;
        let header = RtpHeader {
            marker: !self.in_talkspurt,
            payload_type: self.outbound_codec.payload_type(),
            sequence: self.sequence,
            timestamp: self.timestamp_origin.wrapping_add(pos as u32),
            ssrc: self.ssrc,
        };
        self.in_talkspurt = true;
        self.sequence = self.sequence.wrapping_add(1);
        self.outbound_codec.encode_into(&frame, &mut self.encode_buf);
        if let Some(to) = self.latch.target() {
            let data = rtp::build(header, &self.encode_buf);
            self.counters.packets_out += 1;
            self.counters.bytes_out += data.len() as u64;
            out.transmit.push(Transmit { to, data, due: self.pacer.deadline(index) });
        }
        out.played.push(Played { pos, pcm: frame, source });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::g711::linear_to_ulaw;
    use std::time::Duration;

    const MS20: Duration = Duration::from_millis(20);

    fn caller() -> SocketAddr {
        "127.0.0.1:40000".parse().unwrap()
    }

    fn session(t0: Instant) -> Session {
        let cfg = SessionConfig {
            ssrc: 0x1234,
            initial_sequence: 65530,
            initial_timestamp: u32::MAX - 800,
            symmetric_rtp: true,
            jitter: JitterConfig::default(),
        };
        Session::new(cfg, t0)
    }

    fn rtp_from_caller(pt: u8, seq: u16, ts: u32, sample: i16) -> Vec<u8> {
        let payload = match pt {
            8 => vec![crate::core::g711::linear_to_alaw(sample); 160],
            _ => vec![linear_to_ulaw(sample); 160],
        };
        rtp::build(RtpHeader { marker: false, payload_type: pt, sequence: seq, timestamp: ts, ssrc: 99 }, &payload)
    }

    fn run_ticks(s: &mut Session, t0: Instant, from: u64, to: u64, out: &mut Outputs) {
        for k in from..to {
            s.handle_tick(t0 + MS20 * k as u32, out);
        }
    }

    #[test]
    fn sequence_and_timestamp_continue_across_prompts_and_silence() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        s.handle_command(Command::SetTarget(caller()), &mut out);
        s.handle_command(Command::Play { id: 1, pcm: vec![1000i16; 480].into() }, &mut out);
        run_ticks(&mut s, t0, 0, 5, &mut out); // 3 frames of prompt, 2 of silence
        s.handle_command(Command::Play { id: 2, pcm: vec![2000i16; 320].into() }, &mut out);
        run_ticks(&mut s, t0, 5, 8, &mut out);
        let packets: Vec<_> = out.transmit.iter().map(|t| rtp::parse(&t.data).unwrap().clone()).collect();
        assert_eq!(packets.len(), 5);
        let seqs: Vec<u16> = packets.iter().map(|p| p.sequence).collect();
        assert_eq!(seqs, vec![65530, 65531, 65532, 65533, 65534], "sequence continues across prompts");
        let ts: Vec<u32> = packets.iter().map(|p| p.timestamp.wrapping_sub(u32::MAX - 800)).collect();
        assert_eq!(ts, vec![0, 160, 320, 800, 960], "timestamps follow the clock through the silence");
        let markers: Vec<bool> = packets.iter().map(|p| p.marker).collect();
        assert_eq!(markers, vec![true, false, false, true, false], "marker at each talkspurt start");
        assert!(packets.iter().all(|p| p.ssrc == 0x1234 && p.payload_type == 0));
        let ended: Vec<_> = out.events.iter().filter(|e| matches!(e, Event::PlaybackEnded { .. })).collect();
        assert_eq!(ended.len(), 2);
    }

    #[test]
    fn barge_in_cuts_within_one_frame() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        s.handle_command(Command::SetTarget(caller()), &mut out);
        s.handle_command(Command::Play { id: 1, pcm: vec![8000i16; 8000].into() }, &mut out);
        s.handle_command(Command::Stream(vec![3000; 1600]), &mut out);
        run_ticks(&mut s, t0, 0, 10, &mut out);
        out.clear();
        s.handle_command(Command::Stop, &mut out);
        assert_eq!(out.events, vec![Event::PlaybackEnded { id: 1, outcome: PlaybackOutcome::Stopped }]);
        run_ticks(&mut s, t0, 10, 11, &mut out);
        assert!(out.transmit.is_empty(), "the next frame after stop is silent");
        assert_eq!(s.stream_queued(), 0, "queued TTS is flushed too");

        s.handle_command(Command::Play { id: 2, pcm: vec![8000i16; 8000].into() }, &mut out);
        run_ticks(&mut s, t0, 11, 12, &mut out);
        s.handle_command(Command::Play { id: 3, pcm: vec![-8000i16; 8000].into() }, &mut out);
        out.transmit.clear();
        run_ticks(&mut s, t0, 12, 13, &mut out);
        let p = rtp::parse(&out.transmit[0].data).unwrap().payload.to_vec();
        assert_eq!(p, vec![linear_to_ulaw(-8000); 160], "the next frame is the new prompt");
        assert!(out.events.contains(&Event::PlaybackEnded { id: 2, outcome: PlaybackOutcome::Interrupted }));
    }

    #[test]
    fn heard_audio_is_decoded_by_payload_type_and_reply_follows_codec() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        s.handle_datagram(t0, caller(), &rtp_from_caller(0, 1, 0, 4000), &mut out);
        s.handle_datagram(t0 + MS20, caller(), &rtp_from_caller(8, 2, 160, -4000), &mut out);
        assert_eq!(out.heard.len(), 2);
        assert!((out.heard[0].pcm[0] - 4000).abs() < 200);
        assert!((out.heard[1].pcm[0] + 4000).abs() < 200);
        assert!(out.events.contains(&Event::CodecChanged(Codec::Pcma)));
        s.handle_command(Command::Play { id: 1, pcm: vec![100i16; 160].into() }, &mut out);
        run_ticks(&mut s, t0, 0, 1, &mut out);
        assert_eq!(rtp::parse(&out.transmit[0].data).unwrap().payload_type, 8, "we answer in PCMA now");
    }

    #[test]
    fn junk_rtcp_foreign_and_unknown_payloads_are_counted_not_played() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        s.handle_datagram(t0, caller(), &rtp_from_caller(0, 1, 0, 4000), &mut out);
        s.handle_datagram(t0, caller(), &[0xde, 0xad], &mut out);
        s.handle_datagram(t0, caller(), &[0x81, 200, 0, 6, 0, 0, 0, 1], &mut out);
        s.handle_datagram(t0, "10.9.9.9:1".parse().unwrap(), &rtp_from_caller(0, 2, 160, 1), &mut out);
        s.handle_datagram(t0, caller(), &rtp_from_caller(101, 3, 320, 1), &mut out);
        let c = s.take_counters();
        assert_eq!((c.packets_in, c.malformed, c.rtcp, c.foreign, c.unsupported_payload), (1, 1, 1, 1, 1));
        assert_eq!(out.heard.len(), 1);
        assert_eq!(s.take_counters(), Counters::default(), "counters are deltas");
    }

    #[test]
    fn latches_to_the_source_and_sends_there() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        s.handle_command(Command::SetTarget("192.168.1.2:4000".parse().unwrap()), &mut out);
        let nat: SocketAddr = "203.0.113.1:50000".parse().unwrap();
        s.handle_datagram(t0, nat, &rtp_from_caller(0, 1, 0, 0), &mut out);
        assert!(out.events.contains(&Event::Latched(nat)));
        s.handle_command(Command::Play { id: 1, pcm: vec![1i16; 160].into() }, &mut out);
        run_ticks(&mut s, t0, 0, 1, &mut out);
        assert_eq!(out.transmit[0].to, nat);
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
        s.handle_command(Command::Play { id: 1, pcm: vec![1i16; 160].into() }, &mut out);
        s.handle_datagram(t0 + MS20 * 50, caller(), &rtp_from_caller(0, 1, 12345, 0), &mut out);
        run_ticks(&mut s, t0, 50, 51, &mut out);
        assert_eq!(out.played[0].pos, 8000, "sent at 1 s");
        let talk = out.heard.iter().find(|h| !h.concealed).unwrap();
        // Heard at 1 s minus the 40 ms hold the buffer allows for late packets.
        assert!((7680..=8000).contains(&talk.pos), "heard at {}", talk.pos);
    }
}
