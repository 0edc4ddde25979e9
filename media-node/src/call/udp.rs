//! Receiving a call's RTP: every datagram queued, in one syscall, and no empty read.
//!
//! tokio forgets a socket's readiness only when a read fails with WouldBlock, so the
//! plain `recv_from` loop costs two syscalls per packet on a call (one packet every
//! 20 ms): the read, then a read that finds nothing. Here one `recvmmsg` takes up to
//! `BATCH` datagrams; when it returns fewer, the queue was empty at that moment and the
//! readiness is cleared there and then. tokio clears it only if no new readiness event
//! came in since it was observed, so a datagram that lands meanwhile is never missed.
//!
//! Each datagram comes with the time it reached the socket, stamped by the kernel
//! (`SO_TIMESTAMPNS`, see [`stamp_arrivals`]) rather than the time this thread got
//! round to reading it. Under load a call is read a few milliseconds after its packet
//! landed; the jitter buffer, the RFC 3550 jitter figure and the recording's timeline
//! should see the network's timing, not the node's own scheduling.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams taken per syscall: more than a call receives between two polls.
pub const BATCH: usize = 4;
/// Larger than any RTP packet a call carries (G.711, 20-60 ms); the rest of a larger
/// datagram is cut off, as `recv_from` would.
const DATAGRAM: usize = 2048;

/// A kernel stamp older than this, or in the future, is not trusted (the wall clock
/// was stepped between the stamp and the read); the read's own time stands in.
const MAX_STAMP_AGE: Duration = Duration::from_secs(1);

pub struct Received {
    bufs: Box<[[u8; DATAGRAM]; BATCH]>,
    lens: [usize; BATCH],
    from: [SocketAddr; BATCH],
    /// The kernel's receive stamp of each datagram (wall clock), when it gave one.
    stamps: [Option<SystemTime>; BATCH],
    /// When the batch was read, on both clocks, to carry stamps over to `Instant`.
    read_at: (Instant, SystemTime),
    count: usize,
}

impl Default for Received {
    fn default() -> Self {
        Received {
            bufs: Box::new([[0; DATAGRAM]; BATCH]),
            lens: [0; BATCH],
            from: [SocketAddr::from(([0, 0, 0, 0], 0)); BATCH],
            stamps: [None; BATCH],
            read_at: (Instant::now(), SystemTime::now()),
            count: 0,
        }
    }
}

impl Received {
    /// The datagrams of the last receive, in arrival order, with their sources and
    /// the time each reached the socket (the read's time when the kernel gave no stamp).
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8], Instant)> {
        (0..self.count).map(|k| (self.from[k], &self.bufs[k][..self.lens[k]], self.arrived(k)))
    }

    fn arrived(&self, k: usize) -> Instant {
        let (mono, wall) = self.read_at;
        match self.stamps[k].map(|s| wall.duration_since(s)) {
            Some(Ok(age)) if age <= MAX_STAMP_AGE => mono.checked_sub(age).unwrap_or(mono),
            _ => mono,
        }
    }
}

/// Asks the kernel to stamp each datagram with the time it reached the socket.
/// Without it (or off Linux) arrivals are the time of the read. Linux switches
/// stamping on for the whole system from a work queue, a moment after the first
/// socket asks (again after the last such socket has closed): the first packets of a
/// call on an idle node may be stamped when read, which is what they were before.
pub fn stamp_arrivals(sock: &UdpSocket) -> io::Result<()> {
    sys::stamp_arrivals(sock)
}

