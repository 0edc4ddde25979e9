//! The CRDs and the MediaPool operator against a real kube-apiserver with etcd
//! (envtest style, see tests/envtest/build.sh). Media nodes run as real processes
//! standing in for the pods, reporting into the same API server.
//!
//! One test walks the whole life of a pool in order, each step in its own function, so
//! the control plane starts once and every process is stopped at the end.

use std::collections::BTreeSet;
use std::time::Duration;

use fleet_tests::envtest::{create_namespace, eventually, install_crds, start_operator, ControlPlane, FakeKubelet, Operator};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use media_crds::{MediaNode, MediaPool, POOL_LABEL};
use media_proto::pb::media_service_client::MediaServiceClient;
use media_proto::pb::{AllocatePortRequest, PlayAudioRequest, ReleasePortRequest};
use serde_json::json;

const NS: &str = "fleet";

async fn pods(client: &Client) -> Vec<Pod> {
    fleet_tests::envtest::live_pods(client, NS).await
}

async fn nodes(client: &Client) -> Vec<MediaNode> {
    Api::<MediaNode>::namespaced(client.clone(), NS).list(&ListParams::default()).await.unwrap().items
}

fn slot_of(p: &Pod) -> i32 {
    p.labels().get(media_crds::SLOT_LABEL).unwrap().parse().unwrap()
}

async fn pool(client: &Client) -> MediaPool {
    Api::<MediaPool>::namespaced(client.clone(), NS).get("voice").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_against_a_real_apiserver() {
    let mut cp = ControlPlane::start().await;
    let client = cp.client().await.unwrap();
    install_crds(&client).await;
    create_namespace(&client, NS).await;
    invalid_pools_are_rejected(&client).await;
    a_new_node_knows_its_peers_from_the_first_list(&client, &cp).await;

    // The Kubernetes Node the fake pods run on: ExternalIP is what nodes advertise.
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "envtest-node"},
        "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "ExternalIP", "address": "127.0.0.2"}]}
    }))
    .unwrap();
    Api::<Node>::all(client.clone()).create(&PostParams::default(), &node).await.unwrap();

    let assets = tempfile::tempdir().unwrap();
    let kubelet = FakeKubelet::start(client.clone(), NS, cp.kubeconfig.clone(), "envtest-node", assets.path().to_path_buf());
    let op_a = start_operator(cp.client().await.unwrap(), "op-a", 28181);

    pool_comes_up_with_disjoint_slots(&client).await;
    let call_port = node_reports_are_aggregated(&client).await;
    scale_subresource_drains_the_emptiest(&client, call_port).await;
    deleted_pod_is_replaced_without_clash(&client).await;
    reporter_rides_out_an_api_outage(&client, &mut cp, assets.path()).await;

    // Operator restart: a new instance keeps every slot and pod.
    let before: BTreeSet<(String, i32)> = pods(&client).await.iter().map(|p| (p.name_any(), slot_of(p))).collect();
    op_a.stop().await;
    let op_b = start_operator(cp.client().await.unwrap(), "op-b", 28182);
    eventually("op-b leads", 20, || async { (op_b.role().await == "leader").then_some(()) }).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let after: BTreeSet<(String, i32)> = pods(&client).await.iter().map(|p| (p.name_any(), slot_of(p))).collect();
    assert_eq!(before, after, "an operator restart changes no pod and no slot");

    only_the_lease_holder_writes(&client, &cp, op_b, assets.path()).await;

    kubelet.stop().await;
    drop(cp);
}

