//! The pool as one media service, against a real kube-apiserver with etcd: the operator
//! runs in-process, every node pod is a real media-node process (see `FakeKubelet`),
//! and the test is a caller holding one gRPC connection, as the SIP service would.
//!
//! One test walks a pool's life in order (placement, forwarding, scale-down, rollout,
//! autoscaling), so the control plane starts once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use fleet_tests::envtest::{create_namespace, eventually, install_crds, start_operator, ControlPlane, FakeKubelet};
use fleet_tests::{
    best_correlation, collect_listen, metric_value, pcm_of, pinned, synth_prompt, synth_speech, timeline, wav_bytes, RtpCaller,
};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use media_crds::{MediaNode, MediaPool, TEMPLATE_HASH_LABEL};
use media_node::core::g711::Codec;
use media_proto::pb::media_service_client::MediaServiceClient;
use media_proto::pb::*;
use serde_json::json;
use tonic::transport::Channel;
use tonic::Code;

const NS: &str = "fleet-pool";
const POOL: &str = "voice";
const MIN: u32 = 24000;
const SLOT: u32 = 100;

type Grpc = MediaServiceClient<Channel>;

/// A serving node of the pool as the test sees it.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    slot: u32,
}

impl Member {
    fn grpc_port(&self) -> u32 {
        MIN + self.slot * SLOT
    }
    fn owns(&self, port: u32) -> bool {
        (self.grpc_port()..self.grpc_port() + SLOT).contains(&port)
    }
    fn http(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.grpc_port() + 1).parse().unwrap()
    }
    async fn grpc(&self) -> Grpc {
        let url = format!("http://127.0.0.1:{}", self.grpc_port());
        eventually("node gRPC", 20, || async { MediaServiceClient::connect(url.clone()).await.ok() }).await
    }
}

fn rtp_addr(port: u32) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

async fn pool(client: &Client) -> MediaPool {
    Api::<MediaPool>::namespaced(client.clone(), NS).get(POOL).await.unwrap()
}

async fn live_pods(client: &Client) -> Vec<Pod> {
    fleet_tests::envtest::live_pods(client, NS).await
}

async fn media_nodes(client: &Client) -> Vec<MediaNode> {
    let all = Api::<MediaNode>::namespaced(client.clone(), NS).list(&ListParams::default()).await.unwrap().items;
    all.into_iter().filter(|n| !n.annotations().contains_key(media_crds::RELEASED_AT_ANNOTATION)).collect()
}

/// Waits for `n` serving (not draining), ready nodes that each know the other n-1,
/// and returns them by slot.
async fn serving(client: &Client, n: usize) -> Vec<Member> {
    let members = eventually("serving nodes ready", 60, || async {
        let mns = media_nodes(client).await;
        let ready: Vec<Member> = mns
            .iter()
            .filter(|m| !m.spec.draining && m.status.as_ref().is_some_and(|s| s.ready))
            .map(|m| Member { name: m.name_any(), slot: m.spec.slot as u32 })
            .collect();
        (ready.len() == n).then_some(ready)
    })
    .await;
    let mut members = members;
    members.sort_by_key(|m| m.slot);
    for m in &members {
        // Peers come from the watch; every node must know the others before the
        // pool can act as one service.
        eventually("node knows its peers", 30, || async {
            let text = metrics_of(m).await?;
            (metric_value(&text, "media_fleet_peers") >= (n - 1) as f64).then_some(())
        })
        .await;
    }
    members
}

async fn set_target(g: &mut Grpc, port: u32, caller: &RtpCaller) {
    g.play_audio(PlayAudioRequest {
        audio_uri: "control://set_target".into(),
        server_rtp_port: port,
        rtp_target_addr: caller.local_addr().to_string(),
        barge_in_ms: None,
    })
    .await
    .expect("set_target");
}

