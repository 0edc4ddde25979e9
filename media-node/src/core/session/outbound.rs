//! The node's audio on its way out: what plays (prompts, streamed TTS, echo), the
//! 20 ms frame clock, the encoder, packets of the far end's ptime, talkspurts and
//! hold, RTP numbering, and packets held until their time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::inbound::Stopwatch;
use super::io::{Counters, Event, Outputs, Transmit};
use super::transport::Transport;
use crate::core::codec::{AudioCodec, ByCodec, Encoder, OpusPrefs};
use crate::core::dtmf_out::DigitFrame;
use crate::core::jitter::FRAME_SAMPLES;
use crate::core::pacer::Pacer;
use crate::core::playback::{FrameSource, Playback};
use crate::core::rtp::RtpHeader;

/// The longest packet the node sends: 60 ms.
const MAX_PACKET_SAMPLES: usize = FRAME_SAMPLES * 3;

/// What the node sends, as offer/answer agreed it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sending {
    pub payload_type: u8,
    pub codec: AudioCodec,
    pub opus: OpusPrefs,
    pub ptime_ms: u32,
    /// False on hold.
    pub sends: bool,
}

pub(super) struct Outbound {
    ssrc: u32,
    sequence: u16,
    timestamp_origin: u32,
    pacer: Pacer,
    /// What plays: prompts, streamed TTS, the caller's echo.
    pub(super) playback: Playback,
    /// What the node sends, and its payload type.
    encoder: Encoder,
    payload_type: u8,
    /// False while the far end holds the call (the node sends nothing).
    sending: bool,
    in_talkspurt: bool,
    encode_buf: Vec<u8>,
    /// Samples per packet the node sends (160: 20 ms, as calls without SDP always do).
    packet_samples: usize,
    /// Audio of the packet being filled (ptime over 20 ms), and its timeline position
    /// and marker.
    pending: Vec<i16>,
    /// The pending audio's 16 kHz copy (a wideband codec), while every frame in it had
    /// one; else empty, and the packet is made from the 8 kHz audio.
    pending_wide: Vec<i16>,
    pending_pos: u64,
    pending_marker: bool,
    /// How long after its audio's start a packet goes out: 0 up to 20 ms packets, else
    /// ptime - 20 rounded up to the 20 ms tick, so every packet is complete by then and
    /// they leave exactly a ptime apart.
    send_delay: Duration,
    /// Packets made ahead of their time (10 and 30 ms packets), in order.
    held: VecDeque<Transmit>,
    stopwatch: Stopwatch,
    encode_nanos: ByCodec<u64>,
}

impl Outbound {
    pub(super) fn new(ssrc: u32, initial_sequence: u16, timestamp_origin: u32, start: Instant, stopwatch: Stopwatch) -> Outbound {
        Outbound {
            ssrc,
            sequence: initial_sequence,
            timestamp_origin,
            pacer: Pacer::new(start),
            playback: Playback::default(),
            encoder: Encoder::new(AudioCodec::Pcmu),
            payload_type: 0,
            sending: true,
            in_talkspurt: false,
            encode_buf: Vec::with_capacity(FRAME_SAMPLES),
            packet_samples: FRAME_SAMPLES,
            pending: Vec::with_capacity(MAX_PACKET_SAMPLES),
            pending_wide: Vec::new(),
            pending_pos: 0,
            pending_marker: false,
            send_delay: Duration::ZERO,
            held: VecDeque::new(),
            stopwatch,
            encode_nanos: ByCodec::default(),
        }
    }

    pub(super) fn codec(&self) -> AudioCodec {
        self.encoder.codec
    }

    pub(super) fn is_sending(&self) -> bool {
        self.sending
    }

    /// When the next frame is due, or a packet held for its time.
    pub(super) fn poll_timeout(&self) -> Instant {
        let frame = self.pacer.next_deadline();
        self.held.front().map_or(frame, |t| t.due.min(frame))
    }

    /// The frames due by `now` (their indexes), after the held packets whose time came.
    pub(super) fn due(&mut self, now: Instant, out: &mut Outputs) -> std::ops::Range<u64> {
        while self.held.front().is_some_and(|t| t.due <= now) {
            out.transmit.extend(self.held.pop_front());
        }
        self.pacer.due(now)
    }

    /// The time of the next frame: the session's last, when it ends.
    pub(super) fn next_deadline(&self) -> Instant {
        self.pacer.deadline(self.pacer.next_index())
    }

