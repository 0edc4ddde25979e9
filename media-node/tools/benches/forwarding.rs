//! What forwarding adds to a request (`cargo bench -p media-node --bench forwarding`):
//! two nodes on loopback, the first knowing the second as its peer (as the pool's
//! watch would tell it); a per-port request for a call on the second node, sent to it
//! directly and sent to the first one, which forwards it. Prints p50 and p99 of both.

use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use media_node::config::NodeConfig;
use media_node::fleet::Peer;
use media_node::server;
use media_proto::pb::media_service_client::MediaServiceClient;
use media_proto::pb::*;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p) as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut a_cfg = NodeConfig::loopback(dir.path().to_path_buf(), 29100, 29119);
    a_cfg.recording.spool_dir = dir.path().join("spool-a");
    let mut b_cfg = NodeConfig::loopback(dir.path().to_path_buf(), 29120, 29139);
    b_cfg.recording.spool_dir = dir.path().join("spool-b");
    let a = server::start(a_cfg).await?;
    let b = server::start(b_cfg).await?;
    a.node.fleet.join("node-a");
    a.node.fleet.set_peers(vec![Peer {
        name: "node-b".into(),
        endpoint: b.grpc_addr.to_string(),
        udp_min: 29120,
        udp_max: 29139,
        ready: true,
        used: 0,
        total: 10,
        heartbeat: Some(Timestamp::now()),
    }]);
    let mut to_a = MediaServiceClient::connect(format!("http://{}", a.grpc_addr)).await?;
    let mut to_b = MediaServiceClient::connect(format!("http://{}", b.grpc_addr)).await?;
    let port = to_b.allocate_port(AllocatePortRequest { call_id: "bench".into() }).await?.into_inner().rtp_port;
    let req = || PlayAudioRequest {
        audio_uri: "control://stop_audio".into(),
        server_rtp_port: port,
        rtp_target_addr: String::new(),
        barge_in_ms: None,
    };
    for (name, client) in [("direct to the owner", &mut to_b), ("forwarded by a peer", &mut to_a)] {
        for _ in 0..200 {
            client.play_audio(req()).await?;
        }
        let mut ms = Vec::new();
        for _ in 0..3000 {
            let t = Instant::now();
            client.play_audio(req()).await?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        println!("PlayAudio control://stop_audio {name:<22} p50 {:.3} ms, p99 {:.3} ms", pct(&mut ms, 0.5), pct(&mut ms, 0.99));
    }
    a.stop().await?;
    b.stop().await?;
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}