/// A node that starts into a pool whose peers reported long ago knows them as soon as
/// its first list of the pool's MediaNodes is in, not at the next change. Here nothing
/// ever changes: the two peers are objects written once (no process heartbeats them)
/// and the newcomer has no MediaNode of its own (its reports fail), so the first list
/// is all it gets. Before the fix it never knew them: every per-port request for a
/// peer's call was answered NOT_FOUND.
async fn a_new_node_knows_its_peers_from_the_first_list(client: &Client, cp: &ControlPlane) {
    const GHOSTS: &str = "ghost-town";
    create_namespace(client, GHOSTS).await;
    let api: Api<MediaNode> = Api::namespaced(client.clone(), GHOSTS);
    for (i, name) in ["peer-a", "peer-b"].into_iter().enumerate() {
        let base = 27200 + i as i32 * 100;
        let mn: MediaNode = serde_json::from_value(json!({
            "apiVersion": "media.sentiric.cloud/v1alpha1", "kind": "MediaNode",
            "metadata": {"name": name, "labels": {POOL_LABEL: "ghosts"}},
            "spec": {"pool": "ghosts", "slot": i + 1, "udpMin": base, "udpMax": base + 99, "grpcPort": 27290 + i as i32,
                     "metricsPort": 27295 + i as i32, "podName": name},
        }))
        .unwrap();
        api.create(&PostParams::default(), &mn).await.unwrap();
        let status = json!({"status": {
            "ports": {"total": 50, "allocated": 1, "quarantined": 0, "free": 49},
            "sessions": 1, "grpcEndpoint": format!("127.0.0.1:{}", 27290 + i), "advertisedAddress": "127.0.0.1",
            "heartbeatTime": k8s_openapi::jiff::Timestamp::now().to_string(), "ready": true, "draining": false,
        }});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    }
    let log = cp.log_dir().join("newcomer.log");
    let mut node = std::process::Command::new(fleet_tests::envtest::media_node_binary())
        .env("MEDIA_SERVICE_GRPC_PORT", "27198")
        .env("MEDIA_SERVICE_METRICS_PORT", "27199")
        .env("MEDIA_SERVICE_LISTEN_ADDRESS", "127.0.0.1")
        .env("RTP_SERVICE_LISTEN_ADDRESS", "127.0.0.1")
        .env("RTP_SERVICE_PORT_MIN", "27100")
        .env("RTP_SERVICE_PORT_MAX", "27199")
        .env("RECORDINGS_SPOOL_DIR", cp.log_dir().join("newcomer-spool"))
        .env("RECORDINGS_ROOT", cp.log_dir().join("newcomer-recordings"))
        .env("ASSETS_BASE_PATH", cp.log_dir())
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("MEDIA_NODE_NAME", "newcomer")
        .env("MEDIA_NODE_NAMESPACE", GHOSTS)
        .env("MEDIA_POOL_NAME", "ghosts")
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut peers = 0.0;
    while started.elapsed() < Duration::from_secs(30) && peers != 2.0 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Ok((_, text)) = media_tools::http::get("127.0.0.1:27199", "/metrics").await {
            peers = fleet_tests::metric_value(&text, "media_fleet_peers");
        }
    }
    assert_eq!(
        peers,
        2.0,
        "the newcomer knows both peers from its first list; its log:\n{}{}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
    );
    println!("the newcomer knew its {peers} peers {:.1} s after it started", started.elapsed().as_secs_f64());
    // A per-port request for a peer's call goes to that peer (here gone: UNAVAILABLE),
    // not answered NOT_FOUND as a call this node has never heard of.
    let mut grpc = MediaServiceClient::connect("http://127.0.0.1:27198").await.unwrap();
    let err = grpc
        .play_audio(PlayAudioRequest {
            audio_uri: "file://x.wav".into(),
            server_rtp_port: 27210,
            rtp_target_addr: String::new(),
            barge_in_ms: None,
        })
        .await
        .expect_err("the peer is not there");
    assert_eq!(err.code(), tonic::Code::Unavailable, "forwarded to the port's owner: {err:?}");
    let _ = node.kill();
    let _ = node.wait();
    for name in ["peer-a", "peer-b"] {
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
}

/// What a failed wait shows: the pool's pods, MediaNodes and the nodes' own logs.
async fn pool_state(client: &Client, assets: &std::path::Path) -> String {
    let pods: Vec<String> = pods(client).await.iter().map(|p| p.name_any()).collect();
    let nodes: Vec<String> =
        nodes(client).await.iter().map(|n| format!("{}: draining={} status={:?}", n.name_any(), n.spec.draining, n.status)).collect();
    let mut logs = String::new();
    for e in std::fs::read_dir(assets).into_iter().flatten().flatten().filter(|e| e.path().extension().is_some_and(|x| x == "log")) {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let last: Vec<&str> = text.lines().rev().take(30).collect();
        logs.push_str(&format!("\n--- {} (last lines)\n{}", e.path().display(), last.into_iter().rev().collect::<Vec<_>>().join("\n")));
    }
    format!("pods {pods:?}\nnodes {nodes:#?}{logs}")
}

fn pool_json(replicas: i32, min: i32, max: i32, slot: i32, image: &str) -> serde_json::Value {
    json!({
        "apiVersion": "media.sentiric.cloud/v1alpha1",
        "kind": "MediaPool",
        "metadata": {"name": "voice", "namespace": NS},
        "spec": {
            "replicas": replicas,
            "ports": {"min": min, "max": max, "slotSize": slot},
            "quarantineSeconds": 3,
            "drainTimeoutSeconds": 60,
            "template": {"image": image},
        }
    })
}

