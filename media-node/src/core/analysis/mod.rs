//! Real-time analysis of a call's audio (issue 17): what the caller does (speaks,
//! presses digits, goes silent), found where the audio is. Pure: positions and times
//! are passed in. Positions are 8 kHz samples on the call's timeline, the clock the
//! listener stream, the recording and the outbound audio share.
pub mod bands;
pub mod echo_guard;
pub mod inband_dtmf;
pub mod quality;
pub mod redact;
pub mod telephone_event;
pub mod vad;

use std::time::{Duration, Instant};

use inband_dtmf::{ToneDetector, ToneDigit};
use telephone_event::{EventReceiver, Received};
use vad::{Speech, VadConfig, VoiceDetector};

use super::jitter::RATE;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnalysisConfig {
    /// Run the voice detector (speech events and the node's barge-in need it; it is
    /// most of the analysis' CPU, see BENCHMARKS.md).
    pub vad_enabled: bool,
    pub vad: VadConfig,
    /// No RTP from the caller for this long (after the first packet) is a media
    /// timeout; None turns it off.
    pub media_timeout: Option<Duration>,
    /// Look for DTMF tones in the audio (trunks without RFC 4733).
    pub inband_dtmf: bool,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig { vad_enabled: true, vad: VadConfig::default(), media_timeout: Some(Duration::from_secs(30)), inband_dtmf: true }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtmfSource {
    /// RTP telephone-events (RFC 4733).
    Rfc4733,
    /// Tones in the caller's audio.
    InBand,
}

impl DtmfSource {
    pub fn label(self) -> &'static str {
        match self {
            DtmfSource::Rfc4733 => "rfc4733",
            DtmfSource::InBand => "inband",
        }
    }
}

/// What the analysis found, at a position on the call's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    SpeechStarted {
        pos: u64,
        /// Echo of the node's own audio was still in the caller's audio (after
        /// cancellation) when the speech began: double talk, or a leak.
        residual_echo: bool,
    },
    SpeechStopped {
        pos: u64,
        duration_ms: u64,
    },
    /// A digit begins (`end` false) or ends (`end` true, with its duration).
    Dtmf {
        digit: char,
        pos: u64,
        duration_ms: u32,
        end: bool,
        source: DtmfSource,
    },
    MediaTimeout {
        pos: u64,
        silent_ms: u64,
    },
    MediaResumed {
        pos: u64,
        silent_ms: u64,
    },
}

impl Signal {
    pub fn pos(&self) -> u64 {
        match *self {
            Signal::SpeechStarted { pos, .. }
            | Signal::SpeechStopped { pos, .. }
            | Signal::Dtmf { pos, .. }
            | Signal::MediaTimeout { pos, .. }
            | Signal::MediaResumed { pos, .. } => pos,
        }
    }
}

pub fn samples_to_ms(samples: u64) -> u64 {
    samples * 1000 / RATE as u64
}

pub struct Analyzer {
    cfg: AnalysisConfig,
    voice: VoiceDetector,
    /// With echo cancellation: a second detector on what the caller really sent, with
    /// the echo guard as on an unprocessed call, for barge-in only. The canceller's
    /// suppressor softens the first syllables of words spoken over the bot; this one
    /// hears them as an unprocessed call would, and its guard holds the echo back as
    /// there (`speech_onset` takes the earlier of the two).
    voice_as_sent: Option<Box<VoiceDetector>>,
    as_sent_speech: Vec<Speech>,
    tones: ToneDetector,
    events: EventReceiver,
    /// Where each telephone-event began on the timeline (its RTP timestamp's arrival).
    event_pos: Option<(u32, u64)>,
    last_rtp: Option<Instant>,
    timed_out: bool,
    /// The telephone-events' clock (8000, or 48000 beside Opus).
    event_clock: u32,
    speech: Vec<Speech>,
    digits: Vec<ToneDigit>,
    received: Vec<Received>,
}

impl Analyzer {
    pub fn new(cfg: AnalysisConfig) -> Analyzer {
        Analyzer {
            cfg,
            voice: VoiceDetector::new(cfg.vad),
            voice_as_sent: None,
            as_sent_speech: Vec::new(),
            tones: ToneDetector::default(),
            events: EventReceiver::default(),
            event_pos: None,
            last_rtp: None,
            timed_out: false,
            event_clock: RATE,
            speech: Vec::new(),
            digits: Vec::new(),
            received: Vec::new(),
        }
    }

