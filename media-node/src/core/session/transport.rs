//! The call's transport: datagrams in and out of its ports. SRTP and SRTCP under SDES
//! keys, RTP/RTCP demultiplexing, the symmetric-RTP latch, RTCP reports and symmetric
//! RTCP. What passes here is an authenticated RTP packet from the far end; what leaves
//! is a protected datagram addressed to it.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use super::io::{Counters, Event, Outputs, RtcpTarget, SrtpDrops, Transmit};
use crate::core::latch::{Latch, Verdict};
use crate::core::rtcp::{self, FarEndReport, RtcpState, SenderInfo};
use crate::core::rtp::{self, RtpHeader, RtpPacket};
use crate::core::srtp::{CallKeys, Srtp};

/// What the transport counted since the last `take_counters`.
#[derive(Debug, Default)]
struct Counts {
    bytes_out: u64,
    packets_out: u64,
    malformed: u64,
    rtcp: u64,
    foreign: u64,
    srtp_in: u64,
    srtp_dropped: SrtpDrops,
    srtp_unsent: u64,
    rtcp_sent: u64,
    rtcp_malformed: u64,
}

/// What the node's next report says of itself (the sending side's part of an SR).
#[derive(Debug, Clone, Copy)]
pub(super) struct ReportInputs {
    /// The caller's interarrival jitter in its codec's timestamp units.
    pub jitter: u32,
    /// The RTP timestamp that corresponds to the report's time.
    pub rtp_timestamp: u32,
    /// False on hold: an RR instead of an SR.
    pub sending: bool,
}

pub(super) struct Transport {
    /// The node's SSRC, for its RTCP (the outbound part stamps it on RTP).
    ssrc: u32,
    start: Instant,
    wall_start: SystemTime,
    latch: Latch,
    /// The call's SRTP contexts once SDES agreed keys (wiped when dropped).
    srtp: Option<Srtp>,
    /// An SRTP packet's plain text, reused.
    plain: Vec<u8>,
    /// RTCP once SDP set the call up; None sends none (calls without SDP).
    rtcp: Option<(RtcpState, RtcpTarget)>,
    /// Where the far end's RTCP comes from, once its first report on the odd port was
    /// read (without an `a=rtcp`): only that source is read from then on.
    rtcp_from: Option<SocketAddr>,
    far_end: Option<FarEndReport>,
    counts: Counts,
}

impl Transport {
    pub(super) fn new(ssrc: u32, symmetric_rtp: bool, start: Instant, wall_start: SystemTime) -> Transport {
        Transport {
            ssrc,
            start,
            wall_start,
            latch: Latch::new(symmetric_rtp),
            srtp: None,
            plain: Vec::with_capacity(1500),
            rtcp: None,
            rtcp_from: None,
            far_end: None,
            counts: Counts::default(),
        }
    }

    pub(super) fn target(&self) -> Option<SocketAddr> {
        self.latch.target()
    }

    pub(super) fn set_target(&mut self, addr: SocketAddr) {
        self.latch.set_target(addr);
        Self::peer_moved(&mut self.rtcp_from, &mut self.rtcp, addr);
    }

    /// The far end moved to `to` (a re-offer's address, a new latch): an RTCP source
    /// learned on another host is its old one, and is learned again. (Fields apart, so
    /// a packet read from the plain-text buffer may be held meanwhile.)
    fn peer_moved(rtcp_from: &mut Option<SocketAddr>, rtcp: &mut Option<(RtcpState, RtcpTarget)>, to: SocketAddr) {
        if rtcp_from.is_some_and(|from| from.ip() != to.ip()) {
            *rtcp_from = None;
            if let Some((state, _)) = rtcp {
                state.symmetric_to = None;
            }
        }
    }

    pub(super) fn suggest_target(&mut self, addr: SocketAddr) {
        self.latch.suggest_target(addr)
    }

    pub(super) fn is_secure(&self) -> bool {
        self.srtp.is_some()
    }

    /// What offer/answer agreed for the transport: SRTP keys (a re-offer rekeys only the
    /// direction whose key changed, and the far end's old key is still taken for packets
    /// on the wire), and where RTCP goes (a call set up by SDP runs RTCP from now on).
    pub(super) fn set_media(&mut self, keys: Option<&CallKeys>, target: RtcpTarget) {
        match (&mut self.srtp, keys) {
            (Some(s), Some(keys)) => s.rekey(keys),
            (None, Some(keys)) => self.srtp = Some(Srtp::new(keys)),
            (_, None) => self.srtp = None,
        }
        match &mut self.rtcp {
            Some((_, t)) => *t = target,
            None => self.rtcp = Some((RtcpState::new(self.start, self.wall_start, self.ssrc), target)),
        }
    }