/// Waits for datagrams and takes what is queued (up to `BATCH`); returns how many.
/// Cancel-safe: nothing is read unless it is returned in the same poll.
pub async fn recv(sock: &UdpSocket, into: &mut Received) -> io::Result<usize> {
    loop {
        sock.readable().await?;
        into.count = 0;
        let r = sock.try_io(Interest::READABLE, || {
            let (n, drained) = sys::recv_batch(sock, into)?;
            into.count = n;
            into.read_at = (Instant::now(), SystemTime::now());
            if drained {
                // Drained: WouldBlock makes tokio clear the readiness we waited on.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        match r {
            Ok(()) => return Ok(into.count),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if into.count > 0 {
                    return Ok(into.count);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(target_os = "linux")]
mod sys {
    use std::io;
    use std::mem::{size_of, zeroed};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::AsRawFd;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::{Received, BATCH, DATAGRAM};

    /// Room for the control messages of one datagram: the timestamp (a `cmsghdr` and a
    /// `timespec`, 32 bytes on 64-bit Linux) with margin; 8-aligned as `cmsghdr` needs.
    #[repr(C, align(8))]
    #[derive(Clone, Copy)]
    struct Control([u8; 64]);

    pub fn stamp_arrivals(sock: &tokio::net::UdpSocket) -> io::Result<()> {
        let on: libc::c_int = 1;
        // SAFETY: SO_TIMESTAMPNS takes an int flag; the pointer and size describe `on`.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Datagrams read, and whether that emptied the queue.
    pub fn recv_batch(sock: &tokio::net::UdpSocket, into: &mut Received) -> io::Result<(usize, bool)> {
        // SAFETY: all-zero is a valid value for these plain C structs.
        let mut names: [libc::sockaddr_storage; BATCH] = unsafe { zeroed() };
        let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        let mut control = [Control([0; 64]); BATCH];
        for k in 0..BATCH {
            iov[k] = libc::iovec { iov_base: into.bufs[k].as_mut_ptr().cast(), iov_len: DATAGRAM };
            msgs[k].msg_hdr.msg_name = (&mut names[k] as *mut libc::sockaddr_storage).cast();
            msgs[k].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msgs[k].msg_hdr.msg_iov = &mut iov[k];
            msgs[k].msg_hdr.msg_iovlen = 1;
            msgs[k].msg_hdr.msg_control = control[k].0.as_mut_ptr().cast();
            msgs[k].msg_hdr.msg_controllen = size_of::<Control>() as _;
        }
        // SAFETY: every header points at a buffer and a name that live until the call
        // returns, with their true sizes; the socket is open for as long as `sock` is.
        let n =
            unsafe { libc::recvmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for k in 0..n {
            into.lens[k] = (msgs[k].msg_len as usize).min(DATAGRAM);
            into.from[k] = to_socket_addr(&names[k])?;
            into.stamps[k] = stamp(&msgs[k].msg_hdr);
        }
        Ok((n, n < BATCH))
    }

    /// The `SCM_TIMESTAMPNS` control message of a received datagram, if there is one.
    fn stamp(hdr: &libc::msghdr) -> Option<SystemTime> {
        // SAFETY: the kernel filled `msg_control` up to `msg_controllen` with well-formed
        // control messages; CMSG_FIRSTHDR/NXTHDR stay inside that and return null at the
        // end, and a timestamp message carries one `timespec` (read unaligned).
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(hdr);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                    return UNIX_EPOCH.checked_add(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
                }
                c = libc::CMSG_NXTHDR(hdr, c);
            }
            None
        }
    }

    fn to_socket_addr(name: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
        match name.ss_family as libc::c_int {
            libc::AF_INET => {
                // SAFETY: the kernel wrote a sockaddr_in for an AF_INET source, and
                // sockaddr_storage is large and aligned enough for it.
                let a = unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
                Ok(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)), u16::from_be(a.sin_port))))
            }
            libc::AF_INET6 => {
                // SAFETY: as above, for AF_INET6 and sockaddr_in6.
                let a = unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
                Ok(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            f => Err(io::Error::other(format!("datagram from an address of family {f}"))),
        }
    }
}

/// Elsewhere: one datagram per syscall through the standard library.
#[cfg(not(target_os = "linux"))]
mod sys {
    use std::io;

    use super::Received;

    pub fn stamp_arrivals(_sock: &tokio::net::UdpSocket) -> io::Result<()> {
        Ok(())
    }

    /// One datagram; the queue counts as drained only when a read finds nothing.
    pub fn recv_batch(sock: &tokio::net::UdpSocket, into: &mut Received) -> io::Result<(usize, bool)> {
        let (n, from) = sock.try_recv_from(&mut into.bufs[0])?;
        into.lens[0] = n;
        into.from[0] = from;
        into.stamps[0] = None;
        Ok((1, false))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn pair(ip: &str) -> Option<(UdpSocket, UdpSocket)> {
        let rx = UdpSocket::bind(format!("{ip}:0")).await.ok()?;
        let tx = UdpSocket::bind(format!("{ip}:0")).await.ok()?;
        Some((rx, tx))
    }

    async fn recv_within(sock: &UdpSocket, into: &mut Received) -> usize {
        tokio::time::timeout(Duration::from_secs(5), recv(sock, into)).await.expect("a datagram within 5 s").unwrap()
    }

    #[tokio::test]
    async fn takes_what_is_queued_in_order_and_wakes_for_the_next_one() {
        let (rx, tx) = pair("127.0.0.1").await.unwrap();
        let to = rx.local_addr().unwrap();
        for k in 0..6u8 {
            tx.send_to(&[k; 12], to).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut got = Received::default();
        let mut seen = Vec::new();
        while seen.len() < 6 {
            let n = recv_within(&rx, &mut got).await;
            assert!((1..=BATCH).contains(&n));
            for (from, data, _) in got.iter() {
                assert_eq!(from, tx.local_addr().unwrap());
                assert_eq!(data.len(), 12);
                seen.push(data[0]);
            }
        }
        assert_eq!(seen, vec![0, 1, 2, 3, 4, 5]);
        // The queue was drained and the readiness cleared: a later datagram still wakes it.
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            tx.send_to(b"later", to).await.unwrap();
        });
        assert_eq!(recv_within(&rx, &mut got).await, 1);
        assert_eq!(got.iter().next().unwrap().1, b"later");
        later.await.unwrap();
    }

    #[tokio::test]
    async fn reports_ipv6_sources() {
        let Some((rx, tx)) = pair("[::1]").await else { return };
        tx.send_to(b"v6", rx.local_addr().unwrap()).await.unwrap();
        let mut got = Received::default();
        assert_eq!(recv_within(&rx, &mut got).await, 1);
        let (from, data, _) = got.iter().next().unwrap();
        assert_eq!((from, data), (tx.local_addr().unwrap(), &b"v6"[..]));
    }

    /// Linux turns receive stamps on for the whole system from a work queue, a moment
    /// after the first socket asks (and off again after the last one closes); until
    /// then a datagram is stamped when it is read. Waits for a probe stamped on arrival.
    async fn until_stamps_are_on(rx: &UdpSocket, tx: &UdpSocket) {
        let mut got = Received::default();
        for _ in 0..200 {
            tx.send_to(b"probe", rx.local_addr().unwrap()).await.unwrap();
            let landed_by = Instant::now();
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert_eq!(recv_within(rx, &mut got).await, 1);
            if got.iter().next().unwrap().2 <= landed_by + Duration::from_millis(1) {
                return;
            }
        }
        panic!("no datagram was stamped on arrival");
    }

    #[tokio::test]
    async fn a_datagram_is_timed_when_it_landed_not_when_it_was_read() {
        let (rx, tx) = pair("127.0.0.1").await.unwrap();
        stamp_arrivals(&rx).unwrap();
        if cfg!(target_os = "linux") {
            until_stamps_are_on(&rx, &tx).await;
        }
        let sent = Instant::now();
        tx.send_to(b"early", rx.local_addr().unwrap()).await.unwrap();
        let landed_by = Instant::now();
        // The reader gets round to it 80 ms later, as a busy node might.
        tokio::time::sleep(Duration::from_millis(80)).await;
        let mut got = Received::default();
        assert_eq!(recv_within(&rx, &mut got).await, 1);
        let (_, data, arrived) = got.iter().next().unwrap();
        assert_eq!(data, b"early");
        if cfg!(target_os = "linux") {
            // Stamped on loopback delivery, inside the send call. A clock read's
            // rounding is allowed either side.
            assert!(arrived + Duration::from_millis(1) >= sent, "arrived {:?} before it was sent", sent - arrived);
            assert!(
                arrived <= landed_by + Duration::from_millis(1),
                "arrival taken as the read, {:?} after the send returned",
                arrived - landed_by
            );
        }
        // Without a stamp (not asked for), the read's time stands in.
        let (plain, tx2) = pair("127.0.0.1").await.unwrap();
        tx2.send_to(b"plain", plain.local_addr().unwrap()).await.unwrap();
        let before_read = Instant::now();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(recv_within(&plain, &mut got).await, 1);
        assert!(got.iter().next().unwrap().2 >= before_read);
    }
}