    /// Any RTP from the caller (audio or events) at `pos`: ends a media timeout.
    pub fn on_rtp(&mut self, now: Instant, pos: u64, out: &mut Vec<Signal>) {
        if self.timed_out {
            self.timed_out = false;
            let silent_ms = self.last_rtp.map_or(0, |t| now.saturating_duration_since(t).as_millis() as u64);
            out.push(Signal::MediaResumed { pos, silent_ms });
        }
        self.last_rtp = Some(now);
    }

    /// The node's own audio as it went out: the echo guard's reference.
    pub fn on_played(&mut self, pos: u64, pcm: &[i16]) {
        if self.cfg.vad_enabled {
            self.voice.on_played(pos, pcm);
            if let Some(v) = &mut self.voice_as_sent {
                v.on_played(pos, pcm);
            }
        }
    }

    /// Barge-in also listens to what the caller sent (echo cancellation on), or not.
    pub fn set_as_sent_detector(&mut self, on: bool) {
        if on != self.voice_as_sent.is_some() {
            self.voice_as_sent = on.then(|| Box::new(VoiceDetector::new(self.cfg.vad)));
        }
    }

    /// Stretches of the caller's "speech" the echo guard found to be the node's own
    /// audio coming back, since the last call.
    pub fn take_echo_held(&mut self) -> u64 {
        self.voice.take_echo_held()
    }

    /// A telephone-event packet (its RTP timestamp and payload), arriving at `pos`.
    pub fn on_telephone_event(&mut self, now: Instant, pos: u64, timestamp: u32, payload: &[u8], out: &mut Vec<Signal>) {
        self.events.on_packet(now, timestamp, payload, &mut self.received);
        self.drain_received(pos, out);
    }

    /// The caller's audio as the listener hears it (continuous, concealment included).
    pub fn on_heard(&mut self, pos: u64, pcm: &[i16], out: &mut Vec<Signal>) {
        self.on_heard_processed(pos, pcm, pcm, out);
    }

    /// `on_heard` for processed audio (echo cancelled, noise suppressed), with what
    /// the caller really sent beside it for the echo guard.
    pub fn on_heard_processed(&mut self, pos: u64, pcm: &[i16], as_sent: &[i16], out: &mut Vec<Signal>) {
        if self.cfg.vad_enabled {
            self.voice.push_processed(pos, pcm, as_sent, &mut self.speech);
            if let Some(v) = &mut self.voice_as_sent {
                v.push(pos, as_sent, &mut self.as_sent_speech);
                self.as_sent_speech.clear();
            }
        }
        for s in self.speech.drain(..) {
            out.push(match s {
                Speech::Started { pos } => Signal::SpeechStarted { pos, residual_echo: false },
                Speech::Stopped { pos, onset } => Signal::SpeechStopped { pos, duration_ms: samples_to_ms(pos - onset) },
            });
        }
        if self.cfg.inband_dtmf {
            self.tones.push(pos, pcm, &mut self.digits);
            for d in self.digits.drain(..) {
                out.push(match d {
                    ToneDigit::Started { digit, pos } => {
                        Signal::Dtmf { digit, pos, duration_ms: 0, end: false, source: DtmfSource::InBand }
                    }
                    ToneDigit::Ended { digit, pos, samples } => {
                        Signal::Dtmf { digit, pos, duration_ms: samples_to_ms(samples) as u32, end: true, source: DtmfSource::InBand }
                    }
                });
            }
        }
    }

    pub fn on_tick(&mut self, now: Instant, pos: u64, out: &mut Vec<Signal>) {
        self.events.on_tick(now, &mut self.received);
        self.drain_received(pos, out);
        if let (Some(limit), Some(last), false) = (self.cfg.media_timeout, self.last_rtp, self.timed_out) {
            let silent = now.saturating_duration_since(last);
            if silent >= limit {
                self.timed_out = true;
                out.push(Signal::MediaTimeout { pos, silent_ms: silent.as_millis() as u64 });
            }
        }
    }

