//! One call's media rules as a sans-IO state machine (str0m's shape).
//!
//! Inputs: a received datagram with its arrival time, a tick, a command. Outputs:
//! datagrams to send, the caller's audio for listeners, our own audio as sent, and
//! events. No socket, clock, task, file or OS entropy in here: the I/O layer feeds real
//! time (and a stopwatch for the codec-time metric) in, tests feed made-up time in.
//!
//! `Session` is the one way in and out; it conducts parts that own their state and
//! count their own totals:
//! - `transport`: SRTP/SRTCP, RTP/RTCP demultiplexing, the latch, RTCP reports;
//! - `inbound`: payload types, decoding and loss rebuilding, the jitter buffer, the
//!   analysis taps;
//! - `outbound`: playback, the frame clock, encoding, ptime packets, RTP numbering;
//! - `barge_in`: the node's own barge-in (the echo guard is the analysis's: speech
//!   that is the bot's own audio coming back is no speech at all);
//! - `dtmf`: the telephone-event payload type, digits out, redaction.

mod barge_in;
mod dtmf;
mod inbound;
mod io;
mod outbound;
mod transport;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod two_party;

use std::net::SocketAddr;
use std::time::Instant;

use crate::core::analysis::{AnalysisConfig, Signal};
use crate::core::codec::AudioCodec;
use crate::core::jitter::{JitterConfig, FRAME_SAMPLES};
use crate::core::playback::{Cut, FrameSource, PlaybackId, PlaybackOutcome};
use crate::core::rtcp::FarEndReport;
use crate::core::voice_processing::ProcessingConfig;
use barge_in::{BargeIn, Interrupt, Playing};
use dtmf::Dtmf;
use inbound::Inbound;
use outbound::{Outbound, Sending};
use transport::{ReportInputs, Transport};

pub use dtmf::TELEPHONE_EVENT_PT;
pub use inbound::Stopwatch;
pub use io::{Command, Counters, Event, MediaSettings, Outputs, Played, RtcpTarget, SrtpDrops, Transmit};

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
    /// so, as nearly all do; negotiation sets it per call).
    pub telephone_event_pt: u8,
    /// The wall-clock time of the session's start, for the NTP time of its RTCP reports.
    pub wall_start: std::time::SystemTime,
    /// Read around encoding and decoding for the codec-time metric only.
    pub stopwatch: Stopwatch,
    /// Echo cancellation and noise suppression from the start (the node's default;
    /// a call may change it).
    pub processing: ProcessingConfig,
}

impl SessionConfig {
    /// SSRC, sequence and timestamp origins drawn from `rng`, as RFC 3550 §5.1 asks
    /// them random; the start's wall-clock time from the caller.
    pub fn random(
        rng: &mut impl rand::Rng,
        wall_start: std::time::SystemTime,
        stopwatch: Stopwatch,
        symmetric_rtp: bool,
        jitter: JitterConfig,
        analysis: AnalysisConfig,
    ) -> SessionConfig {
        SessionConfig {
            ssrc: rng.random(),
            initial_sequence: rng.random(),
            initial_timestamp: rng.random(),
            symmetric_rtp,
            jitter,
            analysis,
            telephone_event_pt: TELEPHONE_EVENT_PT,
            wall_start,
            stopwatch,
            processing: ProcessingConfig::default(),
        }
    }
}

pub struct Session {
    start: Instant,
    transport: Transport,
    inbound: Inbound,
    outbound: Outbound,
    barge_in: BargeIn,
    dtmf: Dtmf,
    /// Mark fates on their way to events (reused).
    fates: Vec<crate::core::playback::MarkFate>,
}

impl Session {
    pub fn new(cfg: SessionConfig, start: Instant) -> Session {
        let mut inbound = Inbound::new(cfg.jitter, cfg.analysis, start, cfg.stopwatch);
        inbound.set_processing(cfg.processing);
        Session {
            start,
            transport: Transport::new(cfg.ssrc, cfg.symmetric_rtp, start, cfg.wall_start),
            inbound,
            outbound: Outbound::new(cfg.ssrc, cfg.initial_sequence, cfg.initial_timestamp, start, cfg.stopwatch),
            barge_in: BargeIn::default(),
            dtmf: Dtmf::new(cfg.telephone_event_pt),
            fates: Vec::new(),
        }
    }

    pub fn started(&self) -> Instant {
        self.start
    }

    /// When the session next needs a tick: the next frame, or a packet held for its time.
    pub fn poll_timeout(&self) -> Instant {
        self.outbound.poll_timeout()
    }

    pub fn target(&self) -> Option<SocketAddr> {
        self.transport.target()
    }

    pub fn outbound_codec(&self) -> AudioCodec {
        self.outbound.codec()
    }

    /// True while the call's media is SRTP.
    pub fn is_secure(&self) -> bool {
        self.transport.is_secure()
    }

    pub fn current_playback(&self) -> Option<PlaybackId> {
        self.outbound.playback.current()
    }

    /// Streamed samples waiting to be played (the I/O layer's back-pressure gauge).
    pub fn stream_queued(&self) -> usize {
        self.outbound.playback.stream_queued()
    }