    /// A datagram on the call's RTP port; the RTP packet in it, once it is the far
    /// end's. Under SRTP it must authenticate (and not be a replay) before anything else
    /// looks at it: only then may it latch, be decoded or be heard; and its index enters
    /// the replay window (with the ROC) only once the latch took it, so validly keyed
    /// copies from a foreign source move nothing. Muxed RTCP is read here
    /// (`send_clock`: the clock of what the node sends, for the far end's report).
    /// Everything not taken is counted and changes nothing.
    pub(super) fn receive<'a>(
        &'a mut self,
        from: SocketAddr,
        data: &'a [u8],
        now: Instant,
        send_clock: u32,
        out: &mut Outputs,
    ) -> Option<RtpPacket<'a>> {
        if rtp::is_rtcp(data) {
            // RTCP muxed on the RTP port (SRTCP under keys; RTP's header is in the
            // clear, so SRTP never hides which one a datagram is).
            self.take_rtcp(now, from, data, true, send_clock);
            return None;
        }
        let (bytes, authenticated): (&'a [u8], _) = match self.srtp.as_mut() {
            None => (data, None),
            Some(srtp) => match srtp.inbound.authenticate_rtp(data, &mut self.plain) {
                Ok(a) => (&self.plain, Some(a)),
                Err(e) => {
                    self.counts.srtp_dropped.count(e);
                    return None;
                }
            },
        };
        let packet = match rtp::parse(bytes) {
            Ok(p) => p,
            Err(_) => {
                self.counts.malformed += 1;
                return None;
            }
        };
        match self.latch.on_packet(from) {
            Verdict::Accept => {}
            Verdict::Latched(addr) => {
                Self::peer_moved(&mut self.rtcp_from, &mut self.rtcp, addr);
                out.events.push(Event::Latched(addr));
            }
            Verdict::Foreign => {
                self.counts.foreign += 1;
                return None;
            }
        }
        if let (Some(srtp), Some(a)) = (self.srtp.as_mut(), authenticated) {
            srtp.inbound.commit_rtp(a);
            self.counts.srtp_in += 1;
        }
        if let Some((state, _)) = &mut self.rtcp {
            state.reception.on_packet(packet.ssrc, packet.sequence);
        }
        Some(packet)
    }

    /// A datagram on the call's RTCP port (the odd one).
    pub(super) fn receive_rtcp(&mut self, now: Instant, from: SocketAddr, data: &[u8], send_clock: u32) {
        self.take_rtcp(now, from, data, false, send_clock);
    }

    /// RTCP from the far end, on the odd port or `muxed` on the RTP port: through
    /// SRTCP when the call has keys, then read only when it is the far end's (see
    /// `from_far_end`); only then does SRTCP's replay window move, and only then may it
    /// become where the node's reports go (symmetric RTCP, RFC 4961). Everything else
    /// is counted and changes nothing. True when it was read.
    fn take_rtcp(&mut self, now: Instant, from: SocketAddr, data: &[u8], muxed: bool, send_clock: u32) -> bool {
        let (bytes, authenticated) = match self.srtp.as_mut() {
            None => (data, None),
            Some(srtp) => match srtp.inbound.authenticate_rtcp(data, &mut self.plain) {
                Ok(a) => (&self.plain[..], Some(a)),
                Err(e) => {
                    self.counts.srtp_dropped.count(e);
                    return false;
                }
            },
        };
        // RTCP as the call sees it: under SRTP, what authenticated.
        self.counts.rtcp += 1;
        let Some((state, target)) = self.rtcp.as_mut() else { return false };
        let Ok(report) = rtcp::parse(bytes) else {
            self.counts.rtcp_malformed += 1;
            return false;
        };
        let peer = self.latch.target();
        // Sent by the far end's RTP stream, once one is known.
        let own_stream = state.reception.ssrc().is_none_or(|ssrc| report.ssrc == Some(ssrc));
        let from_far_end = own_stream
            && match (*target, muxed) {
                (_, true) => peer == Some(from),
                (RtcpTarget::Separate(Some(signalled)), false) => from == signalled,
                // No `a=rtcp`: the RTP peer's host; its first report there locks the port.
                (_, false) => self.rtcp_from.map_or(peer.is_some_and(|p| p.ip() == from.ip()), |locked| locked == from),
            };
        if !from_far_end {
            self.counts.foreign += 1;
            return false;
        }
        if let (Some(srtp), Some(a)) = (self.srtp.as_mut(), authenticated) {
            srtp.inbound.commit_rtcp(a);
            self.counts.srtp_in += 1;
        }
        if !muxed && matches!(*target, RtcpTarget::Separate(None)) && self.rtcp_from.is_none() {
            self.rtcp_from = Some(from);
            if self.latch.is_symmetric() {
                state.symmetric_to = Some(from);
            }
        }
        if let Some(f) = state.on_received(now, &report, self.ssrc, send_clock) {
            self.far_end = Some(f);
        }
        true
    }

    /// The far end's latest report on the node's audio, once.
    pub(super) fn take_far_end_report(&mut self) -> Option<FarEndReport> {
        self.far_end.take()
    }

    /// True when the call runs RTCP and its next report is due.
    pub(super) fn report_due(&mut self, now: Instant) -> bool {
        self.rtcp.as_mut().is_some_and(|(s, _)| s.due(now))
    }

    /// The node's RTCP report: an SR while it sends, an RR on hold (RFC 3550 §6.4),
    /// with a block about the caller once it has sent anything.
    pub(super) fn send_report(&mut self, now: Instant, inputs: ReportInputs, out: &mut Outputs) {
        let Some((state, _)) = self.rtcp.as_mut() else { return };
        let block = state.block(now, inputs.jitter);
        let sender = (inputs.sending && state.packets_sent > 0).then(|| SenderInfo {
            ntp: state.ntp_at(now),
            rtp_timestamp: inputs.rtp_timestamp,
            packets: state.packets_sent,
            octets: state.octets_sent,
        });
        let data = rtcp::report(self.ssrc, sender, block.as_slice(), &state.cname);
        self.send_rtcp(now, data, out);
    }

    /// The call's last RTCP: a BYE, at `now` (the session's last time).
    pub(super) fn send_goodbye(&mut self, now: Instant, out: &mut Outputs) {
        if let Some((state, _)) = &self.rtcp {
            let bye = rtcp::goodbye(self.ssrc, &state.cname);
            self.send_rtcp(now, bye, out);
        }
    }

    /// One compound RTCP packet to the far end (SRTCP under SRTP), on the muxed port
    /// or from the odd one.
    fn send_rtcp(&mut self, now: Instant, mut data: Vec<u8>, out: &mut Outputs) {
        let Some((state, target)) = &self.rtcp else { return };
        let Some(rtp_to) = self.latch.target() else { return };
        let (to, muxed) = match *target {
            RtcpTarget::Muxed => (rtp_to, true),
            RtcpTarget::Separate(Some(to)) => (to, false),
            RtcpTarget::Separate(None) => match state.symmetric_to.filter(|f| f.ip() == rtp_to.ip()) {
                Some(from) => (from, false),
                None => (SocketAddr::new(rtp_to.ip(), rtp_to.port().wrapping_add(1)), false),
            },
        };
        if let Some(srtp) = self.srtp.as_mut() {
            if srtp.outbound.protect_rtcp(&mut data).is_err() {
                self.counts.srtp_unsent += 1;
                return;
            }
        }
        self.counts.rtcp_sent += 1;
        let t = Transmit { to, data, due: now };
        if muxed {
            out.transmit.push(t);
        } else {
            out.rtcp.push(t);
        }
    }

    /// An RTP packet to the far end, when one is known (counted); false when nothing
    /// went out.
    pub(super) fn send_rtp(&mut self, header: RtpHeader, payload: &[u8], due: Instant, out: &mut Outputs) -> bool {
        let Some(to) = self.latch.target() else { return false };
        let mut data = rtp::build(header, payload);
        if let Some(srtp) = self.srtp.as_mut() {
            if srtp.outbound.protect_rtp(&mut data).is_err() {
                // The node's key is used up (its lifetime): nothing goes out in the
                // clear instead.
                self.counts.srtp_unsent += 1;
                return false;
            }
        }
        self.counts.packets_out += 1;
        self.counts.bytes_out += data.len() as u64;
        if let Some((state, _)) = &mut self.rtcp {
            state.on_sent(payload.len());
        }
        out.transmit.push(Transmit { to, data, due });
        true
    }

    pub(super) fn take_counters(&mut self, c: &mut Counters) {
        let k = std::mem::take(&mut self.counts);
        c.packets_out = k.packets_out;
        c.bytes_out = k.bytes_out;
        c.malformed = k.malformed;
        c.rtcp = k.rtcp;
        c.foreign = k.foreign;
        c.srtp_in = k.srtp_in;
        c.srtp_dropped = k.srtp_dropped;
        c.srtp_unsent = k.srtp_unsent;
        c.rtcp_sent = k.rtcp_sent;
        c.rtcp_malformed = k.rtcp_malformed;
    }
}

