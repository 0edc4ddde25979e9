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
    ] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let mut req = vec!["req", "-new", "-subj", "/CN=localhost", "-keyout", &key, "-out", &csr];
        req.extend_from_slice(&ec);
        openssl(dir, &req);
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let pem = format!("{name}.pem");
        let extfile = format!("{name}.ext");
        openssl(dir, &["x509", "-req", "-days", "1", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", &pem, "-extfile", &extfile]);
    }
}

async fn client(addr: std::net::SocketAddr, dir: &Path, with_identity: bool) -> Result<MediaServiceClient<Channel>, tonic::transport::Error> {
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
        c.tls = Some(TlsFiles { cert: dir.join("server.pem"), key: dir.join("server.key"), client_ca: Some(dir.join("ca.pem")) });
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
