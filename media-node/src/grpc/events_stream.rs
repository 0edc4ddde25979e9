//! One StreamCallEvents subscriber: its own receiver of a call's events, turned into
//! the contract's messages on a gRPC stream. A subscriber that reads too slowly loses its own oldest events (the
//! call's channel never waits for it) and is told how many in an `events_lost` event;
//! the loss is counted in `media_call_events_lost_total`. The stream ends when the
//! call does.

use std::sync::Arc;
use std::time::SystemTime;

use media_proto::pb::{self, call_event::Event as E};
use tokio::sync::broadcast::{self, error::RecvError};

use crate::events::call::{to_proto, CallClock, Happened};
use crate::events::timestamp;
use crate::grpc::BoxStream;
use crate::metrics::Metrics;

/// Keeps `media_call_event_subscribers` right however the stream ends (the client
/// cancels, the call ends).
struct Subscribed(Arc<Metrics>);

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.0.call_event_subscribers.dec();
    }
}

pub fn subscriber(rx: broadcast::Receiver<Happened>, metrics: Arc<Metrics>, clock: CallClock, call_id: String) -> BoxStream<pb::CallEvent> {
    let port = clock.port;
    metrics.call_event_subscribers.inc();
    let guard = Subscribed(metrics);
    let stream = futures::stream::unfold((rx, guard), move |(mut rx, guard)| {
        let call_id = call_id.clone();
        async move {
            match rx.recv().await {
                Ok(h) => Some((Ok(to_proto(clock, &call_id, &h)), (rx, guard))),
                Err(RecvError::Lagged(n)) => {
                    guard.0.call_events_lost.inc_by(n);
                    let lost = pb::CallEvent {
                        server_rtp_port: port as u32,
                        call_id,
                        media_time_ms: 0,
                        wall_time: Some(timestamp(SystemTime::now())),
                        event: Some(E::EventsLost(pb::EventsLost { count: n })),
                    };
                    Some((Ok(lost), (rx, guard)))
                }
                Err(RecvError::Closed) => None,
            }
        }
    });
    Box::pin(stream)
}
