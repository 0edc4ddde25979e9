//! The per-call task: owns the RTP/RTCP sockets, feeds the session real time, fans the
//! caller's audio out to listeners, and answers PlayAudio when the prompt ends.
//! Everything audio-related is decided in the sans-IO session, offer/answer in the
//! call's `Negotiation`, TTS stream bookkeeping in `streams`, turn latency and quality
//! in `measure`; this file moves bytes and time between them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::sleep_until;
use tracing::{debug, info};

use super::listen_post::ListenerPost;
use super::measure::{QualityPeriod, Turn};
use super::recording::CallRecorder;
use super::streams::{StreamEnd, StreamReplies, Streams, TtsChunk};
use super::udp;
use crate::audio::listener::ListenerFormat;
use crate::core::analysis::{AnalysisConfig, Signal};
use crate::core::jitter::JitterConfig;
use crate::core::negotiation::{Negotiation, Outcome, Refused, Request};
use crate::core::playback::{FrameSource, MarkFate, PlaybackId, PlaybackOutcome, Sound};
use crate::core::recording::timeline_position;
use crate::core::session::{Command, Event, Outputs, Session, SessionConfig};
use crate::core::voice_processing::ProcessingConfig;
use crate::events::call::{to_broker, CallClock, Happened};
use crate::events::EventPublisher;
use crate::metrics::Metrics;
use crate::recording::{RecordingError, RecordingJob, RecordingSpec, RecordingStore};

/// Streamed audio is taken from the sender only while less than this is queued
/// (8 kHz samples): the rest waits in the sender, which is the back-pressure.
const STREAM_HIGH_WATER: usize = 8000 / 2;
/// Frames a listener may fall behind before its frames are dropped (and counted).
pub const LISTENER_QUEUE: usize = 100;
/// A listener whose queue has stayed full this long (it lost every frame meanwhile) is
/// ended to make room when the call has MAX_LISTENERS and another wants to listen.
pub const STALLED_LISTENER: Duration = Duration::from_secs(1);
/// Listeners one call takes at most. Each one that stalls holds up to LISTENER_QUEUE
/// frames (about 190 KB at 48 kHz), so without a cap ten thousand RecordAudio streams
/// on one call would hold 2 GB. An agent, a recorder of its own and a supervisor or
/// two need far fewer.
pub const MAX_LISTENERS: usize = 16;
/// Call events a StreamCallEvents subscriber may fall behind by before it loses the
/// oldest (and is told how many). Events are rare (a few per turn), so this is
/// minutes of a call.
pub const EVENTS_QUEUE: usize = 256;

/// What the gRPC layer may tell a call's session directly. Audio never goes this way:
/// a prompt or a TTS stream enters through `CallCommand::Play` or `Stream`, which
/// register who waits for its end and take part in back-pressure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Barge-in: cut the audio playing and drop what is queued (and end the TTS stream).
    Stop,
    SetTarget(SocketAddr),
    SetEcho(bool),
    /// DTMF redaction on or off.
    RedactDtmf(bool),
}

impl From<Control> for Command {
    fn from(c: Control) -> Command {
        match c {
            Control::Stop => Command::Stop,
            Control::SetTarget(t) => Command::SetTarget(t),
            Control::SetEcho(on) => Command::SetEcho(on),
            Control::RedactDtmf(on) => Command::RedactDtmf(on),
        }
    }
}

