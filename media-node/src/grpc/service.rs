//! MediaService handlers. Each one validates its input, asks the node or the call,
//! and maps failures to the status a caller can act on (INVALID_ARGUMENT, NOT_FOUND,
//! RESOURCE_EXHAUSTED, UNAVAILABLE; see `status`). Every RPC goes through one of two
//! helpers: `per_port` (timed, traced under the caller's `x-trace-id`, sent on to the
//! peer that holds the port, counted by method and code) or `timed` (the same for the
//! RPCs that decide their own routing: AllocatePort and StreamAudioToCall).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use media_proto::pb::media_service_client::MediaServiceClient;
use media_proto::pb::media_service_server::MediaService;
use media_proto::pb::*;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn, Instrument};

use super::peers::{is_forwarded, PeerClients, FORWARD_TIMEOUT};
use crate::audio::decode;
use crate::audio::listener::{media_type, LISTEN_RATES};
use crate::audio::tts::{StreamDecoder, StreamFormat};
use crate::audio::uri::{self, AudioUri, Control as UriControl};
use crate::audio::CALL_RATE;
use crate::call::task::MAX_LISTENERS;
use crate::call::{CallCommand, CallHandle, Control, MarkAck, StreamEnd, StreamReplies, TtsChunk};
use crate::core::codec::WIDE_RATE;
use crate::core::dtmf_out::DigitRequest;
use crate::core::playback::Sound;
use crate::echo::{bounded, clip};
use crate::node::{Node, NodeError};
use crate::recording::store::Delivered;
use crate::recording::{recording_channels, recording_rate, Destination, RecordingSpec};

pub struct MediaSvc {
    pub(crate) node: Arc<Node>,
    pub(crate) peers: PeerClients,
}

