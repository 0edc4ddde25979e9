//! The floor under a media node on this host: CPU per RTP packet for UDP on loopback,
//! sent the ways an engine could and read the way the node reads (`call::udp::recv`),
//! with no engine work around it.
//!
//! A node's call sends 50 packets a second and receives 50. Whatever the engine does
//! in user space, a call-second cannot cost less than 50 sends and 50 receives, so
//! this puts a number on "calls per core" targets before any engine code runs.
//!
//! - `sendto`: one unconnected socket per call, one syscall per packet (the node).
//! - `send (connected)`: the same sockets `connect()`ed to their peer, which skips
//!   the route lookup per packet but makes the kernel drop datagrams from any other
//!   source (no re-latching to a caller whose address moves).
//! - `io_uring`: every send of a round (one packet per call) in one submission.
//! - `udp::recv`: the node's own read of a call socket that has a packet queued
//!   (tokio readiness, one `recvmmsg` with the kernel's receive stamps).
//!
//! On loopback the sender also pays the receiver's delivery (the softirq runs in the
//! sending thread), as the node does for what it sends to its callers. The peer
//! thread is kept on another CPU where there is one.
//!
//! `cargo bench -p media-node --bench udp_floor [-- CALLS]` (default 400 calls).

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::Duration;

const ROUNDS: usize = 2_000;
/// A static, not a const: the io_uring path hands the kernel a pointer to it, which
/// must stay valid past the statement that takes it.
static PACKET: [u8; 172] = [0x80; 172];

fn thread_cpu() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Busy seconds of one CPU, or of all of them (`None`), from /proc/stat: user, nice,
/// system, irq and softirq. Work the kernel does for a thread outside its own
/// accounting (softirqs charged to the CPU, io_uring's workers) shows up here.
fn cpu_busy(cpu: Option<usize>) -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let key = cpu.map_or("cpu".to_string(), |c| format!("cpu{c}"));
    let Some(line) = stat.lines().find(|l| l.split_whitespace().next() == Some(key.as_str())) else { return f64::NAN };
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    [0, 1, 2, 5, 6].iter().map(|&i| v.get(i).copied().unwrap_or(0.0)).sum::<f64>() / hz
}

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays inside it for cpu < 1024.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The CPUs this process may use (under `taskset`, those), read once before the main
/// thread pins itself to the first of them.
fn allowed() -> &'static [usize] {
    static CPUS: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
    CPUS.get_or_init(|| {
        // SAFETY: sched_getaffinity fills one cpu_set_t; CPU_ISSET reads inside it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return vec![0];
            }
            let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect();
            if cpus.is_empty() {
                vec![0]
            } else {
                cpus
            }
        }
    })
}

/// The sender's CPU.
fn sender_cpu() -> usize {
    allowed()[0]
}

/// The sink's and the peer's CPU: another one where there is one.
fn peer_cpu() -> Option<usize> {
    allowed().get(1).copied()
}

fn bind_many(n: usize) -> Vec<UdpSocket> {
    (0..n)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind on loopback");
            s.set_nonblocking(true).expect("non-blocking");
            s
        })
        .collect()
}

/// A sink on another CPU that drains one socket with a large buffer.
fn sink() -> SocketAddr {
    let rx = UdpSocket::bind("127.0.0.1:0").expect("bind the sink");
    let size: libc::c_int = 64 << 20;
    // SAFETY: SO_RCVBUF takes an int; the pointer and size describe `size`.
    unsafe { libc::setsockopt(rx.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, (&size as *const libc::c_int).cast(), 4) };
    let to = rx.local_addr().expect("sink address");
    std::thread::spawn(move || {
        if let Some(cpu) = peer_cpu() {
            pin_to(cpu);
        }
        let mut buf = [0u8; 2048];
        loop {
            let _ = rx.recv(&mut buf);
        }
    });
    to
}

/// CPU µs per packet sent.
#[derive(Clone, Copy)]
struct Cost {
    /// The sending thread's own CPU time.
    thread: f64,
    /// Everything the sender's CPU did meanwhile (its thread, softirqs, kernel
    /// workers that ran there).
    sender_cpu: f64,
    /// The whole machine, the sink's reads included.
    machine: f64,
}

/// The CPU cost per packet of `round` run ROUNDS times, resting 200 µs between
/// rounds so the sink keeps up (as the 20 ms between a call's packets would).
fn measure(calls: usize, mut round: impl FnMut()) -> Cost {
    let (t0, c0, m0) = (thread_cpu(), cpu_busy(Some(sender_cpu())), cpu_busy(None));
    for _ in 0..ROUNDS {
        round();
        std::thread::sleep(Duration::from_micros(200));
    }
    let per = 1e6 / (ROUNDS * calls) as f64;
    Cost { thread: (thread_cpu() - t0) * per, sender_cpu: (cpu_busy(Some(sender_cpu())) - c0) * per, machine: (cpu_busy(None) - m0) * per }
}

fn show(name: &str, c: Cost) {
    println!("  {name:<22} {:6.2} µs thread, {:6.2} µs its CPU, {:6.2} µs machine", c.thread, c.sender_cpu, c.machine);
}

fn sendto(socks: &[UdpSocket], to: SocketAddr) -> Cost {
    measure(socks.len(), || {
        for s in socks {
            let _ = s.send_to(&PACKET, to);
        }
    })
}