    /// What offer/answer agreed the node sends. What is half a packet goes out first,
    /// under the codec it was meant for.
    pub(super) fn set_media(&mut self, s: Sending, transport: &mut Transport, out: &mut Outputs) {
        self.flush(transport, out);
        let packet_ms = s.codec.packet_ms(s.ptime_ms);
        self.packet_samples = packet_ms as usize * FRAME_SAMPLES / 20;
        self.send_delay = Duration::from_millis(u64::from(packet_ms.saturating_sub(20).div_ceil(20) * 20));
        if self.encoder.codec != s.codec || self.payload_type != s.payload_type || self.encoder.opus != s.opus {
            // A codec change by re-offer (or new Opus preferences): the new codec's
            // state starts fresh; sequence numbers and timestamps run on.
            if self.encoder.codec != s.codec || self.payload_type != s.payload_type {
                out.events.push(Event::CodecChanged(s.codec));
            }
            self.encoder = Encoder::with_prefs(s.codec, s.opus);
            self.payload_type = s.payload_type;
        }
        if !s.sends {
            self.in_talkspurt = false;
        }
        self.sending = s.sends;
    }

    /// A call that negotiated nothing answers in the codec the caller speaks.
    pub(super) fn follow_caller(&mut self, payload_type: u8, codec: AudioCodec, out: &mut Outputs) {
        if codec != self.encoder.codec {
            self.encoder = Encoder::new(codec);
            self.payload_type = payload_type;
            out.events.push(Event::CodecChanged(codec));
        }
    }

