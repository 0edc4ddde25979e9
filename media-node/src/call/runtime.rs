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
        .get_or_init(|| {
            Builder::new_multi_thread()
                .worker_threads(workers())
                .thread_name("media")
                .enable_all()
                .build()
                .expect("the media runtime starts")
        })
        .handle()
        .clone()
}

/// The runtime that serves gRPC and HTTP. Its threads run as SCHED_BATCH: waking one
/// (a listener frame handed over, a reply ready) does not preempt a media thread, which
/// runs on to its next packet; the serving thread takes everything queued meanwhile
/// when a core is free. MEDIA_SERVING_NICE (e.g. 10) lowers them further, for a node
/// run near a full core: RTP pacing then wins over live-listen latency (see
/// BENCHMARKS.md). A thread may always lower its own priority; no privilege is needed.
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
        if let Some(nice) = serving_nice() {
            // On Linux the nice value is per thread: `who` 0 is this thread.
            libc::setpriority(libc::PRIO_PROCESS, 0, nice);
        }
    }
}

/// MEDIA_SERVING_NICE, 0 to 19 (raising priority would need privilege the node does
/// not ask for); anything else is ignored.
#[cfg(target_os = "linux")]
fn serving_nice() -> Option<libc::c_int> {
    parse_nice(&std::env::var("MEDIA_SERVING_NICE").ok()?)
}

#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_nice(v: &str) -> Option<libc::c_int> {
    v.trim().parse().ok().filter(|n| (0..=19).contains(n))
}

#[cfg(test)]
mod tests {
    use super::parse_nice;

    #[test]
    fn serving_nice_takes_0_to_19_only() {
        assert_eq!(parse_nice("10"), Some(10));
        assert_eq!(parse_nice(" 0 "), Some(0));
        assert_eq!(parse_nice("19"), Some(19));
        // Raising priority needs CAP_SYS_NICE, and 20 is out of range: ignored.
        assert_eq!(parse_nice("-5"), None);
        assert_eq!(parse_nice("20"), None);
        assert_eq!(parse_nice("high"), None);
    }
}
