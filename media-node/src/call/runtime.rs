//! The runtime calls run on, apart from the one serving gRPC and HTTP. A call's 20 ms
//! tick and its packets then never queue behind a long poll of an HTTP/2 connection
//! (one connection carries every listener stream of a client), and the kernel can
//! preempt the serving threads when a call's timer fires.

use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle, Runtime};

static MEDIA: OnceLock<Runtime> = OnceLock::new();

/// Worker threads for calls: MEDIA_WORKER_THREADS, or one per CPU this process may use.
fn workers() -> usize {
    std::env::var("MEDIA_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The media runtime, started on first use and kept for the life of the process.
pub fn handle() -> Handle {
    MEDIA
        .get_or_init(|| Builder::new_multi_thread().worker_threads(workers()).thread_name("media").enable_all().build().expect("the media runtime starts"))
        .handle()
        .clone()
}