    /// One frame of telephone-event (or its pause) in place of audio: a packet being
    /// filled goes out first, and audio after the digits starts a new talkspurt. The
    /// event's timestamp counts on its own clock (`clock_ratio` times 8 kHz), which may
    /// not be the codec's (telephone-event/8000 beside Opus).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_digit(
        &mut self,
        index: u64,
        frame: DigitFrame,
        payload_type: u8,
        clock_ratio: u32,
        transport: &mut Transport,
        out: &mut Outputs,
    ) {
        self.flush_at(index, transport, out);
        self.in_talkspurt = false;
        if let DigitFrame::Event { marker, start_back, payload } = frame {
            let pos = index * FRAME_SAMPLES as u64;
            let header = RtpHeader {
                marker,
                payload_type,
                sequence: self.sequence,
                timestamp: self.timestamp_origin.wrapping_add(pos.wrapping_mul(u64::from(clock_ratio)) as u32).wrapping_sub(start_back),
                ssrc: self.ssrc,
            };
            self.sequence = self.sequence.wrapping_add(1);
            transport.send_rtp(header, &payload, self.pacer.deadline(index), out);
        }
    }

    /// Frame `index` of the node's audio (`wide`: its 16 kHz copy, when its source had
    /// it and the codec is wideband): sent when something plays (`source`) and the far end does not hold the
    /// call, in packets of the far end's ptime.
    pub(super) fn send_frame(
        &mut self,
        index: u64,
        source: Option<FrameSource>,
        frame: &[i16; FRAME_SAMPLES],
        wide: Option<&[i16]>,
        transport: &mut Transport,
        out: &mut Outputs,
    ) {
        let pos = index * FRAME_SAMPLES as u64;
        if source.is_none() || !self.sending {
            // Silence is not sent, nor anything while the far end holds the call (a
            // prompt still runs on the call's clock, unheard, so the recording keeps
            // silence there); the timestamp still advances with the clock, and the next
            // packet starts a new talkspurt. A packet being filled goes out short.
            self.flush_at(index, transport, out);
            self.in_talkspurt = false;
            return;
        }
        let marker = !self.in_talkspurt;
        self.in_talkspurt = true;
        if self.packet_samples == FRAME_SAMPLES {
            // 20 ms, what nearly every call asks: the frame is the packet.
            self.send_audio(index, pos, marker, frame, wide, transport, out);
            return;
        }
        if self.pending.is_empty() {
            (self.pending_pos, self.pending_marker) = (pos, marker);
            self.pending_wide.clear();
        }
        // The 16 kHz copy goes along while every frame of the packet has one.
        match wide {
            Some(w) if self.pending_wide.len() == 2 * self.pending.len() => self.pending_wide.extend_from_slice(w),
            _ => self.pending_wide.clear(),
        }
        self.pending.extend_from_slice(frame);
        // 10 ms packets go two to a frame; 30 ms ones after one frame, then two.
        let n = self.packet_samples;
        while self.pending.len() >= n {
            let mut packet = [0i16; MAX_PACKET_SAMPLES];
            let mut packet_wide = [0i16; 2 * MAX_PACKET_SAMPLES];
            packet[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            let has_wide = self.pending_wide.len() >= 2 * n;
            if has_wide {
                packet_wide[..2 * n].copy_from_slice(&self.pending_wide[..2 * n]);
                self.pending_wide.drain(..2 * n);
            }
            let w = has_wide.then_some(&packet_wide[..2 * n]);
            self.send_audio(index, self.pending_pos, self.pending_marker, &packet[..n], w, transport, out);
            self.pending_pos += n as u64;
            self.pending_marker = false;
        }
    }

    /// One packet of the node's audio from timeline position `pos` (`wide`: the same at
    /// 16 kHz, when its source had it), encoded.
    #[allow(clippy::too_many_arguments)]
    fn send_audio(
        &mut self,
        index: u64,
        pos: u64,
        marker: bool,
        pcm: &[i16],
        wide: Option<&[i16]>,
        transport: &mut Transport,
        out: &mut Outputs,
    ) {
        let header = RtpHeader {
            marker,
            payload_type: self.payload_type,
            sequence: self.sequence,
            timestamp: self.rtp_timestamp(pos),
            ssrc: self.ssrc,
        };
        self.sequence = self.sequence.wrapping_add(1);
        let began = (self.stopwatch)();
        self.encoder.encode_frame(pcm, wide, &mut self.encode_buf);
        *self.encode_nanos.get_mut(self.encoder.codec) += (self.stopwatch)().saturating_duration_since(began).as_nanos() as u64;
        // When its audio starts on the call's clock (8 kHz: 125 µs a sample), and later
        // by the send delay for packets longer than a tick.
        let due = self.pacer.deadline(0) + Duration::from_micros(pos * 125) + self.send_delay;
        let sent = transport.send_rtp(header, &self.encode_buf, self.pacer.deadline(index), out);
        if sent && due > self.pacer.deadline(index) {
            // Made ahead of its time (the second 10 ms packet of a frame, a 30 ms one):
            // it waits, so packets leave a ptime apart.
            if let Some(mut t) = out.transmit.pop() {
                t.due = due;
                self.held.push_back(t);
            }
        }
    }

    /// Sends what a packet being filled holds, short, as of the last frame (before a
    /// codec change or the call's end).
    pub(super) fn flush(&mut self, transport: &mut Transport, out: &mut Outputs) {
        self.flush_at(self.pacer.next_index().saturating_sub(1), transport, out);
    }

    /// Sends what a packet being filled holds, short (at a talkspurt's end, before
    /// digits, a codec change or the call's end). Opus takes only its frame lengths, so
    /// its remainder is padded with silence to the next one.
    fn flush_at(&mut self, index: u64, transport: &mut Transport, out: &mut Outputs) {
        if self.pending.is_empty() {
            return;
        }
        let mut packet = std::mem::take(&mut self.pending);
        let mut wide = std::mem::take(&mut self.pending_wide);
        if self.encoder.codec == AudioCodec::Opus {
            let frame = [80, 160, 320, 480].into_iter().find(|n| *n >= packet.len()).unwrap_or(480);
            packet.resize(frame, 0);
            if !wide.is_empty() {
                wide.resize(2 * frame, 0);
            }
        }
        let w = (!wide.is_empty()).then_some(&wide[..]);
        self.send_audio(index, self.pending_pos, self.pending_marker, &packet, w, transport, out);
        packet.clear();
        wide.clear();
        self.pending = packet;
        self.pending_wide = wide;
    }

    /// The call ends: a packet being filled goes out short, and held packets go now.
    pub(super) fn close(&mut self, transport: &mut Transport, out: &mut Outputs) {
        self.flush(transport, out);
        out.transmit.extend(self.held.drain(..));
    }

    /// The RTP timestamp of timeline position `pos` (8 kHz) on the sending codec's
    /// clock (48 kHz for Opus). A codec switch to another clock rate jumps the
    /// timestamp, which RFC 3550 allows with the payload type change.
    pub(super) fn rtp_timestamp(&self, pos: u64) -> u32 {
        self.timestamp_origin.wrapping_add(pos.wrapping_mul(self.encoder.codec.clock_ratio() as u64) as u32)
    }

    pub(super) fn take_counters(&mut self, c: &mut Counters) {
        for (both, encode) in c.codec_nanos.0.iter_mut().zip(std::mem::take(&mut self.encode_nanos).0) {
            both.0 = encode;
        }
        c.frames_skipped = std::mem::take(&mut self.pacer.skipped);
    }
}

