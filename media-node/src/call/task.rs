//! The per-call task: owns the RTP/RTCP sockets, feeds the session real time, fans the
//! caller's audio out to listeners, and answers PlayAudio when the prompt ends.
//! Everything audio-related is decided in the sans-IO session; this file only moves
//! bytes and time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use media_proto::pb;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::sleep_until;
use tracing::{debug, info};

use super::listen_post::ListenerPost;
use super::recording::CallRecorder;
use super::udp;
use crate::audio::listener::ListenerFormat;
use crate::core::analysis::quality::sum_squares;
use crate::core::analysis::{samples_to_ms, AnalysisConfig, Signal};
use crate::core::jitter::JitterConfig;
use crate::core::negotiation::{Negotiation, Outcome};
use crate::core::playback::{MarkFate, MarkId, PlaybackId, PlaybackOutcome, Sound};
use crate::core::recording::timeline_position;
use crate::core::session::{Command, Event, Outputs, Session, SessionConfig};
use crate::events::call::{to_broker, to_proto, CallClock, Happened};
use crate::events::EventPublisher;
use crate::metrics::Metrics;
use crate::recording::{RecordingError, RecordingJob, RecordingSpec, RecordingStore};

/// Streamed audio is taken from the sender only while less than this is queued
/// (8 kHz samples): the rest waits in the sender, which is the back-pressure.
const STREAM_HIGH_WATER: usize = 8000 / 2;
/// Frames a listener may fall behind before its frames are dropped (and counted).
pub const LISTENER_QUEUE: usize = 100;
/// Listeners one call takes at most. Each one that stalls holds up to LISTENER_QUEUE
/// frames (about 190 KB at 48 kHz), so without a cap ten thousand RecordAudio streams
/// on one call would hold 2 GB. An agent, a recorder of its own and a supervisor or
/// two need far fewer.
pub const MAX_LISTENERS: usize = 16;
/// Call events a StreamCallEvents subscriber may fall behind by before it loses the
/// oldest (and is told how many). Events are rare (a few per turn), so this is
/// minutes of a call.
pub const EVENTS_QUEUE: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Everything sent was played.
    Played,
    /// Another StreamAudioToCall took over the call.
    Replaced,
    /// Barge-in (a new prompt or a stop) cut it; the rest of that stream is discarded.
    Interrupted,
    /// The caller spoke over it (the node's own barge-in).
    BargeIn,
    CallEnded,
}