pub enum CallCommand {
    Play {
        id: PlaybackId,
        uri: String,
        /// At 8 kHz, and at 16 kHz too for a call sending in a wideband codec.
        pcm: Sound,
        target: Option<SocketAddr>,
        barge_in: Option<Duration>,
        /// How it ended, and how many ms of it went out.
        done: oneshot::Sender<(PlaybackOutcome, u64)>,
    },
    /// Send DTMF digits as RFC 4733 events; `done` fires when they have gone out
    /// (false: a newer SendDtmf took over).
    SendDigits {
        digits: crate::core::dtmf_out::DigitSender,
        done: oneshot::Sender<bool>,
    },
    /// A StreamCallEvents subscriber: its own receiver of the call's events.
    Subscribe {
        reply: oneshot::Sender<broadcast::Receiver<Happened>>,
    },
    /// `applied` fires once the session has applied it, so a caller told "stopped"
    /// knows no further frame of the old audio will be sent.
    Control {
        control: Control,
        applied: oneshot::Sender<()>,
    },
    /// SDP offer/answer for the call: what was agreed applies before the reply.
    Negotiate {
        request: Request,
        reply: NegotiateReply,
    },
    /// `attached` says whether the call took the listener (false: MAX_LISTENERS, none
    /// of them stalled); `evicted` fires if the call ends it later to make room.
    Listen {
        rate: u32,
        frames: mpsc::Sender<Bytes>,
        evicted: oneshot::Sender<()>,
        attached: oneshot::Sender<bool>,
    },
    /// Attach a TTS stream (8 kHz chunks): mark acknowledgements go to its replies as
    /// they happen, then how it ended, with the ms of it that went out.
    Stream {
        chunks: mpsc::Receiver<TtsChunk>,
        barge_in: Option<Duration>,
        replies: StreamReplies,
    },
    /// Start recording (the segment number is filled in by the call).
    StartRecording {
        spec: RecordingSpec,
        reply: oneshot::Sender<Result<(), RecordingError>>,
    },
    /// Finish the active recording; the reply carries the spooled job.
    StopRecording {
        reply: oneshot::Sender<Result<RecordingJob, RecordingError>>,
    },
    /// Echo cancellation and noise suppression: each None keeps what the call has;
    /// the reply is what the call has then.
    SetProcessing {
        echo_cancellation: Option<bool>,
        noise_suppression: Option<bool>,
        reply: oneshot::Sender<ProcessingConfig>,
    },
    Shutdown,
}

struct CallSockets {
    rtp: UdpSocket,
    rtcp: UdpSocket,
}

/// A call's bound sockets before they join the media runtime's reactor (a tokio socket
/// belongs to the runtime it was made in).
pub struct BoundSockets {
    pub rtp: std::net::UdpSocket,
    pub rtcp: std::net::UdpSocket,
}

impl BoundSockets {
    fn register(self) -> std::io::Result<CallSockets> {
        let rtp = UdpSocket::from_std(self.rtp)?;
        // Packets are timed when they landed, not when the call got round to them.
        if let Err(e) = udp::stamp_arrivals(&rtp) {
            debug!(error = %e, "no kernel receive timestamps; arrivals are read times");
        }
        Ok(CallSockets { rtp, rtcp: UdpSocket::from_std(self.rtcp)? })
    }
}

