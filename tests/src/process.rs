//! The `media-node` binary as a process on loopback, its log kept: for tests of what
//! only the real process shows (its log lines, its memory, a file-size limit).

use std::io::BufRead;
use std::io::BufReader;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use media_proto::pb::media_service_client::MediaServiceClient;

use crate::envtest::eventually;
use crate::metric_value;

/// A `media-node` process on loopback, its log kept.
pub struct NodeProcess {
    pub child: Child,
    log: Arc<Mutex<String>>,
    pub grpc: u16,
    pub http: u16,
}

impl NodeProcess {
    /// Starts `cmd` (the node, or a shell that execs it) with the node's environment.
    pub fn spawn(mut cmd: Command, grpc: u16, http: u16, rtp: (u16, u16), root: &Path, extra: &[(&str, String)]) -> NodeProcess {
        cmd.env("MEDIA_SERVICE_GRPC_PORT", grpc.to_string())
            .env("MEDIA_SERVICE_METRICS_PORT", http.to_string())
            .env("MEDIA_SERVICE_LISTEN_ADDRESS", "127.0.0.1")
            .env("RTP_SERVICE_LISTEN_ADDRESS", "127.0.0.1")
            .env("RTP_SERVICE_PORT_MIN", rtp.0.to_string())
            .env("RTP_SERVICE_PORT_MAX", rtp.1.to_string())
            .env("ASSETS_BASE_PATH", root.join("assets"))
            .env("RECORDINGS_SPOOL_DIR", root.join("spool"))
            .env("RECORDINGS_ROOT", root.join("recordings"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        for d in ["assets", "spool", "recordings"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let mut child = cmd.spawn().expect("media-node starts");
        let log: Arc<Mutex<String>> = Default::default();
        // Read through pipes, not files: the file-size limit would apply to a log file.
        for out in [Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>, Box::new(child.stderr.take().unwrap())] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        NodeProcess { child, log, grpc, http }
    }

    pub async fn ready(&self) {
        eventually("the node is ready", 30, || async {
            let (status, _) = media_tools::http::get(&format!("127.0.0.1:{}", self.http), "/readyz").await.ok()?;
            (status == 200).then_some(())
        })
        .await;
    }

    pub async fn client(&self) -> MediaServiceClient<tonic::transport::Channel> {
        MediaServiceClient::connect(format!("http://127.0.0.1:{}", self.grpc)).await.unwrap()
    }

    pub async fn metrics(&self) -> String {
        media_tools::http::get(&format!("127.0.0.1:{}", self.http), "/metrics").await.unwrap().1
    }

    pub async fn metric(&self, name: &str) -> f64 {
        metric_value(&self.metrics().await, name)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// A line of /proc/<pid>/status in KiB (VmRSS, VmHWM).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("{field} in /proc status"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