/// Plays the test prompt on `port` through `via`, and checks the caller got it from
/// the port's own socket (so the owner played it, whoever was asked).
async fn prompt_reaches_caller(via: &mut Grpc, port: u32, caller: &RtpCaller, prompt: &[i16]) {
    caller.take_received();
    let r = via
        .play_audio(PlayAudioRequest {
            audio_uri: "file://prompts/hello.wav".into(),
            server_rtp_port: port,
            rtp_target_addr: String::new(),
            barge_in_ms: None,
        })
        .await
        .expect("PlayAudio")
        .into_inner();
    assert!(r.success, "{}", r.message);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = caller.take_received();
    assert!(got.len() >= 40, "a 1 s prompt is 50 packets, got {}", got.len());
    assert!(got.iter().all(|p| p.from == rtp_addr(port)), "RTP comes from the owner's port {port}");
    let (corr, _) = best_correlation(prompt, &timeline(&got), 8000);
    assert!(corr > 0.9, "the caller hears the prompt (correlation {corr:.3})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_behaves_as_one_media_service() {
    let cp = ControlPlane::start().await;
    let client = cp.client().await.unwrap();
    install_crds(&client).await;
    create_namespace(&client, NS).await;
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "fleet-node"},
        "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}
    }))
    .unwrap();
    Api::<Node>::all(client.clone()).create(&PostParams::default(), &node).await.unwrap();

    let assets = tempfile::tempdir().unwrap();
    let prompt = synth_prompt(8000, 1.0);
    std::fs::create_dir_all(assets.path().join("prompts")).unwrap();
    std::fs::write(assets.path().join("prompts/hello.wav"), wav_bytes(&prompt, 8000)).unwrap();
    std::fs::write(assets.path().join("prompts/long.wav"), wav_bytes(&synth_prompt(8000, 40.0), 8000)).unwrap();
    let kubelet = FakeKubelet::start(client.clone(), NS, cp.kubeconfig.clone(), "fleet-node", assets.path().to_path_buf());
    let operator = start_operator(cp.client().await.unwrap(), "fleet-op", 28191);

    let body = json!({
        "apiVersion": "media.sentiric.cloud/v1alpha1",
        "kind": "MediaPool",
        "metadata": {"name": POOL, "namespace": NS},
        "spec": {
            "replicas": 3,
            "ports": {"min": MIN, "max": MIN + 10 * SLOT - 1, "slotSize": SLOT},
            "quarantineSeconds": 2,
            "drainTimeoutSeconds": 300,
            "template": {"image": "media-node:test"},
        }
    });
    Api::<MediaPool>::namespaced(client.clone(), NS).create(&PostParams::default(), &serde_json::from_value(body).unwrap()).await.unwrap();
    let members = serving(&client, 3).await;

    let pdb = Api::<PodDisruptionBudget>::namespaced(client.clone(), NS).get(POOL).await.expect("the pool has a PodDisruptionBudget");
    assert_eq!(pdb.spec.unwrap().max_unavailable, Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1)));

    forwarding(&client, &members, &prompt).await;
    let survivors = scale_down_cuts_no_call(&client, &members, &prompt).await;
    rollout_cuts_no_call(&client, survivors, &prompt).await;
    autoscaler(&client).await;
    admission(&client).await;

    operator.stop().await;
    kubelet.stop().await;
    drop(cp);
}