async fn invalid_pools_are_rejected(client: &Client) {
    let api: Api<MediaPool> = Api::namespaced(client.clone(), NS);
    let cases = [
        (pool_json(1, 24000, 23000, 100, "img"), "ports.min must be below ports.max"),
        (pool_json(1, 23000, 23999, 101, "img"), "ports.slotSize must be even"),
        (pool_json(11, 23000, 23999, 100, "img"), "spec.replicas is larger than the number of slots"),
        (pool_json(1, 23000, 23999, 2, "img"), "should be greater than or equal to 4"),
        (pool_json(1, 23000, 23999, 100, ""), "template.image must name an image"),
        (pool_json(-1, 23000, 23999, 100, "img"), "should be greater than or equal to 0"),
    ];
    for (body, message) in cases {
        let pool: MediaPool = serde_json::from_value(body).unwrap();
        match api.create(&PostParams::default(), &pool).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{}", e.message);
                assert!(e.message.contains(message), "expected {message:?} in {:?}", e.message);
            }
            other => panic!("invalid pool accepted ({message}): {other:?}"),
        }
    }
    // An SRTP mode the schema does not list (sent untyped: the typed struct cannot say it).
    let resource = kube::discovery::ApiResource::erase::<MediaPool>(&());
    let untyped: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), NS, &resource);
    let mut body = pool_json(1, 23000, 23999, 100, "img");
    body["spec"]["srtp"] = json!("Sometimes");
    let pool: kube::api::DynamicObject = serde_json::from_value(body).unwrap();
    match untyped.create(&PostParams::default(), &pool).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "{}", e.message);
            assert!(e.message.contains("spec.srtp") && e.message.contains("Sometimes"), "{}", e.message);
        }
        other => panic!("an unknown SRTP mode was accepted: {other:?}"),
    }
}

async fn pool_comes_up_with_disjoint_slots(client: &Client) {
    let api: Api<MediaPool> = Api::namespaced(client.clone(), NS);
    let pool: MediaPool = serde_json::from_value(pool_json(3, 23000, 23599, 100, "media-node:test")).unwrap();
    api.create(&PostParams::default(), &pool).await.unwrap();
    let ps = eventually("3 node pods", 30, || async {
        let p = pods(client).await;
        (p.len() == 3).then_some(p)
    })
    .await;
    let slots: BTreeSet<i32> = ps.iter().map(slot_of).collect();
    assert_eq!(slots, BTreeSet::from([0, 1, 2]), "disjoint slots");
    for p in &ps {
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.host_network, Some(true));
        let host_ports: Vec<i32> = spec.containers[0].ports.iter().flatten().filter_map(|c| c.host_port).collect();
        let base = 23000 + slot_of(p) * 100;
        assert!(host_ports.contains(&base) && host_ports.contains(&(base + 99)), "{host_ports:?}");
    }
    let mns = nodes(client).await;
    assert_eq!(mns.len(), 3);
    let mut ranges: Vec<(i32, i32)> = mns.iter().map(|n| (n.spec.udp_min, n.spec.udp_max)).collect();
    ranges.sort();
    assert!(ranges.windows(2).all(|w| w[0].1 < w[1].0), "MediaNode ranges are disjoint: {ranges:?}");
    let svcs: Api<Service> = Api::namespaced(client.clone(), NS);
    let caller = svcs.get("voice").await.expect("caller Service");
    assert_eq!(caller.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port, 13031);
    let headless = svcs.get("voice-nodes").await.expect("headless Service");
    assert_eq!(headless.spec.unwrap().cluster_ip.as_deref(), Some("None"));
}

/// Returns the gRPC port of the node that holds a call.
async fn node_reports_are_aggregated(client: &Client) -> u16 {
    let st = eventually("pool ready with 3 reporting nodes", 40, || async {
        let s = pool(client).await.status?;
        (s.ready_replicas == 3 && s.ports.total == 150).then_some(s)
    })
    .await;
    assert_eq!(st.ports.free, 150);
    assert_eq!(st.selector, format!("{POOL_LABEL}=voice"));
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "True");
    // A call on the slot-0 node shows up in the pool's status.
    let mut grpc =
        eventually("slot-0 node serving gRPC", 20, || async { MediaServiceClient::connect("http://127.0.0.1:23000").await.ok() }).await;
    let alloc = grpc.allocate_port(AllocatePortRequest { call_id: "envtest-call".into() }).await.unwrap().into_inner();
    assert!((23000..23100).contains(&alloc.rtp_port));
    assert_eq!(alloc.advertised_ip, "127.0.0.2", "advertised address is the Node's ExternalIP");
    eventually("the call in the pool status", 20, || async {
        let s = pool(client).await.status?;
        (s.active_sessions == 1 && s.ports.allocated == 1 && s.ports.free == 149).then_some(())
    })
    .await;
    let mn = nodes(client).await.into_iter().find(|n| n.spec.slot == 0).unwrap();
    assert_eq!(mn.status.unwrap().advertised_address.as_deref(), Some("127.0.0.2"));
    23000
}

