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
    /// filled goes out first, and audio after the digits starts a new talkspurt.
    pub(super) fn send_digit(&mut self, index: u64, frame: DigitFrame, payload_type: u8, transport: &mut Transport, out: &mut Outputs) {
        self.flush_at(index, transport, out);
        self.in_talkspurt = false;
        if let DigitFrame::Event { marker, start_back, payload } = frame {
            let pos = index * FRAME_SAMPLES as u64;
            let header = RtpHeader {
                marker,
                payload_type,
                sequence: self.sequence,
                timestamp: self.rtp_timestamp(pos).wrapping_sub(start_back),
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
