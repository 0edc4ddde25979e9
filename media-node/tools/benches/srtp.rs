//! What SRTP costs per packet (`cargo bench -p media-tools --bench srtp`): protecting
//! and unprotecting a 20 ms PCMU packet (172 bytes) under each suite, against building
//! the plain packet alone, in one run. User and system CPU of the whole run are
//! printed apart (this is all user space).

use std::hint::black_box;
use std::time::Instant;

use media_node::core::rtp::{self, RtpHeader};
use media_node::core::srtp::{Inbound, MasterKey, Outbound, Suite};

const PACKETS: u32 = 200_000;

fn cpu() -> (f64, f64) {
    let mut u = unsafe { std::mem::zeroed::<libc::rusage>() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (s(u.ru_utime), s(u.ru_stime))
}

fn packet(seq: u16) -> Vec<u8> {
    rtp::build(RtpHeader { marker: false, payload_type: 0, sequence: seq, timestamp: seq as u32 * 160, ssrc: 7 }, &[0x55; 160])
}

fn main() {
    let (u0, s0) = cpu();
    let t = Instant::now();
    for k in 0..PACKETS {
        black_box(packet(k as u16));
    }
    let plain = t.elapsed().as_nanos() as f64 / PACKETS as f64;
    println!("plain packet built: {plain:.0} ns");
    for suite in Suite::ALL {
        let key = MasterKey::generate(suite, &mut rand::rng());
        let mut tx = Outbound::new(key.clone());
        let mut rx = Inbound::new(key);
        let mut out = Vec::with_capacity(256);
        let (mut protect, mut unprotect) = (0u128, 0u128);
        for k in 0..PACKETS {
            let mut p = packet(k as u16);
            let t = Instant::now();
            tx.protect_rtp(&mut p).unwrap();
            let t1 = Instant::now();
            rx.unprotect_rtp(&p, &mut out).unwrap();
            unprotect += t1.elapsed().as_nanos();
            protect += (t1 - t).as_nanos();
            black_box(&out);
        }
        let (p, u) = (protect as f64 / PACKETS as f64, unprotect as f64 / PACKETS as f64);
        // A call sends and receives 50 packets a second each way.
        println!("{:<24} protect {p:>5.0} ns, unprotect {u:>5.0} ns: {:.3} ms per call-second", suite.name(), (p + u) * 50.0 / 1e6);
    }
    let (u1, s1) = cpu();
    println!("whole run: user {:.2} s, system {:.2} s", u1 - u0, s1 - s0);
}
