//! The one small HTTP/1.1 GET the tools and tests need to read a node's /metrics and
//! health endpoints (no HTTP client library for a single request).

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

/// Sum of every sample of a Prometheus metric whose line starts with `name` (labels
/// included in `name` narrow it down).
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines().filter(|l| !l.starts_with('#') && l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_matching_samples() {
        let text = "# HELP x\nmedia_ports{state=\"free\"} 3\nmedia_ports{state=\"allocated\"} 2\nother 9\n";
        assert_eq!(metric_value(text, "media_ports"), 5.0);
        assert_eq!(metric_value(text, "media_ports{state=\"free\"}"), 3.0);
        assert_eq!(metric_value(text, "missing"), 0.0);
    }
}