/// The part through the whole session, as the call task drives it.
#[cfg(test)]
mod session_tests {
    use super::super::tests::*;
    use super::super::*;
    use crate::core::g711::linear_to_ulaw;
    use crate::core::rtp;
    use crate::core::srtp::{CallKeys, SrtpError};
    use std::time::{Duration, Instant};

    #[test]
    fn reports_go_back_where_the_far_ends_rtcp_comes_from_on_its_host_only() {
        use crate::core::rtcp;
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        s.handle_command(Command::SetMedia(media((0, AudioCodec::Pcmu), Some(101), true)), &mut out);
        s.handle_datagram(t0, caller(), &rtp_from_caller(0, 1, 160, 4000), &mut out);
        let report_to = |s: &mut Session, from: u64, out: &mut Outputs| {
            out.rtcp.clear();
            for k in from..from + 400 {
                s.handle_tick(t0 + MS20 * k as u32, out);
                if let Some(t) = out.rtcp.first() {
                    return (t.to, k + 1);
                }
            }
            panic!("no report in 8 s");
        };
        let (to, next) = report_to(&mut s, 0, &mut out);
        assert_eq!(to, far_rtcp(), "before any RTCP came: the port above the RTP port");
        // The far end's NAT gave its RTCP another port: reports follow it there.
        let natted: SocketAddr = "127.0.0.1:45555".parse().unwrap();
        s.handle_rtcp(t0 + MS20 * next as u32, natted, &rtcp::report(99, None, &[], "far"));
        let (to, next) = report_to(&mut s, next, &mut out);
        assert_eq!(to, natted);
        // RTCP from another host, or junk from the far end's host, moves nothing.
        s.handle_rtcp(t0 + MS20 * next as u32, "198.51.100.9:7000".parse().unwrap(), &rtcp::report(99, None, &[], "other"));
        s.handle_rtcp(t0 + MS20 * next as u32, "127.0.0.1:46666".parse().unwrap(), &[0x80, 0xc9, 0, 9]);
        let (to, _) = report_to(&mut s, next, &mut out);
        assert_eq!(to, natted);
        assert_eq!(s.take_counters().rtcp_malformed, 1);
    }