/// The registry's view of a live call.
pub struct CallHandle {
    pub port: u16,
    pub call_id: String,
    pub started: Instant,
    /// Where the call's timeline is on the wall clock (for its events).
    pub clock: CallClock,
    pub commands: mpsc::Sender<CallCommand>,
    pub task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The node sends in a wideband codec (G.722, Opus; what the call's last
    /// negotiation agreed): prompts and TTS then bring their 16 kHz audio along.
    pub wideband: watch::Receiver<bool>,
}

struct Listener {
    format: ListenerFormat,
    frames: mpsc::Sender<Bytes>,
    /// Since when its queue has been full (every frame since was lost).
    full_since: Option<Instant>,
    evicted: oneshot::Sender<()>,
}

/// What every call of a node shares, built once by the node: the session settings,
/// and where a call's metrics, listener frames, recordings and events go.
pub struct CallContext {
    pub symmetric_rtp: bool,
    pub jitter: JitterConfig,
    pub metrics: Arc<Metrics>,
    /// Carries every call's live-listen frames to the gRPC streams.
    pub post: Arc<ListenerPost>,
    pub store: Arc<RecordingStore>,
    pub events: Arc<EventPublisher>,
    pub analysis: AnalysisConfig,
    /// Echo cancellation and noise suppression a call starts with (the node's default).
    pub processing: ProcessingConfig,
}

/// Starts a call's task on the media runtime over its bound sockets.
pub fn spawn_call(ctx: &CallContext, port: u16, call_id: String, sockets: BoundSockets) -> Arc<CallHandle> {
    let (tx, rx) = mpsc::channel(64);
    let started = Instant::now();
    let clock = CallClock { port, started: SystemTime::now() };
    let cfg = SessionConfig::random(&mut rand::rng(), clock.started, Instant::now, ctx.symmetric_rtp, ctx.jitter, ctx.analysis);
    let session = Session::new(SessionConfig { processing: ctx.processing, ..cfg }, started);
    let span = tracing::info_span!("call", port, call_id = %call_id);
    // Where a recording finished by the call's end is stored: the runtime that asked
    // for the call (the serving one), not the media threads. An upload (file copy, or
    // HTTP and TLS to S3) then never competes with other calls' ticks, and runs on the
    // serving runtime's SCHED_BATCH threads.
    let storage = tokio::runtime::Handle::try_current().unwrap_or_else(|_| super::runtime::handle());
    let (wideband_tx, wideband) = watch::channel(false);
    let task = CallTask {
        negotiation: Negotiation::new(&call_id, port),
        negotiated: None,
        wideband: wideband_tx,
        counted_codec: session.outbound_codec(),
        session,
        commands: rx,
        metrics: ctx.metrics.clone(),
        post: ctx.post.clone(),
        listeners: Vec::new(),
        waiters: HashMap::new(),
        streams: Streams::default(),
        out: Outputs::default(),
        frames: Vec::new(),
        recorder: CallRecorder::new(ctx.store.config.spool_dir.clone(), ctx.metrics.clone(), ctx.events.clone()),
        store: ctx.store.clone(),
        events: ctx.events.clone(),
        call_id: call_id.clone(),
        storage,
        call_events: broadcast::channel(EVENTS_QUEUE).0,
        digits_done: None,
        turn: Turn::default(),
        quality: QualityPeriod::default(),
        jitter_hold: ctx.jitter.hold,
    };
    let run = async move {
        match sockets.register() {
            Ok(sockets) => task.run(sockets).await,
            Err(e) => tracing::error!(error = %e, "the call's sockets could not join the media runtime"),
        }
    };
    let join = super::runtime::handle().spawn(tracing::Instrument::instrument(run, span));
    Arc::new(CallHandle { port, call_id, started, clock, commands: tx, task: tokio::sync::Mutex::new(Some(join)), wideband })
}

/// How often a call's interarrival jitter is sampled into the histogram.
const JITTER_SAMPLE: std::time::Duration = std::time::Duration::from_secs(5);
/// How often a call's echo canceller figures (ERLE, delay) go into the metrics.
const ECHO_SAMPLE: std::time::Duration = std::time::Duration::from_secs(1);

type NegotiateReply = oneshot::Sender<Result<Outcome, Refused>>;

struct CallTask {
    session: Session,
    /// The call's offer/answer state.
    negotiation: Negotiation,
    /// A NegotiateSdp answer, sent at the end of the turn that applied it.
    negotiated: Option<(NegotiateReply, Result<Outcome, Refused>)>,
    wideband: watch::Sender<bool>,
    /// The codec the call's gauge counts it under (what the node sends).
    counted_codec: crate::core::codec::AudioCodec,
    commands: mpsc::Receiver<CallCommand>,
    metrics: Arc<Metrics>,
    /// Where listener frames go; it hands them to the gRPC streams in rounds.
    post: Arc<ListenerPost>,
    listeners: Vec<Listener>,
    /// Prompts playing or queued: their URI (for the event) and who waits for the end.
    waiters: HashMap<PlaybackId, (String, oneshot::Sender<(PlaybackOutcome, u64)>)>,
    streams: Streams,
    out: Outputs,
    frames: Vec<Bytes>,
    recorder: CallRecorder,
    store: Arc<RecordingStore>,
    events: Arc<EventPublisher>,
    call_id: String,
    /// The runtime that stores a recording the call's end finishes.
    storage: tokio::runtime::Handle,
    /// The call's events to its StreamCallEvents subscribers (each has its own
    /// receiver; the call never waits for one). Dropped with the task, which ends
    /// every subscriber's stream.
    call_events: broadcast::Sender<Happened>,
    digits_done: Option<oneshot::Sender<bool>>,
    turn: Turn,
    quality: QualityPeriod,
    jitter_hold: Duration,
}

impl CallTask {
    async fn run(mut self, sockets: CallSockets) {
        info!("call started");
        self.metrics.calls_by_transport.with_label_values(&["rtp"]).inc();
        self.metrics.calls_by_codec.with_label_values(&[self.counted_codec.name()]).inc();
        let mut rtp_in = udp::Received::default();
        let mut rtcp_buf = vec![0u8; 2048];
        let mut jitter_sampled = Instant::now();
        let (mut echo_sampled, mut echo_seen) = (Instant::now(), (None, None));
        // One timer for the call's life, moved only when the session's next deadline
        // changes (once a tick): a fresh sleep per loop turn entered and left the
        // timer wheel on every packet as well.
        let mut armed = self.session.poll_timeout();
        let tick = sleep_until(armed.into());
        tokio::pin!(tick);
        loop {
            let due = self.session.poll_timeout();
            if due != armed {
                armed = due;
                tick.as_mut().reset(due.into());
            }
            let wants_stream = self.session.stream_queued() < STREAM_HIGH_WATER;
            tokio::select! {
                biased;
                cmd = self.commands.recv() => match cmd {
                    Some(CallCommand::Shutdown) | None => break,
                    Some(cmd) => self.on_command(cmd),
                },
                r = udp::recv(&sockets.rtp, &mut rtp_in) => match r {
                    Ok(_) => {
                        for (from, data, arrived) in rtp_in.iter() {
                            self.session.handle_datagram(arrived, from, data, &mut self.out);
                        }
                        self.observe_far_end();
                    }
                    Err(e) => debug!(error = %e, "rtp receive error"),
                },
                r = sockets.rtcp.recv_from(&mut rtcp_buf) => {
                    if let Ok((n, from)) = r {
                        // Counted with the session's counters (under SRTP: if it authenticates).
                        self.session.handle_rtcp(Instant::now(), from, &rtcp_buf[..n]);
                        self.observe_far_end();
                    }
                },
                chunk = recv_stream(&mut self.streams), if wants_stream => match chunk {
                    Some(chunk) => self.on_chunk(chunk),
                    None => self.streams.input_ended(),
                },
                _ = &mut tick => {
                    let now = Instant::now();
                    super::runtime::ration_echo_searches(now);
                    self.session.handle_tick(now, &mut self.out);
                    let counters = self.session.take_counters();
                    self.metrics.add_session_counters(&counters);
                    self.quality.on_packets(counters.packets_in, counters.lost_samples);
                    if counters.processing.erle_db.is_some() {
                        echo_seen = (counters.processing.erle_db, counters.processing.delay_ms);
                    }
                    if echo_sampled.elapsed() >= ECHO_SAMPLE {
                        // The canceller's view once a second while the bot talks.
                        echo_sampled = Instant::now();
                        if let (Some(erle), delay) = std::mem::take(&mut echo_seen) {
                            self.metrics.echo_erle.observe(erle);
                            if let Some(ms) = delay {
                                self.metrics.echo_delay.observe(f64::from(ms) / 1000.0);
                            }
                        }
                    }
                    if jitter_sampled.elapsed() >= JITTER_SAMPLE {
                        jitter_sampled = Instant::now();
                        if let Some(j) = self.session.interarrival_jitter() {
                            self.metrics.interarrival_jitter.observe(j);
                        }
                        self.report_quality();
                    }
                },
            }
            self.flush(&sockets).await;
        }
        if let Some(j) = self.session.interarrival_jitter() {
            self.metrics.interarrival_jitter.observe(j);
        }
        self.session.close(&mut self.out);
        self.flush(&sockets).await;
        // The end of the call finalises an active recording by itself.
        if let Some(job) = self.recorder.finish(self.now_pos()) {
            self.store_later(job);
        }
        self.store_salvaged();
        self.end_stream(StreamEnd::CallEnded);
        self.metrics.add_session_counters(&self.session.take_counters());
        self.metrics.listeners.sub(self.listeners.len() as i64);
        self.metrics.calls_by_transport.with_label_values(&[transport(self.session.is_secure())]).dec();
        self.metrics.calls_by_codec.with_label_values(&[self.counted_codec.name()]).dec();
        info!("call ended");
        // Sockets close here, when the task returns: only then may the port be released.
    }

