//! gRPC over TLS and mTLS, with certificates made by the openssl command line as an
//! operator would make them.

use std::path::Path;
use std::process::Command;

use fleet_tests::*;
use media_node::config::TlsFiles;
use media_proto::pb::media_service_client::MediaServiceClient;
use media_proto::pb::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

fn openssl(dir: &Path, args: &[&str]) {
    let st = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(st.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&st.stderr));
}

fn make_pki(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.pem"];
    ca.extend_from_slice(&ec);
    ca.extend_from_slice(&["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
    openssl(dir, &ca);
    for (name, ext) in [
        ("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
        // A media node's own certificate: it serves, and it calls its peers.
        ("node", "subjectAltName=DNS:media-node.pool.svc\nextendedKeyUsage=serverAuth,clientAuth\n"),
    ] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let mut req = vec!["req", "-new", "-subj", "/CN=localhost", "-keyout", &key, "-out", &csr];
        req.extend_from_slice(&ec);
        openssl(dir, &req);
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let pem = format!("{name}.pem");
        let extfile = format!("{name}.ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                "1",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-extfile",
                &extfile,
            ],
        );
    }
}

async fn client(
    addr: std::net::SocketAddr,
    dir: &Path,
    with_identity: bool,
) -> Result<MediaServiceClient<Channel>, tonic::transport::Error> {
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if with_identity {
        let cert = std::fs::read(dir.join("client.pem")).unwrap();
        let key = std::fs::read(dir.join("client.key")).unwrap();
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let ch = Channel::from_shared(format!("https://{addr}")).unwrap().tls_config(tls)?.connect().await?;
    Ok(MediaServiceClient::new(ch))
}

#[tokio::test]
async fn mtls_admits_only_clients_with_a_certificate_from_the_ca() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let dir = pki.path().to_path_buf();
    let node = TestNode::start_with(22400, 10, |c| {
        c.tls = Some(TlsFiles {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_ca: Some(dir.join("ca.pem")),
            peer_domain: None,
        });
    })
    .await;
    let addr = node.running.grpc_addr;

    let mut good = client(addr, pki.path(), true).await.expect("mTLS client connects");
    let r = good.allocate_port(AllocatePortRequest { call_id: "tls-1".into() }).await.expect("allocate over mTLS");
    assert!(r.into_inner().rtp_port >= 22400);

    let anonymous = match client(addr, pki.path(), false).await {
        Err(_) => true,
        Ok(mut c) => c.allocate_port(AllocatePortRequest { call_id: "tls-2".into() }).await.is_err(),
    };
    assert!(anonymous, "a client without a certificate is refused");

    let plaintext = match MediaServiceClient::connect(format!("http://{addr}")).await {
        Err(_) => true,
        Ok(mut c) => c.allocate_port(AllocatePortRequest { call_id: "tls-3".into() }).await.is_err(),
    };
    assert!(plaintext, "plaintext is refused on a TLS port");
}

/// Nodes of a pool forward to each other over mTLS, each presenting its own
/// certificate and checking the peer's against the pool's CA and name.
#[tokio::test]
async fn nodes_forward_to_each_other_over_mtls() {
    use k8s_openapi::jiff::Timestamp;
    use media_node::fleet::Peer;
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let dir = pki.path().to_path_buf();
    let files = TlsFiles {
        cert: dir.join("node.pem"),
        key: dir.join("node.key"),
        client_ca: Some(dir.join("ca.pem")),
        peer_domain: Some("media-node.pool.svc".into()),
    };
    let (fa, fb) = (files.clone(), files.clone());
    let a = TestNode::start_with(22410, 10, move |c| c.tls = Some(fa)).await;
    let b = TestNode::start_with(22420, 10, move |c| c.tls = Some(fb)).await;
    // Node a serves mTLS, so it forwards over mTLS (its peer clients are set up from
    // its own TLS files at start).
    a.running.node.fleet.join("node-a");
    a.running.node.fleet.set_peers(vec![Peer {
        name: "node-b".into(),
        endpoint: b.running.grpc_addr.to_string(),
        udp_min: 22420,
        udp_max: 22429,
        ready: true,
        used: 0,
        total: 5,
        heartbeat: Some(Timestamp::now()),
    }]);
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let id = Identity::from_pem(std::fs::read(dir.join("client.pem")).unwrap(), std::fs::read(dir.join("client.key")).unwrap());
    let connect = |addr: std::net::SocketAddr| {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca.clone()))
            .domain_name("media-node.pool.svc")
            .identity(id.clone());
        async move {
            MediaServiceClient::new(
                Channel::from_shared(format!("https://{addr}")).unwrap().tls_config(tls).unwrap().connect().await.unwrap(),
            )
        }
    };
    let mut to_b = connect(b.running.grpc_addr).await;
    let mut to_a = connect(a.running.grpc_addr).await;
    let port = to_b.allocate_port(AllocatePortRequest { call_id: "peer-tls".into() }).await.unwrap().into_inner().rtp_port;
    assert!((22420..22430).contains(&port));
    // Node a does not hold the port: it forwards to b over mTLS.
    let r = to_a
        .play_audio(PlayAudioRequest {
            audio_uri: "control://stop_audio".into(),
            server_rtp_port: port,
            rtp_target_addr: String::new(),
            barge_in_ms: None,
        })
        .await
        .expect("forwarded to the owner over mTLS")
        .into_inner();
    assert!(r.success);
    to_a.release_port(ReleasePortRequest { rtp_port: port }).await.expect("release forwarded over mTLS");
    assert_eq!(b.running.node.active_calls(), 0, "the owner released the call");
}
