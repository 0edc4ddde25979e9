//! The platform's events, published to RabbitMQ (topic exchange `sentiric_events`,
//! durable, persistent messages, publisher confirms), protobuf-encoded as its
//! consumers expect. Publishing never blocks a call: events go into a bounded outbox
//! that a background task drains while the broker is reachable; when the outbox is
//! full the oldest event is dropped, counted and logged, never silently.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use media_proto::events::{CallRecordingAvailableEvent, GenericEvent};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::sync::lock;

pub mod call;

pub const EXCHANGE: &str = "sentiric_events";
pub const PLAYBACK_FINISHED: &str = "call.media.playback.finished";
// The call-events stream's events, for the services that take them from the broker
// (extensions, named in the style of `call.media.playback.finished`; see call.rs).
pub const PLAYBACK_STARTED: &str = "call.media.playback.started";
pub const SPEECH_STARTED: &str = "call.media.speech.started";
pub const SPEECH_STOPPED: &str = "call.media.speech.stopped";
pub const DTMF: &str = "call.media.dtmf";
pub const MEDIA_TIMEOUT: &str = "call.media.timeout";
pub const MEDIA_RESUMED: &str = "call.media.resumed";
pub const QUALITY: &str = "call.media.quality";
pub const RECORDING_AVAILABLE: &str = "call.recording.available";
/// A recording could not be written (a full spool): an extension, in the style of
/// `call.media.playback.finished`.
pub const RECORDING_FAILED: &str = "call.media.recording.failed";
/// Events kept while the broker is away.
pub const OUTBOX_CAPACITY: usize = 10_000;

#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub routing_key: String,
    pub body: Vec<u8>,
}

pub struct EventPublisher {
    outbox: Mutex<VecDeque<Outgoing>>,
    capacity: usize,
    tenant_id: String,
    metrics: Arc<Metrics>,
    wake: tokio::sync::Notify,
    enabled: bool,
}

