//! The real `media-node` binary, configured through the environment names the platform
//! uses, drains on SIGTERM: it turns unready and refuses new calls, keeps the call in
//! flight, and exits cleanly once that call is released.

use std::process::Command;
use std::time::Duration;

mod common;

use media_proto::pb::media_service_client::MediaServiceClient;
use media_proto::pb::*;

async fn http_status(port: u16, path: &str) -> Option<u16> {
    media_tools::http::get(&format!("127.0.0.1:{port}"), path).await.ok().map(|(status, _)| status)
}

#[tokio::test]
async fn sigterm_drains_then_exits() {
    let assets = std::env::temp_dir().join(format!("sigterm-assets-{}", std::process::id()));
    std::fs::create_dir_all(&assets).unwrap();
    let (grpc, http) = (22531u16, 22532u16);
    let mut child = common::node_command(grpc, http, 22500, 22510)
        .env("ASSETS_BASE_PATH", &assets)
        .env("MEDIA_SERVICE_DRAIN_SECONDS", "60")
        .spawn()
        .expect("media-node starts");
    let mut ready = false;
    for _ in 0..100 {
        if http_status(http, "/readyz").await == Some(200) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "node became ready");
    let mut client = MediaServiceClient::connect(format!("http://127.0.0.1:{grpc}")).await.unwrap();
    let port = client.allocate_port(AllocatePortRequest { call_id: "in-flight".into() }).await.unwrap().into_inner().rtp_port;
    assert!((22500..=22510).contains(&port), "port from RTP_SERVICE_PORT_MIN/MAX");

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(http_status(http, "/readyz").await, Some(503), "draining node is not ready");
    assert!(child.try_wait().unwrap().is_none(), "the node waits for the call in flight");
    let err = client.allocate_port(AllocatePortRequest { call_id: "late".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let silence = "data:audio/pcm;base64,".to_string() + &"AAAA".repeat(400);
    let r = client
        .play_audio(PlayAudioRequest {
            audio_uri: silence,
            server_rtp_port: port,
            rtp_target_addr: "127.0.0.1:9".into(),
            barge_in_ms: None,
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().message, "finished", "the call in flight still works");
    client.release_port(ReleasePortRequest { rtp_port: port }).await.unwrap();
    let mut exited = None;
    for _ in 0..100 {
        if let Some(st) = child.try_wait().unwrap() {
            exited = Some(st);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    std::fs::remove_dir_all(&assets).ok();
    assert!(exited.expect("node exits after its last call").success(), "clean exit");
}
