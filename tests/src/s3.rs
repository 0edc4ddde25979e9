//! A real S3 protocol server in-process for tests: s3s with the s3s-fs backend (objects
//! are files under a folder), on a fixed loopback port so it can be stopped and started
//! again to play an outage.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;

pub const ACCESS_KEY: &str = "test-access-key";
pub const SECRET_KEY: &str = "test-secret-key";

pub struct S3Server {
    pub addr: SocketAddr,
    pub root: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl S3Server {
    /// Serves the folder `root` (one sub-folder per bucket) on `addr`.
    pub async fn start(root: &Path, addr: SocketAddr) -> S3Server {
        let fs = s3s_fs::FileSystem::new(root).expect("s3s-fs root");
        let mut b = S3ServiceBuilder::new(fs);
        b.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = b.build();
        let listener = {
            let mut tries = 0;
            loop {
                match TcpListener::bind(addr).await {
                    Ok(l) => break l,
                    Err(e) if tries < 50 => {
                        tries += 1;
                        let _ = e;
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("S3 server cannot bind {addr}: {e}"),
                }
            }
        };
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            // Connections live in this set: stopping the server drops it, which cuts
            // kept-alive connections too, as a real outage would.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((socket, _)) = listener.accept().await else { continue };
                let conn = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
                conns.spawn(async move {
                    let _ = conn.await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        S3Server { addr, root: root.to_path_buf(), task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Storage goes down: the listener closes and new connections are refused.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}