/// 100 calls through one node spread over three; per-port requests and streams sent
/// to the wrong node are served by the right one.
async fn forwarding(client: &Client, members: &[Member], prompt: &[i16]) {
    let mut entry = members[0].grpc().await;
    let mut calls: Vec<(String, u32)> = Vec::new();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..100 {
        let call_id = format!("spread-{i}");
        let r = entry.allocate_port(AllocatePortRequest { call_id: call_id.clone() }).await.expect("AllocatePort through one node");
        let owner_header = r.metadata().get("x-media-node").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let port = r.into_inner().rtp_port;
        let owner = members.iter().find(|m| m.owns(port)).expect("the port is in a pool node's slot");
        assert_eq!(owner_header, owner.name, "the reply names the node that holds the call");
        *per_node.entry(owner.name.clone()).or_default() += 1;
        calls.push((call_id, port));
    }
    eprintln!("placement of 100 calls through one node: {per_node:?}");
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    for (name, n) in &per_node {
        assert!((25..=42).contains(n), "node {name} got {n} of 100 calls: {per_node:?}");
    }
    // A retried AllocatePort gets the same port, wherever the call went.
    let again = entry.allocate_port(AllocatePortRequest { call_id: calls[7].0.clone() }).await.unwrap().into_inner();
    assert_eq!(again.rtp_port, calls[7].1, "AllocatePort stays idempotent per call_id across the pool");
    eventually("100 calls in the pool status", 20, || async { (pool(client).await.status?.active_sessions == 100).then_some(()) }).await;

    // PlayAudio for a node-1 call, sent to node 2: the prompt comes from node 1's port.
    let (_, port1) = calls.iter().find(|(_, p)| members[1].owns(*p)).cloned().unwrap();
    let mut wrong = members[2].grpc().await;
    let caller = RtpCaller::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    set_target(&mut wrong, port1, &caller).await;
    prompt_reaches_caller(&mut wrong, port1, &caller, prompt).await;

    // A request already forwarded once is never forwarded again.
    let err = wrong
        .play_audio(pinned(PlayAudioRequest {
            audio_uri: "control://stop_audio".into(),
            server_rtp_port: port1,
            rtp_target_addr: String::new(),
            barge_in_ms: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // RecordAudio through node 2 streams what the caller says into node 1.
    let stream = wrong
        .record_audio(RecordAudioRequest { server_rtp_port: port1, target_sample_rate: Some(8000) })
        .await
        .expect("RecordAudio via a non-owner")
        .into_inner();
    let listen = collect_listen(stream);
    // StreamCallEvents through node 2 for node 1's call: its events come through.
    let mut events = wrong
        .stream_call_events(StreamCallEventsRequest { server_rtp_port: port1 })
        .await
        .expect("StreamCallEvents via a non-owner")
        .into_inner();
    let events = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Ok(Some(e)) = events.message().await {
            got.push(e);
        }
        got
    });
    let speech = synth_speech(8000, 1.5, 11);
    caller.send_speech(rtp_addr(port1), &speech, Codec::Pcmu, 0x5eed).await.unwrap();
    for (marker, payload) in media_node::core::analysis::telephone_event::digit_packets('7', 800, 400, 10).unwrap() {
        let header = media_node::core::rtp::RtpHeader { marker, payload_type: 101, sequence: 1, timestamp: 777, ssrc: 0x5eed };
        caller.socket.send_to(&media_node::core::rtp::build(header, &payload), rtp_addr(port1)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // SetDtmfRedaction and SendDtmf through node 2 act on node 1's call: the digit
    // leaves node 1's port as RFC 4733 events.
    let redact = wrong.set_dtmf_redaction(SetDtmfRedactionRequest { server_rtp_port: port1, enabled: true }).await;
    assert!(redact.expect("SetDtmfRedaction via a non-owner").into_inner().success);
    // SetAudioProcessing too (issue 35): node 1's call answers with what it now has.
    let processing = wrong
        .set_audio_processing(SetAudioProcessingRequest { server_rtp_port: port1, noise_suppression: Some(true), ..Default::default() })
        .await
        .expect("SetAudioProcessing via a non-owner")
        .into_inner();
    assert!(processing.success && processing.noise_suppression && !processing.echo_cancellation, "{processing:?}");
    caller.take_received();
    let sent = wrong
        .send_dtmf(SendDtmfRequest { server_rtp_port: port1, digits: "5".into(), duration_ms: 60, inband: false })
        .await
        .expect("SendDtmf via a non-owner")
        .into_inner();
    assert!(sent.success, "{}", sent.message);
    let events_out = caller.take_received().iter().filter(|p| p.from == rtp_addr(port1) && p.payload_type == 101).count();
    assert!(events_out >= 3, "node 1 sent the digit's telephone-events ({events_out} packets)");
    // NegotiateSdp through node 2 is answered by node 1, with node 1's port.
    let far = caller.local_addr();
    let offer = format!(
        "v=0\r\no=far 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {p} RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n",
        ip = far.ip(),
        p = far.port()
    );
    let answer = wrong
        .negotiate_sdp(NegotiateSdpRequest { server_rtp_port: port1, remote_sdp: offer, ..Default::default() })
        .await
        .expect("NegotiateSdp via a non-owner")
        .into_inner();
    assert!(answer.local_sdp.contains(&format!("m=audio {port1} RTP/AVP")), "{}", answer.local_sdp);
    assert_eq!(answer.media.map(|m| m.codec).as_deref(), Some("PCMU"));
    // StreamAudioToCall by call_id through node 1 for a call node 0 placed on node 2:
    // node 1 never saw it, so it finds the holder among its peers.
    let (call2, port2) = calls.iter().find(|(_, p)| members[2].owns(*p)).cloned().unwrap();
    let mut mid = members[1].grpc().await;
    let tts_caller = RtpCaller::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    set_target(&mut mid, port2, &tts_caller).await;
    let tts = synth_prompt(16000, 1.0);
    let chunks: Vec<StreamAudioToCallRequest> = tts
        .chunks(1600)
        .map(|c| StreamAudioToCallRequest {
            call_id: call2.clone(),
            audio_chunk: c.iter().flat_map(|s| s.to_le_bytes()).collect(),
            ..Default::default()
        })
        .collect();
    let mut replies = mid.stream_audio_to_call(tokio_stream::iter(chunks)).await.expect("StreamAudioToCall via a non-holder").into_inner();
    let reply = replies.message().await.unwrap().expect("a reply");
    assert!(reply.success, "{}", reply.error_message);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = tts_caller.take_received();
    assert!(got.len() >= 40 && got.iter().all(|p| p.from == rtp_addr(port2)), "TTS played from the holder's port: {} packets", got.len());

    // Releasing everything through the entry node reaches every owner.
    for (_, port) in &calls {
        entry.release_port(ReleasePortRequest { rtp_port: *port }).await.expect("ReleasePort forwarded to the owner");
    }
    let (frames, _) = listen.await.unwrap();
    let (corr, _) = best_correlation(&speech, &pcm_of(&frames), 8000);
    assert!(corr > 0.9, "the listener through node 2 heard node 1's caller (correlation {corr:.3})");
    let events =
        tokio::time::timeout(Duration::from_secs(10), events).await.expect("the forwarded events stream ends with the call").unwrap();
    let digits: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(media_proto::pb::call_event::Event::Dtmf(d)) if d.end => Some((e.server_rtp_port, d.digit.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(digits, vec![(port1, "7".to_string())], "node 1's digit, through node 2");
    eventually("no calls left", 20, || async { (pool(client).await.status?.active_sessions == 0).then_some(()) }).await;
    let text = media_tools::http::get(&members[0].http().to_string(), "/metrics").await.unwrap().1;
    assert!(metric_value(&text, "media_fleet_forwarded_total{method=\"ReleasePort\",result=\"ok\"}") >= 60.0, "{text}");
}

struct LiveCall {
    port: u32,
    caller: RtpCaller,
}

/// `n` new calls sent to `via` without pinning, as a caller would: the ports the pool
/// placed them on (each released again).
async fn placed_through(via: &mut Grpc, tag: &str, n: usize) -> Vec<u32> {
    let mut ports = Vec::new();
    for i in 0..n {
        let port = via
            .allocate_port(AllocatePortRequest { call_id: format!("{tag}-{i}") })
            .await
            .expect("the node places the call, on a peer if not on itself")
            .into_inner()
            .rtp_port;
        via.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
        ports.push(port);
    }
    ports
}

/// Pins `n` calls on a node and points each at its own caller socket.
async fn pin_calls(m: &Member, n: usize, tag: &str) -> Vec<LiveCall> {
    let mut g = m.grpc().await;
    let mut out = Vec::new();
    for i in 0..n {
        let port =
            g.allocate_port(pinned(AllocatePortRequest { call_id: format!("{tag}-{}-{i}", m.name) })).await.unwrap().into_inner().rtp_port;
        assert!(m.owns(port));
        let caller = RtpCaller::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        set_target(&mut g, port, &caller).await;
        out.push(LiveCall { port, caller });
    }
    out
}

/// Scale 3 -> 2 with calls on every node: the emptiest drains, keeps its call, takes no
/// new one, and goes only when its call has ended. Returns the two that stay.
async fn scale_down_cuts_no_call(client: &Client, members: &[Member], prompt: &[i16]) -> Vec<(Member, Vec<LiveCall>)> {
    let mut held: Vec<Vec<LiveCall>> = Vec::new();
    for (m, n) in members.iter().zip([3, 1, 2]) {
        held.push(pin_calls(m, n, "scale").await);
    }
    eventually("6 calls reported", 20, || async { (pool(client).await.status?.active_sessions == 6).then_some(()) }).await;
    Api::<MediaPool>::namespaced(client.clone(), NS)
        .patch_scale(POOL, &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 2}})))
        .await
        .unwrap();
    let victim = &members[1];
    eventually("the emptiest node drains", 20, || async {
        let mn = media_nodes(client).await.into_iter().find(|n| n.name_any() == victim.name)?;
        (mn.spec.draining && mn.status?.draining).then_some(())
    })
    .await;

    // Its call goes on.
    let mut v = victim.grpc().await;
    let call = &held[1][0];
    prompt_reaches_caller(&mut v, call.port, &call.caller, prompt).await;
    assert!(live_pods(client).await.iter().any(|p| p.name_any() == victim.name), "a node with a call is not removed");
    // New calls that reach it go elsewhere.
    for port in placed_through(&mut v, "while-draining", 6).await {
        assert!(!victim.owns(port), "a draining node takes no new call");
    }

    // Its call ends: then, and only then, the pod goes.
    v.release_port(ReleasePortRequest { rtp_port: call.port }).await.unwrap();
    eventually("the drained node is removed", 30, || async {
        (!live_pods(client).await.iter().any(|p| p.name_any() == victim.name)).then_some(())
    })
    .await;
    // The pool's figures are aggregated from each node's latest report (at most one a
    // second), so the count may trail the replicas by a report: a peer's report from
    // while it briefly held a "while-draining" call. It has to settle on 5.
    eventually("2 replicas, none draining, and every other call (5) still counted", 20, || async {
        let s = pool(client).await.status?;
        (s.replicas == 2 && s.draining_replicas == 0 && s.active_sessions == 5).then_some(())
    })
    .await;

    let mut kept = Vec::new();
    for (m, calls) in members.iter().zip(held) {
        if m.name != victim.name {
            kept.push((m.clone(), calls));
        }
    }
    kept
}

/// A template change with calls on every node: new nodes come up first, old ones drain
/// and keep their calls, and go when their calls end.
async fn rollout_cuts_no_call(client: &Client, old: Vec<(Member, Vec<LiveCall>)>, prompt: &[i16]) {
    let before = pool(client).await.status.unwrap().template_hash.unwrap();
    Api::<MediaPool>::namespaced(client.clone(), NS)
        .patch(
            POOL,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"env": [{"name": "MEDIA_ROLLOUT_MARK", "value": "2"}]}}})),
        )
        .await
        .unwrap();
    let after = eventually("a new template hash", 20, || async {
        let h = pool(client).await.status?.template_hash?;
        (h != before).then_some(h)
    })
    .await;
    let fresh = eventually("2 new nodes serve", 90, || async {
        let mns = media_nodes(client).await;
        let serving: Vec<&MediaNode> = mns.iter().filter(|m| !m.spec.draining).collect();
        let ok = serving.len() == 2
            && serving.iter().all(|m| m.labels().get(TEMPLATE_HASH_LABEL) == Some(&after) && m.status.as_ref().is_some_and(|s| s.ready));
        ok.then(|| serving.iter().map(|m| Member { name: m.name_any(), slot: m.spec.slot as u32 }).collect::<Vec<_>>())
    })
    .await;
    let pods = live_pods(client).await;
    for (m, _) in &old {
        assert!(pods.iter().any(|p| p.name_any() == m.name), "old node {} still holds its calls", m.name);
        assert!(!fresh.iter().any(|f| f.name == m.name));
    }
    // Old calls still carry media while their nodes drain.
    for (m, calls) in &old {
        let mut g = m.grpc().await;
        prompt_reaches_caller(&mut g, calls[0].port, &calls[0].caller, prompt).await;
    }
    // New calls reaching an old node land on the new ones.
    let mut g = old[0].0.grpc().await;
    let port = g.allocate_port(AllocatePortRequest { call_id: "after-rollout".into() }).await.unwrap().into_inner().rtp_port;
    assert!(fresh.iter().any(|f| f.owns(port)), "port {port} is on a new node");
    g.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();

    for (m, calls) in &old {
        let mut g = m.grpc().await;
        for c in calls {
            g.release_port(ReleasePortRequest { rtp_port: c.port }).await.unwrap();
        }
    }
    eventually("old nodes removed once their calls ended", 40, || async {
        let pods = live_pods(client).await;
        (pods.len() == 2 && pods.iter().all(|p| p.labels().get(TEMPLATE_HASH_LABEL) == Some(&after))).then_some(())
    })
    .await;
    eventually("status: 2 up to date", 20, || async {
        let s = pool(client).await.status?;
        (s.updated_replicas == 2 && s.replicas == 2 && s.ready_replicas == 2).then_some(())
    })
    .await;
}