    fn on_command(&mut self, cmd: CallCommand) {
        match cmd {
            CallCommand::Play { id, uri, pcm, target, barge_in, done } => {
                self.interrupt_stream();
                if let Some(t) = target {
                    self.session.handle_command(Command::SuggestTarget(t), &mut self.out);
                }
                self.turn.agent_audio(Instant::now());
                self.waiters.insert(id, (uri, done));
                self.session.handle_command(Command::Play { id, pcm, barge_in }, &mut self.out);
            }
            CallCommand::SendDigits { digits, done } => {
                if let Some(old) = self.digits_done.replace(done) {
                    let _ = old.send(false);
                }
                self.session.handle_command(Command::SendDigits(digits), &mut self.out);
            }
            CallCommand::Subscribe { reply } => {
                let _ = reply.send(self.call_events.subscribe());
            }
            CallCommand::Control { control, applied } => {
                if control == Control::Stop {
                    self.interrupt_stream();
                }
                self.apply(control.into());
                let _ = applied.send(());
            }
            CallCommand::SetProcessing { echo_cancellation, noise_suppression, reply } => {
                let now = self.session.processing();
                let cfg = ProcessingConfig {
                    echo_cancellation: echo_cancellation.unwrap_or(now.echo_cancellation),
                    noise_suppression: noise_suppression.unwrap_or(now.noise_suppression),
                };
                self.session.handle_command(Command::SetProcessing(cfg), &mut self.out);
                let _ = reply.send(cfg);
            }
            CallCommand::Negotiate { request, reply } => {
                use rand::TryRngCore;
                // The node's SDES keys come from the OS (see MasterKey::generate).
                let outcome = self.negotiation.negotiate(request, &mut rand::rngs::OsRng.unwrap_err());
                if let Ok(Outcome::Agreed(a)) = &outcome {
                    self.apply(Command::SetMedia(a.media.clone()));
                    if let Some(addr) = a.remote() {
                        // The signalled address, under the latching rules: symmetric RTP
                        // latches again on the far end's first packet.
                        self.apply(Command::SetTarget(addr));
                    }
                    self.wideband.send_replace(a.wideband);
                }
                // Answered once what it changed has gone through the call's events (the
                // codec gauge, the transport gauge): a caller that reads the metrics
                // next sees the call as agreed.
                self.negotiated = Some((reply, outcome));
            }
            CallCommand::Listen { rate, frames, evicted, attached } => {
                // Listeners that went away since the last frame do not count.
                let before = self.listeners.len();
                self.listeners.retain(|l| !l.frames.is_closed());
                self.metrics.listeners.sub((before - self.listeners.len()) as i64);
                if self.listeners.len() >= MAX_LISTENERS && !self.evict_stalled_listener() {
                    let _ = attached.send(false);
                    return;
                }
                self.metrics.listeners.inc();
                self.listeners.push(Listener { format: ListenerFormat::new(rate), frames, full_since: None, evicted });
                let _ = attached.send(true);
            }
            CallCommand::Stream { chunks, barge_in, replies } => {
                // The replaced stream takes no more audio, but what it queued still
                // plays out ahead of the new one (an internal mark after it says when),
                // and its marks are acknowledged as they really go out.
                let (sent, queued) = (self.session.stream_sent(), self.session.stream_queued());
                if let Some(end_mark) = self.streams.attach(chunks, replies, sent, queued) {
                    self.session.handle_command(Command::Stream { pcm: Vec::new(), wide: Vec::new(), mark: Some(end_mark) }, &mut self.out);
                }
                self.session.handle_command(Command::StreamBargeIn(barge_in), &mut self.out);
            }
            CallCommand::StartRecording { spec, reply } => {
                let _ = reply.send(self.recorder.start(spec, self.now_pos()));
            }
            CallCommand::StopRecording { reply } => {
                let _ = reply.send(self.recorder.stop(self.now_pos()));
                self.store_salvaged();
            }
            CallCommand::Shutdown => {}
        }
    }