/// The part through the whole session, as the call task drives it.
#[cfg(test)]
mod session_tests {
    use super::super::tests::*;
    use super::super::*;
    use crate::core::codec::Decoder;
    use crate::core::playback::Sound;
    use crate::core::rtp::{self, RtpHeader};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn packets_follow_the_far_ends_ptime() {
        // (codec, payload type, the far end's ptime, the packet the node sends in ms,
        // payload bytes per 10 ms)
        let cases = [
            (AudioCodec::Pcmu, 0, 40, 40, Some(80)),
            (AudioCodec::Pcma, 8, 30, 30, Some(80)),
            (AudioCodec::Pcmu, 0, 10, 10, Some(80)),
            (AudioCodec::G729, 18, 60, 60, Some(10)),
            (AudioCodec::G722, 9, 25, 20, Some(80)),
            #[cfg(feature = "opus")]
            (AudioCodec::Opus, 111, 30, 20, None),
        ];
        for (codec, pt, ptime, ms, bytes_per_10ms) in cases {
            let t0 = Instant::now();
            let (mut s, mut out) = sending_in(t0, (pt, codec), ptime);
            // A 1 s prompt, then silence.
            s.handle_command(Command::Play { id: 1, pcm: vec![3000i16; 8000].into(), barge_in: None }, &mut out);
            // Driven as the call task drives it: a tick whenever the session asks for one;
            // a packet's time is the tick that released it.
            let mut sent: Vec<(Instant, RtpHeader, usize)> = Vec::new();
            let mut now = t0;
            while now < t0 + Duration::from_millis(1400) {
                s.handle_tick(now, &mut out);
                for t in out.transmit.drain(..).filter(|t| !rtp::is_rtcp(&t.data)) {
                    let p = rtp::parse(&t.data).unwrap();
                    sent.push((now, p.header(), p.payload.len()));
                }
                now = s.poll_timeout();
            }
            let full = 1000 / ms as usize;
            let short = 1000 % ms as u64;
            assert_eq!(sent.len(), full + (short > 0) as usize, "{codec:?} at {ms} ms");
            let step = ms * 8 * codec.clock_ratio();
            for (k, w) in sent.windows(2).enumerate() {
                assert_eq!(w[1].1.sequence, w[0].1.sequence.wrapping_add(1), "{codec:?}: continuous numbering");
                assert_eq!(w[1].1.timestamp.wrapping_sub(w[0].1.timestamp), step, "{codec:?}: packet {k} is {ms} ms on");
                assert!(!w[1].1.marker, "one talkspurt");
                // Paced: one packet every ptime (the prompt's short last one aside).
                if k + 2 < sent.len() || short == 0 {
                    assert_eq!(
                        w[1].0 - w[0].0,
                        Duration::from_millis(ms as u64),
                        "{codec:?}: packet {k} leaves a ptime after the one before"
                    );
                }
            }
            assert!(sent[0].1.marker);
            if let Some(b) = bytes_per_10ms {
                assert!(sent[..full].iter().all(|p| p.2 == b * ms as usize / 10), "{codec:?}: {ms} ms payloads");
                if short > 0 {
                    assert_eq!(sent[full].2, b * short as usize / 10, "{codec:?}: the prompt's end goes out short");
                }
            }
        }
    }

    /// A wideband codec sends a prompt's own 16 kHz audio: a 6 kHz tone (which its
    /// 8 kHz copy cannot hold) reaches the far end's decoder, in 20 ms packets and in
    /// the packets other ptimes make from several frames, and the recording is handed
    /// the same 16 kHz audio. The same prompt without its 16 kHz copy carries none.
    #[test]
    fn a_wideband_codec_sends_the_prompts_own_16k_audio() {
        use crate::core::goertzel::power_at;
        let tone: Vec<i16> =
            (0..16000).map(|i| (8000.0 * (2.0 * std::f64::consts::PI * 6000.0 * i as f64 / 16000.0).sin()) as i16).collect();
        let narrow = crate::core::resample::convert(&tone, 16000, 8000);
        let full = power_at(&tone[..8000], 16000, 6000.0);
        let cases = [
            (AudioCodec::G722, 9, 20),
            (AudioCodec::G722, 9, 40),
            (AudioCodec::G722, 9, 30),
            #[cfg(feature = "opus")]
            (AudioCodec::Opus, 111, 20),
            #[cfg(feature = "opus")]
            (AudioCodec::Opus, 111, 40),
        ];
        for (codec, pt, ptime) in cases {
            for with_wide in [true, false] {
                let t0 = Instant::now();
                let (mut s, mut out) = sending_in(t0, (pt, codec), ptime);
                let wide = with_wide.then(|| Arc::from(tone.clone()));
                s.handle_command(Command::Play { id: 1, pcm: Sound { pcm: narrow.clone().into(), wide }, barge_in: None }, &mut out);
                let (mut dec, mut heard, mut played) = (Decoder::new(codec), Vec::new(), Vec::new());
                let mut now = t0;
                while now < t0 + Duration::from_millis(1200) {
                    s.handle_tick(now, &mut out);
                    for t in out.transmit.drain(..).filter(|t| !rtp::is_rtcp(&t.data)) {
                        let (mut pcm, mut wide) = (Vec::new(), Vec::new());
                        assert!(dec.decode_wide(rtp::parse(&t.data).unwrap().payload, &mut pcm, Some(&mut wide)));
                        heard.extend(wide);
                    }
                    played.extend(out.played.drain(..).flat_map(|p| p.wide));
                    now = s.poll_timeout();
                }
                let got = power_at(&heard[4000..12000], 16000, 6000.0) / full;
                if with_wide {
                    assert!(got > 0.5, "{codec:?} at {ptime} ms: 6 kHz reached the far end at {got:.3} of its power");
                    assert_eq!(played, tone, "{codec:?}: the recording is handed what was sent");
                } else {
                    assert!(got < 0.01, "{codec:?} at {ptime} ms: an 8 kHz prompt has no 6 kHz ({got:.4})");
                    assert!(played.is_empty());
                }
            }
        }
    }