/// A wall-clock instant as the events' protobuf Timestamp.
pub fn timestamp(t: std::time::SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

fn now() -> prost_types::Timestamp {
    timestamp(std::time::SystemTime::now())
}

impl EventPublisher {
    /// `enabled` is false when no RABBITMQ_URL is configured: events are then not kept.
    pub fn new(enabled: bool, tenant_id: String, capacity: usize, metrics: Arc<Metrics>) -> Arc<EventPublisher> {
        Arc::new(EventPublisher {
            outbox: Mutex::new(VecDeque::new()),
            capacity,
            tenant_id,
            metrics,
            wake: tokio::sync::Notify::new(),
            enabled,
        })
    }

    pub fn queued(&self) -> usize {
        lock(&self.outbox).len()
    }

    fn enqueue(&self, routing_key: &str, body: Vec<u8>) {
        if !self.enabled {
            return;
        }
        let mut q = lock(&self.outbox);
        if q.len() >= self.capacity {
            if let Some(old) = q.pop_front() {
                self.metrics.events_dropped.inc();
                warn!(routing_key = %old.routing_key, "event outbox full while the broker is away: oldest event dropped");
            }
        }
        q.push_back(Outgoing { routing_key: routing_key.to_string(), body });
        self.metrics.events_outbox.set(q.len() as i64);
        drop(q);
        self.wake.notify_one();
    }

    /// `{"callId","uri","outcome","playedMs"}` (playedMs an extension).
    pub fn playback_finished(&self, call_id: &str, uri: &str, outcome: &str, played_ms: u64) {
        self.media_event(
            PLAYBACK_FINISHED,
            call_id,
            serde_json::json!({"callId": call_id, "uri": uri, "outcome": outcome, "playedMs": played_ms}),
        );
    }

    /// A call event as a GenericEvent: `payload` is its JSON (with `callId`).
    pub fn media_event(&self, routing_key: &str, call_id: &str, payload: serde_json::Value) {
        if !self.enabled {
            return;
        }
        let ev = GenericEvent {
            event_type: routing_key.into(),
            trace_id: call_id.into(),
            timestamp: Some(now()),
            tenant_id: self.tenant_id.clone(),
            payload_json: payload.to_string(),
        };
        self.enqueue(routing_key, ev.encode_to_vec());
    }

    pub fn recording_available(&self, call_id: &str, trace_id: &str, recording_uri: &str, public_url: &str, cut_short: bool) {
        let ev = CallRecordingAvailableEvent {
            event_type: RECORDING_AVAILABLE.into(),
            trace_id: trace_id.into(),
            call_id: call_id.into(),
            timestamp: Some(now()),
            recording_uri: recording_uri.into(),
            public_url: public_url.into(),
            cut_short,
        };
        self.enqueue(RECORDING_AVAILABLE, ev.encode_to_vec());
    }

    /// `{"callId","traceId","uri","reason","secondsKept"}`: what was kept is stored
    /// (a `call.recording.available` with cut_short follows once it is).
    pub fn recording_failed(&self, call_id: &str, trace_id: &str, uri: &str, reason: &str, seconds_kept: f64) {
        let payload = serde_json::json!({
            "callId": call_id,
            "traceId": trace_id,
            "uri": uri,
            "reason": reason,
            "secondsKept": (seconds_kept * 1000.0).round() / 1000.0,
        });
        let ev = GenericEvent {
            event_type: RECORDING_FAILED.into(),
            trace_id: call_id.into(),
            timestamp: Some(now()),
            tenant_id: self.tenant_id.clone(),
            payload_json: payload.to_string(),
        };
        self.enqueue(RECORDING_FAILED, ev.encode_to_vec());
    }

    /// Connects (and reconnects, with backoff) and drains the outbox with confirms.
    pub async fn run(self: Arc<Self>, url: String, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.session(&url, &shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "RabbitMQ unavailable; events wait in the outbox");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    async fn session(&self, url: &str, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let conn = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        channel
            .exchange_declare(
                EXCHANGE.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions { durable: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        info!("connected to RabbitMQ");
        loop {
            let next = lock(&self.outbox).front().cloned();
            let Some(ev) = next else {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = self.wake.notified() => continue,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {
                        if !conn.status().connected() {
                            anyhow::bail!("connection to RabbitMQ lost");
                        }
                        continue;
                    }
                }
            };
            let props = BasicProperties::default().with_delivery_mode(2).with_content_type("application/x-protobuf".into());
            let confirm = channel
                .basic_publish(EXCHANGE.into(), ev.routing_key.as_str().into(), BasicPublishOptions::default(), &ev.body, props)
                .await?
                .await?;
            if confirm.is_ack() {
                // Only a confirmed event leaves the outbox.
                let mut q = lock(&self.outbox);
                if q.front() == Some(&ev) {
                    q.pop_front();
                }
                self.metrics.events_outbox.set(q.len() as i64);
                self.metrics.events_published.inc();
            } else {
                warn!(routing_key = %ev.routing_key, "broker refused an event; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_outbox_drops_the_oldest_and_counts_it() {
        let metrics = Arc::new(Metrics::new());
        let p = EventPublisher::new(true, "tenant".into(), 2, metrics.clone());
        p.playback_finished("c1", "file://a.wav", "finished", 100);
        p.playback_finished("c2", "file://b.wav", "finished", 100);
        p.playback_finished("c3", "file://c.wav", "finished", 100);
        assert_eq!(p.queued(), 2);
        assert_eq!(metrics.events_dropped.get(), 1);
        let first = p.outbox.lock().unwrap().front().cloned().unwrap();
        let ev = GenericEvent::decode(first.body.as_slice()).unwrap();
        assert_eq!(ev.trace_id, "c2", "the oldest went");
        assert_eq!(ev.tenant_id, "tenant");
        let payload: serde_json::Value = serde_json::from_str(&ev.payload_json).unwrap();
        assert_eq!(payload["callId"], "c2");
        assert_eq!(payload["uri"], "file://b.wav");
        assert_eq!(payload["playedMs"], 100);
    }

    #[test]
    fn nothing_is_kept_without_a_broker() {
        let p = EventPublisher::new(false, String::new(), 10, Arc::new(Metrics::new()));
        p.recording_available("c", "t", "s3://b/k", "", false);
        assert_eq!(p.queued(), 0);
    }
}
