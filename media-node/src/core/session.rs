//! One call's media rules as a sans-IO state machine (str0m's shape).
//!
//! Inputs: a received datagram with its arrival time, a tick, a command. Outputs:
//! datagrams to send, the caller's audio for listeners, our own audio as sent, and
//! events. No socket, clock, task or file in here: the I/O layer feeds real time in,
//! tests feed made-up time in.

use std::net::SocketAddr;
use std::time::Instant;

use super::analysis::echo_guard::EchoGuard;
use super::analysis::redact::Redactor;
use super::analysis::{AnalysisConfig, Analyzer, DtmfSource, Signal};
use super::codec::{AudioCodec, ByCodec, Decoder, Encoder, OpusPrefs};
use super::jitter::{Heard, JitterBuffer, JitterConfig, RtpId, FRAME_SAMPLES};
use super::latch::{Latch, Verdict};
use super::pacer::Pacer;
use super::playback::{Cut, FrameSource, MarkFate, MarkId, Playback, PlaybackId, PlaybackOutcome, Sound};
use super::rtcp::{FarEndReport, RtcpState};
use super::rtp::{self, Datagram, RtpHeader};
use super::srtp::{CallKeys, Srtp, SrtpError};

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub ssrc: u32,
    pub initial_sequence: u16,
    pub initial_timestamp: u32,
    /// Symmetric RTP latching (see latch.rs); off for asymmetric peers.
    pub symmetric_rtp: bool,
    pub jitter: JitterConfig,
    pub analysis: AnalysisConfig,
    /// The payload type of RFC 4733 telephone-events (101 where the B2BUA's SDP says
    /// so, as nearly all do; negotiation will set it per call).
    pub telephone_event_pt: u8,
    /// The wall-clock time of the session's start, for the NTP time of its RTCP reports.
    pub wall_start: std::time::SystemTime,
}

/// The longest packet the node sends: 60 ms.
const MAX_PACKET_SAMPLES: usize = FRAME_SAMPLES * 3;
/// The longest run of lost packets the decoder rebuilds (FEC and concealment); a
/// longer one is a dropout, left to the jitter buffer's silence (libopus's concealment
/// has faded out long before: measured, near silence by its second 20 ms frame).
const MAX_REBUILT_PACKETS: u16 = 5;

/// The telephone-event payload type SIP stacks offer by custom.
pub const TELEPHONE_EVENT_PT: u8 = 101;
/// No telephone-event negotiated (an RTP payload type is 7 bits, so this never matches).
const NO_PT: u8 = 0xff;

