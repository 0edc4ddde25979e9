//! What goes into a session and what comes out: commands, the call's negotiated
//! media, events, datagrams to send, audio as played, and the counters the I/O layer
//! adds to its metrics.

use std::net::SocketAddr;
use std::time::Instant;

use crate::core::analysis::Signal;
use crate::core::codec::{AudioCodec, ByCodec, OpusPrefs};
use crate::core::jitter::{Heard, FRAME_SAMPLES};
use crate::core::playback::{FrameSource, MarkFate, MarkId, PlaybackId, PlaybackOutcome, Sound};
use crate::core::srtp::{CallKeys, SrtpError};

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
    SendDigits(crate::core::dtmf_out::DigitSender),
    /// The node's barge-in for the streamed audio (None: the caller may talk over it).
    StreamBargeIn(Option<std::time::Duration>),
    /// What offer/answer agreed for the call's audio (applies from the next packet).
    SetMedia(MediaSettings),
    /// DTMF redaction on or off: digits silenced in the caller's audio for listeners
    /// and the recording (which then lags by the redactor's delay line).
    RedactDtmf(bool),
    /// Echo cancellation and noise suppression of the caller's audio, on or off.
    SetProcessing(crate::core::voice_processing::ProcessingConfig),
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
    /// The clock the telephone-events count in: the codec's, or 8000 beside Opus when
    /// the far end offered that (their timestamps then run on it too).
    pub telephone_event_clock: u32,
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
#[derive(Debug, Default, Clone, Copy, PartialEq)]
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
    /// Echo cancellation and noise suppression: what they saw, and their time in ns.
    pub processing: crate::core::voice_processing::ProcessingStats,
    pub processing_nanos: u64,
}

/// Dropped SRTP packets by reason, as the counters' label says them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SrtpDrops(pub [u64; 6]);

impl SrtpDrops {
    pub const REASONS: [SrtpError; 6] =
        [SrtpError::Malformed, SrtpError::Auth, SrtpError::Replay, SrtpError::TooOld, SrtpError::UnknownMki, SrtpError::KeyExpired];

    pub(super) fn count(&mut self, e: SrtpError) {
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