fn connected(socks: &[UdpSocket], to: SocketAddr) -> Cost {
    for s in socks {
        s.connect(to).expect("connect");
    }
    measure(socks.len(), || {
        for s in socks {
            let _ = s.send(&PACKET);
        }
    })
}

fn uring(socks: &[UdpSocket], to: SocketAddr) -> Option<Cost> {
    use io_uring::{opcode, types, IoUring};
    let mut ring = IoUring::new(socks.len().next_power_of_two() as u32).ok()?;
    let SocketAddr::V4(v4) = to else { return None };
    // SAFETY: all-zero is a valid sockaddr_in / msghdr; the fields set are plain data.
    let name: libc::sockaddr_in = unsafe {
        let mut a: libc::sockaddr_in = std::mem::zeroed();
        a.sin_family = libc::AF_INET as libc::sa_family_t;
        a.sin_port = v4.port().to_be();
        a.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
        a
    };
    let iov = libc::iovec { iov_base: PACKET.as_ptr() as *mut _, iov_len: PACKET.len() };
    let headers: Vec<libc::msghdr> = (0..socks.len())
        .map(|_| {
            // SAFETY: all-zero is a valid msghdr.
            let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
            h.msg_name = &name as *const libc::sockaddr_in as *mut _;
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &iov as *const libc::iovec as *mut _;
            h.msg_iovlen = 1;
            h
        })
        .collect();
    let mut failed = 0usize;
    let cost = measure(socks.len(), || {
        {
            let mut sq = ring.submission();
            for (s, h) in socks.iter().zip(&headers) {
                // MSG_DONTWAIT: a full socket buffer fails the send at once, as a
                // non-blocking sendto would, instead of parking it in the ring.
                let e = opcode::SendMsg::new(types::Fd(s.as_raw_fd()), h).flags(libc::MSG_DONTWAIT as u32).build();
                // SAFETY: the header, its name and iovec outlive the submission, which
                // completes (submit_and_wait) before this closure returns.
                unsafe { sq.push(&e).expect("ring sized for a round") };
            }
        }
        ring.submit_and_wait(socks.len()).expect("io_uring_enter");
        failed += ring.completion().filter(|c| c.result() < 0).count();
    });
    if failed > 0 {
        eprintln!("io_uring: {failed} sends failed");
    }
    Some(cost)
}

/// Receiving: a peer thread sends one packet to each call socket, then the calls are
/// read through the node's own receive path (`call::udp::recv`: readiness from
/// tokio's reactor, one `recvmmsg` with the kernel's receive stamps); only the reads
/// are timed.
fn node_reads(socks: Vec<UdpSocket>) -> f64 {
    use media_node::call::udp;
    let targets: Vec<SocketAddr> = socks.iter().map(|s| s.local_addr().expect("address")).collect();
    let (go, rounds) = mpsc::channel::<()>();
    let (sent, done) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Some(cpu) = peer_cpu() {
            pin_to(cpu);
        }
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind the peer");
        while rounds.recv().is_ok() {
            for t in &targets {
                let _ = tx.send_to(&PACKET, t);
            }
            let _ = sent.send(());
        }
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let socks: Vec<tokio::net::UdpSocket> = {
        let _in_rt = rt.enter();
        socks
            .into_iter()
            .map(|s| {
                let s = tokio::net::UdpSocket::from_std(s).expect("joins the reactor");
                udp::stamp_arrivals(&s).expect("receive stamps");
                s
            })
            .collect()
    };
    let mut batch = udp::Received::default();
    let (mut spent, mut got, mut missed) = (0.0, 0usize, 0usize);
    for _ in 0..ROUNDS {
        go.send(()).expect("peer alive");
        done.recv().expect("peer alive");
        let t0 = thread_cpu();
        rt.block_on(async {
            for s in &socks {
                match tokio::time::timeout(Duration::from_secs(1), udp::recv(s, &mut batch)).await {
                    Ok(Ok(n)) => got += n,
                    _ => missed += 1,
                }
            }
        });
        spent += thread_cpu() - t0;
    }
    if missed > 0 {
        eprintln!("node reads: {missed} sockets had nothing to read within 1 s");
    }
    spent * 1e6 / got.max(1) as f64
}

fn main() {
    let calls: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(400);
    pin_to(sender_cpu());
    let to = sink();
    println!("udp_floor: {calls} call sockets on loopback, {ROUNDS} rounds; CPU µs per packet (a call-second is 50 of each)");
    if peer_cpu().is_none() {
        println!("  (one CPU: sender and sink share it, so \"its CPU\" includes the sink)");
    }
    let plain = sendto(&bind_many(calls), to);
    show("sendto (the node)", plain);
    match uring(&bind_many(calls), to) {
        Some(u) => show("io_uring, one enter", u),
        None => println!("  io_uring: not available here"),
    }
    show("send (connected)", connected(&bind_many(calls), to));
    let recv = node_reads(bind_many(calls));
    println!("  {:<22} {recv:6.2} µs thread", "udp::recv (the node)");
    let floor = (plain.sender_cpu + recv) * 50.0;
    println!("  floor of a call-second (sendto on its CPU + the node's read): {floor:.0} µs, at most {:.0} calls per core", 1e6 / floor);
}