    /// Ends the listener stalled longest, if one has lost every frame for over
    /// STALLED_LISTENER (an agent that reconnected leaves its old stream unread): its
    /// stream ends saying why. False when none has.
    fn evict_stalled_listener(&mut self) -> bool {
        let now = Instant::now();
        let stalled = self
            .listeners
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.full_since.filter(|since| now.saturating_duration_since(*since) > STALLED_LISTENER).map(|s| (i, s)))
            .min_by_key(|(_, since)| *since);
        let Some((i, _)) = stalled else { return false };
        let l = self.listeners.remove(i);
        let _ = l.evicted.send(());
        self.metrics.listeners.dec();
        self.metrics.listeners_evicted.inc();
        info!("a stalled listener was ended to make room for a new one");
        true
    }

    /// A command to the session, with the transport gauge moved if it changed the
    /// call's SRTP.
    fn apply(&mut self, cmd: Command) {
        let secure = self.session.is_secure();
        self.session.handle_command(cmd, &mut self.out);
        if secure != self.session.is_secure() {
            self.metrics.calls_by_transport.with_label_values(&[transport(secure)]).dec();
            self.metrics.calls_by_transport.with_label_values(&[transport(!secure)]).inc();
        }
    }

    /// The call's timeline position now.
    fn now_pos(&self) -> u64 {
        timeline_position(self.session.started(), Instant::now())
    }

