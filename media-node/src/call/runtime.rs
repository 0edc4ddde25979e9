//! The runtime calls run on, apart from the one serving gRPC and HTTP. A call's 20 ms
//! tick and its packets then never queue behind a long poll of an HTTP/2 connection
//! (one connection carries every listener stream of a client), and the kernel can
//! preempt the serving threads when a call's timer fires.

use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle, Runtime};

use crate::config::RuntimeSettings;

static MEDIA: OnceLock<Runtime> = OnceLock::new();
static SETTINGS: OnceLock<RuntimeSettings> = OnceLock::new();

/// Sets how the media runtime is built, before its first use (the node's binary does
/// this from its configuration; without it, the defaults).
pub fn configure(settings: RuntimeSettings) {
    let _ = SETTINGS.set(settings);
}

/// Worker threads for calls: as configured, or one per CPU this process may use.
fn workers() -> usize {
    SETTINGS.get().and_then(|s| s.media_workers).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
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
/// when a core is free. A serving nice value (MEDIA_SERVING_NICE, e.g. 10) lowers them further, for a node
/// run near a full core: RTP pacing then wins over live-listen latency (see
/// BENCHMARKS.md). A thread may always lower its own priority; no privilege is needed.
pub fn serving(settings: &RuntimeSettings) -> Builder {
    let nice = settings.serving_nice;
    let mut b = Builder::new_multi_thread();
    b.enable_all().on_thread_start(move || batch_scheduling(nice));
    // Without the LIFO slot, a task woken by the one running goes to the back of the
    // queue. A round of listener frames wakes many stream tasks; each wakes its HTTP/2
    // connection, which then runs once after all of them and writes their frames in
    // one write instead of one write per frame.
    #[cfg(tokio_unstable)]
    b.disable_lifo_slot();
    b
}

#[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
fn batch_scheduling(nice: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: sched_setscheduler on the calling thread (pid 0) with a valid parameter;
    // SCHED_BATCH needs no privilege. A failure leaves the default policy.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_BATCH, &param);
        if nice > 0 {
            // On Linux the nice value is per thread: `who` 0 is this thread. The
            // configuration allows 0 to 19 only: lowering needs no privilege.
            libc::setpriority(libc::PRIO_PROCESS, 0, nice as libc::c_int);
        }
    }
}

/// One echo search per this much of a media thread's time, at most (see
/// `core::analysis::echo_guard::ration_searches`): a search costs about 150 µs, so
/// searches take at most some 15 % of a thread however many calls start at once.
const ECHO_SEARCH_EVERY: std::time::Duration = std::time::Duration::from_millis(1);
/// Searches a thread may run back to back after a quiet spell.
const ECHO_SEARCH_BURST: u32 = 2;

thread_local! {
    static RATIONED_UNTIL: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
}

/// Grants this media thread the echo searches its time since the last grant allows. A
/// call task calls it on each tick: with hundreds of calls on a thread, grants come
/// every few hundred µs.
pub fn ration_echo_searches(now: std::time::Instant) {
    use crate::core::analysis::echo_guard::ration_searches;
    RATIONED_UNTIL.with(|until| match until.get() {
        None => {
            ration_searches(ECHO_SEARCH_BURST, ECHO_SEARCH_BURST);
            until.set(Some(now));
        }
        Some(last) => {
            let earned = (now.saturating_duration_since(last).as_micros() / ECHO_SEARCH_EVERY.as_micros()) as u32;
            if earned > 0 {
                ration_searches(earned, ECHO_SEARCH_BURST);
                // Whole grants only: the remainder counts towards the next one; a long
                // idle spell gives no more than the burst.
                let next = if earned > ECHO_SEARCH_BURST { now } else { last + ECHO_SEARCH_EVERY * earned };
                until.set(Some(next));
            }
        }
    });
}
