//! MediaService handlers. Each one validates its input, asks the node or the call,
//! and maps failures to the status a caller can act on (INVALID_ARGUMENT, NOT_FOUND,
//! RESOURCE_EXHAUSTED, UNAVAILABLE). Trace ids from `x-trace-id` go into the logs.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use media_proto::pb::media_service_server::MediaService;
use media_proto::pb::*;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::audio::decode;
use crate::audio::listener::{media_type, LISTEN_RATES};
use crate::audio::uri::{self, AudioUri, Control, UriError};
use crate::call::{CallCommand, CallHandle, StreamEnd};
use crate::core::recording::Channels;
use crate::core::resample::Resampler;
use crate::core::session::Command;
use crate::fleet::FORWARD_TIMEOUT;
use crate::node::{Node, NodeError};
use crate::ports::PoolError;
use crate::recording::store::Delivered;
use crate::recording::{Destination, RecordingSpec};

pub struct MediaSvc {
    pub(crate) node: Arc<Node>,
}

impl MediaSvc {
    pub fn new(node: Arc<Node>) -> MediaSvc {
        MediaSvc { node }
    }

    pub(crate) fn observe<T>(&self, method: &str, started: Instant, result: &Result<T, Status>) {
        let code = match result {
            Ok(_) => "OK".to_string(),
            Err(s) => format!("{:?}", s.code()),
        };
        let m = &self.node.metrics;
        m.rpc_requests.with_label_values(&[method, &code]).inc();
        m.rpc_seconds.with_label_values(&[method]).observe(started.elapsed().as_secs_f64());
    }
}

pub fn status(e: NodeError) -> Status {
    match &e {
        NodeError::Draining => Status::unavailable(e.to_string()),
        NodeError::Pool(PoolError::Exhausted { .. }) => Status::resource_exhausted(e.to_string()),
        NodeError::Pool(PoolError::EmptyRange { .. }) => Status::failed_precondition(e.to_string()),
        NodeError::Pool(PoolError::NotAllocated(_)) | NodeError::UnknownPort(_) | NodeError::UnknownCall(_) | NodeError::CallGone => {
            Status::not_found(e.to_string())
        }
        NodeError::Bind(_) => Status::unavailable(e.to_string()),
        NodeError::Uri(UriError::NotFound(_)) => Status::not_found(e.to_string()),
        NodeError::Uri(_) | NodeError::Decode(_) => Status::invalid_argument(e.to_string()),
        NodeError::Read(_) => Status::internal(e.to_string()),
    }
}

