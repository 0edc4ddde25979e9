//! The platform's events on a real RabbitMQ broker, decoded by a consumer as the
//! platform's services decode them; and nothing lost while the broker is away.

use fleet_tests::rabbitmq::{consume, Broker, Received};
use fleet_tests::*;
use media_proto::events::{CallRecordingAvailableEvent, GenericEvent};
use media_proto::pb::*;
use prost::Message;

async fn wait_for(received: &Received, key: &str, count: usize, secs: u64) -> Vec<Vec<u8>> {
    for _ in 0..secs * 10 {
        let got: Vec<Vec<u8>> = received.lock().unwrap().iter().filter(|(k, _)| k == key).map(|(_, b)| b.clone()).collect();
        if got.len() >= count {
            return got;
        }
        sleep_ms(100).await;
    }
    panic!("{count} {key} event(s) did not arrive: {:?}", received.lock().unwrap().iter().map(|(k, _)| k.clone()).collect::<Vec<_>>());
}

/// An event leaves the outbox when the broker confirms it, which can come after the
/// consumer already has it: wait for the confirms rather than read the gauge at once.
async fn outbox_empties(node: &TestNode) {
    fleet_tests::envtest::eventually("the broker to confirm every event it delivered (an empty outbox)", 20, || async {
        (node.metric("media_events_outbox").await == 0.0).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playback_and_recording_events_reach_the_platform() {
    let mut broker = Broker::start().await;
    let received: Received = Default::default();
    let consumer = consume(&broker.url(), "media-events-test", received.clone()).await.unwrap();
    let url = broker.url();
    let mut node = TestNode::start_with(22800, 10, move |c| {
        c.rabbitmq_url = Some(url.clone());
        c.tenant_id = "tenant-7".into();
    })
    .await;
    node.write_prompt("hello.wav", &synth_prompt(8000, 0.3), 8000);
    let (port, node_rtp, _caller) = node.call("evt-call-1").await;

    // A prompt ends: call.media.playback.finished, GenericEvent with {"callId","uri"}.
    assert_eq!(node.play(port, "file://hello.wav").await.unwrap().message, "finished");
    let body = wait_for(&received, "call.media.playback.finished", 1, 20).await.remove(0);
    let ev = GenericEvent::decode(body.as_slice()).expect("a GenericEvent");
    assert_eq!(ev.event_type, "call.media.playback.finished");
    assert_eq!(ev.trace_id, "evt-call-1");
    assert_eq!(ev.tenant_id, "tenant-7");
    assert!(ev.timestamp.is_some_and(|t| t.seconds > 1_700_000_000));
    let payload: serde_json::Value = serde_json::from_str(&ev.payload_json).unwrap();
    assert_eq!(payload["callId"], "evt-call-1");
    assert_eq!(payload["uri"], "file://hello.wav");
    assert!(payload["playedMs"].as_u64().is_some_and(|ms| (280..=320).contains(&ms)), "0.3 s played: {payload}");
    let started = wait_for(&received, "call.media.playback.started", 1, 20).await.remove(0);
    let started: serde_json::Value = serde_json::from_str(&GenericEvent::decode(started.as_slice()).unwrap().payload_json).unwrap();
    assert_eq!(started["uri"], "file://hello.wav");

    // A digit the caller presses (RFC 4733): call.media.dtmf once, at its end.
    for (marker, p) in media_node::core::analysis::telephone_event::digit_packets('4', 800, 400, 10).unwrap() {
        let header = media_node::core::rtp::RtpHeader { marker, payload_type: 101, sequence: 9, timestamp: 1234, ssrc: 3 };
        _caller.socket.send_to(&media_node::core::rtp::build(header, &p), node_rtp).await.unwrap();
    }
    let dtmf = wait_for(&received, "call.media.dtmf", 1, 20).await;
    let ev = GenericEvent::decode(dtmf[0].as_slice()).unwrap();
    let d: serde_json::Value = serde_json::from_str(&ev.payload_json).unwrap();
    assert_eq!(
        (ev.trace_id.as_str(), &d["digit"], &d["durationMs"], &d["source"]),
        ("evt-call-1", &"4".into(), &100.into(), &"rfc4733".into())
    );

    // A recording is stored: call.recording.available with its URI.
    node.client
        .start_recording(StartRecordingRequest {
            server_rtp_port: port,
            output_uri: "file://events".into(),
            call_id: "evt-call-1".into(),
            trace_id: "trace-evt".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    sleep_ms(300).await;
    let stop = node.client.stop_recording(StopRecordingRequest { server_rtp_port: port }).await.unwrap().into_inner();
    let body = wait_for(&received, "call.recording.available", 1, 20).await.remove(0);
    let ev = CallRecordingAvailableEvent::decode(body.as_slice()).expect("a CallRecordingAvailableEvent");
    assert_eq!(ev.event_type, "call.recording.available");
    assert_eq!(ev.call_id, "evt-call-1");
    assert_eq!(ev.trace_id, "trace-evt");
    assert_eq!(ev.recording_uri, stop.recording_uri);

    // Count from an empty outbox (see `outbox_empties`).
    outbox_empties(&node).await;

    // The broker goes away: events wait in the outbox and arrive when it is back.
    drop(consumer);
    broker.stop();
    assert_eq!(node.play(port, "file://hello.wav").await.unwrap().message, "finished");
    assert_eq!(node.play(port, "file://hello.wav").await.unwrap().message, "finished");
    sleep_ms(500).await;
    assert_eq!(
        node.metric("media_events_outbox").await,
        4.0,
        "two prompts started and finished: four events kept while the broker is away"
    );
    broker.restart().await;
    let _consumer = consume(&broker.url(), "media-events-test", received.clone()).await.unwrap();
    wait_for(&received, "call.media.playback.finished", 3, 60).await;
    wait_for(&received, "call.media.playback.started", 3, 60).await;
    outbox_empties(&node).await;
    assert_eq!(node.metric("media_events_dropped_total").await, 0.0);
    node.client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
}