/// The occupancy autoscaler removes a node after the delay and adds one when free
/// capacity falls under the buffer.
async fn autoscaler(client: &Client) {
    let api: Api<MediaPool> = Api::namespaced(client.clone(), NS);
    // 50 calls per node; keep 30 free. Idle, one node is enough.
    api.patch(
        POOL,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"autoscaling": {"minReplicas": 1, "maxReplicas": 3, "freeSessions": 30, "scaleDownDelaySeconds": 6}}}),
        ),
    )
    .await
    .unwrap();
    let st = eventually("autoscaler status", 20, || async {
        let s = pool(client).await.status?.autoscaling?;
        (s.desired_replicas == 1 && s.scale_down_since.is_some()).then_some(s)
    })
    .await;
    assert_eq!(st.recommended_replicas, 1);
    assert_eq!(pool(client).await.spec.replicas, 2, "no scale-down before the delay");
    eventually("scaled down to 1 after the delay", 30, || async {
        (pool(client).await.spec.replicas == 1 && live_pods(client).await.len() == 1).then_some(())
    })
    .await;
    let only = serving(client, 1).await.remove(0);

    // 25 calls: 25 free < 30 wanted, so a second node comes.
    let mut g = only.grpc().await;
    let mut ports = Vec::new();
    for i in 0..25 {
        ports.push(g.allocate_port(AllocatePortRequest { call_id: format!("busy-{i}") }).await.unwrap().into_inner().rtp_port);
    }
    eventually("scaled up to 2", 30, || async { (pool(client).await.spec.replicas == 2).then_some(()) }).await;
    let s = eventually("the autoscaler's status", 20, || async {
        let s = pool(client).await.status?.autoscaling?;
        (s.desired_replicas == 2).then_some(s)
    })
    .await;
    // It scales as soon as free capacity falls under 30 of 50, i.e. from 21 calls on;
    // the status it wrote then may count fewer than all 25, as the node reports at
    // most once a second while the calls are being placed.
    assert!(s.last_scale_time.is_some() && s.used_sessions > 20, "{s:?}");
    serving(client, 2).await;
    let events = Api::<Event>::namespaced(client.clone(), NS).list(&ListParams::default()).await.unwrap().items;
    assert!(events.iter().any(|e| e.reason.as_deref() == Some("Autoscaled")), "the autoscaler records what it did");

    for p in ports {
        g.release_port(ReleasePortRequest { rtp_port: p }).await.unwrap();
    }
    eventually("back to 1 after the delay", 40, || async {
        (pool(client).await.spec.replicas == 1 && live_pods(client).await.len() == 1).then_some(())
    })
    .await;
    // The scale-down is an event of its own that says so, not the scale-up's event
    // with its count bumped (how the client library folds by reason).
    let notes = eventually("a scale-up and a scale-down event, each saying what happened", 20, || async {
        let events = Api::<Event>::namespaced(client.clone(), NS).list(&ListParams::default()).await.ok()?.items;
        let notes: Vec<String> =
            events.into_iter().filter(|e| e.reason.as_deref() == Some("Autoscaled")).filter_map(|e| e.message).collect();
        let up = notes.iter().any(|m| m.starts_with("replicas 1 -> 2"));
        let down = notes.iter().any(|m| m.starts_with("replicas 2 -> 1"));
        (up && down).then_some(notes)
    })
    .await;
    assert_eq!(notes.len(), 2, "{notes:?}");
}

