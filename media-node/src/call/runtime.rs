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

/// The runtime that serves gRPC and HTTP. Its threads run as SCHED_BATCH: waking one
/// (a listener frame handed over, a reply ready) does not preempt a media thread, which
/// runs on to its next packet; the serving thread takes everything queued meanwhile
/// when a core is free.
pub fn serving() -> Builder {
    let mut b = Builder::new_multi_thread();
    b.enable_all().on_thread_start(batch_scheduling);
    // Without the LIFO slot, a task woken by the one running goes to the back of the
    // queue. A round of listener frames wakes many stream tasks; each wakes its HTTP/2
    // connection, which then runs once after all of them and writes their frames in
    // one write instead of one write per frame.
    #[cfg(tokio_unstable)]
    b.disable_lifo_slot();
    b
}

fn batch_scheduling() {
    #[cfg(target_os = "linux")]
    // SAFETY: sched_setscheduler on the calling thread (pid 0) with a valid parameter;
    // SCHED_BATCH needs no privilege. A failure leaves the default policy.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_BATCH, &param);
    }
}