async fn scale_subresource_drains_the_emptiest(client: &Client, call_grpc_port: u16) {
    let api: Api<MediaPool> = Api::namespaced(client.clone(), NS);
    let scale = api.get_scale("voice").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(3));
    assert_eq!(scale.status.unwrap().selector.as_deref(), Some("media.sentiric.cloud/pool=voice"));
    api.patch_scale("voice", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 2}}))).await.unwrap();
    let ps = eventually("scaled to 2 pods", 40, || async {
        let p = pods(client).await;
        (p.len() == 2).then_some(p)
    })
    .await;
    let slots: BTreeSet<i32> = ps.iter().map(slot_of).collect();
    assert!(slots.contains(&0), "the node with a call (slot 0, gRPC {call_grpc_port}) was kept: {slots:?}");
    assert!(!slots.contains(&1) || !slots.contains(&2));
    let st = eventually("status shows 2 replicas", 20, || async {
        let s = pool(client).await.status?;
        (s.replicas == 2 && s.draining_replicas == 0 && s.active_sessions == 1).then_some(s)
    })
    .await;
    assert_eq!(st.observed_generation, pool(client).await.metadata.generation);
}

async fn deleted_pod_is_replaced_without_clash(client: &Client) {
    let ps = pods(client).await;
    let victim = ps.iter().find(|p| slot_of(p) != 0).unwrap();
    let (victim_name, victim_slot) = (victim.name_any(), slot_of(victim));
    Api::<Pod>::namespaced(client.clone(), NS).delete(&victim_name, &DeleteParams::default()).await.unwrap();
    let ps = eventually("a replacement pod", 30, || async {
        let p = pods(client).await;
        (p.len() == 2 && !p.iter().any(|x| x.name_any() == victim_name)).then_some(p)
    })
    .await;
    let slots: Vec<i32> = ps.iter().map(slot_of).collect();
    assert_ne!(slots[0], slots[1], "no two live nodes share a slot");
    let replacement = ps.iter().find(|p| slot_of(p) != 0).unwrap();
    assert_ne!(slot_of(replacement), victim_slot, "the released slot is quarantined, not reused at once");
    // After the 3 s quarantine the released slot's MediaNode is forgotten.
    eventually("released MediaNode forgotten after quarantine", 20, || async { (nodes(client).await.len() == 2).then_some(()) }).await;
}