    #[test]
    fn sequence_and_timestamp_continue_across_prompts_and_silence() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        s.handle_command(Command::SetTarget(caller()), &mut out);
        s.handle_command(Command::Play { id: 1, pcm: vec![1000i16; 480].into(), barge_in: None }, &mut out);
        run_ticks(&mut s, t0, 0, 5, &mut out); // 3 frames of prompt, 2 of silence
        s.handle_command(Command::Play { id: 2, pcm: vec![2000i16; 320].into(), barge_in: None }, &mut out);
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
    fn negotiated_media_switches_codec_holds_and_resumes_with_continuous_numbering() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        s.handle_command(Command::SetTarget(caller()), &mut out);
        s.handle_command(Command::SetMedia(media((0, AudioCodec::Pcmu), Some(96), true)), &mut out);
        s.handle_command(Command::Play { id: 1, pcm: vec![1000i16; 160 * 20].into(), barge_in: None }, &mut out);
        run_ticks(&mut s, t0, 0, 4, &mut out);
        // A re-offer: G.722 from now on.
        s.handle_command(Command::SetMedia(media((9, AudioCodec::G722), Some(96), true)), &mut out);
        assert!(out.events.contains(&Event::CodecChanged(AudioCodec::G722)));
        run_ticks(&mut s, t0, 4, 8, &mut out);
        // Hold (the far end's sendonly makes the node recvonly): nothing goes out.
        s.handle_command(Command::SetMedia(media((9, AudioCodec::G722), Some(96), false)), &mut out);
        run_ticks(&mut s, t0, 8, 12, &mut out);
        // Resume.
        s.handle_command(Command::SetMedia(media((9, AudioCodec::G722), Some(96), true)), &mut out);
        run_ticks(&mut s, t0, 12, 15, &mut out);
        let packets: Vec<_> = out.transmit.iter().map(|t| rtp::parse(&t.data).unwrap().clone()).collect();
        assert_eq!(packets.len(), 11, "4 PCMU + 4 G.722, nothing on hold, 3 after it");
        let pts: Vec<u8> = packets.iter().map(|p| p.payload_type).collect();
        assert_eq!(pts, [0, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9]);
        let seq: Vec<u16> = packets.iter().map(|p| p.sequence).collect();
        assert!(seq.windows(2).all(|w| w[1] == w[0].wrapping_add(1)), "sequence numbers run on: {seq:?}");
        let ts: Vec<u32> = packets.iter().map(|p| p.timestamp.wrapping_sub(u32::MAX - 800)).collect();
        assert_eq!(ts, [0, 160, 320, 480, 640, 800, 960, 1120, 1920, 2080, 2240], "the clock runs through the hold");
        let markers: Vec<bool> = packets.iter().map(|p| p.marker).collect();
        assert_eq!(markers.iter().filter(|&&m| m).count(), 2, "a talkspurt at the start and after the hold: {markers:?}");
        assert!(packets[8].marker);
        // The G.722 payloads decode to the prompt's level.
        let mut dec = Decoder::new(AudioCodec::G722);
        let mut pcm = Vec::new();
        for p in &packets[4..8] {
            dec.decode(p.payload, &mut pcm);
        }
        let tail = &pcm[400..];
        assert!(tail.iter().all(|&v| (700..1300).contains(&v)), "G.722 carried the prompt: {:?}", &tail[..8]);
    }
}