    #[test]
    fn a_negotiated_call_reports_by_rtcp_srtcp_under_keys_and_says_bye() {
        use crate::core::rtcp::{self, ntp_middle};
        use crate::core::srtp::{Inbound, MasterKey, Outbound, Suite};
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        // A call that never negotiated sends no RTCP, however long it runs.
        s.handle_datagram(t0, caller(), &rtp_from_caller(0, 1, 160, 4000), &mut out);
        run_ticks(&mut s, t0, 0, 500, &mut out);
        assert!(out.rtcp.is_empty() && out.transmit.iter().all(|t| !rtp::is_rtcp(&t.data)));
        assert_eq!(s.take_counters().rtcp_sent, 0);

        let far = MasterKey::random(Suite::AesCm128HmacSha1_80);
        let node = MasterKey::random(Suite::AesCm128HmacSha1_80);
        let mut m = media((0, AudioCodec::Pcmu), Some(101), true);
        m.srtp = Some(CallKeys { remote: far.clone(), local: node.clone() });
        s.handle_command(Command::SetMedia(m.clone()), &mut out);
        let mut caller_tx = Outbound::new(far);
        let mut far_rx = Inbound::new(node);
        out.clear();
        // 20 s of the caller's audio with every 10th packet lost, and the node's prompt.
        s.handle_command(Command::Play { id: 1, pcm: vec![1000i16; 160 * 1000].into(), barge_in: None }, &mut out);
        let mut reports = Vec::new();
        for k in 500..1500u64 {
            if k % 10 != 3 {
                let mut p = rtp_from_caller(0, k as u16, k as u32 * 160, 4000);
                caller_tx.protect_rtp(&mut p).unwrap();
                s.handle_datagram(t0 + MS20 * k as u32, caller(), &p, &mut out);
            }
            s.handle_tick(t0 + MS20 * k as u32, &mut out);
            for t in out.rtcp.drain(..) {
                assert_eq!(t.to, "127.0.0.1:40001".parse().unwrap(), "the port above the caller's RTP port");
                let mut plain = Vec::new();
                far_rx.unprotect_rtcp(&t.data, &mut plain).expect("SRTCP under the node's key");
                reports.push((k, rtcp::parse(&plain).unwrap()));
            }
            out.transmit.clear();
            out.heard.clear();
        }
        // 20 s: a report every 2.5-7.5 s, the first within 3.75 s.
        assert!((3..=8).contains(&reports.len()), "{}", reports.len());
        assert!(reports[0].0 - 500 <= 188, "{}", reports[0].0);
        let (at, last) = reports.last().unwrap();
        let (ssrc, ntp) = last.sender.expect("a sender report while the node sends");
        assert_eq!(ssrc, 0x1234);
        let wall = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + MS20 * *at as u32;
        assert_eq!(ntp_middle(ntp), ntp_middle(rtcp::ntp(wall)), "NTP time of the report");
        let b = last.blocks[0];
        assert_eq!((b.ssrc, b.extended_max), (99, (*at as u32) - (*at as u32 % 10 == 3) as u32));
        // 1 in 10 of the caller's packets lost since the start.
        let expected = (*at - 500 + 1) as i32 + 1;
        assert!((b.cumulative_lost - expected / 10).abs() <= 1, "{} of {expected}", b.cumulative_lost);
        assert!((b.fraction_lost as f64 / 256.0 - 0.1).abs() < 0.03, "{}", b.fraction_lost);

        // The far end's SR, then its report about the node, echoing our last SR 40 ms on.
        let their_ntp = rtcp::ntp(wall + Duration::from_millis(10));
        let mut sr = rtcp::report(99, Some(rtcp::SenderInfo { ntp: their_ntp, rtp_timestamp: 0, packets: 1, octets: 160 }), &[], "far");
        caller_tx.protect_rtcp(&mut sr).unwrap();
        s.handle_rtcp(t0 + MS20 * 1500, far_rtcp(), &sr);
        let echoed = rtcp::ReportBlock {
            ssrc: 0x1234,
            fraction_lost: 26,
            cumulative_lost: 3,
            extended_max: 1,
            jitter: 160,
            lsr: ntp_middle(ntp),
            dlsr: 65536 / 50,
        };
        let mut rr = rtcp::report(99, None, &[echoed], "far");
        caller_tx.protect_rtcp(&mut rr).unwrap();
        s.handle_rtcp(t0 + MS20 * (*at as u32 + 3), far_rtcp(), &rr);
        let f = s.take_far_end_report().expect("the far end's report on the node's audio");
        assert!((f.round_trip.unwrap().as_secs_f64() - 0.040).abs() < 0.001, "{:?}", f.round_trip);
        assert_eq!(f.jitter_seconds, 0.02);
        // A forged report (plain, under SRTP) is dropped before it is read.
        s.handle_rtcp(t0, far_rtcp(), &rtcp::report(99, None, &[echoed], "forged"));
        assert!(s.take_far_end_report().is_none());
        let c = s.take_counters();
        assert_eq!(c.srtp_dropped.of(SrtpError::Auth), 1);
        assert_eq!(c.rtcp, 2);
        assert_eq!(c.rtcp_sent, reports.len() as u64);

        // On hold the node sends an RR and echoes the far end's SR; at the end, a BYE.
        m.sends = false;
        m.srtp = None;
        m.rtcp = RtcpTarget::Muxed;
        s.handle_command(Command::SetMedia(m), &mut out);
        out.clear();
        let mut rr_seen = None;
        for k in 1500..1900u64 {
            s.handle_tick(t0 + MS20 * k as u32, &mut out);
            assert!(out.rtcp.is_empty(), "muxed: on the RTP port");
            if let Some(t) = out.transmit.iter().find(|t| rtp::is_rtcp(&t.data)) {
                rr_seen.get_or_insert((k, rtcp::parse(&t.data).unwrap()));
            }
            out.transmit.clear();
        }
        let (k, rr) = rr_seen.expect("a receiver report on hold");
        assert!(rr.sender.is_none());
        assert_eq!(rr.blocks[0].lsr, ntp_middle(their_ntp));
        assert_eq!(rr.blocks[0].dlsr, ((k - 1500) * 20 * 65536 / 1000) as u32);
        s.close(&mut out);
        let bye = out.transmit.iter().find(|t| rtp::is_rtcp(&t.data)).expect("a BYE");
        assert!(rtcp::parse(&bye.data).unwrap().bye);
    }

