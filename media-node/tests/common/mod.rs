//! What the tests of the node's binary share: the binary on loopback, configured
//! through the environment names the platform uses.

use std::process::Command;

/// The `media-node` binary listening on loopback: gRPC and HTTP on the given ports,
/// RTP on [`rtp_min`, `rtp_max`]; the caller adds the rest of its environment.
pub fn node_command(grpc: u16, http: u16, rtp_min: u16, rtp_max: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_media-node"));
    cmd.env("MEDIA_SERVICE_GRPC_PORT", grpc.to_string())
        .env("MEDIA_SERVICE_METRICS_PORT", http.to_string())
        .env("MEDIA_SERVICE_LISTEN_ADDRESS", "127.0.0.1")
        .env("RTP_SERVICE_LISTEN_ADDRESS", "127.0.0.1")
        .env("RTP_SERVICE_PORT_MIN", rtp_min.to_string())
        .env("RTP_SERVICE_PORT_MAX", rtp_max.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd
}
