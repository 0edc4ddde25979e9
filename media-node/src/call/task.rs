//! The per-call task: owns the RTP/RTCP sockets, feeds the session real time, fans the
//! caller's audio out to listeners, and answers PlayAudio when the prompt ends.
//! Everything audio-related is decided in the sans-IO session; this file only moves
//! bytes and time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep_until;
use tracing::{debug, info};

use super::listen_post::ListenerPost;
use super::udp;
use crate::audio::listener::ListenerFormat;
use crate::core::jitter::JitterConfig;
use crate::core::playback::{PlaybackId, PlaybackOutcome};
use crate::core::session::{Command, Event, Outputs, Session, SessionConfig};
use crate::events::EventPublisher;
use crate::metrics::Metrics;
use crate::recording::{RecordingJob, RecordingSpec, RecordingStore, RecordingWriter};

/// The recording is written this far (8 kHz samples, 500 ms) behind the present, so
/// late caller audio still lands in its place.
const RECORDING_LAG: u64 = 4000;
/// Samples of the timeline written to the spool at once (100 ms).
const RECORDING_BATCH: u64 = 800;

/// Streamed audio is taken from the sender only while less than this is queued
/// (8 kHz samples): the rest waits in the sender, which is the back-pressure.
const STREAM_HIGH_WATER: usize = 8000 / 2;
/// Frames a listener may fall behind before its frames are dropped (and counted).
pub const LISTENER_QUEUE: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Everything sent was played.
    Played,
    /// Another StreamAudioToCall took over the call.
    Replaced,
    /// Barge-in (a new prompt or a stop) cut it; the rest of that stream is discarded.
    Interrupted,
    CallEnded,
}