/// With the API server away, calls go on; when it is back, the node catches up.
/// The API server gone for minutes (an upgrade of the control plane, etcd lost its
/// quorum): the node serves calls all along, stays Ready to its probe, and its report
/// and the pool's status catch up once the API server is back.
async fn reporter_rides_out_an_api_outage(client: &Client, cp: &mut ControlPlane, assets: &std::path::Path) {
    const OUTAGE: Duration = Duration::from_secs(120);
    let prompt = media_tools::analysis::synth_speech(8000, 0.4, 8);
    std::fs::write(assets.join("outage.wav"), fleet_tests::wav_bytes(&prompt, 8000)).unwrap();

    cp.stop_apiserver();
    let down = std::time::Instant::now();
    let mut grpc = MediaServiceClient::connect("http://127.0.0.1:23000").await.unwrap();
    // Pinned to this node (marked as forwarded already): the pool would otherwise
    // place it on an emptier peer.
    let alloc = grpc
        .allocate_port(fleet_tests::pinned(AllocatePortRequest { call_id: "during-outage".into() }))
        .await
        .expect("calls work without the API server");
    assert!((23000..23100).contains(&alloc.into_inner().rtp_port));
    // Calls come and go through the whole outage: each is placed, hears a prompt and
    // is released; the node's readiness probe answers serving every time.
    let mut calls = 0;
    while down.elapsed() < OUTAGE {
        assert!(
            fleet_tests::envtest::grpc_serving(23000).await,
            "the node stays ready {:.0} s into the outage",
            down.elapsed().as_secs_f64()
        );
        let caller = media_tools::caller::RtpCaller::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let call_id = format!("outage-{calls}");
        let port = grpc
            .allocate_port(fleet_tests::pinned(AllocatePortRequest { call_id: call_id.clone() }))
            .await
            .unwrap_or_else(|e| panic!("a call {:.0} s into the outage: {e}", down.elapsed().as_secs_f64()))
            .into_inner()
            .rtp_port;
        let played = grpc
            .play_audio(fleet_tests::pinned(PlayAudioRequest {
                audio_uri: "file://outage.wav".into(),
                server_rtp_port: port,
                rtp_target_addr: caller.local_addr().to_string(),
                barge_in_ms: None,
            }))
            .await
            .expect("a prompt plays during the outage");
        assert_eq!(played.into_inner().message, "finished");
        assert!(caller.received_count() >= 15, "the caller heard the prompt: {} packets", caller.received_count());
        grpc.release_port(fleet_tests::pinned(ReleasePortRequest { rtp_port: port })).await.expect("release during the outage");
        calls += 1;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    println!("{calls} calls served during a {} s API server outage", OUTAGE.as_secs());
    cp.start_apiserver().await;
    eventually("the node reports the call made during the outage", 60, || async {
        let mn = nodes(client).await.into_iter().find(|n| n.spec.slot == 0)?;
        (mn.status?.sessions == 2).then_some(())
    })
    .await;
    eventually("the pool status catches up", 60, || async { (pool(client).await.status?.active_sessions == 2).then_some(()) }).await;
    // A few reconciles later the operator still drains nobody: the heartbeats it could
    // not see during the outage do not count against the nodes.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let draining: Vec<String> = nodes(client).await.into_iter().filter(|n| n.spec.draining).map(|n| n.name_any()).collect();
    assert!(draining.is_empty(), "nodes drained as unhealthy after the API server came back: {draining:?}");
    let p = pool(client).await;
    let st = p.status.unwrap();
    assert_eq!(st.ready_replicas, p.spec.replicas, "no node was given up for lost while the API server was away: {st:?}");
}

async fn only_the_lease_holder_writes(client: &Client, cp: &ControlPlane, op_b: Operator, assets: &std::path::Path) {
    let op_c = start_operator(cp.client().await.unwrap(), "op-c", 28183);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(op_b.role().await, "leader");
    assert_eq!(op_c.role().await, "standby");
    let lease = Api::<Lease>::namespaced(client.clone(), "default").get("media-operator-leader").await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("op-b"));

    // Scale up while both run: exactly one node is added, by the leader.
    let since = k8s_openapi::jiff::Timestamp::now();
    Api::<MediaPool>::namespaced(client.clone(), NS)
        .patch_scale("voice", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 3}})))
        .await
        .unwrap();
    let ps = eventually("3 pods again", 30, || async {
        let p = pods(client).await;
        (p.len() == 3).then_some(p)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pods(client).await.len(), 3, "no double creation");
    let slots: BTreeSet<i32> = ps.iter().map(slot_of).collect();
    assert_eq!(slots.len(), 3);
    let events = Api::<Event>::namespaced(client.clone(), NS).list(&ListParams::default()).await.unwrap().items;
    let recent: Vec<&Event> = events.iter().filter(|e| e.event_time.as_ref().is_some_and(|t| t.0 >= since)).collect();
    assert!(!recent.is_empty(), "the leader recorded what it did");
    assert!(recent.iter().all(|e| e.reporting_instance.as_deref() == Some("op-b")), "only op-b wrote");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", op_b.http).parse().unwrap();
    let metrics = eventually("operator metrics show the pool", 20, || async {
        let m = fleet_tests::http_get(addr, "/metrics").await.1;
        (fleet_tests::metric_value(&m, "media_operator_pool_nodes{namespace=\"fleet\",pool=\"voice\",state=\"total\"}") == 3.0).then_some(m)
    })
    .await;
    assert!(fleet_tests::metric_value(&metrics, "media_operator_reconciles_total{result=\"ok\"}") > 0.0, "{metrics}");
    assert_eq!(fleet_tests::metric_value(&metrics, "media_operator_leader"), 1.0);

    // The leader leaves: the standby takes over and carries on.
    op_b.stop().await;
    eventually("op-c takes over", 20, || async { (op_c.role().await == "leader").then_some(()) }).await;
    Api::<MediaPool>::namespaced(client.clone(), NS)
        .patch_scale("voice", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 1}})))
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    while pods(client).await.len() != 1 {
        assert!(t0.elapsed() < Duration::from_secs(40), "op-c scales down to 1: {}", pool_state(client, assets).await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    op_c.stop().await;
}