fn trace_id<T>(req: &Request<T>) -> String {
    req.metadata().get("x-trace-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

fn parse_target(raw: &str) -> Result<Option<SocketAddr>, Status> {
    if raw.trim().is_empty() {
        return Ok(None);
    }
    raw.trim().parse::<SocketAddr>().map(Some).map_err(|_| Status::invalid_argument(format!("rtp_target_addr {raw:?} is not ip:port")))
}

/// Sends the call a command that carries a reply channel and waits for the reply; a
/// call that ended before answering is NOT_FOUND.
async fn ask<T>(call: &CallHandle, make: impl FnOnce(oneshot::Sender<T>) -> CallCommand) -> Result<T, Status> {
    let (reply, answer) = oneshot::channel();
    call.commands.send(make(reply)).await.map_err(|_| status(NodeError::CallGone))?;
    answer.await.map_err(|_| status(NodeError::CallGone))
}

pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl MediaService for MediaSvc {
    async fn allocate_port(&self, req: Request<AllocatePortRequest>) -> Result<Response<AllocatePortResponse>, Status> {
        let started = Instant::now();
        let trace = trace_id(&req);
        let meta = req.metadata().clone();
        let call_id = req.into_inner().call_id;
        let result = if self.node.fleet.enabled() && !crate::fleet::is_forwarded(&meta) {
            self.place(&trace, &meta, call_id).await
        } else {
            self.allocate_here(&trace, &call_id).await
        };
        self.node.metrics.allocate_seconds.observe(started.elapsed().as_secs_f64());
        self.observe("AllocatePort", started, &result);
        result
    }

    async fn release_port(&self, req: Request<ReleasePortRequest>) -> Result<Response<ReleasePortResponse>, Status> {
        let started = Instant::now();
        let trace = trace_id(&req);
        let port = req.get_ref().rtp_port;
        if let Some(peer) = self.route(req.metadata(), port) {
            let result = self
                .forward("ReleasePort", started, &peer, &req, Some(FORWARD_TIMEOUT), |mut c, r| async move { c.release_port(r).await })
                .await;
            if result.is_ok() {
                self.node.fleet.forget_port(port);
            }
            return result;
        }
        let result = self.node.release(port).await.map_err(status).map(|()| {
            info!(trace_id = %trace, port, "port released");
            Response::new(ReleasePortResponse { success: true })
        });
        self.observe("ReleasePort", started, &result);
        result
    }

    async fn play_audio(&self, req: Request<PlayAudioRequest>) -> Result<Response<PlayAudioResponse>, Status> {
        let started = Instant::now();
        let trace = trace_id(&req);
        if let Some(peer) = self.route(req.metadata(), req.get_ref().server_rtp_port) {
            // No deadline of our own: the reply waits for the end of playback.
            return self.forward("PlayAudio", started, &peer, &req, None, |mut c, r| async move { c.play_audio(r).await }).await;
        }
        let r = req.into_inner();
        let result = self.play(&trace, r).await;
        self.observe("PlayAudio", started, &result);
        result
    }

    type RecordAudioStream = BoxStream<RecordAudioResponse>;

    async fn record_audio(&self, req: Request<RecordAudioRequest>) -> Result<Response<Self::RecordAudioStream>, Status> {
        let started = Instant::now();
        let trace = trace_id(&req);
        if let Some(peer) = self.route(req.metadata(), req.get_ref().server_rtp_port) {
            let result = self.forward("RecordAudio", started, &peer, &req, None, |mut c, r| async move { c.record_audio(r).await }).await;
            return result.map(|r| Response::new(Box::pin(r.into_inner()) as Self::RecordAudioStream));
        }
        let r = req.into_inner();
        let result = async {
            let rate = r.target_sample_rate.unwrap_or(16000);
            if !LISTEN_RATES.contains(&rate) {
                return Err(Status::invalid_argument(format!("target_sample_rate {rate} is not one of {LISTEN_RATES:?}")));
            }
            let call = self.node.call(r.server_rtp_port).map_err(status)?;
            let (tx, rx) = mpsc::channel(crate::call::task::LISTENER_QUEUE);
            call.commands.send(CallCommand::Listen { rate, frames: tx }).await.map_err(|_| status(NodeError::CallGone))?;
            info!(trace_id = %trace, port = r.server_rtp_port, rate, "listener attached");
            let mt = media_type(rate);
            let stream = ReceiverStream::new(rx).map(move |audio_data| Ok(RecordAudioResponse { audio_data, media_type: mt.clone() }));
            Ok(Response::new(Box::pin(stream) as Self::RecordAudioStream))
        }
        .await;
        self.observe("RecordAudio", started, &result);
        result
    }

    async fn start_recording(&self, req: Request<StartRecordingRequest>) -> Result<Response<StartRecordingResponse>, Status> {
        let started = Instant::now();
        let trace = trace_id(&req);
        if let Some(peer) = self.route(req.metadata(), req.get_ref().server_rtp_port) {
            return self
                .forward(
                    "StartRecording",
                    started,
                    &peer,
                    &req,
                    Some(FORWARD_TIMEOUT),
                    |mut c, r| async move { c.start_recording(r).await },
                )
                .await;
        }
        let r = req.into_inner();
        let result = async {
            let call = self.node.call(r.server_rtp_port).map_err(status)?;
            let destination = Destination::parse(&r.output_uri, self.node.config.recording.default_destination.as_ref())
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let rate = r.sample_rate.unwrap_or(8000);
            if rate != 8000 && rate != 16000 {
                return Err(Status::invalid_argument(format!("sample_rate {rate} is not 8000 or 16000")));
            }
            let channels = match r.format.as_deref().map(|f| f.trim().to_ascii_lowercase()).as_deref() {
                None | Some("") | Some("wav") | Some("mono") | Some("mixed") => Channels::Mono,
                Some("stereo") => Channels::Stereo,
                Some(other) => return Err(Status::invalid_argument(format!("format {other:?} is not mono or stereo"))),
            };
            let call_id = if r.call_id.is_empty() { call.call_id.clone() } else { r.call_id.clone() };
            let spec = RecordingSpec {
                call_id,
                trace_id: if r.trace_id.is_empty() { trace.clone() } else { r.trace_id.clone() },
                destination,
                rate,
                channels,
                segment: 0,
            };
            ask(&call, |reply| CallCommand::StartRecording { spec, reply }).await?.map_err(Status::failed_precondition)?;
            info!(trace_id = %trace, port = r.server_rtp_port, "recording started");
            Ok(Response::new(StartRecordingResponse { success: true }))
        }
        .await;
        self.observe("StartRecording", started, &result);
        result
    }

    async fn stop_recording(&self, req: Request<StopRecordingRequest>) -> Result<Response<StopRecordingResponse>, Status> {
        let started = Instant::now();
        let trace = trace_id(&req);
        if let Some(peer) = self.route(req.metadata(), req.get_ref().server_rtp_port) {
            // No deadline of our own: the owner answers once the recording is durable.
            return self.forward("StopRecording", started, &peer, &req, None, |mut c, r| async move { c.stop_recording(r).await }).await;
        }
        let r = req.into_inner();
        let result = async {
            let call = self.node.call(r.server_rtp_port).map_err(status)?;
            let job = ask(&call, |reply| CallCommand::StopRecording { reply }).await?.map_err(Status::failed_precondition)?;
            // The answer waits until the recording is durable: stored, or safe in the spool.
            let (recording_uri, spooled) = match self.node.recordings.deliver(job).await {
                Delivered::Stored(uri) => (uri, false),
                Delivered::Spooled(uri) => (uri, true),
            };
            info!(trace_id = %trace, port = r.server_rtp_port, uri = %recording_uri, spooled, "recording stopped");
            Ok(Response::new(StopRecordingResponse { success: true, recording_uri, spooled }))
        }
        .await;
        self.observe("StopRecording", started, &result);
        result
    }

    type StreamAudioToCallStream = BoxStream<StreamAudioToCallResponse>;

    async fn stream_audio_to_call(
        &self,
        req: Request<Streaming<StreamAudioToCallRequest>>,
    ) -> Result<Response<Self::StreamAudioToCallStream>, Status> {
        let started = Instant::now();
        let trace = trace_id(&req);
        let meta = req.metadata().clone();
        let mut inbound = req.into_inner();
        let result = async {
            let first = inbound.message().await?.ok_or_else(|| Status::invalid_argument("stream ended before its first message"))?;
            if first.call_id.is_empty() {
                return Err(Status::invalid_argument("the first message must carry call_id"));
            }
            let call = match self.node.call_by_id(&first.call_id) {
                Ok(c) => c,
                Err(_) if self.node.fleet.enabled() && !crate::fleet::is_forwarded(&meta) => {
                    return self.forward_tts(&meta, first, inbound).await;
                }
                Err(e) => return Err(status(e)),
            };
            let (chunk_tx, chunk_rx) = mpsc::channel::<Vec<i16>>(4);
            let (done_tx, done_rx) = oneshot::channel();
            call.commands.send(CallCommand::Stream { chunks: chunk_rx, done: done_tx }).await.map_err(|_| status(NodeError::CallGone))?;
            let (resp_tx, resp_rx) = mpsc::channel(2);
            info!(trace_id = %trace, call_id = %first.call_id, "TTS stream attached");
            tokio::spawn(pump_tts(first, inbound, chunk_tx, done_rx, resp_tx));
            Ok(Response::new(Box::pin(ReceiverStream::new(resp_rx)) as Self::StreamAudioToCallStream))
        }
        .await;
        self.observe("StreamAudioToCall", started, &result);
        result
    }
}

impl MediaSvc {
    async fn play(&self, trace: &str, r: PlayAudioRequest) -> Result<Response<PlayAudioResponse>, Status> {
        let call = self.node.call(r.server_rtp_port).map_err(status)?;
        let target = parse_target(&r.rtp_target_addr)?;
        let reply = |message: &str| Ok(Response::new(PlayAudioResponse { success: true, message: message.to_string() }));
        let send = |cmd: Command| ask(&call, |applied| CallCommand::Session { cmd, applied });
        let pcm: Arc<[i16]> = match uri::parse(&r.audio_uri).map_err(|e| status(e.into()))? {
            AudioUri::Control(Control::SetTarget) => {
                let t = target.ok_or_else(|| Status::invalid_argument("control://set_target needs rtp_target_addr"))?;
                send(Command::SetTarget(t)).await?;
                info!(trace_id = %trace, port = r.server_rtp_port, target = %t, "media target set");
                return reply("target set");
            }
            AudioUri::Control(Control::EnableEcho) => {
                send(Command::SetEcho(true)).await?;
                return reply("echo enabled");
            }
            AudioUri::Control(Control::DisableEcho) => {
                send(Command::SetEcho(false)).await?;
                return reply("echo disabled");
            }
            AudioUri::Control(Control::StopAudio) => {
                send(Command::Stop).await?;
                return reply("stopped");
            }
            AudioUri::File(rel) => self.node.load_prompt(&rel).await.map_err(status)?,
            AudioUri::Pcm { rate, bytes } => decode::pcm_bytes_to_call_pcm(&bytes, rate).into(),
            AudioUri::Wav(bytes) => decode::wav_to_call_pcm(&bytes).map_err(|e| status(e.into()))?.into(),
        };
        let id = self.node.next_playback_id();
        let (done_tx, done_rx) = oneshot::channel();
        call.commands
            .send(CallCommand::Play { id, uri: short(&r.audio_uri), pcm, target, done: done_tx })
            .await
            .map_err(|_| status(NodeError::CallGone))?;
        // The reply waits for the end of playback. If the client goes away meanwhile,
        // this future is dropped but the call task keeps playing.
        match done_rx.await {
            Ok(outcome) => {
                info!(trace_id = %trace, port = r.server_rtp_port, uri = %short(&r.audio_uri), outcome = outcome.as_str(), "playback ended");
                reply(outcome.as_str())
            }
            Err(_) => Ok(Response::new(PlayAudioResponse { success: false, message: "call ended".into() })),
        }
    }
}

fn short(uri: &str) -> String {
    if uri.starts_with("data:") {
        format!("data:({} bytes)", uri.len())
    } else {
        uri.to_string()
    }
}

/// Moves TTS chunks from the client to the call, resampling 16 kHz to 8 kHz. The
/// call's channel is tiny, so a full call queue stops this loop from reading the
/// client: HTTP/2 flow control then pushes back on the sender, and nothing is dropped.
async fn pump_tts(
    first: StreamAudioToCallRequest,
    mut inbound: Streaming<StreamAudioToCallRequest>,
    chunks: mpsc::Sender<Vec<i16>>,
    done: oneshot::Receiver<StreamEnd>,
    responses: mpsc::Sender<Result<StreamAudioToCallResponse, Status>>,
) {
    let mut resampler = Resampler::new(16000, crate::audio::CALL_RATE);
    let mut carry: Option<u8> = None;
    let mut msg = Some(first);
    let mut failure: Option<Status> = None;
    while let Some(m) = msg.take() {
        if !m.audio_chunk.is_empty() {
            let mut bytes = m.audio_chunk;
            if let Some(b) = carry.take() {
                bytes.insert(0, b);
            }
            if bytes.len() % 2 == 1 {
                // A chunk may split a sample; keep the odd byte for the next one.
                carry = bytes.pop();
            }
            let samples: Vec<i16> = bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
            let pcm = resampler.process(&samples);
            if chunks.send(pcm).await.is_err() {
                break; // the call ended
            }
        }
        match inbound.message().await {
            Ok(next) => msg = next,
            Err(e) => {
                warn!(error = %e, "TTS stream broke off");
                failure = Some(e);
            }
        }
    }
    drop(chunks);
    let outcome = done.await.unwrap_or(StreamEnd::CallEnded);
    let resp = match (failure, outcome) {
        (Some(e), _) => StreamAudioToCallResponse { success: false, error_message: format!("client stream failed: {}", e.message()) },
        (None, StreamEnd::Played) => StreamAudioToCallResponse { success: true, error_message: String::new() },
        (None, StreamEnd::Replaced) => {
            StreamAudioToCallResponse { success: false, error_message: "another StreamAudioToCall took over this call".into() }
        }
        (None, StreamEnd::Interrupted) => {
            StreamAudioToCallResponse { success: false, error_message: "interrupted by barge-in (stop or new prompt)".into() }
        }
        (None, StreamEnd::CallEnded) => StreamAudioToCallResponse { success: false, error_message: "the call ended".into() },
    };
    let _ = responses.send(Ok(resp)).await;
}