    fn drain_received(&mut self, pos: u64, out: &mut Vec<Signal>) {
        for r in self.received.drain(..) {
            match r {
                Received::Started { digit, timestamp } => {
                    self.event_pos = Some((timestamp, pos));
                    out.push(Signal::Dtmf { digit, pos, duration_ms: 0, end: false, source: DtmfSource::Rfc4733 });
                }
                Received::Ended { digit, timestamp, duration, .. } => {
                    let start = self.event_pos.filter(|(ts, _)| *ts == timestamp).map_or(pos, |(_, p)| p);
                    let duration_ms = (duration as u64 * 1000 / self.event_clock as u64) as u32;
                    out.push(Signal::Dtmf { digit, pos: start, duration_ms, end: true, source: DtmfSource::Rfc4733 });
                }
            }
        }
    }

    /// The clock the negotiated telephone-event counts its durations in.
    pub fn set_event_clock(&mut self, hz: u32) {
        self.event_clock = hz.max(1);
    }

    /// The caller is speaking now, and since when (for barge-in).
    pub fn speech_onset(&mut self) -> Option<u64> {
        let onset = self.voice.onset();
        match self.voice_as_sent.as_mut().and_then(|v| v.onset()) {
            Some(o) => Some(onset.map_or(o, |p| p.min(o))),
            None => onset,
        }
    }

    /// Telephone-event packets that only repeated what was known, and ones ignored.
    pub fn event_counts(&self) -> (u64, u64) {
        (self.events.duplicates, self.events.ignored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_timeout_after_the_first_packet_and_resumed_once() {
        let t0 = Instant::now();
        let cfg = AnalysisConfig { media_timeout: Some(Duration::from_secs(2)), ..Default::default() };
        let mut a = Analyzer::new(cfg);
        let mut out = Vec::new();
        a.on_tick(t0 + Duration::from_secs(10), 80_000, &mut out);
        assert!(out.is_empty(), "no timeout before the caller ever sent");
        a.on_rtp(t0 + Duration::from_secs(10), 80_000, &mut out);
        a.on_tick(t0 + Duration::from_millis(11_900), 95_200, &mut out);
        assert!(out.is_empty());
        a.on_tick(t0 + Duration::from_secs(12), 96_000, &mut out);
        a.on_tick(t0 + Duration::from_secs(13), 104_000, &mut out);
        assert_eq!(out, vec![Signal::MediaTimeout { pos: 96_000, silent_ms: 2000 }], "reported once");
        out.clear();
        a.on_rtp(t0 + Duration::from_secs(15), 120_000, &mut out);
        assert_eq!(out, vec![Signal::MediaResumed { pos: 120_000, silent_ms: 5000 }]);
    }

    #[test]
    fn telephone_events_are_placed_where_they_began() {
        let t0 = Instant::now();
        let mut a = Analyzer::new(AnalysisConfig::default());
        let mut out = Vec::new();
        let packets = telephone_event::digit_packets('7', 1200, 400, 10).unwrap();
        for (i, (_, p)) in packets.iter().enumerate() {
            a.on_telephone_event(t0, 8000 + 400 * i as u64, 555, p, &mut out);
        }
        assert_eq!(
            out,
            vec![
                Signal::Dtmf { digit: '7', pos: 8000, duration_ms: 0, end: false, source: DtmfSource::Rfc4733 },
                Signal::Dtmf { digit: '7', pos: 8000, duration_ms: 150, end: true, source: DtmfSource::Rfc4733 },
            ]
        );
        assert_eq!(a.event_counts(), (2, 0));
    }

    #[test]
    fn speech_is_found_only_with_the_detector_on() {
        let wav = hound::WavReader::new(&include_bytes!("../../../testdata/speech-8k.wav")[..]).unwrap();
        let pcm: Vec<i16> = wav.into_samples::<i16>().map(|s| s.unwrap()).collect();
        for on in [true, false] {
            let mut a = Analyzer::new(AnalysisConfig { vad_enabled: on, ..Default::default() });
            let mut out = Vec::new();
            for (k, f) in pcm.chunks(160).chain(std::iter::repeat_n(&[0i16; 160][..], 50)).enumerate() {
                a.on_heard(k as u64 * 160, f, &mut out);
            }
            let speech = out.iter().filter(|s| matches!(s, Signal::SpeechStarted { .. } | Signal::SpeechStopped { .. })).count();
            assert_eq!(speech, if on { 2 } else { 0 }, "detector {on}: {out:?}");
        }
    }
}