impl SessionConfig {
    /// Random SSRC, sequence and timestamp origins as RFC 3550 §5.1 asks.
    pub fn random(symmetric_rtp: bool, jitter: JitterConfig, analysis: AnalysisConfig) -> SessionConfig {
        SessionConfig {
            ssrc: rand::random(),
            initial_sequence: rand::random(),
            initial_timestamp: rand::random(),
            symmetric_rtp,
            jitter,
            analysis,
            telephone_event_pt: TELEPHONE_EVENT_PT,
            wall_start: std::time::SystemTime::now(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Command {
    Play {
        id: PlaybackId,
        /// At 8 kHz, and at 16 kHz too for a call in a wideband codec.
        pcm: Sound,
        /// Cut the prompt when the caller speaks over it this long (the node's own
        /// barge-in); None lets the caller talk over it.
        barge_in: Option<std::time::Duration>,
    },
    /// Barge-in: cut the prompt and drop all queued audio.
    Stop,
    SetTarget(SocketAddr),
    /// A target given alongside a prompt: used only while nothing better is known.
    SuggestTarget(SocketAddr),
    SetEcho(bool),
    /// Streamed TTS, already at 8 kHz (and at 16 kHz in `wide`, or empty), and the
    /// agent's mark after it, if any.
    Stream {
        pcm: Vec<i16>,
        wide: Vec<i16>,
        mark: Option<MarkId>,
    },
    /// Send DTMF digits as RFC 4733 events (durations in samples); the audio waits.
    SendDigits(super::dtmf_out::DigitSender),
    /// The node's barge-in for the streamed audio (None: the caller may talk over it).
    StreamBargeIn(Option<std::time::Duration>),
    /// What offer/answer agreed for the call's audio (applies from the next packet).
    SetMedia(MediaSettings),
    /// DTMF redaction on or off: digits silenced in the caller's audio for listeners
    /// and the recording (which then lags by the redactor's delay line).
    RedactDtmf(bool),
}

/// The call's audio as SDP negotiated it. Without it the node speaks the static
/// G.711 types and answers in the codec the caller sends, as it always has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSettings {
    /// What the node sends, and under which payload type.
    pub send: (u8, AudioCodec),
    /// What the far end asked of the Opus it receives (its fmtp).
    pub opus: OpusPrefs,
    /// What the node takes from the caller, by payload type (the negotiated ones).
    pub receive: Vec<(u8, AudioCodec)>,
    pub telephone_event_pt: Option<u8>,
    /// False on hold (recvonly or inactive for the node): nothing is sent, sequence
    /// numbers wait, timestamps follow the clock, and the first packet after it is a
    /// new talkspurt.
    pub sends: bool,
    /// SDES keys: SRTP both ways from the next packet. None: plain RTP.
    pub srtp: Option<CallKeys>,
    /// Where the node's RTCP reports go (a call set up by SDP sends them).
    pub rtcp: RtcpTarget,
    /// The far end's ptime: the node sends packets of `AudioCodec::packet_ms` of it.
    pub ptime_ms: u32,
}

/// Where RTCP goes: muxed on the RTP port (RFC 5761, when both sides said `rtcp-mux`),
/// or from the node's odd port to the far end's `a=rtcp` address (RFC 3605), else to
/// the port above the far end's RTP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcpTarget {
    Muxed,
    Separate(Option<SocketAddr>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    PlaybackStarted {
        id: PlaybackId,
        pos: u64,
    },
    PlaybackEnded {
        id: PlaybackId,
        outcome: PlaybackOutcome,
        played_ms: u64,
    },
    /// What the analysis found in the caller's media.
    Signal(Signal),
    /// A mark's audio went out, or a barge-in dropped it.
    Mark(MarkFate),
    /// The caller's speech cut the streamed audio (its queue is dropped).
    StreamBargedIn,
    /// Every digit of the last SendDigits went out.
    DigitsSent,
    Latched(SocketAddr),
    CodecChanged(AudioCodec),
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
    /// The 16 kHz audio a wideband codec sent for it, when its source had it; empty
    /// otherwise.
    pub wide: Vec<i16>,
    pub source: FrameSource,
}

/// What the session asks the I/O layer to do. Reused across calls: the I/O layer
/// drains each vector after every input.
#[derive(Debug, Default)]
pub struct Outputs {
    pub transmit: Vec<Transmit>,
    /// RTCP to send from the call's odd port (muxed RTCP goes in `transmit`).
    pub rtcp: Vec<Transmit>,
    pub heard: Vec<Heard>,
    pub played: Vec<Played>,
    pub events: Vec<Event>,
}

impl Outputs {
    pub fn clear(&mut self) {
        self.transmit.clear();
        self.rtcp.clear();
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
    /// RFC 4733 packets that repeated what was known (redundant end packets).
    pub telephone_event_duplicates: u64,
    /// RFC 4733 packets that were malformed or no DTMF event.
    pub telephone_event_ignored: u64,
    /// Barge-ins not made because the caller's "speech" was our own audio's echo
    /// (once per speech segment).
    pub barge_in_echo: u64,
    /// Caller samples silenced by DTMF redaction.
    pub redacted_samples: u64,
    pub late: u64,
    pub lost_samples: u64,
    pub recovered_samples: u64,
    pub discontinuities: u64,
    pub frames_skipped: u64,
    /// Payloads the codec refused (corrupt Opus, G.729 of a bad size), dropped.
    pub decode_errors: ByCodec<u64>,
    /// Time spent encoding and decoding, in nanoseconds: (encode, decode) per codec.
    pub codec_nanos: ByCodec<(u64, u64)>,
    /// Lost Opus packets rebuilt from the next one's in-band FEC.
    pub fec_recovered: u64,
    /// Lost Opus packets before the one lost last, filled by the decoder's concealment.
    pub plc_concealed: u64,
    /// SRTP and SRTCP packets that authenticated.
    pub srtp_in: u64,
    /// SRTP and SRTCP packets dropped, by reason (`SrtpDrops::REASONS`' order).
    pub srtp_dropped: SrtpDrops,
    /// Packets not sent because the node's SRTP key was used up.
    pub srtp_unsent: u64,
    /// RTCP compound packets the node sent (reports and its BYE).
    pub rtcp_sent: u64,
    /// RTCP that was not a well-formed compound packet (after SRTCP, if any).
    pub rtcp_malformed: u64,
}

/// Dropped SRTP packets by reason, as the counters' label says them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SrtpDrops(pub [u64; 6]);

impl SrtpDrops {
    pub const REASONS: [SrtpError; 6] =
        [SrtpError::Malformed, SrtpError::Auth, SrtpError::Replay, SrtpError::TooOld, SrtpError::UnknownMki, SrtpError::KeyExpired];

    fn count(&mut self, e: SrtpError) {
        let e = if e == SrtpError::TooShort { SrtpError::Malformed } else { e };
        if let Some(i) = Self::REASONS.iter().position(|r| *r == e) {
            self.0[i] += 1;
        }
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn of(&self, e: SrtpError) -> u64 {
        Self::REASONS.iter().position(|r| *r == e).map_or(0, |i| self.0[i])
    }
}

#[derive(Debug, Clone, Copy)]
struct LastIn {
    ssrc: u32,
    seq: u16,
    /// Its RTP timestamp, and the same on the call's 8 kHz.
    ts: u32,
    ts8: u32,
    samples: u32,
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
    /// The caller's codec now (its payload type and decoder).
    decoder: Option<(u8, Decoder)>,
    /// What the node sends, and its payload type.
    encoder: Encoder,
    outbound_pt: u8,
    /// The negotiated payload types; None: the static G.711 ones.
    receive: Option<Vec<(u8, AudioCodec)>>,
    /// False while the far end holds the call (the node sends nothing).
    sending: bool,
    /// The caller's last audio packet (for timestamp scaling and Opus FEC).
    last_in: Option<LastIn>,
    in_talkspurt: bool,
    counters: Counters,
    reported_jitter: super::jitter::JitterStats,
    reported_skips: u64,
    interarrival: super::interarrival::Interarrival,
    encode_buf: Vec<u8>,
    analyzer: Analyzer,
    telephone_event_pt: u8,
    /// The barge-in time of the prompt playing, and where on the timeline it started.
    barge_in: Option<(std::time::Duration, Option<u64>)>,
    /// The end of the caller's audio analysed so far (timeline position).
    heard_end: u64,
    reported_te_duplicates: u64,
    reported_te_ignored: u64,
    signals: Vec<Signal>,
    echo_guard: EchoGuard,
    /// The speech onset whose echo verdict was counted.
    echo_counted: Option<u64>,
    /// Where the caller's speech last turned out to be echo: barge-in counts speech
    /// from there, so it needs its full time of real speech.
    echo_until: u64,
    stream_barge_in: Option<std::time::Duration>,
    /// Where the streamed audio playing now began going out.
    stream_since: Option<u64>,
    fates: Vec<MarkFate>,
    digits_out: Option<super::dtmf_out::DigitSender>,
    /// Set while DTMF redaction is on.
    redactor: Option<Redactor>,
    reported_redacted: u64,
    /// The jitter buffer's fresh output, on its way through the redactor.
    redact_buf: Vec<Heard>,
    /// The call's SRTP contexts once SDES agreed keys (wiped when dropped).
    srtp: Option<Srtp>,
    /// An SRTP packet's plain text, reused.
    plain: Vec<u8>,
    wall_start: std::time::SystemTime,
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
    send_delay: std::time::Duration,
    /// Packets made ahead of their time (10 and 30 ms packets), in order.
    held: std::collections::VecDeque<Transmit>,
    /// RTCP once SDP set the call up; None sends none (today's calls).
    rtcp: Option<(RtcpState, RtcpTarget)>,
    far_end: Option<FarEndReport>,
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
            decoder: None,
            encoder: Encoder::new(AudioCodec::Pcmu),
            outbound_pt: 0,
            receive: None,
            sending: true,
            last_in: None,
            in_talkspurt: false,
            counters: Counters::default(),
            reported_jitter: Default::default(),
            reported_skips: 0,
            interarrival: Default::default(),
            encode_buf: Vec::with_capacity(FRAME_SAMPLES),
            analyzer: Analyzer::new(cfg.analysis),
            telephone_event_pt: cfg.telephone_event_pt,
            barge_in: None,
            heard_end: 0,
            reported_te_duplicates: 0,
            reported_te_ignored: 0,
            signals: Vec::new(),
            echo_guard: EchoGuard::default(),
            echo_counted: None,
            echo_until: 0,
            stream_barge_in: None,
            stream_since: None,
            fates: Vec::new(),
            digits_out: None,
            redactor: None,
            reported_redacted: 0,
            redact_buf: Vec::new(),
            srtp: None,
            plain: Vec::with_capacity(1500),
            wall_start: cfg.wall_start,
            packet_samples: FRAME_SAMPLES,
            pending: Vec::with_capacity(FRAME_SAMPLES * 3),
            pending_wide: Vec::new(),
            pending_pos: 0,
            pending_marker: false,
            send_delay: std::time::Duration::ZERO,
            held: Default::default(),
            rtcp: None,
            far_end: None,
        }
    }

    pub fn started(&self) -> Instant {
        self.start
    }

    /// When the session next needs a tick: the next frame, or a packet held for its time.
    pub fn poll_timeout(&self) -> Instant {
        let frame = self.pacer.next_deadline();
        self.held.front().map_or(frame, |t| t.due.min(frame))
    }

    pub fn target(&self) -> Option<SocketAddr> {
        self.latch.target()
    }

    pub fn outbound_codec(&self) -> AudioCodec {
        self.encoder.codec
    }

    /// True while the call's media is SRTP.
    pub fn is_secure(&self) -> bool {
        self.srtp.is_some()
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
        let (dup, ignored) = self.analyzer.event_counts();
        self.counters.telephone_event_duplicates += dup - self.reported_te_duplicates;
        self.counters.telephone_event_ignored += ignored - self.reported_te_ignored;
        self.reported_te_duplicates = dup;
        self.reported_te_ignored = ignored;
        if let Some(r) = &self.redactor {
            self.counters.redacted_samples += r.silenced - self.reported_redacted;
            self.reported_redacted = r.silenced;
        }
        self.reported_jitter = j;
        self.reported_skips = self.pacer.skipped;
        std::mem::take(&mut self.counters)
    }

    /// A datagram on the call's RTP port. Under SRTP it must authenticate (and not be a
    /// replay) before anything else looks at it: only then may it latch, be decoded or
    /// be heard; a failure is counted and changes nothing.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8], out: &mut Outputs) {
        let Some(srtp) = self.srtp.as_mut() else {
            return self.handle_rtp(now, from, data, out);
        };
        if rtp::is_rtcp(data) {
            // SRTCP muxed on the RTP port.
            self.read_rtcp(now, data);
            return;
        }
        let mut plain = std::mem::take(&mut self.plain);
        match srtp.inbound.unprotect_rtp(data, &mut plain) {
            Ok(_) => {
                self.counters.srtp_in += 1;
                self.handle_rtp(now, from, &plain, out);
            }
            Err(e) => self.counters.srtp_dropped.count(e),
        }
        self.plain = plain;
    }

    /// A datagram on the call's RTCP port (the odd one); under SRTP it must
    /// authenticate as SRTCP before it is read. Symmetric RTCP (RFC 4961): with
    /// symmetric RTP, the node's reports go back to where the far end's come from, as
    /// its RTP does, when that is the RTP peer's host (a NAT may give RTCP a port of its
    /// own); a packet that fails SRTCP or is not RTCP never moves it.
    pub fn handle_rtcp(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let taken = self.read_rtcp(now, data);
        if taken && self.latch.is_symmetric() && self.latch.target().is_some_and(|t| t.ip() == from.ip()) {
            if let Some((state, RtcpTarget::Separate(None))) = &mut self.rtcp {
                state.symmetric_to = Some(from);
            }
        }
    }

    /// RTCP from the far end, on either port: through SRTCP when the call has keys (a
    /// failure is counted and read no further). True when it was read.
    fn read_rtcp(&mut self, now: Instant, data: &[u8]) -> bool {
        let Some(srtp) = self.srtp.as_mut() else {
            return self.on_rtcp(now, data);
        };
        let mut plain = std::mem::take(&mut self.plain);
        let taken = match srtp.inbound.unprotect_rtcp(data, &mut plain) {
            Ok(()) => {
                self.counters.srtp_in += 1;
                self.on_rtcp(now, &plain)
            }
            Err(e) => {
                self.counters.srtp_dropped.count(e);
                false
            }
        };
        self.plain = plain;
        taken
    }

    /// Plain RTCP from the far end: counted, and read for the round trip and for what
    /// it hears of the node (only on calls that run RTCP). It never moves the latch.
    /// True when it was well-formed RTCP on a call that runs RTCP.
    fn on_rtcp(&mut self, now: Instant, data: &[u8]) -> bool {
        self.counters.rtcp += 1;
        let Some((state, _)) = self.rtcp.as_mut() else { return false };
        match super::rtcp::parse(data) {
            Ok(r) => {
                if let Some(f) = state.on_received(now, &r, self.ssrc, self.encoder.codec.rtp_clock()) {
                    self.far_end = Some(f);
                }
                true
            }
            Err(_) => {
                self.counters.rtcp_malformed += 1;
                false
            }
        }
    }

    /// The far end's latest report on the node's audio, once.
    pub fn take_far_end_report(&mut self) -> Option<FarEndReport> {
        self.far_end.take()
    }

    fn handle_rtp(&mut self, now: Instant, from: SocketAddr, data: &[u8], out: &mut Outputs) {
        let packet = match rtp::classify(data) {
            Ok(Datagram::Rtp(p)) => p,
            Ok(Datagram::Rtcp) => {
                self.on_rtcp(now, data);
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
        if let Some((state, _)) = &mut self.rtcp {
            state.reception.on_packet(packet.ssrc, packet.sequence);
        }
        if self.telephone_event_pt != NO_PT && packet.payload_type == self.telephone_event_pt {
            self.counters.packets_in += 1;
            self.counters.bytes_in += data.len() as u64;
            let pos = self.jitter.position();
            self.analyzer.on_rtp(now, pos, &mut self.signals);
            self.analyzer.on_telephone_event(now, pos, packet.timestamp, packet.payload, &mut self.signals);
            self.emit_signals(out);
            return;
        }
        let pt = packet.payload_type;
        let codec = match &self.receive {
            Some(map) => map.iter().find(|(p, _)| *p == pt).map(|(_, c)| *c),
            // Never negotiated: G.711 only, as before SDP came (PT 9 or 18 from a caller
            // that negotiated nothing is counted, not decoded).
            None => AudioCodec::from_static_payload_type(pt).filter(|c| matches!(c, AudioCodec::Pcmu | AudioCodec::Pcma)),
        };
        let Some(codec) = codec else {
            // Comfort noise, a codec nobody negotiated: counted, not played.
            self.counters.unsupported_payload += 1;
            return;
        };
        self.counters.packets_in += 1;
        self.counters.bytes_in += data.len() as u64;
        self.analyzer.on_rtp(now, self.jitter.position(), &mut self.signals);
        if self.decoder.as_ref().map(|(p, _)| *p) != Some(pt) {
            self.decoder = Some((pt, Decoder::new(codec)));
            if self.receive.is_none() && codec != self.encoder.codec {
                // Not negotiated: answer in the codec the caller speaks.
                self.encoder = Encoder::new(codec);
                self.outbound_pt = pt;
                out.events.push(Event::CodecChanged(codec));
            }
        }
        let Some((_, decoder)) = self.decoder.as_mut() else { return };
        // A wideband codec's 16 kHz audio rides beside the 8 kHz timeline copy.
        let wideband = decoder.is_wideband();
        // The jitter buffer, the interarrival jitter and the timeline count 8 kHz; an
        // Opus stream's 48 kHz timestamps are scaled by their difference from the last
        // packet's (so its wrap-around needs no care).
        let ratio = codec.clock_ratio();
        let ts = match self.last_in {
            Some(l) if ratio > 1 && l.ssrc == packet.ssrc => {
                l.ts8.wrapping_add((packet.timestamp.wrapping_sub(l.ts) as i32 / ratio as i32) as u32)
            }
            _ => packet.timestamp / ratio,
        };
        // Packets lost just before this one: Opus rebuilds them before this one is
        // decoded, in the decoder's own order (libopus needs it so): the last from the
        // in-band FEC copy this packet carries, any before it by the decoder's
        // concealment. They reach the jitter buffer before it gives up on them.
        let mut rebuilt = Vec::new();
        if let Some(l) = self.last_in.filter(|l| l.ssrc == packet.ssrc) {
            let lost = packet.sequence.wrapping_sub(l.seq).wrapping_sub(1);
            let missing = ts.wrapping_sub(l.ts8).wrapping_sub(l.samples);
            if (1..=MAX_REBUILT_PACKETS).contains(&lost) && (1..=u32::from(lost) * super::codec::MAX_PACKET_SAMPLES).contains(&missing) {
                let began = std::time::Instant::now();
                let each = missing / u32::from(lost);
                for k in 0..u32::from(lost) {
                    // The last lost packet takes what the even split left over.
                    let n = if k + 1 == u32::from(lost) { missing - each * k } else { each };
                    let (mut pcm, mut wide) = (Vec::with_capacity(n as usize), Vec::new());
                    let fec = k + 1 == u32::from(lost);
                    let done = if fec {
                        decoder.recover(packet.payload, n as usize, &mut pcm, wideband.then_some(&mut wide))
                    } else {
                        decoder.conceal(n as usize, &mut pcm, wideband.then_some(&mut wide))
                    };
                    match done {
                        Some(true) => {
                            if fec {
                                self.counters.fec_recovered += 1;
                            } else {
                                self.counters.plc_concealed += 1;
                            }
                            let id = RtpId {
                                ssrc: packet.ssrc,
                                seq: l.seq.wrapping_add(1 + k as u16),
                                ts: l.ts8.wrapping_add(l.samples + each * k),
                            };
                            rebuilt.push((id, pcm, wide));
                        }
                        // A codec with neither (the jitter buffer's silence stands in).
                        None => break,
                        Some(false) => {}
                    }
                }
                self.counters.codec_nanos.get_mut(codec).1 += began.elapsed().as_nanos() as u64;
            }
        }
        // The jitter buffer keeps the decoded audio, so it is decoded into its own Vec.
        let mut pcm = Vec::with_capacity(packet.payload.len() * 2);
        let mut wide = Vec::new();
        // The clock is read for the transcoding-time metric only; nothing depends on it.
        let began = std::time::Instant::now();
        let decoded = decoder.decode_wide(packet.payload, &mut pcm, wideband.then_some(&mut wide));
        self.counters.codec_nanos.get_mut(codec).1 += began.elapsed().as_nanos() as u64;
        if !decoded {
            // A payload the codec refuses: dropped and counted, never played.
            *self.counters.decode_errors.get_mut(codec) += 1;
            return;
        }
        let first = out.heard.len();
        for (id, lost, lost_wide) in rebuilt {
            self.jitter.on_wide_packet(now, id, lost, lost_wide, &mut out.heard);
        }
        self.last_in = Some(LastIn { ssrc: packet.ssrc, seq: packet.sequence, ts: packet.timestamp, ts8: ts, samples: pcm.len() as u32 });
        if self.echo {
            self.playback.push_echo(&pcm);
        }
        self.interarrival.on_packet(now, packet.ssrc, ts);
        self.jitter.on_wide_packet(now, RtpId { ssrc: packet.ssrc, seq: packet.sequence, ts }, pcm, wide, &mut out.heard);
        self.analyse_heard(first, out);
    }

    /// Runs the analysis over the caller's audio the jitter buffer just released, and
    /// applies the node's barge-in to what it found.
    fn analyse_heard(&mut self, first: usize, out: &mut Outputs) {
        for h in out.heard[first..].iter().filter(|h| !h.late) {
            self.analyzer.on_heard(h.pos, &h.pcm, &mut self.signals);
            self.echo_guard.on_heard(h.pos, &h.pcm);
            self.heard_end = self.heard_end.max(h.pos + h.pcm.len() as u64);
        }
        self.emit_signals(out);
        if let Some(r) = self.redactor.as_mut() {
            self.redact_buf.extend(out.heard.drain(first..));
            r.pass(self.redact_buf.drain(..), self.heard_end, &mut out.heard);
        }
        self.check_barge_in(out);
    }

    fn emit_signals(&mut self, out: &mut Outputs) {
        if let Some(r) = self.redactor.as_mut() {
            for s in &self.signals {
                if let Signal::Dtmf { pos, duration_ms, end, source, .. } = *s {
                    if !end {
                        r.digit_started(pos);
                    } else {
                        let mut until = pos + duration_ms as u64 * super::jitter::RATE as u64 / 1000;
                        if source == DtmfSource::Rfc4733 {
                            // The event's duration is the trunk's word for it; the tone
                            // it may have left in the audio lasts until the end arrived.
                            until = until.max(self.heard_end);
                        }
                        r.digit_ended(pos, until);
                    }
                }
            }
        }
        out.events.extend(self.signals.drain(..).map(Event::Signal));
    }

    /// Cuts the prompt once the caller has spoken over it for its barge-in time
    /// (speech from before the prompt began does not count).
    fn check_barge_in(&mut self, out: &mut Outputs) {
        let prompt = self.barge_in.and_then(|(min, started)| started.map(|s| (min, s)));
        let stream = match (self.stream_barge_in, self.stream_since) {
            (Some(min), Some(since)) if self.playback.current().is_none() && self.playback.stream_queued() > 0 => Some((min, since)),
            _ => None,
        };
        let Some((min, started)) = prompt.or(stream) else { return };
        let Some(onset) = self.analyzer.speech_onset() else { return };
        let spoken = self.heard_end.saturating_sub(onset.max(started).max(self.echo_until));
        if spoken * 1000 >= min.as_millis() as u64 * super::jitter::RATE as u64 {
            // The echo guard judges the speech since the last echo verdict (200 ms at
            // most): real speech that starts over the echo barges in once it has
            // lasted the barge-in time on its own.
            if self.echo_guard.is_echo(self.heard_end, spoken.min(1600)) {
                self.echo_until = self.heard_end;
                if self.echo_counted != Some(onset) {
                    self.echo_counted = Some(onset);
                    self.counters.barge_in_echo += 1;
                }
                return;
            }
            // Over an echo, real speech may have begun anywhere in the window judged:
            // if the window's first part was still echo alone, the speech counts from
            // where that part ended and must last the barge-in time from there.
            if self.echo_counted == Some(onset) {
                let window = spoken.min(1600);
                let start = self.heard_end - window;
                let echo_end = [3, 2, 1].map(|q| start + window * q / 4).into_iter().find(|&end| self.echo_guard.is_echo(end, end - start));
                if let Some(end) = echo_end {
                    self.echo_until = end;
                    return;
                }
            }
            if prompt.is_some() {
                if let Some(cut) = self.playback.barge_in() {
                    self.ended(cut, PlaybackOutcome::BargeIn, out);
                }
            } else {
                self.playback.clear_stream();
                self.stream_since = None;
                out.events.push(Event::StreamBargedIn);
            }
            self.emit_marks(out);
        }
    }

    fn emit_marks(&mut self, out: &mut Outputs) {
        self.playback.take_mark_fates(&mut self.fates);
        out.events.extend(self.fates.drain(..).map(Event::Mark));
    }

    /// Streamed samples that went out so far (for the stream's played ms).
    pub fn stream_sent(&self) -> u64 {
        self.playback.stream_sent()
    }

    fn ended(&mut self, cut: Cut, outcome: PlaybackOutcome, out: &mut Outputs) {
        if self.barge_in.is_some() && self.playback.current().is_none() {
            self.barge_in = None;
        }
        out.events.push(Event::PlaybackEnded { id: cut.id, outcome, played_ms: cut.played_ms() });
    }

    /// RFC 3550 interarrival jitter of the caller's RTP so far, in seconds (None before
    /// any packet).
    pub fn interarrival_jitter(&self) -> Option<f64> {
        self.interarrival.has_data().then(|| self.interarrival.seconds())
    }

    pub fn handle_tick(&mut self, now: Instant, out: &mut Outputs) {
        while self.held.front().is_some_and(|t| t.due <= now) {
            out.transmit.extend(self.held.pop_front());
        }
        let first = out.heard.len();
        self.jitter.on_tick(now, &mut out.heard);
        self.analyzer.on_tick(now, self.jitter.position(), &mut self.signals);
        self.analyse_heard(first, out);
        for index in self.pacer.due(now) {
            self.produce_frame(index, out);
        }
        if self.rtcp.as_mut().is_some_and(|(s, _)| s.due(now)) {
            self.send_report(now, out);
        }
    }

    /// The node's RTCP report: an SR while it sends, an RR on hold (RFC 3550 §6.4),
    /// with a block about the caller once it has sent anything.
    fn send_report(&mut self, now: Instant, out: &mut Outputs) {
        let clock = self.decoder.as_ref().map_or(self.encoder.codec, |(_, d)| d.codec).rtp_clock();
        // Zero before any packet: the interarrival jitter starts at zero too.
        let jitter = (self.interarrival.seconds() * f64::from(clock)) as u32;
        let pos = now.saturating_duration_since(self.start).as_nanos() as u64 * 8000 / 1_000_000_000;
        let rtp_timestamp = self.rtp_timestamp(pos);
        let Some((state, _)) = self.rtcp.as_mut() else { return };
        let block = state.block(now, jitter);
        let sender = (self.sending && state.packets_sent > 0).then(|| super::rtcp::SenderInfo {
            ntp: state.ntp_at(now),
            rtp_timestamp,
            packets: state.packets_sent,
            octets: state.octets_sent,
        });
        let data = super::rtcp::report(self.ssrc, sender, block.as_slice(), &state.cname);
        self.send_rtcp(now, data, out);
    }

    /// One compound RTCP packet to the far end (SRTCP under SRTP), on the muxed port
    /// or from the odd one.
    fn send_rtcp(&mut self, now: Instant, mut data: Vec<u8>, out: &mut Outputs) {
        let Some((state, target)) = &self.rtcp else { return };
        let Some(rtp_to) = self.latch.target() else { return };
        let (to, muxed) = match *target {
            RtcpTarget::Muxed => (rtp_to, true),
            RtcpTarget::Separate(Some(to)) => (to, false),
            RtcpTarget::Separate(None) => match state.symmetric_to.filter(|f| f.ip() == rtp_to.ip()) {
                Some(from) => (from, false),
                None => (SocketAddr::new(rtp_to.ip(), rtp_to.port().wrapping_add(1)), false),
            },
        };
        if let Some(srtp) = self.srtp.as_mut() {
            if srtp.outbound.protect_rtcp(&mut data).is_err() {
                self.counters.srtp_unsent += 1;
                return;
            }
        }
        self.counters.rtcp_sent += 1;
        let t = Transmit { to, data, due: now };
        if muxed {
            out.transmit.push(t);
        } else {
            out.rtcp.push(t);
        }
    }

    pub fn handle_command(&mut self, cmd: Command, out: &mut Outputs) {
        match cmd {
            Command::Play { id, pcm, barge_in } => {
                if let Some(cut) = self.playback.play(id, pcm) {
                    self.ended(cut, PlaybackOutcome::Interrupted, out);
                }
                self.barge_in = barge_in.map(|d| (d, None));
            }
            Command::Stop => {
                if let Some(cut) = self.playback.barge_in() {
                    self.ended(cut, PlaybackOutcome::Stopped, out);
                }
                self.emit_marks(out);
            }
            Command::SetTarget(addr) => self.latch.set_target(addr),
            Command::SuggestTarget(addr) => self.latch.suggest_target(addr),
            Command::SetEcho(on) => {
                self.echo = on;
                if !on {
                    self.playback.clear_echo();
                }
            }
            Command::Stream { pcm, wide, mark } => {
                self.playback.push_stream(&pcm, &wide);
                if let Some(id) = mark {
                    self.playback.mark(id);
                    self.emit_marks(out);
                }
            }
            Command::StreamBargeIn(b) => self.stream_barge_in = b,
            // Digits still going out are replaced (the I/O layer answers their sender);
            // DigitsSent then speaks of the new ones only.
            Command::SendDigits(mut d) => {
                // telephone-event beside Opus counts at 48 kHz, as the codec does.
                d.set_clock_ratio(self.encoder.codec.clock_ratio());
                self.digits_out = Some(d);
            }
            Command::RedactDtmf(true) => {
                if self.redactor.is_none() {
                    self.redactor = Some(Redactor::default());
                    self.reported_redacted = 0;
                }
            }
            Command::RedactDtmf(false) => self.stop_redacting(out),
            Command::SetMedia(m) => {
                // What is half a packet goes out under the codec it was meant for.
                self.flush_pending(self.pacer.next_index().saturating_sub(1), out);
                let (pt, codec) = m.send;
                let packet_ms = codec.packet_ms(m.ptime_ms);
                self.packet_samples = packet_ms as usize * FRAME_SAMPLES / 20;
                self.send_delay = std::time::Duration::from_millis(u64::from(packet_ms.saturating_sub(20).div_ceil(20) * 20));
                if self.encoder.codec != codec || self.outbound_pt != pt || self.encoder.opus != m.opus {
                    // A codec change by re-offer (or new Opus preferences): the new
                    // codec's state starts fresh; sequence numbers and timestamps run on.
                    if self.encoder.codec != codec || self.outbound_pt != pt {
                        out.events.push(Event::CodecChanged(codec));
                    }
                    self.encoder = Encoder::with_prefs(codec, m.opus);
                    self.outbound_pt = pt;
                }
                self.analyzer.set_event_clock(codec.rtp_clock());
                // A re-offer may give the payload type the caller sends another codec:
                // its decoder starts again then.
                if let Some((pt, d)) = &self.decoder {
                    if m.receive.iter().find(|(p, _)| p == pt).map(|(_, c)| *c) != Some(d.codec) {
                        self.decoder = None;
                    }
                }
                self.receive = Some(m.receive);
                self.telephone_event_pt = m.telephone_event_pt.unwrap_or(NO_PT);
                if !m.sends {
                    self.in_talkspurt = false;
                }
                self.sending = m.sends;
                match (&mut self.srtp, &m.srtp) {
                    // A re-offer: each direction rekeys only if its key changed, and the
                    // far end's old key is still taken for packets on the wire.
                    (Some(s), Some(keys)) => s.rekey(keys),
                    (None, Some(keys)) => self.srtp = Some(Srtp::new(keys)),
                    (_, None) => self.srtp = None,
                }
                match &mut self.rtcp {
                    Some((_, target)) => *target = m.rtcp,
                    None => self.rtcp = Some((RtcpState::new(self.start, self.wall_start, self.ssrc), m.rtcp)),
                }
            }
        }
    }

    /// Ends the call: whatever plays is reported as cut by the call's end.
    pub fn close(&mut self, out: &mut Outputs) {
        if let Some(cut) = self.playback.barge_in() {
            self.ended(cut, PlaybackOutcome::CallEnded, out);
        }
        self.flush_pending(self.pacer.next_index().saturating_sub(1), out);
        // Held packets go now: the call is ending.
        out.transmit.extend(self.held.drain(..));
        if let Some((state, _)) = &self.rtcp {
            let bye = super::rtcp::goodbye(self.ssrc, &state.cname);
            // The BYE's time is the session's last: close has no clock of its own.
            let now = self.pacer.deadline(self.pacer.next_index());
            self.send_rtcp(now, bye, out);
        }
        self.emit_marks(out);
        self.stop_redacting(out);
    }

    /// Hands on what the redactor holds (nothing of the caller's audio is lost).
    fn stop_redacting(&mut self, out: &mut Outputs) {
        if let Some(mut r) = self.redactor.take() {
            r.flush(&mut out.heard);
            self.counters.redacted_samples += r.silenced - self.reported_redacted;
        }
    }

    /// Sends this frame's telephone-event (or its pause); false once the digits are
    /// done, and the audio takes the frame again.
    fn send_digit_frame(&mut self, index: u64, pos: u64, out: &mut Outputs) -> bool {
        use super::dtmf_out::DigitFrame;
        let Some(frame) = self.digits_out.as_mut().and_then(|d| d.next_frame()) else {
            self.digits_out = None;
            out.events.push(Event::DigitsSent);
            return false;
        };
        self.flush_pending(index, out);
        self.in_talkspurt = false;
        if let DigitFrame::Event { marker, start_back, payload } = frame {
            let header = RtpHeader {
                marker,
                payload_type: self.telephone_event_pt,
                sequence: self.sequence,
                timestamp: self.rtp_timestamp(pos).wrapping_sub(start_back),
                ssrc: self.ssrc,
            };
            self.sequence = self.sequence.wrapping_add(1);
            self.send_rtp(index, header, &payload, out);
        }
        true
    }

    /// One packet of the node's audio from timeline position `pos` (`wide`: the same at
    /// 16 kHz, when its source had it), encoded.
    fn send_audio(&mut self, index: u64, pos: u64, marker: bool, pcm: &[i16], wide: Option<&[i16]>, out: &mut Outputs) {
        let header = RtpHeader {
            marker,
            payload_type: self.outbound_pt,
            sequence: self.sequence,
            timestamp: self.rtp_timestamp(pos),
            ssrc: self.ssrc,
        };
        self.sequence = self.sequence.wrapping_add(1);
        let began = std::time::Instant::now();
        self.encoder.encode_frame(pcm, wide, &mut self.encode_buf);
        self.counters.codec_nanos.get_mut(self.encoder.codec).0 += began.elapsed().as_nanos() as u64;
        let payload = std::mem::take(&mut self.encode_buf);
        // When its audio starts on the call's clock (8 kHz: 125 µs a sample), and later
        // by the send delay for packets longer than a tick.
        let due = self.pacer.deadline(0) + std::time::Duration::from_micros(pos * 125) + self.send_delay;
        let queued = out.transmit.len();
        self.send_rtp(index, header, &payload, out);
        if due > self.pacer.deadline(index) && out.transmit.len() > queued {
            // Made ahead of its time (the second 10 ms packet of a frame, a 30 ms one):
            // it waits, so packets leave a ptime apart.
            if let Some(mut t) = out.transmit.pop() {
                t.due = due;
                self.held.push_back(t);
            }
        }
        self.encode_buf = payload;
    }

    /// Sends what a packet being filled holds, short (at a talkspurt's end, before
    /// digits, a codec change or the call's end). Opus takes only its frame lengths, so
    /// its remainder is padded with silence to the next one.
    fn flush_pending(&mut self, index: u64, out: &mut Outputs) {
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
        self.send_audio(index, self.pending_pos, self.pending_marker, &packet, w, out);
        packet.clear();
        wide.clear();
        self.pending = packet;
        self.pending_wide = wide;
    }

    /// Frame `index`'s packet to the far end, when one is known (counted).
    fn send_rtp(&mut self, index: u64, header: RtpHeader, payload: &[u8], out: &mut Outputs) {
        if let Some(to) = self.latch.target() {
            let mut data = rtp::build(header, payload);
            if let Some(srtp) = self.srtp.as_mut() {
                if srtp.outbound.protect_rtp(&mut data).is_err() {
                    // The node's key is used up (its lifetime): nothing goes out in the
                    // clear instead.
                    self.counters.srtp_unsent += 1;
                    return;
                }
            }
            self.counters.packets_out += 1;
            self.counters.bytes_out += data.len() as u64;
            if let Some((state, _)) = &mut self.rtcp {
                state.on_sent(payload.len());
            }
            out.transmit.push(Transmit { to, data, due: self.pacer.deadline(index) });
        }
    }

    /// The RTP timestamp of timeline position `pos` (8 kHz) on the sending codec's
    /// clock (48 kHz for Opus). A codec switch to another clock rate jumps the
    /// timestamp, which RFC 3550 allows with the payload type change.
    fn rtp_timestamp(&self, pos: u64) -> u32 {
        self.timestamp_origin.wrapping_add(pos.wrapping_mul(self.encoder.codec.clock_ratio() as u64) as u32)
    }

    fn produce_frame(&mut self, index: u64, out: &mut Outputs) {
        let mut frame = [0i16; FRAME_SAMPLES];
        let pos = index * FRAME_SAMPLES as u64;
        if self.digits_out.is_some() && self.send_digit_frame(index, pos, out) {
            return;
        }
        if let Some(id) = self.playback.starting() {
            out.events.push(Event::PlaybackStarted { id, pos });
            if let Some((_, started)) = &mut self.barge_in {
                *started = Some(pos);
            }
        }
        let (source, finished) = self.playback.next_frame(&mut frame);
        // The source's own 16 kHz audio, for a codec that sends it.
        let wide = self.playback.wide_frame().filter(|_| self.encoder.codec.is_wideband()).copied();
        if let Some(cut) = finished {
            self.ended(cut, PlaybackOutcome::Finished, out);
        }
        match source {
            Some(FrameSource::Stream) => {
                self.stream_since.get_or_insert(pos);
                self.emit_marks(out);
            }
            _ => self.stream_since = None,
        }
        let Some(source) = source.filter(|_| self.sending) else {
            // Silence is not sent, nor anything while the far end holds the call (a
            // prompt still runs on the call's clock, unheard, so the recording keeps
            // silence there); the timestamp still advances with the clock, and the next
            // packet starts a new talkspurt. A packet being filled goes out short.
            self.flush_pending(index, out);
            self.in_talkspurt = false;
            return;
        };
        let marker = !self.in_talkspurt;
        self.in_talkspurt = true;
        if self.packet_samples == FRAME_SAMPLES {
            // 20 ms, what nearly every call asks: the frame is the packet.
            self.send_audio(index, pos, marker, &frame, wide.as_ref().map(|w| &w[..]), out);
        } else {
            if self.pending.is_empty() {
                (self.pending_pos, self.pending_marker) = (pos, marker);
                self.pending_wide.clear();
            }
            // The 16 kHz copy goes along while every frame of the packet has one.
            match &wide {
                Some(w) if self.pending_wide.len() == 2 * self.pending.len() => self.pending_wide.extend_from_slice(w),
                _ => self.pending_wide.clear(),
            }
            self.pending.extend_from_slice(&frame);
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
                self.send_audio(index, self.pending_pos, self.pending_marker, &packet[..n], w, out);
                self.pending_pos += n as u64;
                self.pending_marker = false;
            }
        }
        if source != FrameSource::Echo {
            self.echo_guard.on_played(pos, &frame);
        }
        out.played.push(Played { pos, pcm: frame, wide: wide.map(|w| w.to_vec()).unwrap_or_default(), source });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::g711::{linear_to_ulaw, Codec};
    use std::sync::Arc;
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
            analysis: AnalysisConfig::default(),
            telephone_event_pt: TELEPHONE_EVENT_PT,
            wall_start: std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
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

    fn media(send: (u8, AudioCodec), te: Option<u8>, sends: bool) -> MediaSettings {
        MediaSettings {
            send,
            opus: OpusPrefs::default(),
            receive: vec![(0, AudioCodec::Pcmu), (9, AudioCodec::G722), (8, AudioCodec::Pcma)],
            telephone_event_pt: te,
            sends,
            srtp: None,
            rtcp: RtcpTarget::Separate(None),
            ptime_ms: 20,
        }
    }

    #[test]
    fn refused_payloads_and_codec_time_are_counted_by_codec() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        let mut m = media((9, AudioCodec::G722), Some(101), true);
        m.receive.push((18, AudioCodec::G729));
        s.handle_command(Command::SetMedia(m), &mut out);
        // G.729 of 7 bytes is neither 10-byte frames nor a 2-byte SID.
        let bad = rtp::build(RtpHeader { marker: false, payload_type: 18, sequence: 1, timestamp: 160, ssrc: 99 }, &[0x55; 7]);
        s.handle_datagram(t0, caller(), &bad, &mut out);
        s.handle_datagram(t0 + MS20, caller(), &rtp_from_caller(0, 2, 320, 4000), &mut out);
        s.handle_command(Command::Play { id: 1, pcm: vec![1000i16; 160 * 5].into(), barge_in: None }, &mut out);
        run_ticks(&mut s, t0, 1, 6, &mut out);
        let c = s.take_counters();
        assert_eq!(c.decode_errors.0[AudioCodec::G729 as usize], 1);
        assert_eq!(c.decode_errors.0.iter().sum::<u64>(), 1);
        let (enc, dec) = (c.codec_nanos.0[AudioCodec::G722 as usize].0, c.codec_nanos.0[AudioCodec::Pcmu as usize].1);
        assert!(enc > 0 && dec > 0, "G.722 encoding and PCMU decoding took time: {enc} ns, {dec} ns");
        assert_eq!(c.codec_nanos.0[AudioCodec::Opus as usize], (0, 0));
    }

    /// A session whose far end is known, sending `send` at `ptime` as SDP agreed.
    fn sending_in(t0: Instant, send: (u8, AudioCodec), ptime: u32) -> (Session, Outputs) {
        let mut s = session(t0);
        let mut out = Outputs::default();
        s.handle_command(Command::SetTarget(caller()), &mut out);
        let mut m = media(send, Some(101), true);
        m.ptime_ms = ptime;
        s.handle_command(Command::SetMedia(m), &mut out);
        (s, out)
    }

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

    fn far_rtcp() -> SocketAddr {
        "127.0.0.1:40001".parse().unwrap()
    }

    #[test]
    fn reports_go_back_where_the_far_ends_rtcp_comes_from_on_its_host_only() {
        use crate::core::rtcp;
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        s.handle_command(Command::SetMedia(media((0, AudioCodec::Pcmu), Some(101), true)), &mut out);
        s.handle_datagram(t0, caller(), &rtp_from_caller(0, 1, 160, 4000), &mut out);
        let report_to = |s: &mut Session, from: u64, out: &mut Outputs| {
            out.rtcp.clear();
            for k in from..from + 400 {
                s.handle_tick(t0 + MS20 * k as u32, out);
                if let Some(t) = out.rtcp.first() {
                    return (t.to, k + 1);
                }
            }
            panic!("no report in 8 s");
        };
        let (to, next) = report_to(&mut s, 0, &mut out);
        assert_eq!(to, far_rtcp(), "before any RTCP came: the port above the RTP port");
        // The far end's NAT gave its RTCP another port: reports follow it there.
        let natted: SocketAddr = "127.0.0.1:45555".parse().unwrap();
        s.handle_rtcp(t0 + MS20 * next as u32, natted, &rtcp::report(99, None, &[], "far"));
        let (to, next) = report_to(&mut s, next, &mut out);
        assert_eq!(to, natted);
        // RTCP from another host, or junk from the far end's host, moves nothing.
        s.handle_rtcp(t0 + MS20 * next as u32, "198.51.100.9:7000".parse().unwrap(), &rtcp::report(99, None, &[], "other"));
        s.handle_rtcp(t0 + MS20 * next as u32, "127.0.0.1:46666".parse().unwrap(), &[0x80, 0xc9, 0, 9]);
        let (to, _) = report_to(&mut s, next, &mut out);
        assert_eq!(to, natted);
        assert_eq!(s.take_counters().rtcp_malformed, 1);
    }

    #[test]
    fn a_negotiated_call_reports_by_rtcp_srtcp_under_keys_and_says_bye() {
        use crate::core::rtcp::{self, ntp_middle};
        use crate::core::srtp::{Inbound, MasterKey, Outbound, Suite};
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        // A call that never negotiated sends no RTCP, however long it runs.
        s.handle_datagram(t0, caller(), &rtp_from_caller(0, 1, 160, 4000), &mut out);
        run_ticks(&mut s, t0, 0, 500, &mut out);
        assert!(out.rtcp.is_empty() && out.transmit.iter().all(|t| !rtp::is_rtcp(&t.data)));
        assert_eq!(s.take_counters().rtcp_sent, 0);

        let far = MasterKey::random(Suite::AesCm128HmacSha1_80);
        let node = MasterKey::random(Suite::AesCm128HmacSha1_80);
        let mut m = media((0, AudioCodec::Pcmu), Some(101), true);
        m.srtp = Some(CallKeys { remote: far.clone(), local: node.clone() });
        s.handle_command(Command::SetMedia(m.clone()), &mut out);
        let mut caller_tx = Outbound::new(far);
        let mut far_rx = Inbound::new(node);
        out.clear();
        // 20 s of the caller's audio with every 10th packet lost, and the node's prompt.
        s.handle_command(Command::Play { id: 1, pcm: vec![1000i16; 160 * 1000].into(), barge_in: None }, &mut out);
        let mut reports = Vec::new();
        for k in 500..1500u64 {
            if k % 10 != 3 {
                let mut p = rtp_from_caller(0, k as u16, k as u32 * 160, 4000);
                caller_tx.protect_rtp(&mut p).unwrap();
                s.handle_datagram(t0 + MS20 * k as u32, caller(), &p, &mut out);
            }
            s.handle_tick(t0 + MS20 * k as u32, &mut out);
            for t in out.rtcp.drain(..) {
                assert_eq!(t.to, "127.0.0.1:40001".parse().unwrap(), "the port above the caller's RTP port");
                let mut plain = Vec::new();
                far_rx.unprotect_rtcp(&t.data, &mut plain).expect("SRTCP under the node's key");
                reports.push((k, rtcp::parse(&plain).unwrap()));
            }
            out.transmit.clear();
            out.heard.clear();
        }
        // 20 s: a report every 2.5-7.5 s, the first within 3.75 s.
        assert!((3..=8).contains(&reports.len()), "{}", reports.len());
        assert!(reports[0].0 - 500 <= 188, "{}", reports[0].0);
        let (at, last) = reports.last().unwrap();
        let (ssrc, ntp) = last.sender.expect("a sender report while the node sends");
        assert_eq!(ssrc, 0x1234);
        let wall = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + MS20 * *at as u32;
        assert_eq!(ntp_middle(ntp), ntp_middle(rtcp::ntp(wall)), "NTP time of the report");
        let b = last.blocks[0];
        assert_eq!((b.ssrc, b.extended_max), (99, (*at as u32) - (*at as u32 % 10 == 3) as u32));
        // 1 in 10 of the caller's packets lost since the start.
        let expected = (*at - 500 + 1) as i32 + 1;
        assert!((b.cumulative_lost - expected / 10).abs() <= 1, "{} of {expected}", b.cumulative_lost);
        assert!((b.fraction_lost as f64 / 256.0 - 0.1).abs() < 0.03, "{}", b.fraction_lost);

        // The far end's SR, then its report about the node, echoing our last SR 40 ms on.
        let their_ntp = rtcp::ntp(wall + Duration::from_millis(10));
        let mut sr = rtcp::report(99, Some(rtcp::SenderInfo { ntp: their_ntp, rtp_timestamp: 0, packets: 1, octets: 160 }), &[], "far");
        caller_tx.protect_rtcp(&mut sr).unwrap();
        s.handle_rtcp(t0 + MS20 * 1500, far_rtcp(), &sr);
        let echoed = rtcp::ReportBlock {
            ssrc: 0x1234,
            fraction_lost: 26,
            cumulative_lost: 3,
            extended_max: 1,
            jitter: 160,
            lsr: ntp_middle(ntp),
            dlsr: 65536 / 50,
        };
        let mut rr = rtcp::report(99, None, &[echoed], "far");
        caller_tx.protect_rtcp(&mut rr).unwrap();
        s.handle_rtcp(t0 + MS20 * (*at as u32 + 3), far_rtcp(), &rr);
        let f = s.take_far_end_report().expect("the far end's report on the node's audio");
        assert!((f.round_trip.unwrap().as_secs_f64() - 0.040).abs() < 0.001, "{:?}", f.round_trip);
        assert_eq!(f.jitter_seconds, 0.02);
        // A forged report (plain, under SRTP) is dropped before it is read.
        s.handle_rtcp(t0, far_rtcp(), &rtcp::report(99, None, &[echoed], "forged"));
        assert!(s.take_far_end_report().is_none());
        let c = s.take_counters();
        assert_eq!(c.srtp_dropped.of(SrtpError::Auth), 1);
        assert_eq!(c.rtcp, 2);
        assert_eq!(c.rtcp_sent, reports.len() as u64);

        // On hold the node sends an RR and echoes the far end's SR; at the end, a BYE.
        m.sends = false;
        m.srtp = None;
        m.rtcp = RtcpTarget::Muxed;
        s.handle_command(Command::SetMedia(m), &mut out);
        out.clear();
        let mut rr_seen = None;
        for k in 1500..1900u64 {
            s.handle_tick(t0 + MS20 * k as u32, &mut out);
            assert!(out.rtcp.is_empty(), "muxed: on the RTP port");
            if let Some(t) = out.transmit.iter().find(|t| rtp::is_rtcp(&t.data)) {
                rr_seen.get_or_insert((k, rtcp::parse(&t.data).unwrap()));
            }
            out.transmit.clear();
        }
        let (k, rr) = rr_seen.expect("a receiver report on hold");
        assert!(rr.sender.is_none());
        assert_eq!(rr.blocks[0].lsr, ntp_middle(their_ntp));
        assert_eq!(rr.blocks[0].dlsr, ((k - 1500) * 20 * 65536 / 1000) as u32);
        s.close(&mut out);
        let bye = out.transmit.iter().find(|t| rtp::is_rtcp(&t.data)).expect("a BYE");
        assert!(rtcp::parse(&bye.data).unwrap().bye);
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

    #[test]
    fn srtp_forgeries_replays_and_floods_are_dropped_before_the_latch_and_the_node_sends_srtp() {
        use crate::core::srtp::{Inbound, MasterKey, Outbound, Suite};
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        let far = MasterKey::random(Suite::AesCm128HmacSha1_80);
        let node = MasterKey::random(Suite::AesCm128HmacSha1_80);
        let mut m = media((0, AudioCodec::Pcmu), Some(101), true);
        m.srtp = Some(CallKeys { remote: far.clone(), local: node.clone() });
        s.handle_command(Command::SetMedia(m), &mut out);
        assert!(s.is_secure());
        let mut caller_tx = Outbound::new(far);
        let mut genuine = rtp_from_caller(0, 1, 160, 4000);
        caller_tx.protect_rtp(&mut genuine).unwrap();
        let attacker: SocketAddr = "198.51.100.66:5000".parse().unwrap();
        // Before the caller's first packet, an attacker who knows the port: plain RTP,
        // SRTP under a key of its own, and 10,000 packets of noise with an RTP header.
        s.handle_datagram(t0, attacker, &rtp_from_caller(0, 1, 160, 9000), &mut out);
        let mut wrong = rtp_from_caller(0, 2, 320, 9000);
        Outbound::new(MasterKey::random(Suite::AesCm128HmacSha1_80)).protect_rtp(&mut wrong).unwrap();
        s.handle_datagram(t0, attacker, &wrong, &mut out);
        for k in 0..10_000u32 {
            let mut junk = rtp_from_caller(0, k as u16, k * 160, 0);
            junk.extend_from_slice(&k.to_be_bytes());
            for (i, b) in junk[12..].iter_mut().enumerate() {
                *b = (k as usize * 31 + i * 7) as u8;
            }
            s.handle_datagram(t0, attacker, &junk, &mut out);
        }
        assert!(out.events.iter().all(|e| !matches!(e, Event::Latched(_))), "nothing latched");
        assert!(out.heard.is_empty(), "nothing heard");
        s.handle_datagram(t0, caller(), &genuine, &mut out);
        assert!(out.events.contains(&Event::Latched(caller())), "the caller's own packet latches");
        // A replay of it from the attacker's address, and from the caller's.
        s.handle_datagram(t0, attacker, &genuine, &mut out);
        s.handle_datagram(t0, caller(), &genuine, &mut out);
        let c = s.take_counters();
        assert_eq!(c.srtp_dropped.of(SrtpError::Auth), 10_002);
        assert_eq!(c.srtp_dropped.of(SrtpError::Replay), 2);
        assert_eq!((c.packets_in, c.srtp_in, c.foreign), (1, 1, 0), "no forged packet got as far as the latch");
        assert_eq!(s.target(), Some(caller()));
        let heard: Vec<i16> = out.heard.iter().flat_map(|h| h.pcm.iter().copied()).collect();
        assert!(heard.iter().all(|v| (v - 4000).abs() < 200), "only the caller is heard");
        // What the node sends is SRTP under its own key.
        out.clear();
        s.handle_command(Command::Play { id: 1, pcm: vec![1000i16; 160 * 3].into(), barge_in: None }, &mut out);
        run_ticks(&mut s, t0, 0, 3, &mut out);
        assert_eq!(out.transmit.len(), 3);
        let mut far_rx = Inbound::new(node);
        let mut plain = Vec::new();
        for t in &out.transmit {
            assert!(rtp::parse(&t.data).unwrap().payload != [linear_to_ulaw(1000); 160], "not in the clear");
            far_rx.unprotect_rtp(&t.data, &mut plain).unwrap();
            assert_eq!(rtp::parse(&plain).unwrap().payload, &[linear_to_ulaw(1000); 160][..]);
        }
        // A re-offer back to plain RTP (an `optional` call's re-INVITE without keys).
        let mut m = media((0, AudioCodec::Pcmu), Some(101), true);
        m.srtp = None;
        s.handle_command(Command::SetMedia(m), &mut out);
        s.handle_datagram(t0 + MS20, caller(), &rtp_from_caller(0, 2, 320, 4000), &mut out);
        assert_eq!(s.take_counters().packets_in, 1);
    }

    #[test]
    fn negotiated_payload_types_decide_what_is_heard() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        // Without negotiation G.722 (PT 9) is not taken, as before.
        let mut enc = Encoder::new(AudioCodec::G722);
        let mut payload = Vec::new();
        enc.encode(&[3000; 160], &mut payload);
        let g722 = |seq: u16, payload: &[u8]| {
            rtp::build(RtpHeader { marker: false, payload_type: 9, sequence: seq, timestamp: seq as u32 * 160, ssrc: 5 }, payload)
        };
        s.handle_datagram(t0, caller(), &g722(1, &payload), &mut out);
        assert_eq!(s.take_counters().unsupported_payload, 1);
        // Nor G.729 (PT 18): the node keeps answering in PCMU.
        let g729 = rtp::build(RtpHeader { marker: false, payload_type: 18, sequence: 1, timestamp: 0, ssrc: 5 }, &[0u8; 20]);
        s.handle_datagram(t0, caller(), &g729, &mut out);
        assert_eq!(s.take_counters().unsupported_payload, 1);
        assert_eq!(s.outbound_codec(), AudioCodec::Pcmu);
        s.handle_command(Command::SetMedia(media((9, AudioCodec::G722), Some(101), true)), &mut out);
        for k in 2..10u16 {
            enc.encode(&[3000; 160], &mut payload);
            s.handle_datagram(t0 + MS20 * k as u32, caller(), &g722(k, &payload), &mut out);
        }
        let c = s.take_counters();
        assert_eq!((c.packets_in, c.unsupported_payload), (8, 0));
        let heard: Vec<i16> = out.heard.iter().flat_map(|h| h.pcm.iter().copied()).collect();
        assert_eq!(heard.len(), 8 * 160, "G.722 is heard at the call's 8 kHz");
        assert!(out.heard.iter().all(|h| h.wide.len() == 2 * h.pcm.len()), "with its own 16 kHz audio beside it");
        assert!(heard[640..].iter().all(|&v| (2500..3500).contains(&v)), "{:?}", &heard[640..650]);
        // A payload type the negotiation did not name is not decoded.
        s.handle_datagram(t0 + MS20 * 11, caller(), &rtp_from_caller(18, 11, 11 * 160, 0), &mut out);
        assert_eq!(s.take_counters().unsupported_payload, 1);
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
    fn heard_audio_is_decoded_by_payload_type_and_reply_follows_codec() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        s.handle_datagram(t0, caller(), &rtp_from_caller(0, 1, 0, 4000), &mut out);
        s.handle_datagram(t0 + MS20, caller(), &rtp_from_caller(8, 2, 160, -4000), &mut out);
        assert_eq!(out.heard.len(), 2);
        assert!((out.heard[0].pcm[0] - 4000).abs() < 200);
        assert!((out.heard[1].pcm[0] + 4000).abs() < 200);
        assert!(out.events.contains(&Event::CodecChanged(AudioCodec::Pcma)));
        s.handle_command(Command::Play { id: 1, pcm: vec![100i16; 160].into(), barge_in: None }, &mut out);
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
        s.handle_datagram(t0, caller(), &rtp_from_caller(13, 3, 320, 1), &mut out);
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
        s.handle_command(Command::Play { id: 1, pcm: vec![1i16; 160].into(), barge_in: None }, &mut out);
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
        s.handle_command(Command::Play { id: 1, pcm: vec![1i16; 160].into(), barge_in: None }, &mut out);
        s.handle_datagram(t0 + MS20 * 50, caller(), &rtp_from_caller(0, 1, 12345, 0), &mut out);
        run_ticks(&mut s, t0, 50, 51, &mut out);
        assert_eq!(out.played[0].pos, 8000, "sent at 1 s");
        let talk = out.heard.iter().find(|h| !h.concealed).unwrap();
        // Heard at 1 s minus the 40 ms hold the buffer allows for late packets.
        assert!((7680..=8000).contains(&talk.pos), "heard at {}", talk.pos);
    }

    /// Real speech (espeak-ng, 8 kHz; see testdata/README.md) and where it begins.
    fn speech() -> (Vec<i16>, usize) {
        let wav = hound::WavReader::new(&include_bytes!("../../testdata/speech-8k.wav")[..]).unwrap();
        let pcm: Vec<i16> = wav.into_samples::<i16>().map(|s| s.unwrap()).collect();
        let onset = pcm.iter().position(|s| s.abs() > 300).unwrap();
        (pcm, onset)
    }

    /// Opus loss in the decoder's order: a lost packet is rebuilt from the next one's
    /// FEC copy, a run of two or three by concealment then FEC, before the packet after
    /// them is decoded; a run longer than MAX_REBUILT_PACKETS is left to silence.
    #[cfg(feature = "opus")]
    #[test]
    fn lost_opus_packets_are_rebuilt_in_the_decoders_order() {
        let (speech, onset) = speech();
        let speech = &speech[onset..];
        let frames: Vec<&[i16]> = speech.chunks_exact(FRAME_SAMPLES).take(100).collect();
        // As a far end that takes FEC asks (useinbandfec=1): the packets carry it.
        let mut enc = Encoder::with_prefs(AudioCodec::Opus, OpusPrefs { inband_fec: true, ..Default::default() });
        let packets: Vec<Vec<u8>> = frames
            .iter()
            .map(|f| {
                let mut p = Vec::new();
                enc.encode(f, &mut p);
                p
            })
            .collect();
        // What the same packets decode to with nothing lost.
        let mut dec = Decoder::new(AudioCodec::Opus);
        let mut clean = Vec::new();
        packets.iter().for_each(|p| assert!(dec.decode(p, &mut clean)));
        let lost = |k: usize| k == 20 || k == 40 || k == 41 || (60..=62).contains(&k) || (80..=87).contains(&k);
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        let mut m = media((111, AudioCodec::Opus), Some(101), true);
        m.receive = vec![(111, AudioCodec::Opus)];
        s.handle_command(Command::SetMedia(m), &mut out);
        let mut heard = Vec::new();
        for (k, p) in packets.iter().enumerate() {
            let now = t0 + MS20 * k as u32;
            if !lost(k) {
                let ts = 1000 + k as u32 * 960;
                let data = rtp::build(RtpHeader { marker: false, payload_type: 111, sequence: k as u16, timestamp: ts, ssrc: 7 }, p);
                s.handle_datagram(now, caller(), &data, &mut out);
            }
            s.handle_tick(now, &mut out);
            heard.append(&mut out.heard);
        }
        s.handle_tick(t0 + MS20 * 110, &mut out);
        heard.append(&mut out.heard);
        let c = s.take_counters();
        assert_eq!((c.fec_recovered, c.plc_concealed), (3, 3), "FEC for the last of each run, concealment before it");
        let live: Vec<&Heard> = heard.iter().filter(|h| !h.late).collect();
        let at = |k: usize| live.iter().find(|h| h.pos == k as u64 * 160).unwrap_or_else(|| panic!("frame {k} on the timeline"));
        let loud = |pcm: &[i16]| pcm.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / pcm.len() as f64;
        // Against the clean decode of the same frame (the codec's delay included).
        for k in [20, 40, 41, 60, 62] {
            let h = at(k);
            assert!(!h.concealed && h.wide.len() == 320, "frame {k} was rebuilt in time, wideband");
            assert!(loud(&h.pcm) > 1e-3 * loud(&clean[k * 160..k * 160 + 160]), "frame {k} is not silence");
        }
        // The second concealed frame of a run is the decoder's too, though libopus has
        // faded it out by then (measured: near silence by its second 20 ms).
        assert!(!at(61).concealed);
        assert!((80..=87).all(|k| at(k).concealed), "a long dropout is silence");
        // The caller's audio is exactly what libopus gives when used as its API asks:
        // for a run of lost packets, concealment for all but the last, FEC from the
        // next packet for the last, then that packet. (Decoding the next packet first
        // and its FEC copy after, as the node did, leaves another decoder state.)
        let mut dec = Decoder::new(AudioCodec::Opus);
        let mut want = Vec::new();
        let mut last = None;
        for (k, p) in packets.iter().enumerate().filter(|(k, _)| !lost(*k)) {
            let gap = last.map_or(0, |l| k - l - 1);
            if (1..=MAX_REBUILT_PACKETS as usize).contains(&gap) {
                (1..gap).for_each(|_| assert_eq!(dec.conceal(160, &mut want, None), Some(true)));
                assert_eq!(dec.recover(p, 160, &mut want, None), Some(true));
            } else {
                want.resize(want.len() + 160 * gap, 0);
            }
            assert!(dec.decode(p, &mut want));
            last = Some(k);
        }
        let live_pcm: Vec<i16> = live.iter().flat_map(|h| h.pcm.iter().copied()).collect();
        assert_eq!(live.first().map(|h| h.pos), Some(0));
        let differs = live_pcm.iter().zip(&want).position(|(a, b)| a != b);
        assert!(live_pcm.len() >= want.len() && differs.is_none(), "the caller's audio differs from libopus's from sample {differs:?}");
    }

    /// The caller sends `pcm` from `from_frame` on, one PCMU packet per tick.
    fn caller_speaks(s: &mut Session, t0: Instant, from_frame: u64, pcm: &[i16], out: &mut Outputs) {
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

    fn signals(out: &Outputs) -> Vec<Signal> {
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
        let Some(Signal::SpeechStarted { pos }) = sig.first().copied() else { panic!("no speech found: {sig:?}") };
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
    fn fixture(bytes: &[u8]) -> Vec<i16> {
        hound::WavReader::new(bytes).unwrap().into_samples::<i16>().map(|s| s.unwrap()).collect()
    }

    /// The caller's side of a speakerphone: the prompt as it went out, back 150 ms
    /// later at -10 dB, plus what the caller says.
    fn echo_call(caller_says: Option<&[i16]>) -> (Outputs, Counters) {
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        s.handle_command(Command::SetTarget(caller()), &mut out);
        let prompt = fixture(include_bytes!("../../testdata/speech-8k.wav"));
        s.handle_command(
            Command::Play { id: 1, pcm: prompt.clone().into(), barge_in: Some(std::time::Duration::from_millis(200)) },
            &mut out,
        );
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
        assert!(signals(&out).iter().any(|s| matches!(s, Signal::SpeechStarted { .. })), "the detector hears the echo as speech");
        let ended: Vec<_> = out.events.iter().filter(|e| matches!(e, Event::PlaybackEnded { .. })).collect();
        assert!(
            matches!(ended[..], [Event::PlaybackEnded { outcome: PlaybackOutcome::Finished, .. }]),
            "the echo alone must not cut the prompt: {ended:?}"
        );
        assert!(c.barge_in_echo >= 1, "the guard says it held a barge-in back");

        // Someone else's voice over the same echo, from 0.8 s on.
        let other = fixture(include_bytes!("../../testdata/speech2-8k.wav"));
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
}