impl MediaSvc {
    pub fn new(node: Arc<Node>, peers: PeerClients) -> MediaSvc {
        MediaSvc { node, peers }
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

    /// A per-port RPC: to the peer whose slot holds `port` when that is not this node
    /// (with `forward`, the client method, and `timeout`: None lets the peer take as
    /// long as the RPC does), else served here by `local`.
    async fn per_port<Req, Resp, Fw, FwFut, L, LFut>(
        &self,
        method: &'static str,
        req: Request<Req>,
        port: u32,
        timeout: Option<Duration>,
        forward: Fw,
        local: L,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Clone,
        Fw: FnOnce(MediaServiceClient<Channel>, Request<Req>) -> FwFut,
        FwFut: Future<Output = Result<Response<Resp>, Status>>,
        L: FnOnce(Req) -> LFut,
        LFut: Future<Output = Result<Resp, Status>>,
    {
        let started = Instant::now();
        let span = tracing::info_span!("rpc", method, trace_id = %trace_id(&req), port);
        async move {
            if let Some(peer) = self.route(req.metadata(), port) {
                return self.forward(method, started, &peer, &req, timeout, forward).await;
            }
            let result = local(req.into_inner()).await.map(Response::new).map_err(bounded);
            self.observe(method, started, &result);
            result
        }
        .instrument(span)
        .await
    }

    /// An RPC that routes itself: timed, traced and counted like the others.
    async fn timed<T, F>(&self, method: &'static str, trace: &str, serve: F) -> Result<Response<T>, Status>
    where
        F: Future<Output = Result<Response<T>, Status>>,
    {
        let started = Instant::now();
        let result = serve.instrument(tracing::info_span!("rpc", method, trace_id = %trace)).await.map_err(bounded);
        self.observe(method, started, &result);
        result
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        use crate::audio::uri::UriError;
        use crate::ports::PoolError;
        use crate::recording::RecordingError;
        let message = e.to_string();
        match e {
            NodeError::Draining => Status::unavailable(message),
            NodeError::AtCapacity(_) => Status::resource_exhausted(message),
            NodeError::Pool(PoolError::Exhausted { .. }) => Status::resource_exhausted(message),
            NodeError::Pool(PoolError::EmptyRange { .. }) => Status::failed_precondition(message),
            NodeError::Pool(PoolError::NotAllocated(_)) | NodeError::UnknownPort(_) | NodeError::UnknownCall(_) | NodeError::CallGone => {
                Status::not_found(message)
            }
            NodeError::Bind(_) => Status::unavailable(message),
            NodeError::Uri(UriError::NotFound(_)) => Status::not_found(message),
            NodeError::Uri(_)
            | NodeError::Decode(_)
            | NodeError::Undecodable(_)
            | NodeError::Destination(_)
            | NodeError::Digits(_)
            | NodeError::RecordingFormat(_) => Status::invalid_argument(message),
            NodeError::Read(_) => Status::internal(message),
            NodeError::Recording(RecordingError::AlreadyRunning | RecordingError::NotRunning) => Status::failed_precondition(message),
            NodeError::Recording(RecordingError::Spool(_)) => Status::unavailable(message),
            NodeError::Recording(RecordingError::Failed { .. }) => Status::data_loss(message),
        }
    }
}

fn trace_id<T>(req: &Request<T>) -> String {
    req.metadata().get("x-trace-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

fn parse_target(raw: &str) -> Result<Option<SocketAddr>, Status> {
    if raw.trim().is_empty() {
        return Ok(None);
    }
    raw.trim()
        .parse::<SocketAddr>()
        .map(Some)
        .map_err(|_| Status::invalid_argument(format!("rtp_target_addr {:?} is not ip:port", clip(raw))))
}

/// Sends the call a command that carries a reply channel and waits for the reply; a
/// call that ended before answering is NOT_FOUND.
async fn ask<T>(call: &CallHandle, make: impl FnOnce(oneshot::Sender<T>) -> CallCommand) -> Result<T, Status> {
    let (reply, answer) = oneshot::channel();
    call.commands.send(make(reply)).await.map_err(|_| NodeError::CallGone)?;
    Ok(answer.await.map_err(|_| NodeError::CallGone)?)
}

/// Mark acknowledgements one TTS stream may have waiting for its client to read.
const MAX_PENDING_ACKS: usize = 1024;

pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl MediaService for MediaSvc {
    async fn allocate_port(&self, req: Request<AllocatePortRequest>) -> Result<Response<AllocatePortResponse>, Status> {
        let started = Instant::now();
        let trace = trace_id(&req);
        let meta = req.metadata().clone();
        let call_id = req.into_inner().call_id;
        let result = self
            .timed("AllocatePort", &trace, async {
                if self.node.fleet.enabled() && !is_forwarded(&meta) {
                    self.place(&meta, call_id).await
                } else {
                    self.allocate_here(&call_id).await
                }
            })
            .await;
        self.node.metrics.allocate_seconds.observe(started.elapsed().as_secs_f64());
        result
    }

    async fn release_port(&self, req: Request<ReleasePortRequest>) -> Result<Response<ReleasePortResponse>, Status> {
        let port = req.get_ref().rtp_port;
        let result = self
            .per_port(
                "ReleasePort",
                req,
                port,
                Some(FORWARD_TIMEOUT),
                |mut c, r| async move { c.release_port(r).await },
                |_| async move {
                    self.node.release(port).await?;
                    info!("port released");
                    Ok(ReleasePortResponse { success: true })
                },
            )
            .await;
        if result.is_ok() {
            self.node.fleet.forget_port(port);
        }
        result
    }

    async fn play_audio(&self, req: Request<PlayAudioRequest>) -> Result<Response<PlayAudioResponse>, Status> {
        let port = req.get_ref().server_rtp_port;
        // No deadline of our own when forwarding: the reply waits for the end of playback.
        self.per_port("PlayAudio", req, port, None, |mut c, r| async move { c.play_audio(r).await }, |r| self.play(r)).await
    }

    type RecordAudioStream = BoxStream<RecordAudioResponse>;

    async fn record_audio(&self, req: Request<RecordAudioRequest>) -> Result<Response<Self::RecordAudioStream>, Status> {
        let port = req.get_ref().server_rtp_port;
        self.per_port(
            "RecordAudio",
            req,
            port,
            None,
            |mut c, r| async move { c.record_audio(r).await.map(|r| Response::new(Box::pin(r.into_inner()) as Self::RecordAudioStream)) },
            |r| async move {
                let rate = r.target_sample_rate.unwrap_or(16000);
                if !LISTEN_RATES.contains(&rate) {
                    return Err(Status::invalid_argument(format!("target_sample_rate {rate} is not one of {LISTEN_RATES:?}")));
                }
                let call = self.node.call(r.server_rtp_port)?;
                let (tx, rx) = mpsc::channel(crate::call::task::LISTENER_QUEUE);
                let (evicted_tx, evicted_rx) = oneshot::channel();
                if !ask(&call, |attached| CallCommand::Listen { rate, frames: tx, evicted: evicted_tx, attached }).await? {
                    return Err(Status::resource_exhausted(format!(
                        "this call has {MAX_LISTENERS} listeners already (the most one call takes), none of them stalled: close one first"
                    )));
                }
                info!(rate, "listener attached");
                let mt = media_type(rate);
                // Ended by the call to make room (it lost every frame for a second while
                // the call was full): the frames it had queued, then a status saying so.
                let evicted = futures::stream::once(evicted_rx).filter_map(|r| {
                    r.ok().map(|()| {
                        Err(Status::resource_exhausted(format!(
                            "this listener lost every frame for over {} s while the call had {MAX_LISTENERS} listeners; it was ended to make room for a new one",
                            crate::call::task::STALLED_LISTENER.as_secs()
                        )))
                    })
                });
                let stream =
                    ReceiverStream::new(rx).map(move |audio_data| Ok(RecordAudioResponse { audio_data, media_type: mt.clone() })).chain(evicted);
                Ok(Box::pin(stream) as Self::RecordAudioStream)
            },
        )
        .await
    }

    async fn start_recording(&self, req: Request<StartRecordingRequest>) -> Result<Response<StartRecordingResponse>, Status> {
        let port = req.get_ref().server_rtp_port;
        let trace = trace_id(&req);
        self.per_port(
            "StartRecording",
            req,
            port,
            Some(FORWARD_TIMEOUT),
            |mut c, r| async move { c.start_recording(r).await },
            |r| async move {
                let call = self.node.call(r.server_rtp_port)?;
                let destination =
                    Destination::parse(&r.output_uri, self.node.config.recording.default_destination.as_ref()).map_err(NodeError::from)?;
                if let Destination::File { dir } = &destination {
                    crate::recording::destination::contained(&self.node.config.recording.recordings_root, dir).map_err(NodeError::from)?;
                }
                let rate = recording_rate(r.sample_rate).map_err(NodeError::from)?;
                let channels = recording_channels(r.format.as_deref()).map_err(NodeError::from)?;
                let call_id = if r.call_id.is_empty() { call.call_id.clone() } else { r.call_id.clone() };
                let trace_id = if r.trace_id.is_empty() { trace } else { r.trace_id.clone() };
                let spec = RecordingSpec { call_id, trace_id, destination, rate, channels, segment: 0 };
                ask(&call, |reply| CallCommand::StartRecording { spec, reply }).await?.map_err(NodeError::from)?;
                info!("recording started");
                Ok(StartRecordingResponse { success: true })
            },
        )
        .await
    }

    async fn stop_recording(&self, req: Request<StopRecordingRequest>) -> Result<Response<StopRecordingResponse>, Status> {
        let port = req.get_ref().server_rtp_port;
        // No deadline of our own when forwarding: the owner answers once the recording is durable.
        self.per_port(
            "StopRecording",
            req,
            port,
            None,
            |mut c, r| async move { c.stop_recording(r).await },
            |r| async move {
                let call = self.node.call(r.server_rtp_port)?;
                let job = ask(&call, |reply| CallCommand::StopRecording { reply }).await?.map_err(NodeError::from)?;
                // The answer waits until the recording is durable: stored, or safe in the spool.
                let (recording_uri, spooled) = match self.node.recordings.deliver(job).await {
                    Delivered::Stored(uri) => (uri, false),
                    Delivered::Spooled(uri) => (uri, true),
                };
                info!(uri = %recording_uri, spooled, "recording stopped");
                Ok(StopRecordingResponse { success: true, recording_uri, spooled })
            },
        )
        .await
    }

    type StreamAudioToCallStream = BoxStream<StreamAudioToCallResponse>;

    async fn stream_audio_to_call(
        &self,
        req: Request<Streaming<StreamAudioToCallRequest>>,
    ) -> Result<Response<Self::StreamAudioToCallStream>, Status> {
        let trace = trace_id(&req);
        let meta = req.metadata().clone();
        let mut inbound = req.into_inner();
        self.timed("StreamAudioToCall", &trace, async {
            let first = inbound.message().await?.ok_or_else(|| Status::invalid_argument("stream ended before its first message"))?;
            if first.call_id.is_empty() {
                return Err(Status::invalid_argument("the first message must carry call_id"));
            }
            let call = match self.node.call_by_id(&first.call_id) {
                Ok(c) => c,
                Err(_) if self.node.fleet.enabled() && !is_forwarded(&meta) => {
                    return self.forward_tts(&meta, first, inbound).await;
                }
                Err(e) => return Err(e.into()),
            };
            use stream_audio_to_call_request::AudioFormat;
            let format = match AudioFormat::try_from(first.audio_format) {
                Ok(AudioFormat::Unspecified | AudioFormat::PcmS16le16k) => StreamFormat::Pcm16k,
                Ok(AudioFormat::OggOpus) => StreamFormat::OggOpus,
                Ok(AudioFormat::OpusPackets) => StreamFormat::OpusPackets,
                Err(_) => return Err(Status::invalid_argument(format!("audio_format {} is not one the node knows", first.audio_format))),
            };
            // A call sending in a wideband codec keeps the stream's 16 kHz audio too.
            let wideband = *call.wideband.borrow();
            let decoder = StreamDecoder::new(format, wideband).map_err(|e| Status::unimplemented(e.to_string()))?;
            let (chunk_tx, chunk_rx) = mpsc::channel::<TtsChunk>(4);
            let (done_tx, done_rx) = oneshot::channel();
            // Room for every mark acknowledgement a client can have pending: marks
            // ride on chunks, and at most STREAM_HIGH_WATER samples plus the chunk
            // channel's few chunks are queued in the call at once.
            let (acks_tx, acks_rx) = mpsc::channel(MAX_PENDING_ACKS);
            let (resp_tx, resp_rx) = mpsc::channel(MAX_PENDING_ACKS);
            let barge_in = barge_in(first.barge_in_ms);
            let replies = StreamReplies { acks: acks_tx, done: done_tx };
            call.commands.send(CallCommand::Stream { chunks: chunk_rx, barge_in, replies }).await.map_err(|_| NodeError::CallGone)?;
            info!(call_id = %first.call_id, "TTS stream attached");
            let acks = tokio::spawn(forward_acks(acks_rx, resp_tx.clone()));
            tokio::spawn(pump_tts(first, decoder, inbound, chunk_tx, done_rx, acks, resp_tx).in_current_span());
            Ok(Response::new(Box::pin(ReceiverStream::new(resp_rx)) as Self::StreamAudioToCallStream))
        })
        .await
    }

    async fn send_dtmf(&self, req: Request<SendDtmfRequest>) -> Result<Response<SendDtmfResponse>, Status> {
        let port = req.get_ref().server_rtp_port;
        // No deadline of our own when forwarding: the reply waits for the digits.
        self.per_port("SendDtmf", req, port, None, |mut c, r| async move { c.send_dtmf(r).await }, |r| self.send_digits(r)).await
    }

    async fn set_dtmf_redaction(&self, req: Request<SetDtmfRedactionRequest>) -> Result<Response<SetDtmfRedactionResponse>, Status> {
        let port = req.get_ref().server_rtp_port;
        self.per_port(
            "SetDtmfRedaction",
            req,
            port,
            Some(FORWARD_TIMEOUT),
            |mut c, r| async move { c.set_dtmf_redaction(r).await },
            |r| async move {
                let call = self.node.call(r.server_rtp_port)?;
                let control = Control::RedactDtmf(r.enabled);
                ask(&call, move |applied| CallCommand::Control { control, applied }).await?;
                info!(enabled = r.enabled, "DTMF redaction set");
                let message = if r.enabled { "DTMF redaction on" } else { "DTMF redaction off" };
                Ok(SetDtmfRedactionResponse { success: true, message: message.into() })
            },
        )
        .await
    }

    async fn set_audio_processing(&self, req: Request<SetAudioProcessingRequest>) -> Result<Response<SetAudioProcessingResponse>, Status> {
        let port = req.get_ref().server_rtp_port;
        self.per_port(
            "SetAudioProcessing",
            req,
            port,
            Some(FORWARD_TIMEOUT),
            |mut c, r| async move { c.set_audio_processing(r).await },
            |r| async move {
                let call = self.node.call(r.server_rtp_port)?;
                let (echo_cancellation, noise_suppression) = (r.echo_cancellation, r.noise_suppression);
                let now = ask(&call, move |reply| CallCommand::SetProcessing { echo_cancellation, noise_suppression, reply }).await?;
                info!(echo_cancellation = now.echo_cancellation, noise_suppression = now.noise_suppression, "audio processing set");
                let on_off = |b: bool| if b { "on" } else { "off" };
                Ok(SetAudioProcessingResponse {
                    success: true,
                    message: format!(
                        "echo cancellation {}, noise suppression {}",
                        on_off(now.echo_cancellation),
                        on_off(now.noise_suppression)
                    ),
                    echo_cancellation: now.echo_cancellation,
                    noise_suppression: now.noise_suppression,
                })
            },
        )
        .await
    }

    async fn negotiate_sdp(&self, req: Request<NegotiateSdpRequest>) -> Result<Response<NegotiateSdpResponse>, Status> {
        let port = req.get_ref().server_rtp_port;
        self.per_port(
            "NegotiateSdp",
            req,
            port,
            Some(FORWARD_TIMEOUT),
            |mut c, r| async move { c.negotiate_sdp(r).await },
            |r| self.negotiate(r),
        )
        .await
    }

    type StreamCallEventsStream = BoxStream<CallEvent>;

    async fn stream_call_events(&self, req: Request<StreamCallEventsRequest>) -> Result<Response<Self::StreamCallEventsStream>, Status> {
        let port = req.get_ref().server_rtp_port;
        self.per_port(
            "StreamCallEvents",
            req,
            port,
            None,
            |mut c, r| async move {
                c.stream_call_events(r).await.map(|r| Response::new(Box::pin(r.into_inner()) as Self::StreamCallEventsStream))
            },
            |r| async move {
                let call = self.node.call(r.server_rtp_port)?;
                let rx = ask(&call, |reply| CallCommand::Subscribe { reply }).await?;
                info!("call events subscriber attached");
                Ok(super::events_stream::subscriber(rx, self.node.metrics.clone(), call.clock, call.call_id.clone()))
            },
        )
        .await
    }
}

/// A request's `barge_in_ms`: absent or 0 is no barge-in.
fn barge_in(ms: Option<u32>) -> Option<Duration> {
    ms.filter(|&ms| ms > 0).map(|ms| Duration::from_millis(ms as u64))
}

/// Pause between digits sent (Q.24 receivers need at least 40 ms).
const DIGIT_GAP_MS: u32 = 60;

impl MediaSvc {
    async fn send_digits(&self, r: SendDtmfRequest) -> Result<SendDtmfResponse, Status> {
        let request = DigitRequest::new(&r.digits, r.duration_ms).map_err(NodeError::from)?;
        let (digits, duration_ms) = (&request.digits, request.duration_ms);
        let call = self.node.call(r.server_rtp_port)?;
        let sent = if r.inband {
            let pcm = crate::audio::dtmf::tones(digits, duration_ms, DIGIT_GAP_MS).into();
            let (done, outcome) = oneshot::channel();
            let id = self.node.next_playback_id();
            call.commands
                .send(CallCommand::Play { id, uri: "dtmf:inband".into(), pcm, target: None, barge_in: None, done })
                .await
                .map_err(|_| NodeError::CallGone)?;
            matches!(outcome.await, Ok((crate::core::playback::PlaybackOutcome::Finished, _)))
        } else {
            let sender = request.sender(DIGIT_GAP_MS);
            ask(&call, |done| CallCommand::SendDigits { digits: sender, done }).await?
        };
        info!(digits = digits.len(), inband = r.inband, sent, "DTMF sent");
        Ok(SendDtmfResponse { success: sent, message: if sent { "sent".into() } else { "interrupted before every digit went out".into() } })
    }

    async fn negotiate(&self, r: NegotiateSdpRequest) -> Result<NegotiateSdpResponse, Status> {
        use crate::core::negotiation::{Outcome, Remote, Request};
        use crate::core::srtp::sdes::SrtpPolicy;
        use negotiate_sdp_request::{SdpType, SrtpPolicy as RequestPolicy};
        let policy = match r.srtp_policy() {
            RequestPolicy::Unspecified => self.node.config.srtp_policy,
            RequestPolicy::Off => SrtpPolicy::Off,
            RequestPolicy::Optional => SrtpPolicy::Optional,
            RequestPolicy::Required => SrtpPolicy::Required,
        };
        let prefer = if r.preferred_codecs.is_empty() {
            self.node.config.preferred_codecs.clone()
        } else {
            crate::config::parse_codecs(&r.preferred_codecs.join(","))
                .map_err(|e| Status::invalid_argument(format!("preferred_codecs: {e}")))?
        };
        let call = self.node.call(r.server_rtp_port)?;
        let remote = match r.remote_type() {
            SdpType::Answer => Remote::Answer(r.remote_sdp),
            _ if r.remote_sdp.is_empty() => Remote::Nothing,
            _ => Remote::Offer(r.remote_sdp),
        };
        let request = Request { remote, policy, prefer, ip: self.node.advertised_ip() };
        let codecs = request.prefer.len();
        let outcome = ask(&call, |reply| CallCommand::Negotiate { request, reply }).await?;
        let a = match outcome.map_err(|e| Status::invalid_argument(e.to_string()))? {
            Outcome::Offered { local_sdp } => {
                info!(codecs, srtp = policy.as_str(), "SDP offer made");
                return Ok(NegotiateSdpResponse { local_sdp, media: None });
            }
            Outcome::Agreed(a) => a,
        };
        let (codec, agreed) = (a.codec(), &a.negotiated);
        self.node.metrics.negotiated.with_label_values(&[codec.name()]).inc();
        let transport = if a.keys.is_some() { "srtp" } else { "rtp" };
        self.node.metrics.negotiated_transport.with_label_values(&[transport, policy.as_str()]).inc();
        // The suite, never a key.
        let suite = a.keys.as_ref().map_or("none", |k| k.local.suite.name());
        info!(codec = codec.name(), pt = agreed.payload_type, direction = agreed.direction.as_str(), srtp = suite, "SDP negotiated");
        let media = NegotiatedMedia {
            codec: codec.name().into(),
            payload_type: agreed.payload_type as u32,
            clock_rate: codec.rtp_clock(),
            telephone_event_payload_type: agreed.telephone_event.map_or(0, u32::from),
            ptime_ms: agreed.ptime,
            direction: agreed.direction.as_str().into(),
            remote_rtp_addr: agreed.remote.map(|a| a.to_string()).unwrap_or_default(),
            srtp_suite: a.keys.as_ref().map(|k| k.local.suite.name().to_string()).unwrap_or_default(),
        };
        Ok(NegotiateSdpResponse { local_sdp: a.local_sdp, media: Some(media) })
    }

    async fn play(&self, r: PlayAudioRequest) -> Result<PlayAudioResponse, Status> {
        let call = self.node.call(r.server_rtp_port)?;
        let target = parse_target(&r.rtp_target_addr)?;
        let reply = |message: &str| Ok(PlayAudioResponse { success: true, message: message.to_string(), played_ms: 0 });
        let control = |control: Control| ask(&call, move |applied| CallCommand::Control { control, applied });
        // A call sending in a wideband codec gets the prompt's 16 kHz audio as well.
        let wide = (*call.wideband.borrow()).then_some(WIDE_RATE);
        let pcm: Sound = match uri::parse(&r.audio_uri).map_err(NodeError::from)? {
            AudioUri::Control(UriControl::SetTarget) => {
                let t = target.ok_or_else(|| Status::invalid_argument("control://set_target needs rtp_target_addr"))?;
                control(Control::SetTarget(t)).await?;
                info!(target = %t, "media target set");
                return reply("target set");
            }
            AudioUri::Control(UriControl::EnableEcho) => {
                control(Control::SetEcho(true)).await?;
                return reply("echo enabled");
            }
            AudioUri::Control(UriControl::DisableEcho) => {
                control(Control::SetEcho(false)).await?;
                return reply("echo disabled");
            }
            AudioUri::Control(UriControl::StopAudio) => {
                control(Control::Stop).await?;
                return reply("stopped");
            }
            AudioUri::File(rel) => {
                let pcm = self.node.load_prompt(&rel, CALL_RATE).await?;
                let wide = match wide {
                    Some(rate) => Some(self.node.load_prompt(&rel, rate).await?),
                    None => None,
                };
                Sound { pcm, wide }
            }
            AudioUri::Pcm { rate, bytes } => Sound {
                pcm: decode::pcm_bytes_to_call_pcm(&bytes, rate).into(),
                wide: wide.map(|w| decode::pcm_bytes_to_pcm(&bytes, rate, w).into()),
            },
            AudioUri::Wav(bytes) => {
                let pcm = decode::wav_to_call_pcm(&bytes).map_err(NodeError::from)?.into();
                let wide = match wide {
                    Some(w) => Some(decode::wav_to_pcm(&bytes, w).map_err(NodeError::from)?.into()),
                    None => None,
                };
                Sound { pcm, wide }
            }
        };
        let barge_in = barge_in(r.barge_in_ms);
        let id = self.node.next_playback_id();
        let (done_tx, done_rx) = oneshot::channel();
        call.commands
            .send(CallCommand::Play { id, uri: short(&r.audio_uri), pcm, target, barge_in, done: done_tx })
            .await
            .map_err(|_| NodeError::CallGone)?;
        // The reply waits for the end of playback. If the client goes away meanwhile,
        // this future is dropped but the call task keeps playing.
        match done_rx.await {
            Ok((outcome, played_ms)) => {
                info!(uri = %short(&r.audio_uri), outcome = outcome.label(), played_ms, "playback ended");
                Ok(PlayAudioResponse { success: true, message: outcome.message().to_string(), played_ms })
            }
            Err(_) => Ok(PlayAudioResponse { success: false, message: "call ended".into(), played_ms: 0 }),
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

/// The most of a TTS chunk's audio decoded at once (200 ms at 8 kHz).
const TTS_PIECE: usize = 1600;

/// Messages and time a cut stream's client gets to half-close while its marks are
/// answered (what it sends meanwhile is read and discarded).
const DRAIN_MESSAGES: usize = 1000;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// After the call cut a stream, the marks its client had already sent further ahead
/// (the node reads about 0.6 s ahead of playout, a client often far more): each is
/// acknowledged as cleared, in order, until the client half-closes, so every mark gets
/// its answer before the final one. Bounded in messages and time; audio is discarded.
async fn drain_marks(
    inbound: &mut Streaming<StreamAudioToCallRequest>,
    unsent_mark: Option<String>,
    played_ms: u64,
    responses: &mpsc::Sender<Result<StreamAudioToCallResponse, Status>>,
) {
    let cleared =
        |mark: String| StreamAudioToCallResponse { success: true, error_message: String::new(), mark, mark_cleared: true, played_ms };
    if let Some(mark) = unsent_mark {
        let _ = responses.try_send(Ok(cleared(mark)));
    }
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    for _ in 0..DRAIN_MESSAGES {
        match tokio::time::timeout_at(deadline, inbound.message()).await {
            Ok(Ok(Some(m))) if !m.mark.is_empty() => {
                // try_send, as for every ack: a client that stopped reading loses them.
                let _ = responses.try_send(Ok(cleared(clip(&m.mark))));
            }
            Ok(Ok(Some(_))) => {}
            // Half-closed, broke off, or out of time.
            _ => return,
        }
    }
}

/// The call's mark acknowledgements, as the contract's responses, in order.
async fn forward_acks(mut acks: mpsc::Receiver<MarkAck>, responses: mpsc::Sender<Result<StreamAudioToCallResponse, Status>>) {
    while let Some(a) = acks.recv().await {
        let r = StreamAudioToCallResponse {
            success: true,
            error_message: String::new(),
            mark: a.mark,
            mark_cleared: a.cleared,
            played_ms: a.played_ms,
        };
        // try_send, as the call did: a client that stopped reading loses its acks.
        let _ = responses.try_send(Ok(r));
    }
}

/// Moves TTS chunks from the client to the call (decoded to call PCM). The call's
/// channel is tiny, so a full call queue stops this loop from reading the client:
/// HTTP/2 flow control then pushes back on the sender, and nothing is dropped.
async fn pump_tts(
    first: StreamAudioToCallRequest,
    mut decoder: StreamDecoder,
    mut inbound: Streaming<StreamAudioToCallRequest>,
    chunks: mpsc::Sender<TtsChunk>,
    done: oneshot::Receiver<(StreamEnd, u64)>,
    acks: tokio::task::JoinHandle<()>,
    responses: mpsc::Sender<Result<StreamAudioToCallResponse, Status>>,
) {
    let mut msg = Some(first);
    let mut failure: Option<Status> = None;
    let mut bad_audio = None;
    // The call cut the stream (barge-in, stop, another stream, the call's end) while
    // the client still sends: its marks further ahead are answered as cleared below.
    let mut cut = false;
    let mut unsent_mark = None;
    'messages: while let Some(m) = msg.take() {
        let mark = (!m.mark.is_empty()).then(|| clip(&m.mark).to_string());
        if let Err(e) = decoder.push(&m.audio_chunk) {
            // What came before plays out; the stream ends saying what was wrong.
            warn!(error = %e, "TTS stream's audio is not what it declared");
            bad_audio = Some(e);
            break;
        }
        // Decoded a piece at a time as the call takes it (the channel to it holds a
        // few): a chunk that decodes to hours costs the node no more than a piece.
        // Each piece goes once the next is known, so the chunk's mark rides on its last.
        let mut current: Option<(Vec<i16>, Vec<i16>)> = None;
        loop {
            let next = match decoder.next_piece(TTS_PIECE) {
                Ok(next) => next.map(|pcm| (pcm, decoder.take_wide())),
                Err(e) => {
                    warn!(error = %e, "TTS stream's audio is not what it declared");
                    bad_audio = Some(e);
                    break 'messages;
                }
            };
            let mark = if next.is_none() { mark.clone() } else { None };
            let (pcm, wide) = current.take().unwrap_or_default();
            // A tiny chunk may bring a 16 kHz sample and no 8 kHz one yet (the
            // resampler rounds its count up): it still goes, so the two copies stay two
            // to one.
            let audio = !pcm.is_empty() || !wide.is_empty();
            if audio || mark.is_some() {
                if let Err(mpsc::error::SendError(chunk)) = chunks.send(TtsChunk { pcm, wide, mark }).await {
                    (cut, unsent_mark) = (true, chunk.mark);
                    break 'messages;
                }
            }
            match next {
                Some(piece) => current = Some(piece),
                None => break,
            }
        }
        // A client that only sends keep-alives learns at once that its call ended or that
        // a newer prompt took over, not at its next chunk.
        let next = tokio::select! {
            next = inbound.message() => next,
            _ = chunks.closed() => {
                cut = true;
                break;
            }
        };
        match next {
            Ok(next) => msg = next,
            Err(e) => {
                warn!(error = %e, "TTS stream broke off");
                failure = Some(e);
            }
        }
    }
    if !cut && failure.is_none() && bad_audio.is_none() {
        // The client half-closed: a page it cut short, or bytes after its last page,
        // are no audio (what came before played).
        if let Err(e) = decoder.finish() {
            warn!(error = %e, "TTS stream ended unfinished");
            bad_audio = Some(e);
        }
    }
    drop(chunks);
    let (outcome, played_ms) = done.await.unwrap_or((StreamEnd::CallEnded, 0));
    // Every mark is acknowledged before the final answer: the call sent the last ack
    // before `done` and then let go of the acks channel, so the forwarder ends.
    let _ = acks.await;
    if cut {
        drain_marks(&mut inbound, unsent_mark, played_ms, &responses).await;
    }
    let end = |success: bool, error_message: String| StreamAudioToCallResponse { success, error_message, played_ms, ..Default::default() };
    let resp = match (bad_audio, failure, outcome) {
        (Some(e), _, _) => end(false, format!("bad audio: {e}")),
        (None, Some(e), _) => end(false, format!("client stream failed: {}", e.message())),
        (None, None, StreamEnd::Played) => end(true, String::new()),
        (None, None, outcome) => end(false, outcome.message().into()),
    };
    let _ = responses.send(Ok(resp)).await;
}
