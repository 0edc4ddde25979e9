//! An accepted gRPC connection, as HTTP/2 should see it.
//!
//! h2 writes a DATA frame of 256 bytes or more from its own buffer when the socket can
//! do vectored writes, and each such frame then leaves in its own write: a live-listen
//! frame (20 ms at 16 kHz, 640 bytes) cost a syscall and a TCP segment by itself. Told
//! the socket has no vectored writes, h2 copies frames under 1 KiB into its write
//! buffer, so the frames of many calls that are ready together go out in one write.
//! Copying 640 bytes is far cheaper than a syscall.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

pub struct Conn(pub TcpStream);

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

/// Vectored writes are left at the trait's defaults (not vectored): that is the point.
impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.connect_info()
    }
}