    /// Barge-in ends the attached TTS stream: what it queued is dropped with the
    /// session's queue, and dropping its channel stops the sender's pump, so nothing
    /// more of that utterance plays. A new StreamAudioToCall starts the next one.
    fn interrupt_stream(&mut self) {
        self.end_stream(StreamEnd::Interrupted);
    }

    fn end_stream(&mut self, end: StreamEnd) {
        self.streams.end(end, self.session.stream_sent());
    }

    /// The period's quality, as a call event.
    fn report_quality(&mut self) {
        let jitter = Duration::from_secs_f64(self.session.interarrival_jitter().unwrap_or(0.0));
        // The node's own delay: its playout hold and a packet's length.
        let delay = self.jitter_hold + Duration::from_millis(20);
        if let Some(h) = self.quality.report(self.now_pos(), jitter, delay) {
            self.publish(h);
        }
    }

    fn on_chunk(&mut self, chunk: TtsChunk) {
        if !chunk.pcm.is_empty() {
            self.turn.agent_audio(Instant::now());
        }
        let mark = chunk.mark.and_then(|name| self.streams.mark(name));
        self.session.handle_command(Command::Stream { pcm: chunk.pcm, wide: chunk.wide, mark }, &mut self.out);
    }

    /// Stores a recording in the background, on the serving runtime.
    fn store_later(&self, job: RecordingJob) {
        let store = self.store.clone();
        self.storage.spawn(async move {
            store.deliver(job).await;
        });
    }

    /// What failed recordings kept (a full spool) is stored like a finished one.
    fn store_salvaged(&mut self) {
        for job in self.recorder.take_salvaged() {
            self.store_later(job);
        }
    }

    /// What the far end's RTCP said of the node's audio, into the metrics.
    fn observe_far_end(&mut self) {
        if let Some(f) = self.session.take_far_end_report() {
            self.metrics.far_end_fraction_lost.observe(f.fraction_lost);
            self.metrics.far_end_jitter.observe(f.jitter_seconds);
            if let Some(rtt) = f.round_trip {
                self.metrics.round_trip.observe(rtt.as_secs_f64());
            }
        }
    }