    /// Streamed samples that went out so far (for the stream's played ms).
    pub fn stream_sent(&self) -> u64 {
        self.outbound.playback.stream_sent()
    }

    /// True when nothing is playing or queued.
    pub fn is_idle(&self) -> bool {
        self.current_playback().is_none() && self.stream_queued() == 0
    }

    /// Echo cancellation and noise suppression as the call has them now.
    pub fn processing(&self) -> ProcessingConfig {
        self.inbound.processing()
    }

    /// RFC 3550 interarrival jitter of the caller's RTP so far, in seconds (None before
    /// any packet).
    pub fn interarrival_jitter(&self) -> Option<f64> {
        self.inbound.interarrival_jitter()
    }

    /// The far end's latest report on the node's audio, once.
    pub fn take_far_end_report(&mut self) -> Option<FarEndReport> {
        self.transport.take_far_end_report()
    }

    /// What every part counted since the last call, for the I/O layer's metrics.
    pub fn take_counters(&mut self) -> Counters {
        let mut c = Counters::default();
        self.transport.take_counters(&mut c);
        self.inbound.take_counters(&mut c);
        self.outbound.take_counters(&mut c);
        self.dtmf.take_counters(&mut c);
        c
    }

    /// A datagram on the call's RTP port (see `Transport::receive` for what is taken).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8], out: &mut Outputs) {
        let send_clock = self.outbound.codec().rtp_clock();
        let Some(packet) = self.transport.receive(from, data, now, send_clock, out) else { return };
        if self.dtmf.is_event(packet.payload_type) {
            self.inbound.on_telephone_event(now, &packet, data.len());
            self.emit_signals(out);
            return;
        }
        let first = out.heard.len();
        if let Some((pt, codec)) = self.inbound.on_audio(now, &packet, data.len(), &mut out.heard) {
            self.outbound.follow_caller(pt, codec, out);
        }
        if let Some(echoed) = self.inbound.take_echoed() {
            self.outbound.playback.push_echo(echoed);
            echoed.clear();
        }
        self.analyse_heard(first, out);
    }

    /// A datagram on the call's RTCP port (the odd one).
    pub fn handle_rtcp(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.transport.receive_rtcp(now, from, data, self.outbound.codec().rtp_clock());
    }

    pub fn handle_tick(&mut self, now: Instant, out: &mut Outputs) {
        let frames = self.outbound.due(now, out);
        let first = out.heard.len();
        self.inbound.on_tick(now, &mut out.heard);
        self.analyse_heard(first, out);
        for index in frames {
            self.produce_frame(index, out);
        }
        if self.transport.report_due(now) {
            let clock = self.inbound.codec().unwrap_or(self.outbound.codec()).rtp_clock();
            let pos = now.saturating_duration_since(self.start).as_nanos() as u64 * 8000 / 1_000_000_000;
            let inputs = ReportInputs {
                // Zero before any packet: the interarrival jitter starts at zero too.
                jitter: (self.inbound.interarrival_seconds() * f64::from(clock)) as u32,
                rtp_timestamp: self.outbound.rtp_timestamp(pos),
                sending: self.outbound.is_sending(),
            };
            self.transport.send_report(now, inputs, out);
        }
    }

    pub fn handle_command(&mut self, cmd: Command, out: &mut Outputs) {
        match cmd {
            Command::Play { id, pcm, barge_in } => {
                if let Some(cut) = self.outbound.playback.play(id, pcm) {
                    self.ended(cut, PlaybackOutcome::Interrupted, out);
                }
                self.barge_in.on_play(barge_in);
            }
            Command::Stop => {
                if let Some(cut) = self.outbound.playback.barge_in() {
                    self.ended(cut, PlaybackOutcome::Stopped, out);
                }
                self.emit_marks(out);
            }
            Command::SetTarget(addr) => self.transport.set_target(addr),
            Command::SuggestTarget(addr) => self.transport.suggest_target(addr),
            Command::SetEcho(on) => {
                self.inbound.set_echo(on);
                if !on {
                    self.outbound.playback.clear_echo();
                }
            }
            Command::Stream { pcm, wide, mark } => {
                self.outbound.playback.push_stream(&pcm, &wide);
                if let Some(id) = mark {
                    self.outbound.playback.mark(id);
                    self.emit_marks(out);
                }
            }
            Command::StreamBargeIn(b) => self.barge_in.set_stream(b),
            // telephone-event beside Opus counts at 48 kHz, as the codec does.
            Command::SendDigits(d) => self.dtmf.send(d),
            Command::RedactDtmf(on) => self.dtmf.redact(on, &mut out.heard),
            Command::SetProcessing(cfg) => self.inbound.set_processing(cfg),
            Command::SetMedia(m) => {
                let (payload_type, codec) = m.send;
                let sending = Sending { payload_type, codec, opus: m.opus, ptime_ms: m.ptime_ms, sends: m.sends };
                self.outbound.set_media(sending, &mut self.transport, out);
                self.inbound.set_media(m.receive, m.telephone_event_clock);
                self.dtmf.set_events(m.telephone_event_pt, m.telephone_event_clock);
                self.transport.set_media(m.srtp.as_ref(), m.rtcp);
            }
        }
    }

    /// Ends the call: whatever plays is reported as cut by the call's end.
    pub fn close(&mut self, out: &mut Outputs) {
        if let Some(cut) = self.outbound.playback.barge_in() {
            self.ended(cut, PlaybackOutcome::CallEnded, out);
        }
        self.outbound.close(&mut self.transport, out);
        // The BYE's time is the session's last: close has no clock of its own.
        self.transport.send_goodbye(self.outbound.next_deadline(), out);
        self.emit_marks(out);
        self.dtmf.stop_redacting(&mut out.heard);
    }

    /// Runs the analysis over the caller's audio the jitter buffer just released, and
    /// applies the node's barge-in to what it found.
    fn analyse_heard(&mut self, first: usize, out: &mut Outputs) {
        // Listeners, the analysis and barge-in hear the caller without the bot's echo.
        self.inbound.process(&mut out.heard[first..]);
        for h in out.heard[first..].iter().filter(|h| !h.late) {
            self.inbound.analyse(h);
        }
        self.emit_signals(out);
        self.dtmf.pass(&mut out.heard, first, self.inbound.heard_end());
        self.check_barge_in(out);
    }

    fn emit_signals(&mut self, out: &mut Outputs) {
        let heard_end = self.inbound.heard_end();
        let residual = self.inbound.residual_echo();
        for mut s in self.inbound.signals.drain(..) {
            if let Signal::SpeechStarted { residual_echo, .. } = &mut s {
                *residual_echo = residual;
            }
            self.dtmf.on_signal(&s, heard_end);
            out.events.push(Event::Signal(s));
        }
    }

    /// Cuts the prompt or the stream once the caller has spoken over it for its
    /// barge-in time.
    fn check_barge_in(&mut self, out: &mut Outputs) {
        let playing = Playing { prompt: self.current_playback().is_some(), stream_queued: self.stream_queued() > 0 };
        let onset = self.inbound.speech_onset();
        match self.barge_in.judge(onset, self.inbound.heard_end(), playing) {
            None => return,
            Some(Interrupt::Prompt) => {
                if let Some(cut) = self.outbound.playback.barge_in() {
                    self.ended(cut, PlaybackOutcome::BargeIn, out);
                }
            }
            Some(Interrupt::Stream) => {
                self.outbound.playback.clear_stream();
                out.events.push(Event::StreamBargedIn);
            }
        }
        self.emit_marks(out);
    }

    fn emit_marks(&mut self, out: &mut Outputs) {
        self.outbound.playback.take_mark_fates(&mut self.fates);
        out.events.extend(self.fates.drain(..).map(Event::Mark));
    }

    fn ended(&mut self, cut: Cut, outcome: PlaybackOutcome, out: &mut Outputs) {
        self.barge_in.prompt_ended(self.current_playback().is_some());
        out.events.push(Event::PlaybackEnded { id: cut.id, outcome, played_ms: cut.played_ms() });
    }

    fn produce_frame(&mut self, index: u64, out: &mut Outputs) {
        if let Some(digit) = self.dtmf.next_frame(&mut out.events) {
            self.inbound.on_frame(index * FRAME_SAMPLES as u64, None);
            let (pt, ratio) = (self.dtmf.payload_type(), self.dtmf.clock_ratio());
            return self.outbound.send_digit(index, digit, pt, ratio, &mut self.transport, out);
        }
        let pos = index * FRAME_SAMPLES as u64;
        if let Some(id) = self.outbound.playback.starting() {
            out.events.push(Event::PlaybackStarted { id, pos });
            self.barge_in.prompt_started(pos);
        }
        let mut frame = [0i16; FRAME_SAMPLES];
        let (source, finished) = self.outbound.playback.next_frame(&mut frame);
        // The source's own 16 kHz audio, for a codec that sends it.
        let wide = self.outbound.playback.wide_frame().filter(|_| self.outbound.codec().is_wideband()).copied();
        if let Some(cut) = finished {
            self.ended(cut, PlaybackOutcome::Finished, out);
        }
        let streaming = source == Some(FrameSource::Stream);
        self.barge_in.streaming(streaming.then_some(pos));
        if streaming {
            self.emit_marks(out);
        }
        self.outbound.send_frame(index, source, &frame, wide.as_ref().map(|w| &w[..]), &mut self.transport, out);
        let sent = source.filter(|_| self.outbound.is_sending());
        // The echo canceller's reference: what went out in this frame, or silence.
        self.inbound.on_frame(pos, sent.map(|_| (&frame[..], wide.as_ref().map_or(&[][..], |w| &w[..]))));
        let Some(source) = sent else { return };
        if source != FrameSource::Echo {
            self.inbound.on_played(pos, &frame);
        }
        out.played.push(Played { pos, pcm: frame, wide: wide.map(|w| w.to_vec()).unwrap_or_default(), source });
    }
}