    #[test]
    fn srtp_forgeries_replays_and_floods_are_dropped_before_the_latch_and_the_node_sends_srtp() {
        use crate::core::srtp::{Inbound, MasterKey, Outbound, Suite};
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        let far = MasterKey::random(Suite::AesCm128HmacSha1_80);
        let node = MasterKey::random(Suite::AesCm128HmacSha1_80);
        let mut m = media((0, AudioCodec::Pcmu), Some(101), true);
        m.srtp = Some(CallKeys { remote: far.clone(), local: node.clone() });
        s.handle_command(Command::SetMedia(m), &mut out);
        assert!(s.is_secure());
        let mut caller_tx = Outbound::new(far);
        let mut genuine = rtp_from_caller(0, 1, 160, 4000);
        caller_tx.protect_rtp(&mut genuine).unwrap();
        let attacker: SocketAddr = "198.51.100.66:5000".parse().unwrap();
        // Before the caller's first packet, an attacker who knows the port: plain RTP,
        // SRTP under a key of its own, and 10,000 packets of noise with an RTP header.
        s.handle_datagram(t0, attacker, &rtp_from_caller(0, 1, 160, 9000), &mut out);
        let mut wrong = rtp_from_caller(0, 2, 320, 9000);
        Outbound::new(MasterKey::random(Suite::AesCm128HmacSha1_80)).protect_rtp(&mut wrong).unwrap();
        s.handle_datagram(t0, attacker, &wrong, &mut out);
        for k in 0..10_000u32 {
            let mut junk = rtp_from_caller(0, k as u16, k * 160, 0);
            junk.extend_from_slice(&k.to_be_bytes());
            for (i, b) in junk[12..].iter_mut().enumerate() {
                *b = (k as usize * 31 + i * 7) as u8;
            }
            s.handle_datagram(t0, attacker, &junk, &mut out);
        }
        assert!(out.events.iter().all(|e| !matches!(e, Event::Latched(_))), "nothing latched");
        assert!(out.heard.is_empty(), "nothing heard");
        s.handle_datagram(t0, caller(), &genuine, &mut out);
        assert!(out.events.contains(&Event::Latched(caller())), "the caller's own packet latches");
        // A replay of it from the attacker's address, and from the caller's.
        s.handle_datagram(t0, attacker, &genuine, &mut out);
        s.handle_datagram(t0, caller(), &genuine, &mut out);
        let c = s.take_counters();
        assert_eq!(c.srtp_dropped.of(SrtpError::Auth), 10_002);
        assert_eq!(c.srtp_dropped.of(SrtpError::Replay), 2);
        assert_eq!((c.packets_in, c.srtp_in, c.foreign), (1, 1, 0), "no forged packet got as far as the latch");
        assert_eq!(s.target(), Some(caller()));
        let heard: Vec<i16> = out.heard.iter().flat_map(|h| h.pcm.iter().copied()).collect();
        assert!(heard.iter().all(|v| (v - 4000).abs() < 200), "only the caller is heard");
        // What the node sends is SRTP under its own key.
        out.clear();
        s.handle_command(Command::Play { id: 1, pcm: vec![1000i16; 160 * 3].into(), barge_in: None }, &mut out);
        run_ticks(&mut s, t0, 0, 3, &mut out);
        assert_eq!(out.transmit.len(), 3);
        let mut far_rx = Inbound::new(node);
        let mut plain = Vec::new();
        for t in &out.transmit {
            assert!(rtp::parse(&t.data).unwrap().payload != [linear_to_ulaw(1000); 160], "not in the clear");
            far_rx.unprotect_rtp(&t.data, &mut plain).unwrap();
            assert_eq!(rtp::parse(&plain).unwrap().payload, &[linear_to_ulaw(1000); 160][..]);
        }
        // A re-offer back to plain RTP (an `optional` call's re-INVITE without keys).
        let mut m = media((0, AudioCodec::Pcmu), Some(101), true);
        m.srtp = None;
        s.handle_command(Command::SetMedia(m), &mut out);
        s.handle_datagram(t0 + MS20, caller(), &rtp_from_caller(0, 2, 320, 4000), &mut out);
        assert_eq!(s.take_counters().packets_in, 1);
    }

