//! The call's transport: datagrams in and out of its ports. SRTP and SRTCP under SDES
//! keys, RTP/RTCP demultiplexing, the symmetric-RTP latch, RTCP reports and symmetric
//! RTCP. What passes here is an authenticated RTP packet from the far end; what leaves
//! is a protected datagram addressed to it.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use super::io::{Counters, Event, Outputs, RtcpTarget, SrtpDrops, Transmit};
use crate::core::latch::{Latch, Verdict};
use crate::core::rtcp::{self, FarEndReport, RtcpState, SenderInfo};
use crate::core::rtp::{self, Datagram, RtpHeader, RtpPacket};
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
            far_end: None,
            counts: Counts::default(),
        }
    }

    pub(super) fn target(&self) -> Option<SocketAddr> {
        self.latch.target()
    }

    pub(super) fn set_target(&mut self, addr: SocketAddr) {
        self.latch.set_target(addr)
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
    /// looks at it: only then may it latch, be decoded or be heard. Muxed RTCP is read
    /// here (`send_clock`: the clock of what the node sends, for the far end's report).
    /// Everything not taken is counted and changes nothing.
    pub(super) fn receive<'a>(
        &'a mut self,
        from: SocketAddr,
        data: &'a [u8],
        now: Instant,
        send_clock: u32,
        out: &mut Outputs,
    ) -> Option<RtpPacket<'a>> {
        let bytes: &'a [u8] = match self.srtp.as_mut() {
            None => data,
            Some(_) if rtp::is_rtcp(data) => {
                // SRTCP muxed on the RTP port.
                self.read_rtcp(now, data, send_clock);
                return None;
            }
            Some(srtp) => match srtp.inbound.unprotect_rtp(data, &mut self.plain) {
                Ok(_) => {
                    self.counts.srtp_in += 1;
                    &self.plain
                }
                Err(e) => {
                    self.counts.srtp_dropped.count(e);
                    return None;
                }
            },
        };
        let packet = match rtp::classify(bytes) {
            Ok(Datagram::Rtp(p)) => p,
            Ok(Datagram::Rtcp) => {
                Self::on_rtcp(&mut self.counts, &mut self.rtcp, &mut self.far_end, self.ssrc, now, bytes, send_clock);
                return None;
            }
            Err(_) => {
                self.counts.malformed += 1;
                return None;
            }
        };
        match self.latch.on_packet(from) {
            Verdict::Accept => {}
            Verdict::Latched(addr) => out.events.push(Event::Latched(addr)),
            Verdict::Foreign => {
                self.counts.foreign += 1;
                return None;
            }
        }
        if let Some((state, _)) = &mut self.rtcp {
            state.reception.on_packet(packet.ssrc, packet.sequence);
        }
        Some(packet)
    }

    /// A datagram on the call's RTCP port (the odd one); under SRTP it must
    /// authenticate as SRTCP before it is read. Symmetric RTCP (RFC 4961): with
    /// symmetric RTP, the node's reports go back to where the far end's come from, as
    /// its RTP does, when that is the RTP peer's host (a NAT may give RTCP a port of its
    /// own); a packet that fails SRTCP or is not RTCP never moves it.
    pub(super) fn receive_rtcp(&mut self, now: Instant, from: SocketAddr, data: &[u8], send_clock: u32) {
        let taken = self.read_rtcp(now, data, send_clock);
        if taken && self.latch.is_symmetric() && self.latch.target().is_some_and(|t| t.ip() == from.ip()) {
            if let Some((state, RtcpTarget::Separate(None))) = &mut self.rtcp {
                state.symmetric_to = Some(from);
            }
        }
    }

    /// RTCP from the far end, on either port: through SRTCP when the call has keys (a
    /// failure is counted and read no further). True when it was read.
    fn read_rtcp(&mut self, now: Instant, data: &[u8], send_clock: u32) -> bool {
        let Some(srtp) = self.srtp.as_mut() else {
            return Self::on_rtcp(&mut self.counts, &mut self.rtcp, &mut self.far_end, self.ssrc, now, data, send_clock);
        };
        match srtp.inbound.unprotect_rtcp(data, &mut self.plain) {
            Ok(()) => {
                self.counts.srtp_in += 1;
                Self::on_rtcp(&mut self.counts, &mut self.rtcp, &mut self.far_end, self.ssrc, now, &self.plain, send_clock)
            }
            Err(e) => {
                self.counts.srtp_dropped.count(e);
                false
            }
        }
    }

    /// Plain RTCP from the far end: counted, and read for the round trip and for what
    /// it hears of the node (only on calls that run RTCP). It never moves the latch.
    /// True when it was well-formed RTCP on a call that runs RTCP. (Fields apart, so the
    /// plain text buffer may be read meanwhile.)
    fn on_rtcp(
        counts: &mut Counts,
        rtcp: &mut Option<(RtcpState, RtcpTarget)>,
        far_end: &mut Option<FarEndReport>,
        ssrc: u32,
        now: Instant,
        data: &[u8],
        send_clock: u32,
    ) -> bool {
        counts.rtcp += 1;
        let Some((state, _)) = rtcp.as_mut() else { return false };
        match rtcp::parse(data) {
            Ok(r) => {
                if let Some(f) = state.on_received(now, &r, ssrc, send_clock) {
                    *far_end = Some(f);
                }
                true
            }
            Err(_) => {
                counts.rtcp_malformed += 1;
                false
            }
        }
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