    async fn flush(&mut self, sockets: &CallSockets) {
        let rtp = &sockets.rtp;
        for h in self.out.heard.iter().filter(|h| !h.late) {
            self.quality.on_heard(&h.pcm);
        }
        for p in &self.out.played {
            self.quality.on_played(&p.pcm);
        }
        self.recorder.record(&self.out, self.now_pos());
        self.store_salvaged();
        for t in self.out.transmit.drain(..) {
            if let Err(e) = rtp.send_to(&t.data, t.to).await {
                debug!(to = %t.to, error = %e, "rtp send failed");
            }
            self.metrics.send_lateness.observe(Instant::now().saturating_duration_since(t.due).as_secs_f64());
        }
        for t in self.out.rtcp.drain(..) {
            if let Err(e) = sockets.rtcp.send_to(&t.data, t.to).await {
                debug!(to = %t.to, error = %e, "rtcp send failed");
            }
        }
        if !self.out.heard.is_empty() {
            // A listener whose stream has gone is dropped here; the post skips its frames.
            let before = self.listeners.len();
            self.listeners.retain(|l| !l.frames.is_closed());
            self.metrics.listeners.sub((before - self.listeners.len()) as i64);
            for l in &mut self.listeners {
                self.frames.clear();
                // Late audio is for the recording only: the stream already carried
                // silence in its place.
                for h in self.out.heard.iter().filter(|h| !h.late) {
                    l.format.push(&h.pcm, &h.wide, &mut self.frames);
                }
                for f in self.frames.drain(..) {
                    self.post.post(&l.frames, f);
                }
                // A full queue loses what comes next: a listener that stays so has stalled.
                l.full_since = if l.frames.capacity() == 0 { l.full_since.or(Some(Instant::now())) } else { None };
            }
            self.out.heard.clear();
        }
        // Taken out and put back so handling an event may use the task (its vector's
        // capacity is kept across turns).
        let mut events = std::mem::take(&mut self.out.events);
        for e in events.drain(..) {
            match e {
                Event::PlaybackStarted { id, pos } => {
                    if let Some((uri, _)) = self.waiters.get(&id) {
                        let h = Happened::PlaybackStarted { uri: uri.clone(), pos };
                        self.publish(h);
                    }
                }
                Event::PlaybackEnded { id, outcome, played_ms } => {
                    self.metrics.playbacks.with_label_values(&[outcome.label()]).inc();
                    if let Some((uri, w)) = self.waiters.remove(&id) {
                        self.events.playback_finished(&self.call_id, &uri, outcome.label(), played_ms);
                        let _ = w.send((outcome, played_ms));
                        let pos = self.now_pos();
                        self.publish(Happened::PlaybackFinished { uri, pos, played_ms, reason: outcome.label() });
                    }
                }
                Event::Signal(s @ Signal::SpeechStopped { pos, .. }) => {
                    // Where the speech really ended (the detector says so later).
                    self.turn.speech_ended(self.session.started() + Duration::from_micros(pos * 125));
                    self.publish(Happened::Signal(s));
                }
                Event::Signal(s) => {
                    if let Signal::Dtmf { end: true, source, .. } = s {
                        self.metrics.dtmf_digits.with_label_values(&[source.label()]).inc();
                    }
                    self.publish(Happened::Signal(s));
                }
                Event::Latched(addr) => info!(%addr, "media latched to caller's source"),
                Event::CodecChanged(c) => {
                    info!(codec = c.name(), "the call's codec changed");
                    self.metrics.calls_by_codec.with_label_values(&[self.counted_codec.name()]).dec();
                    self.metrics.calls_by_codec.with_label_values(&[c.name()]).inc();
                    self.counted_codec = c;
                }
                Event::Mark(MarkFate::Played(id)) => self.streams.on_mark(id, false, self.session.stream_sent()),
                Event::Mark(MarkFate::Cleared(id)) => self.streams.on_mark(id, true, self.session.stream_sent()),
                Event::StreamBargedIn => self.end_stream(StreamEnd::BargeIn),
                Event::DigitsSent => {
                    if let Some(d) = self.digits_done.take() {
                        let _ = d.send(true);
                    }
                }
            }
        }
        self.out.events = events;
        if let Some(p) = self.out.played.iter().find(|p| p.source != FrameSource::Echo) {
            if let Some(turn) = self.turn.bot_audio(Instant::now(), p.pos) {
                let (agent_s, media_s) = (turn.agent.as_secs_f64(), turn.media.as_secs_f64());
                self.metrics.turn_latency.with_label_values(&["agent"]).observe(agent_s);
                self.metrics.turn_latency.with_label_values(&["media"]).observe(media_s);
                self.metrics.turn_latency.with_label_values(&["total"]).observe(agent_s + media_s);
                self.publish(turn.event());
            }
        }
        self.out.played.clear();
        // A finished stream is done once its queued audio has gone out.
        self.streams.played_out(self.session.stream_sent(), self.session.stream_queued());
        if let Some((reply, outcome)) = self.negotiated.take() {
            let _ = reply.send(outcome);
        }
    }
}

impl CallTask {
    /// To the call's StreamCallEvents subscribers and the broker.
    fn publish(&self, h: Happened) {
        self.metrics.call_events.with_label_values(&[h.kind()]).inc();
        if let Some((key, payload)) = to_broker(&self.call_id, &h) {
            self.events.media_event(key, &self.call_id, payload);
        }
        if self.call_events.receiver_count() > 0 {
            let _ = self.call_events.send(h);
        }
    }
}

async fn recv_stream(streams: &mut Streams) -> Option<TtsChunk> {
    match streams.chunks() {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The `transport` label of a call's media.
fn transport(secure: bool) -> &'static str {
    if secure {
        "srtp"
    } else {
        "rtp"
    }
}