impl StreamEnd {
    /// StreamAudioToCallResponse.error_message for a stream that did not play out.
    pub fn message(self) -> &'static str {
        match self {
            StreamEnd::Played => "",
            StreamEnd::Replaced => "another StreamAudioToCall took over this call",
            StreamEnd::Interrupted => "interrupted by barge-in (stop or new prompt)",
            StreamEnd::BargeIn => "interrupted by the caller's speech (barge-in)",
            StreamEnd::CallEnded => "the call ended",
        }
    }
}

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
        reply: oneshot::Sender<broadcast::Receiver<pb::CallEvent>>,
    },
    /// `applied` fires once the session has applied it, so a caller told "stopped"
    /// knows no further frame of the old audio will be sent.
    Control {
        control: Control,
        applied: oneshot::Sender<()>,
    },
    /// SDP offer/answer for the call: what was agreed applies before the reply.
    Negotiate {
        request: crate::core::negotiation::Request,
        reply: oneshot::Sender<Result<crate::core::negotiation::Outcome, crate::core::negotiation::Refused>>,
    },
    /// `attached` says whether the call took the listener (false: MAX_LISTENERS).
    Listen {
        rate: u32,
        frames: mpsc::Sender<Bytes>,
        attached: oneshot::Sender<bool>,
    },
    /// Attach a TTS stream (8 kHz chunks); `done` fires when it has ended, with the ms
    /// of it that went out. Mark acknowledgements go to `acks` as they happen.
    Stream {
        chunks: mpsc::Receiver<TtsChunk>,
        barge_in: Option<Duration>,
        acks: mpsc::Sender<Result<pb::StreamAudioToCallResponse, tonic::Status>>,
        done: oneshot::Sender<(StreamEnd, u64)>,
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
    pub commands: mpsc::Sender<CallCommand>,
    pub task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The node sends in a wideband codec (G.722, Opus; what the call's last
    /// negotiation agreed): prompts and TTS then bring their 16 kHz audio along.
    pub wideband: watch::Receiver<bool>,
}

struct Listener {
    format: ListenerFormat,
    frames: mpsc::Sender<Bytes>,
}

/// A piece of streamed TTS at the call's rate (and at 16 kHz, or empty), and the
/// agent's mark after it.
pub struct TtsChunk {
    pub pcm: Vec<i16>,
    pub wide: Vec<i16>,
    pub mark: Option<String>,
}

struct AttachedStream {
    chunks: Option<mpsc::Receiver<TtsChunk>>,
    done: oneshot::Sender<(StreamEnd, u64)>,
    acks: mpsc::Sender<Result<pb::StreamAudioToCallResponse, tonic::Status>>,
    /// Its marks not yet acknowledged, in order, by the session's id.
    marks: Vec<(MarkId, String)>,
    /// The session's streamed-sample count where its audio begins.
    sent_base: u64,
}

impl AttachedStream {
    /// How much of this stream went out, given the session's streamed-sample count.
    fn played_ms(&self, sent: u64) -> u64 {
        samples_to_ms(sent.saturating_sub(self.sent_base))
    }
}

impl RetiredStream {
    /// How it ended once its audio all went out: played, if its sender had sent
    /// everything, else taken over.
    fn played_out(&self) -> StreamEnd {
        if self.complete {
            StreamEnd::Played
        } else {
            StreamEnd::Replaced
        }
    }
}

/// A stream a newer one replaced while its audio was still queued: it plays out, its
/// marks are acknowledged as they go, and its sender gets the final answer once the
/// internal mark after its last sample went out (or was cleared).
struct RetiredStream {
    stream: AttachedStream,
    end_mark: MarkId,
    /// The sender had sent everything: its audio played out is `Played`, not `Replaced`.
    complete: bool,
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
}

/// Starts a call's task on the media runtime over its bound sockets.
pub fn spawn_call(ctx: &CallContext, port: u16, call_id: String, sockets: BoundSockets) -> Arc<CallHandle> {
    let (tx, rx) = mpsc::channel(64);
    let started = Instant::now();
    let clock = CallClock { port, started: SystemTime::now() };
    let cfg = SessionConfig::random(&mut rand::rng(), clock.started, Instant::now, ctx.symmetric_rtp, ctx.jitter, ctx.analysis);
    let session = Session::new(cfg, started);
    let span = tracing::info_span!("call", port, call_id = %call_id);
    // Where a recording finished by the call's end is stored: the runtime that asked
    // for the call (the serving one), not the media threads. An upload (file copy, or
    // HTTP and TLS to S3) then never competes with other calls' ticks, and runs on the
    // serving runtime's SCHED_BATCH threads.
    let storage = tokio::runtime::Handle::try_current().unwrap_or_else(|_| super::runtime::handle());
    let (wideband_tx, wideband) = watch::channel(false);
    let task = CallTask {
        negotiation: Negotiation::new(&call_id, port),
        wideband: wideband_tx,
        counted_codec: session.outbound_codec(),
        session,
        commands: rx,
        metrics: ctx.metrics.clone(),
        post: ctx.post.clone(),
        listeners: Vec::new(),
        waiters: HashMap::new(),
        stream: None,
        out: Outputs::default(),
        frames: Vec::new(),
        recorder: CallRecorder::new(ctx.store.config.spool_dir.clone(), ctx.metrics.clone(), ctx.events.clone()),
        store: ctx.store.clone(),
        events: ctx.events.clone(),
        call_id: call_id.clone(),
        storage,
        clock,
        call_events: broadcast::channel(EVENTS_QUEUE).0,
        next_mark: 0,
        retired: Vec::new(),
        digits_done: None,
        turn: None,
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
    Arc::new(CallHandle { port, call_id, started, commands: tx, task: tokio::sync::Mutex::new(Some(join)), wideband })
}

/// How often a call's interarrival jitter is sampled into the histogram.
const JITTER_SAMPLE: std::time::Duration = std::time::Duration::from_secs(5);

struct CallTask {
    session: Session,
    /// The call's offer/answer state.
    negotiation: Negotiation,
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
    stream: Option<AttachedStream>,
    retired: Vec<RetiredStream>,
    out: Outputs,
    frames: Vec<Bytes>,
    recorder: CallRecorder,
    store: Arc<RecordingStore>,
    events: Arc<EventPublisher>,
    call_id: String,
    /// The runtime that stores a recording the call's end finishes.
    storage: tokio::runtime::Handle,
    clock: CallClock,
    /// The call's events to its StreamCallEvents subscribers (each has its own
    /// receiver; the call never waits for one). Dropped with the task, which ends
    /// every subscriber's stream.
    call_events: broadcast::Sender<pb::CallEvent>,
    next_mark: MarkId,
    digits_done: Option<oneshot::Sender<bool>>,
    /// The turn being measured: when the caller's speech ended, and when the agent's
    /// first audio after it came in.
    turn: Option<(Instant, Option<Instant>)>,
    quality: QualityPeriod,
    jitter_hold: Duration,
}

/// What the periodic quality event is computed from, since the last one.
#[derive(Default)]
struct QualityPeriod {
    packets: u64,
    lost: u64,
    heard: u64,
    heard_sq: f64,
    played: u64,
    played_sq: f64,
}

impl CallTask {
    async fn run(mut self, sockets: CallSockets) {
        info!("call started");
        self.metrics.calls_by_transport.with_label_values(&["rtp"]).inc();
        self.metrics.calls_by_codec.with_label_values(&[self.counted_codec.name()]).inc();
        let mut rtp_in = udp::Received::default();
        let mut rtcp_buf = vec![0u8; 2048];
        let mut jitter_sampled = Instant::now();
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
                chunk = recv_stream(&mut self.stream), if wants_stream => match chunk {
                    Some(chunk) => self.on_chunk(chunk),
                    None => if let Some(s) = &mut self.stream { s.chunks = None },
                },
                _ = &mut tick => {
                    self.session.handle_tick(Instant::now(), &mut self.out);
                    let counters = self.session.take_counters();
                    self.metrics.add_session_counters(&counters);
                    self.quality.packets += counters.packets_in;
                    self.quality.lost += counters.lost_samples;
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
                self.agent_audio_in();
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
                let _ = reply.send(outcome);
            }
            CallCommand::Listen { rate, frames, attached } => {
                // Listeners that went away since the last frame do not count.
                let before = self.listeners.len();
                self.listeners.retain(|l| !l.frames.is_closed());
                self.metrics.listeners.sub((before - self.listeners.len()) as i64);
                if self.listeners.len() >= MAX_LISTENERS {
                    let _ = attached.send(false);
                    return;
                }
                self.metrics.listeners.inc();
                self.listeners.push(Listener { format: ListenerFormat::new(rate), frames });
                let _ = attached.send(true);
            }
            CallCommand::Stream { chunks, barge_in, acks, done } => {
                // The replaced stream takes no more audio, but what it queued still
                // plays out ahead of the new one, and its marks are acknowledged as
                // they really go out.
                self.retire_stream();
                self.session.handle_command(Command::StreamBargeIn(barge_in), &mut self.out);
                let sent_base = self.session.stream_sent() + self.session.stream_queued() as u64;
                self.stream = Some(AttachedStream { chunks: Some(chunks), done, acks, marks: Vec::new(), sent_base });
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

    /// Ends the attached stream, if one is: the marks it did not reach are cleared
    /// (acknowledged before the final answer), and its sender learns how it ended.
    /// An end that drops the queued audio ends the retired streams too.
    fn end_stream(&mut self, end: StreamEnd) {
        let sent = self.session.stream_sent();
        if let Some(s) = self.stream.take() {
            finish_stream(s, end, sent);
        }
        if end != StreamEnd::Played {
            for r in self.retired.drain(..) {
                finish_stream(r.stream, end, sent);
            }
        }
    }

    /// A new stream takes over: the attached one, if its audio is still queued, plays
    /// out as a retired stream (an internal mark after its last sample says when).
    fn retire_stream(&mut self) {
        let Some(mut s) = self.stream.take() else { return };
        let complete = s.chunks.is_none();
        s.chunks = None;
        let end_mark = self.next_mark;
        let retired = RetiredStream { stream: s, end_mark, complete };
        if self.session.stream_queued() == 0 {
            let end = retired.played_out();
            finish_stream(retired.stream, end, self.session.stream_sent());
            return;
        }
        self.next_mark += 1;
        self.session.handle_command(Command::Stream { pcm: Vec::new(), wide: Vec::new(), mark: Some(end_mark) }, &mut self.out);
        self.retired.push(retired);
    }

    /// A mark's fate, for whichever stream (attached or retired) it belongs to.
    fn on_mark(&mut self, id: MarkId, cleared: bool) {
        let sent = self.session.stream_sent();
        let streams = self.stream.iter_mut().chain(self.retired.iter_mut().map(|r| &mut r.stream));
        for s in streams {
            if let Some(i) = s.marks.iter().position(|(m, _)| *m == id) {
                let (_, name) = s.marks.remove(i);
                // The acks channel is sized for every mark a client can have queued
                // (see service.rs); a client that stopped reading loses its acks,
                // never the call's time.
                let _ = s.acks.try_send(Ok(mark_ack(&name, cleared, s.played_ms(sent))));
                return;
            }
        }
        if let Some(i) = self.retired.iter().position(|r| r.end_mark == id) {
            let r = self.retired.remove(i);
            let end = if cleared { StreamEnd::Interrupted } else { r.played_out() };
            finish_stream(r.stream, end, sent);
        }
    }

    /// The period's quality, as a call event (only while the caller sends RTP: a silent
    /// caller is a media timeout, not bad quality).
    fn report_quality(&mut self) {
        use crate::core::analysis::quality::{dbfs, mos, r_factor, Measured};
        let q = std::mem::take(&mut self.quality);
        if q.packets == 0 {
            return;
        }
        let jitter_ms = self.session.interarrival_jitter().unwrap_or(0.0) * 1000.0;
        // The node's own delay: its playout hold and a packet's length.
        let delay_ms = self.jitter_hold.as_secs_f64() * 1000.0 + 20.0;
        let loss = q.lost as f64 / q.heard.max(1) as f64;
        let r = r_factor(Measured { loss, jitter_ms, delay_ms });
        // Only audio that went out counts for the bot's level; silence is not sent.
        let h = Happened::Quality {
            pos: self.now_pos(),
            loss_percent: loss * 100.0,
            jitter_ms,
            r_factor: r,
            mos: mos(r),
            caller_dbfs: dbfs(q.heard_sq, q.heard),
            bot_dbfs: dbfs(q.played_sq, q.played),
        };
        self.publish(h);
    }

    /// The agent's audio arrived: the first after the caller's speech ended closes
    /// the turn's agent stage.
    fn agent_audio_in(&mut self) {
        if let Some((_, agent @ None)) = &mut self.turn {
            *agent = Some(Instant::now());
        }
    }

    fn on_chunk(&mut self, chunk: TtsChunk) {
        if !chunk.pcm.is_empty() {
            self.agent_audio_in();
        }
        let mark = match (chunk.mark, &mut self.stream) {
            (Some(name), Some(s)) => {
                let id = self.next_mark;
                self.next_mark += 1;
                s.marks.push((id, name));
                Some(id)
            }
            _ => None,
        };
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
            self.quality.heard += h.pcm.len() as u64;
            self.quality.heard_sq += sum_squares(&h.pcm);
        }
        for p in &self.out.played {
            self.quality.played += p.pcm.len() as u64;
            self.quality.played_sq += sum_squares(&p.pcm);
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
                    let ended = self.session.started() + Duration::from_micros(pos * 125);
                    self.turn = Some((ended, None));
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
                Event::Mark(MarkFate::Played(id)) => self.on_mark(id, false),
                Event::Mark(MarkFate::Cleared(id)) => self.on_mark(id, true),
                Event::StreamBargedIn => self.end_stream(StreamEnd::BargeIn),
                Event::DigitsSent => {
                    if let Some(d) = self.digits_done.take() {
                        let _ = d.send(true);
                    }
                }
            }
        }
        self.out.events = events;
        if let Some((ended, Some(agent))) = self.turn {
            if let Some(p) = self.out.played.iter().find(|p| p.source != crate::core::playback::FrameSource::Echo) {
                let out_at = Instant::now();
                let agent_s = agent.saturating_duration_since(ended).as_secs_f64();
                let media_s = out_at.saturating_duration_since(agent).as_secs_f64();
                self.metrics.turn_latency.with_label_values(&["agent"]).observe(agent_s);
                self.metrics.turn_latency.with_label_values(&["media"]).observe(media_s);
                self.metrics.turn_latency.with_label_values(&["total"]).observe(agent_s + media_s);
                let (agent_ms, media_ms) = ((agent_s * 1000.0) as u64, (media_s * 1000.0) as u64);
                self.publish(Happened::Turn { pos: p.pos, agent_ms, media_ms });
                self.turn = None;
            }
        }
        self.out.played.clear();
        // A finished stream is done once its queued audio has gone out.
        if let Some(s) = &self.stream {
            if s.chunks.is_none() && self.session.stream_queued() == 0 {
                self.end_stream(StreamEnd::Played);
            }
        }
    }
}

impl CallTask {
    /// To the call's StreamCallEvents subscribers and the broker.
    fn publish(&self, h: Happened) {
        self.metrics.call_events.with_label_values(&[h.kind()]).inc();
        if self.call_events.receiver_count() > 0 {
            let _ = self.call_events.send(to_proto(self.clock, &self.call_id, &h));
        }
        if let Some((key, payload)) = to_broker(&self.call_id, &h) {
            self.events.media_event(key, &self.call_id, payload);
        }
    }
}

/// A stream's end: the marks it did not reach are cleared (acknowledged before the
/// final answer), and its sender learns how it ended and how much of it played.
fn finish_stream(s: AttachedStream, end: StreamEnd, sent: u64) {
    let played_ms = s.played_ms(sent);
    for (_, name) in &s.marks {
        let _ = s.acks.try_send(Ok(mark_ack(name, true, played_ms)));
    }
    let _ = s.done.send((end, played_ms));
}

fn mark_ack(name: &str, cleared: bool, played_ms: u64) -> pb::StreamAudioToCallResponse {
    pb::StreamAudioToCallResponse { success: true, error_message: String::new(), mark: name.to_string(), mark_cleared: cleared, played_ms }
}

async fn recv_stream(stream: &mut Option<AttachedStream>) -> Option<TtsChunk> {
    match stream.as_mut().and_then(|s| s.chunks.as_mut()) {
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