async fn metrics_of(m: &Member) -> Option<String> {
    Some(media_tools::http::get(&m.http().to_string(), "/metrics").await.ok()?.1)
}

/// Admission control: a node at capacity refuses new calls and says why, reports
/// itself overloaded, and the pool places the calls on its other node; the autoscaler
/// counts it as full and grows the pool. When its calls end it takes calls again.
async fn admission(client: &Client) {
    let api: Api<MediaPool> = Api::namespaced(client.clone(), NS);
    // Admission at 1 % of the media threads' time: twenty calls playing prompts on a
    // test build are far past it, an idle node far below. Free capacity of 60 wanted
    // keeps two nodes of 50 calls while both take calls.
    api.patch(
        POOL,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {
            "maxLoadPercent": 1,
            "autoscaling": {"minReplicas": 2, "maxReplicas": 3, "freeSessions": 60, "scaleDownDelaySeconds": 600},
        }})),
    )
    .await
    .unwrap();
    let has_limit = |p: &Pod| {
        p.spec.as_ref().is_some_and(|s| {
            s.containers
                .iter()
                .flat_map(|c| c.env.iter().flatten())
                .any(|e| e.name == "MEDIA_MAX_LOAD_PERCENT" && e.value.as_deref() == Some("1"))
        })
    };
    eventually("two nodes run with admission control at 1 %", 90, || async {
        let pods = live_pods(client).await;
        (pods.len() == 2 && pods.iter().all(has_limit)).then_some(())
    })
    .await;
    let members = serving(client, 2).await;
    let (busy, other) = (&members[0], &members[1]);

    let calls = pin_calls(busy, 20, "load").await;
    let mut g = busy.grpc().await;
    let mut plays = Vec::new();
    for c in &calls {
        let mut g = g.clone();
        let port = c.port;
        plays.push(tokio::spawn(async move {
            g.play_audio(PlayAudioRequest {
                audio_uri: "file://prompts/long.wav".into(),
                server_rtp_port: port,
                rtp_target_addr: String::new(),
                barge_in_ms: None,
            })
            .await
        }));
    }
    eventually("the busy node refuses new calls", 30, || async {
        let text = metrics_of(busy).await?;
        (metric_value(&text, "media_admitting") == 0.0).then_some(())
    })
    .await;
    let refused = g.allocate_port(pinned(AllocatePortRequest { call_id: "over-capacity".into() })).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("at capacity"), "the refusal says why: {}", refused.message());
    // A new call that reaches the busy node goes to the other one.
    for port in placed_through(&mut g, "placed-elsewhere", 3).await {
        assert!(other.owns(port), "port {port} is on the node with room");
    }
    let text = metrics_of(busy).await.unwrap();
    assert!(
        metric_value(&text, "media_admission_refused_total{reason=\"load\"}")
            + metric_value(&text, "media_admission_refused_total{reason=\"lateness\"}")
            >= 1.0
    );
    eventually("its MediaNode says overloaded", 20, || async {
        let mn = media_nodes(client).await.into_iter().find(|n| n.name_any() == busy.name)?;
        mn.status?.overloaded.then_some(())
    })
    .await;
    // Full for the autoscaler: 50 held + the other's 0 leaves 50 free of 100, under
    // the 60 wanted, so a third node comes.
    eventually("the autoscaler grows the pool", 30, || async { (pool(client).await.spec.replicas == 3).then_some(()) }).await;

    // Its calls end: it takes calls again.
    for c in &calls {
        g.release_port(ReleasePortRequest { rtp_port: c.port }).await.unwrap();
    }
    for p in plays {
        let _ = p.await;
    }
    eventually("the node takes calls again", 30, || async {
        let text = metrics_of(busy).await?;
        (metric_value(&text, "media_admitting") == 1.0).then_some(())
    })
    .await;
    let port = g
        .allocate_port(pinned(AllocatePortRequest { call_id: "room-again".into() }))
        .await
        .expect("admitted once the load is gone")
        .into_inner()
        .rtp_port;
    assert!(busy.owns(port));
    g.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
    eventually("its MediaNode no longer says overloaded", 20, || async {
        let mn = media_nodes(client).await.into_iter().find(|n| n.name_any() == busy.name)?;
        (!mn.status?.overloaded).then_some(())
    })
    .await;
}