pub enum CallCommand {
    Play {
        id: PlaybackId,
        uri: String,
        pcm: Arc<[i16]>,
        target: Option<SocketAddr>,
        done: oneshot::Sender<PlaybackOutcome>,
    },
    /// A control command; `applied` fires once the session has applied it, so a
    /// caller told "stopped" knows no further frame of the old audio will be sent.
    Session {
        cmd: Command,
        applied: oneshot::Sender<()>,
    },
    Listen {
        rate: u32,
        frames: mpsc::Sender<Bytes>,
    },
    /// Attach a TTS stream (8 kHz chunks); `done` fires when it has played out.
    Stream {
        chunks: mpsc::Receiver<Vec<i16>>,
        done: oneshot::Sender<StreamEnd>,
    },
    /// Start recording (the segment number is filled in by the call).
    StartRecording {
        spec: RecordingSpec,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Finish the active recording; the reply carries the spooled job.
    StopRecording {
        reply: oneshot::Sender<Result<RecordingJob, String>>,
    },
    Shutdown,
}

pub struct CallSockets {
    pub rtp: UdpSocket,
    pub rtcp: UdpSocket,
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
}

struct Listener {
    format: ListenerFormat,
    frames: mpsc::Sender<Bytes>,
}

struct AttachedStream {
    chunks: Option<mpsc::Receiver<Vec<i16>>>,
    done: oneshot::Sender<StreamEnd>,
}

pub fn spawn_call(
    port: u16,
    call_id: String,
    sockets: BoundSockets,
    symmetric_rtp: bool,
    jitter: JitterConfig,
    metrics: Arc<Metrics>,
    post: Arc<ListenerPost>,
    store: Arc<RecordingStore>,
    events: Arc<EventPublisher>,
) -> Arc<CallHandle> {
    let (tx, rx) = mpsc::channel(64);
    let started = Instant::now();
    let session = Session::new(SessionConfig::random(symmetric_rtp, jitter), started);
    let span = tracing::info_span!("call", port, call_id = %call_id);
    let call = call_id.clone();
    // Where a recording finished by the call's end is stored: the runtime that asked
    // for the call (the serving one), not the media threads. An upload (file copy, or
    // HTTP and TLS to S3) then never competes with other calls' ticks, and runs on the
    // serving runtime's SCHED_BATCH threads.
    let storage = tokio::runtime::Handle::try_current().unwrap_or_else(|_| super::runtime::handle());
    let make = move |sockets| CallTask {
        session,
        sockets,
        commands: rx,
        metrics,
        post,
        listeners: Vec::new(),
        waiters: HashMap::new(),
        stream: None,
        out: Outputs::default(),
        frames: Vec::new(),
        store,
        events,
        call_id: call,
        recording: None,
        segments: 0,
        storage,
    };
    let run = async move {
        match sockets.register() {
            Ok(sockets) => make(sockets).run().await,
            Err(e) => tracing::error!(error = %e, "the call's sockets could not join the media runtime"),
        }
    };
    let join = super::runtime::handle().spawn(tracing::Instrument::instrument(run, span));
    Arc::new(CallHandle { port, call_id, started, commands: tx, task: tokio::sync::Mutex::new(Some(join)) })
}

/// How often a call's interarrival jitter is sampled into the histogram.
const JITTER_SAMPLE: std::time::Duration = std::time::Duration::from_secs(5);

struct CallTask {
    session: Session,
    sockets: CallSockets,
    commands: mpsc::Receiver<CallCommand>,
    metrics: Arc<Metrics>,
    /// Where listener frames go; it hands them to the gRPC streams in rounds.
    post: Arc<ListenerPost>,
    listeners: Vec<Listener>,
    /// Prompts playing or queued: their URI (for the event) and who waits for the end.
    waiters: HashMap<PlaybackId, (String, oneshot::Sender<PlaybackOutcome>)>,
    stream: Option<AttachedStream>,
    out: Outputs,
    frames: Vec<Bytes>,
    store: Arc<RecordingStore>,
    events: Arc<EventPublisher>,
    call_id: String,
    recording: Option<RecordingWriter>,
    segments: u32,
    /// The runtime that stores a recording the call's end finishes.
    storage: tokio::runtime::Handle,
}

impl CallTask {
    async fn run(mut self) {
        info!("call started");
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
                r = udp::recv(&self.sockets.rtp, &mut rtp_in) => match r {
                    Ok(_) => {
                        for (from, data, arrived) in rtp_in.iter() {
                            self.session.handle_datagram(arrived, from, data, &mut self.out);
                        }
                    }
                    Err(e) => debug!(error = %e, "rtp receive error"),
                },
                r = self.sockets.rtcp.recv_from(&mut rtcp_buf) => {
                    if r.is_ok() {
                        self.metrics.rtcp.inc();
                    }
                },
                chunk = recv_stream(&mut self.stream), if wants_stream => match chunk {
                    Some(pcm) => self.session.handle_command(Command::Stream(pcm), &mut self.out),
                    None => if let Some(s) = &mut self.stream { s.chunks = None },
                },
                _ = &mut tick => {
                    self.session.handle_tick(Instant::now(), &mut self.out);
                    self.metrics.add_session_counters(&self.session.take_counters());
                    if jitter_sampled.elapsed() >= JITTER_SAMPLE {
                        jitter_sampled = Instant::now();
                        if let Some(j) = self.session.interarrival_jitter() {
                            self.metrics.interarrival_jitter.observe(j);
                        }
                    }
                },
            }
            self.flush().await;
        }
        if let Some(j) = self.session.interarrival_jitter() {
            self.metrics.interarrival_jitter.observe(j);
        }
        self.session.close(&mut self.out);
        self.flush().await;
        // The end of the call finalises an active recording by itself.
        if let Some(job) = self.finish_recording() {
            let store = self.store.clone();
            self.storage.spawn(async move {
                store.deliver(job).await;
            });
        }
        if let Some(s) = self.stream.take() {
            let _ = s.done.send(StreamEnd::CallEnded);
        }
        self.metrics.add_session_counters(&self.session.take_counters());
        self.metrics.listeners.sub(self.listeners.len() as i64);
        info!("call ended");
        // Sockets close here, when the task returns: only then may the port be released.
    }

    fn on_command(&mut self, cmd: CallCommand) {
        match cmd {
            CallCommand::Play { id, uri, pcm, target, done } => {
                self.interrupt_stream();
                if let Some(t) = target {
                    self.session.handle_command(Command::SuggestTarget(t), &mut self.out);
                }
                self.waiters.insert(id, (uri, done));
                self.session.handle_command(Command::Play { id, pcm }, &mut self.out);
            }
            CallCommand::Session { cmd, applied } => {
                if matches!(cmd, Command::Stop) {
                    self.interrupt_stream();
                }
                self.session.handle_command(cmd, &mut self.out);
                let _ = applied.send(());
            }
            CallCommand::Listen { rate, frames } => {
                self.metrics.listeners.inc();
                self.listeners.push(Listener { format: ListenerFormat::new(rate), frames });
            }
            CallCommand::Stream { chunks, done } => {
                if let Some(old) = self.stream.replace(AttachedStream { chunks: Some(chunks), done }) {
                    let _ = old.done.send(StreamEnd::Replaced);
                }
            }
            CallCommand::StartRecording { mut spec, reply } => {
                let result = if self.recording.is_some() {
                    Err("a recording is already running on this call".to_string())
                } else {
                    self.segments += 1;
                    spec.segment = self.segments;
                    let start = self.now_pos();
                    match RecordingWriter::create(spec, &self.store.config.spool_dir, start) {
                        Ok(w) => {
                            info!(format = ?w.spec().channels, rate = w.spec().rate, "recording started");
                            self.metrics.recordings_in_flight.inc();
                            self.recording = Some(w);
                            Ok(())
                        }
                        Err(e) => Err(format!("cannot open the recording spool: {e}")),
                    }
                };
                let _ = reply.send(result);
            }
            CallCommand::StopRecording { reply } => {
                let result = if self.recording.is_none() {
                    Err("no recording is running on this call".to_string())
                } else {
                    self.finish_recording().ok_or_else(|| "the recording could not be finalised".to_string())
                };
                let _ = reply.send(result);
            }
            CallCommand::Shutdown => {}
        }
    }

    /// Samples of the call's clock elapsed now.
    fn now_pos(&self) -> u64 {
        (Instant::now().saturating_duration_since(self.session.started()).as_micros() as u64) * 8 / 1000
    }

    fn finish_recording(&mut self) -> Option<RecordingJob> {
        let w = self.recording.take()?;
        self.metrics.recordings_in_flight.dec();
        let end = self.now_pos();
        match w.finish(end) {
            Ok(job) => {
                info!(uri = %job.uri(), seconds = job.seconds, "recording finished");
                Some(job)
            }
            Err(e) => {
                self.metrics.recording_errors.inc();
                tracing::error!(error = %e, "recording could not be finalised");
                None
            }
        }
    }

    fn record(&mut self) {
        let upto = self.now_pos().saturating_sub(RECORDING_LAG);
        let Some(w) = self.recording.as_mut() else { return };
        for h in &self.out.heard {
            w.add_caller(h.wall_pos, &h.pcm);
        }
        for p in &self.out.played {
            w.add_bot(p.pos, &p.pcm);
        }
        // Mixing and writing run every 100 ms of audio, not on every packet and tick:
        // the per-call cost of recording was mostly this bookkeeping.
        if upto < w.flushed_until() + RECORDING_BATCH {
            return;
        }
        if let Err(e) = w.flush_until(upto) {
            self.metrics.recording_errors.inc();
            tracing::error!(error = %e, "writing the recording to the spool failed");
        }
    }

    /// Barge-in ends the attached TTS stream: what it queued is dropped with the
    /// session's queue, and dropping its channel stops the sender's pump, so nothing
    /// more of that utterance plays. A new StreamAudioToCall starts the next one.
    fn interrupt_stream(&mut self) {
        if let Some(s) = self.stream.take() {
            let _ = s.done.send(StreamEnd::Interrupted);
        }
    }

    async fn flush(&mut self) {
        self.record();
        for t in self.out.transmit.drain(..) {
            if let Err(e) = self.sockets.rtp.send_to(&t.data, t.to).await {
                debug!(to = %t.to, error = %e, "rtp send failed");
            }
            self.metrics.send_lateness.observe(Instant::now().saturating_duration_since(t.due).as_secs_f64());
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
                    l.format.push(&h.pcm, &mut self.frames);
                }
                for f in self.frames.drain(..) {
                    self.post.post(&l.frames, f);
                }
            }
            self.out.heard.clear();
        }
        for e in self.out.events.drain(..) {
            match e {
                Event::PlaybackEnded { id, outcome } => {
                    self.metrics.playbacks.with_label_values(&[outcome_label(outcome)]).inc();
                    if let Some((uri, w)) = self.waiters.remove(&id) {
                        self.events.playback_finished(&self.call_id, &uri, outcome_label(outcome));
                        let _ = w.send(outcome);
                    }
                }
                Event::Latched(addr) => info!(%addr, "media latched to caller's source"),
                Event::CodecChanged(c) => info!(codec = c.name(), "caller switched codec"),
            }
        }
        self.out.played.clear();
        // A finished stream is done once its queued audio has gone out.
        if let Some(s) = &self.stream {
            if s.chunks.is_none() && self.session.stream_queued() == 0 {
                if let Some(s) = self.stream.take() {
                    let _ = s.done.send(StreamEnd::Played);
                }
            }
        }
    }
}

async fn recv_stream(stream: &mut Option<AttachedStream>) -> Option<Vec<i16>> {
    match stream.as_mut().and_then(|s| s.chunks.as_mut()) {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn outcome_label(o: PlaybackOutcome) -> &'static str {
    match o {
        PlaybackOutcome::Finished => "finished",
        PlaybackOutcome::Interrupted => "interrupted",
        PlaybackOutcome::Stopped => "stopped",
        PlaybackOutcome::CallEnded => "call_ended",
    }
}
