//! The one small HTTP/1.1 GET the tools and tests need to read a node's /metrics and
//! health endpoints (no HTTP client library for a single request). What the metrics
//! say is read in `prometheus`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET `path` from `addr` ("host:port"); returns the status code and the body.
pub async fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await?;
    let status = raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}