    #[test]
    fn junk_rtcp_foreign_and_unknown_payloads_are_counted_not_played() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        s.handle_datagram(t0, caller(), &rtp_from_caller(0, 1, 0, 4000), &mut out);
        s.handle_datagram(t0, caller(), &[0xde, 0xad], &mut out);
        s.handle_datagram(t0, caller(), &[0x81, 200, 0, 6, 0, 0, 0, 1], &mut out);
        s.handle_datagram(t0, "10.9.9.9:1".parse().unwrap(), &rtp_from_caller(0, 2, 160, 1), &mut out);
        s.handle_datagram(t0, caller(), &rtp_from_caller(13, 3, 320, 1), &mut out);
        let c = s.take_counters();
        assert_eq!((c.packets_in, c.malformed, c.rtcp, c.foreign, c.unsupported_payload), (1, 1, 1, 1, 1));
        assert_eq!(out.heard.len(), 1);
        assert_eq!(s.take_counters(), Counters::default(), "counters are deltas");
    }

    #[test]
    fn latches_to_the_source_and_sends_there() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        s.handle_command(Command::SetTarget("192.168.1.2:4000".parse().unwrap()), &mut out);
        let nat: SocketAddr = "203.0.113.1:50000".parse().unwrap();
        s.handle_datagram(t0, nat, &rtp_from_caller(0, 1, 0, 0), &mut out);
        assert!(out.events.contains(&Event::Latched(nat)));
        s.handle_command(Command::Play { id: 1, pcm: vec![1i16; 160].into(), barge_in: None }, &mut out);
        run_ticks(&mut s, t0, 0, 1, &mut out);
        assert_eq!(out.transmit[0].to, nat);
    }

    /// A call under SDES keys whose caller has latched; its SRTP sender and the session.
    fn keyed_call(t0: Instant) -> (Session, Outputs, crate::core::srtp::Outbound) {
        use crate::core::srtp::{MasterKey, Outbound, Suite};
        let mut s = session(t0);
        let mut out = Outputs::default();
        let far = MasterKey::random(Suite::AesCm128HmacSha1_80);
        let mut m = media((0, AudioCodec::Pcmu), Some(101), true);
        m.srtp = Some(CallKeys { remote: far.clone(), local: MasterKey::random(Suite::AesCm128HmacSha1_80) });
        s.handle_command(Command::SetMedia(m), &mut out);
        s.handle_command(Command::SetTarget(caller()), &mut out);
        (s, out, Outbound::new(far))
    }

    fn heard_frames(out: &Outputs) -> usize {
        out.heard.iter().filter(|h| !h.late && !h.concealed && h.pcm.iter().all(|v| (v - 4000).abs() < 200)).count()
    }

    #[test]
    fn validly_keyed_copies_from_a_foreign_source_ahead_of_the_caller_move_no_replay_window() {
        let t0 = Instant::now();
        let (mut s, mut out, mut caller_tx) = keyed_call(t0);
        let attacker: SocketAddr = "198.51.100.66:5000".parse().unwrap();
        let mut wire = Vec::new();
        for k in 0..45u32 {
            let mut p = rtp_from_caller(0, k as u16 + 1, 160 * (k + 1), 4000);
            caller_tx.protect_rtp(&mut p).unwrap();
            wire.push(p);
        }
        // The caller latches with its first packet; then each real packet's copy comes
        // from the attacker just ahead of it.
        s.handle_datagram(t0, caller(), &wire[0], &mut out);
        for (k, p) in wire.iter().enumerate().skip(1) {
            let at = t0 + MS20 * k as u32;
            s.handle_datagram(at, attacker, p, &mut out);
            s.handle_datagram(at, caller(), p, &mut out);
            s.handle_tick(at, &mut out);
        }
        let c = s.take_counters();
        assert_eq!((c.foreign, c.srtp_in, c.srtp_dropped.total()), (44, 45, 0), "copies refused by the latch, none a replay");
        assert!(heard_frames(&out) >= 43, "the agent hears the caller: {} of 45", heard_frames(&out));
    }

    #[test]
    fn keyed_packets_far_ahead_from_a_foreign_source_do_not_push_the_window_past_the_caller() {
        let t0 = Instant::now();
        let (mut s, mut out, mut caller_tx) = keyed_call(t0);
        let mut ahead = rtp_from_caller(0, 1, 160, 4000);
        caller_tx.protect_rtp(&mut ahead).unwrap();
        s.handle_datagram(t0, caller(), &ahead, &mut out);
        // Three packets of the caller's own stream, keyed, 31,200 ahead, from elsewhere.
        let mut far_ahead = Vec::new();
        for k in 0..3u16 {
            let mut p = rtp_from_caller(0, 31_200 + k, 160 * 31_200, 4000);
            caller_tx.protect_rtp(&mut p).unwrap();
            far_ahead.push(p);
        }
        for p in &far_ahead {
            s.handle_datagram(t0, "198.51.100.66:5000".parse().unwrap(), p, &mut out);
        }
        for k in 1..=120u32 {
            let mut p = rtp_from_caller(0, k as u16 + 1, 160 * (k + 1), 4000);
            caller_tx.protect_rtp(&mut p).unwrap();
            let at = t0 + MS20 * k;
            s.handle_datagram(at, caller(), &p, &mut out);
            s.handle_tick(at, &mut out);
        }
        let c = s.take_counters();
        assert_eq!((c.foreign, c.srtp_dropped.total(), c.srtp_in), (3, 0, 121));
        assert!(heard_frames(&out) >= 118, "{} of 120 heard", heard_frames(&out));
    }

    #[test]
    fn rtcp_on_a_plain_call_is_read_only_from_the_far_ends_rtcp_source_and_stream() {
        use crate::core::rtcp::{self, ReportBlock};
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        s.handle_command(Command::SetMedia(media((0, AudioCodec::Pcmu), Some(101), true)), &mut out);
        s.handle_datagram(t0, caller(), &rtp_from_caller(0, 1, 160, 4000), &mut out);
        // A report that the node's audio is 99.6 % lost, about the node's SSRC (0x1234).
        let lossy = |sender: u32| {
            let block =
                ReportBlock { ssrc: 0x1234, fraction_lost: 255, cumulative_lost: 0, extended_max: 0, jitter: 1 << 30, lsr: 0, dlsr: 0 };
            rtcp::report(sender, None, &[block], "x")
        };
        s.handle_rtcp(t0, "198.51.100.9:7001".parse().unwrap(), &lossy(99));
        assert_eq!(s.take_far_end_report(), None, "another host");
        s.handle_rtcp(t0, far_rtcp(), &lossy(12345));
        assert_eq!(s.take_far_end_report(), None, "not the far end's stream");
        s.handle_rtcp(t0, far_rtcp(), &lossy(99));
        assert!(s.take_far_end_report().is_some(), "the far end's own report is read");
        // The far end's RTCP port is locked now: another port of its host is not it.
        let other: SocketAddr = "127.0.0.1:45999".parse().unwrap();
        s.handle_rtcp(t0, other, &lossy(99));
        assert_eq!(s.take_far_end_report(), None);
        assert_eq!(s.take_counters().foreign, 3);
        // And the node's reports keep going where the far end's came from.
        for k in 0..400u32 {
            s.handle_tick(t0 + MS20 * k, &mut out);
        }
        assert!(!out.rtcp.is_empty() && out.rtcp.iter().all(|t| t.to == far_rtcp()));
        // The far end moves to another host (a re-offer's address): its RTCP there is
        // learned afresh.
        let moved: SocketAddr = "127.0.0.2:40000".parse().unwrap();
        s.handle_command(Command::SetTarget(moved), &mut out);
        s.handle_rtcp(t0, "127.0.0.2:40001".parse().unwrap(), &lossy(99));
        assert!(s.take_far_end_report().is_some(), "read from the far end's new host");
    }
}
