//! RTCP the node sends (RFC 3550 §6): a sender report (or a receiver report while the
//! node is on hold and sends nothing) with one reception report about the caller, and
//! the SDES CNAME every compound packet must carry; a BYE when the call ends. And the
//! reports the far end sends, read for the round trip (LSR/DLSR) and for the loss and
//! jitter it sees of the node's audio.
//!
//! Only calls set up by SDP send RTCP: a call that never negotiated keeps today's
//! behaviour on the wire, RTP alone.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const SR: u8 = 200;
pub const RR: u8 = 201;
pub const SDES: u8 = 202;
pub const BYE: u8 = 203;

/// RFC 3550 §6.2's minimum interval; each one is randomised over [0.5, 1.5] of it.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Seconds from the NTP epoch (1900) to the Unix epoch.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// A 64-bit NTP timestamp (RFC 3550 §4) for a wall-clock time.
pub fn ntp(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    ((d.as_secs() + NTP_UNIX_OFFSET) << 32) | ((u64::from(d.subsec_nanos()) << 32) / 1_000_000_000)
}

/// The middle 32 bits of an NTP timestamp (what LSR and the round trip use).
pub fn ntp_middle(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// A duration in units of 1/65536 s (DLSR).
fn units_65536(d: Duration) -> u32 {
    ((d.as_nanos() << 16) / 1_000_000_000).min(u32::MAX as u128) as u32
}

/// Reception statistics of one source (RFC 3550 Appendix A.1 and A.3).
#[derive(Debug, Clone, Default)]
pub struct Reception {
    ssrc: Option<u32>,
    base_seq: u16,
    max_seq: u16,
    /// Sequence wraps, shifted by 16.
    cycles: u32,
    /// A large jump is believed once the next packet follows it.
    bad_seq: Option<u16>,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
}

/// How far a sequence number may jump ahead and still be the same stream.
const MAX_DROPOUT: u16 = 3000;
/// How far behind it may be and still count as reordered.
const MAX_MISORDER: u16 = 100;

impl Reception {
    pub fn ssrc(&self) -> Option<u32> {
        self.ssrc
    }

    pub fn on_packet(&mut self, ssrc: u32, seq: u16) {
        if self.ssrc != Some(ssrc) {
            // A new source (or the far end's SSRC changed on a re-INVITE).
            self.restart(ssrc, seq);
            return;
        }
        let delta = seq.wrapping_sub(self.max_seq);
        if delta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles += 1 << 16;
            }
            self.max_seq = seq;
        } else if delta <= u16::MAX - MAX_MISORDER {
            // A very large jump: the sender restarted, if the next packet follows it.
            if self.bad_seq == Some(seq) {
                self.restart(ssrc, seq);
            } else {
                self.bad_seq = Some(seq.wrapping_add(1));
            }
            return;
        }
        // Otherwise a duplicate or a reordered packet: counted, the highest stays.
        self.received += 1;
    }

    fn restart(&mut self, ssrc: u32, seq: u16) {
        *self = Reception { ssrc: Some(ssrc), base_seq: seq, max_seq: seq, received: 1, ..Default::default() };
    }

    pub fn extended_max(&self) -> u32 {
        self.cycles | u32::from(self.max_seq)
    }

    fn expected(&self) -> u64 {
        u64::from(self.extended_max()).wrapping_sub(u64::from(self.base_seq)) + 1
    }

    /// Packets lost since the start (negative with duplicates), clamped to 24 bits.
    pub fn cumulative_lost(&self) -> i32 {
        (self.expected() as i64 - self.received as i64).clamp(-0x80_0000, 0x7f_ffff) as i32
    }

    /// The report block's fields that need the interval since the last report: the
    /// fraction lost (of 256) over it. Starts the next interval.
    pub fn fraction_lost(&mut self) -> u8 {
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost = expected_interval as i64 - received_interval as i64;
        if expected_interval == 0 || lost <= 0 {
            0
        } else {
            ((lost << 8) / expected_interval as i64).min(255) as u8
        }
    }
}

/// One reception report (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlock {
    pub ssrc: u32,
    pub fraction_lost: u8,
    pub cumulative_lost: i32,
    pub extended_max: u32,
    /// Interarrival jitter in RTP timestamp units.
    pub jitter: u32,
    pub lsr: u32,
    pub dlsr: u32,
}

/// What a sender report says of its sender's own stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderInfo {
    pub ntp: u64,
    pub rtp_timestamp: u32,
    pub packets: u32,
    /// Payload octets (RFC 3550: headers and padding not counted).
    pub octets: u32,
}

fn header(out: &mut Vec<u8>, count: u8, pt: u8, words_after: usize) {
    out.push(0x80 | (count & 0x1f));
    out.push(pt);
    out.extend_from_slice(&(words_after as u16).to_be_bytes());
}

fn block(out: &mut Vec<u8>, b: &ReportBlock) {
    out.extend_from_slice(&b.ssrc.to_be_bytes());
    out.push(b.fraction_lost);
    out.extend_from_slice(&b.cumulative_lost.to_be_bytes()[1..]);
    for v in [b.extended_max, b.jitter, b.lsr, b.dlsr] {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// The SDES chunk with the CNAME, padded to a word with at least one null octet.
fn sdes(out: &mut Vec<u8>, ssrc: u32, cname: &str) {
    let cname = &cname.as_bytes()[..cname.len().min(255)];
    let items = 2 + cname.len() + 1;
    let padded = items.div_ceil(4) * 4;
    header(out, 1, SDES, 1 + padded / 4);
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.push(1);
    out.push(cname.len() as u8);
    out.extend_from_slice(cname);
    out.resize(out.len() + padded - items + 1, 0);
}

/// A compound report: SR when `sender` is given, else RR; then SDES CNAME.
pub fn report(ssrc: u32, sender: Option<SenderInfo>, blocks: &[ReportBlock], cname: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(28 + 24 * blocks.len() + 12 + cname.len());
    match sender {
        Some(s) => {
            header(&mut out, blocks.len() as u8, SR, 6 + 6 * blocks.len());
            out.extend_from_slice(&ssrc.to_be_bytes());
            out.extend_from_slice(&s.ntp.to_be_bytes());
            for v in [s.rtp_timestamp, s.packets, s.octets] {
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
        None => {
            header(&mut out, blocks.len() as u8, RR, 1 + 6 * blocks.len());
            out.extend_from_slice(&ssrc.to_be_bytes());
        }
    }
    for b in blocks {
        block(&mut out, b);
    }
    sdes(&mut out, ssrc, cname);
    out
}

/// The compound packet that ends the node's stream: an empty RR, SDES, then BYE
/// (RFC 3550 §6.1: a BYE is the last packet of a compound).
pub fn goodbye(ssrc: u32, cname: &str) -> Vec<u8> {
    let mut out = report(ssrc, None, &[], cname);
    header(&mut out, 1, BYE, 1);
    out.extend_from_slice(&ssrc.to_be_bytes());
    out
}

/// What one compound packet from the far end said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    /// Who sent it: the SSRC of the compound's first report (SR or RR).
    pub ssrc: Option<u32>,
    /// The sender report's sender and its NTP timestamp.
    pub sender: Option<(u32, u64)>,
    pub blocks: Vec<ReportBlock>,
    pub bye: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("RTCP packet of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("RTCP version is not 2")]
    Version,
    #[error("RTCP length runs past the datagram")]
    Length,
}

/// Reads a compound RTCP packet (plain, after SRTCP took its trailer off). Packet types
/// the node does not read (APP, feedback, XR) are stepped over by their length.
pub fn parse(data: &[u8]) -> Result<Received, Malformed> {
    let mut r = Received::default();
    let mut rest = data;
    if rest.len() < 4 {
        return Err(Malformed::Short(rest.len()));
    }
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(Malformed::Short(rest.len()));
        }
        if rest[0] >> 6 != 2 {
            return Err(Malformed::Version);
        }
        let count = usize::from(rest[0] & 0x1f);
        let pt = rest[1];
        let len = (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1) * 4;
        if len > rest.len() {
            return Err(Malformed::Length);
        }
        let body = &rest[4..len];
        let word = |at: usize| body.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        if matches!(pt, SR | RR) && r.ssrc.is_none() {
            r.ssrc = word(0);
        }
        let blocks_at = match pt {
            SR if body.len() >= 24 => {
                let ntp = (u64::from(word(4).unwrap_or(0)) << 32) | u64::from(word(8).unwrap_or(0));
                r.sender = Some((word(0).unwrap_or(0), ntp));
                Some(24)
            }
            RR if body.len() >= 4 => Some(4),
            BYE => {
                r.bye = true;
                None
            }
            _ => None,
        };
        if let Some(at) = blocks_at {
            for k in 0..count {
                let b = at + 24 * k;
                let (Some(ssrc), Some(lost), Some(ext), Some(jitter), Some(lsr), Some(dlsr)) =
                    (word(b), word(b + 4), word(b + 8), word(b + 12), word(b + 16), word(b + 20))
                else {
                    return Err(Malformed::Length);
                };
                // The 24-bit cumulative loss is signed.
                let cumulative_lost = ((lost << 8) as i32) >> 8;
                r.blocks.push(ReportBlock {
                    ssrc,
                    fraction_lost: (lost >> 24) as u8,
                    cumulative_lost,
                    extended_max: ext,
                    jitter,
                    lsr,
                    dlsr,
                });
            }
        }
        rest = &rest[len..];
    }
    Ok(r)
}

/// What the far end reports of the node's audio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FarEndReport {
    pub fraction_lost: f64,
    pub jitter_seconds: f64,
    /// None until the far end echoes one of the node's sender reports.
    pub round_trip: Option<Duration>,
}

/// The RTCP side of a call: when to report, what the last sender report from the far
/// end was (for LSR/DLSR), and what the node sent (for its own SR).
#[derive(Debug, Clone)]
pub struct RtcpState {
    /// The wall-clock time of the session's start, so reports carry NTP time.
    wall_start: SystemTime,
    start: Instant,
    /// None until the first tick, which schedules the first report.
    next_report: Option<Instant>,
    rng: u64,
    pub reception: Reception,
    /// The far end's last SR: its NTP middle bits and when it arrived.
    last_sr: Option<(u32, Instant)>,
    pub packets_sent: u32,
    pub octets_sent: u32,
    pub cname: String,
    /// Where the far end's RTCP came from (symmetric RTCP), once it has.
    pub symmetric_to: Option<std::net::SocketAddr>,
}

impl RtcpState {
    pub fn new(start: Instant, wall_start: SystemTime, ssrc: u32) -> RtcpState {
        RtcpState {
            wall_start,
            start,
            next_report: None,
            rng: u64::from(ssrc) | 1 << 40,
            reception: Reception::default(),
            last_sr: None,
            packets_sent: 0,
            octets_sent: 0,
            cname: format!("media-node-{ssrc:08x}"),
            symmetric_to: None,
        }
    }

    /// `d` times a factor over [0.5, 1.5] (xorshift: the core takes no entropy).
    fn randomised(&mut self, d: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        d.mul_f64(0.5 + (self.rng % 1000) as f64 / 1000.0)
    }

    pub fn ntp_at(&self, now: Instant) -> u64 {
        ntp(self.wall_start + now.saturating_duration_since(self.start))
    }

    /// True when a report is due, and the next one is scheduled.
    pub fn due(&mut self, now: Instant) -> bool {
        match self.next_report {
            // RFC 3550 §6.2: the first report after half the minimum interval.
            None => {
                self.next_report = Some(now + self.randomised(INTERVAL / 2));
                false
            }
            Some(at) if now < at => false,
            Some(_) => {
                self.next_report = Some(now + self.randomised(INTERVAL));
                true
            }
        }
    }

    pub fn on_sent(&mut self, payload_len: usize) {
        self.packets_sent = self.packets_sent.wrapping_add(1);
        self.octets_sent = self.octets_sent.wrapping_add(payload_len as u32);
    }

    /// The report block about the caller, if it has sent anything. `jitter` in the
    /// caller's RTP timestamp units.
    pub fn block(&mut self, now: Instant, jitter: u32) -> Option<ReportBlock> {
        let ssrc = self.reception.ssrc()?;
        let (lsr, dlsr) = match self.last_sr {
            Some((lsr, at)) => (lsr, units_65536(now.saturating_duration_since(at))),
            None => (0, 0),
        };
        Some(ReportBlock {
            ssrc,
            fraction_lost: self.reception.fraction_lost(),
            cumulative_lost: self.reception.cumulative_lost(),
            extended_max: self.reception.extended_max(),
            jitter,
            lsr,
            dlsr,
        })
    }

    /// Takes what a far end's compound packet says: its SR for our next LSR, and its
    /// report about `own_ssrc` (the node's stream), with the round trip when it echoes
    /// one of our reports. `clock` is the node's sending RTP clock rate.
    pub fn on_received(&mut self, now: Instant, r: &Received, own_ssrc: u32, clock: u32) -> Option<FarEndReport> {
        if let Some((_, ntp)) = r.sender {
            self.last_sr = Some((ntp_middle(ntp), now));
        }
        let b = r.blocks.iter().find(|b| b.ssrc == own_ssrc)?;
        let round_trip = (b.lsr != 0).then(|| {
            let rtt = ntp_middle(self.ntp_at(now)).wrapping_sub(b.lsr).wrapping_sub(b.dlsr);
            // A far end whose clocks disagree can make this wrap: such a trip is not one.
            Duration::from_nanos((u64::from(rtt) * 1_000_000_000) >> 16)
        });
        Some(FarEndReport {
            fraction_lost: f64::from(b.fraction_lost) / 256.0,
            jitter_seconds: f64::from(b.jitter) / f64::from(clock.max(1)),
            round_trip: round_trip.filter(|d| *d < Duration::from_secs(60)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_report_reads_back_field_for_field() {
        let b = ReportBlock {
            ssrc: 7,
            fraction_lost: 64,
            cumulative_lost: -3,
            extended_max: 70_000,
            jitter: 12,
            lsr: 0xabcd_0123,
            dlsr: 65536,
        };
        let s = SenderInfo { ntp: 0x1122_3344_5566_7788, rtp_timestamp: 160, packets: 50, octets: 8000 };
        let data = report(0xdead_beef, Some(s), &[b], "media-node-x");
        assert_eq!(data.len() % 4, 0);
        assert_eq!(&data[..2], &[0x81, SR]);
        // The SR is 52 bytes, 13 words: its length field says 12. SDES follows.
        assert_eq!(u16::from_be_bytes([data[2], data[3]]), 12);
        assert_eq!(data[52 + 1], SDES);
        let r = parse(&data).unwrap();
        assert_eq!(r.sender, Some((0xdead_beef, s.ntp)));
        assert_eq!(r.blocks, vec![b]);
        assert!(!r.bye);
        assert!(super::super::rtp::is_rtcp(&data), "muxed, it is told apart from RTP");
    }

    #[test]
    fn a_receiver_report_and_goodbye() {
        let data = goodbye(5, "c");
        let r = parse(&data).unwrap();
        assert!(r.bye && r.sender.is_none() && r.blocks.is_empty());
        assert_eq!(&data[data.len() - 8..data.len() - 4], &[0x81, BYE, 0, 1]);
        // The CNAME item padded with at least one null octet, to a word.
        for name in ["", "a", "ab", "abc", "abcd"] {
            let d = report(1, None, &[], name);
            assert_eq!(d.len() % 4, 0, "{name:?}");
            assert_eq!(d[d.len() - 1], 0);
            parse(&d).unwrap();
        }
    }

    #[test]
    fn malformed_compounds_are_refused() {
        let good = report(1, None, &[], "x");
        assert_eq!(parse(&good[..3]), Err(Malformed::Short(3)));
        assert_eq!(parse(&good[..good.len() - 4]), Err(Malformed::Length));
        let mut bad = good.clone();
        bad[0] = 0x40;
        assert_eq!(parse(&bad), Err(Malformed::Version));
        // An RR claiming two blocks in a body of none.
        let mut lying = good;
        lying[0] = 0x82;
        assert_eq!(parse(&lying), Err(Malformed::Length));
    }

    #[test]
    fn loss_counts_across_the_wrap_and_reordering() {
        let mut r = Reception::default();
        let mut seq: u16 = 65_500;
        let mut sent = 0u32;
        for k in 0..200u32 {
            // Every 10th packet lost; the 5th and 6th of each ten swapped.
            sent += 1;
            if k % 10 != 9 {
                let s = if k % 10 == 4 {
                    seq.wrapping_add(1)
                } else if k % 10 == 5 {
                    seq.wrapping_sub(1)
                } else {
                    seq
                };
                r.on_packet(42, s);
            }
            seq = seq.wrapping_add(1);
        }
        assert_eq!(r.extended_max(), (1 << 16) | u32::from(seq.wrapping_sub(2)), "the last packet sent was lost");
        assert_eq!(r.cumulative_lost(), 19, "20 lost, the last one not yet known");
        let f = r.fraction_lost();
        assert!((f as f64 / 256.0 - 19.0 / 199.0).abs() < 0.01, "{f}");
        assert_eq!(r.fraction_lost(), 0, "nothing new since the last report");
        let _ = sent;
        // A restart at a far sequence number is believed on its second packet.
        r.on_packet(42, 30_000);
        assert_eq!(r.cumulative_lost(), 19);
        r.on_packet(42, 30_001);
        assert_eq!((r.extended_max(), r.cumulative_lost()), (30_001, 0));
        // A new SSRC starts over.
        r.on_packet(43, 9);
        assert_eq!((r.ssrc(), r.extended_max()), (Some(43), 9));
    }

    #[test]
    fn the_round_trip_comes_from_an_echoed_report() {
        let start = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = RtcpState::new(start, wall, 99);
        // Our SR goes out at 1 s; the far end holds it 250 ms and answers at 1.4 s.
        let sent = ntp_middle(s.ntp_at(start + Duration::from_secs(1)));
        let b = ReportBlock { ssrc: 99, fraction_lost: 128, cumulative_lost: 5, extended_max: 10, jitter: 80, lsr: sent, dlsr: 65536 / 4 };
        let r = Received { ssrc: Some(7), sender: Some((7, 0x0001_2345_6789_0000)), blocks: vec![b], bye: false };
        let f = s.on_received(start + Duration::from_millis(1400), &r, 99, 8000).unwrap();
        let rtt = f.round_trip.unwrap();
        assert!((rtt.as_secs_f64() - 0.150).abs() < 0.001, "{rtt:?}");
        assert_eq!((f.fraction_lost, f.jitter_seconds), (0.5, 0.01));
        // Their SR is echoed in our next block, with the time we held it.
        s.reception.on_packet(7, 1);
        let ours = s.block(start + Duration::from_millis(1900), 0).unwrap();
        assert_eq!(ours.lsr, 0x2345_6789);
        assert_eq!(ours.dlsr, 65536 / 2);
        // A report about someone else is not about us.
        assert!(s.on_received(start, &Received { blocks: vec![ReportBlock { ssrc: 1, ..b }], ..Default::default() }, 99, 8000).is_none());
    }

    #[test]
    fn reports_are_spaced_around_the_interval() {
        let start = Instant::now();
        let mut s = RtcpState::new(start, SystemTime::now(), 1234);
        let mut at = Vec::new();
        let mut now = start;
        while now < start + Duration::from_secs(300) {
            if s.due(now) {
                at.push(now);
            }
            now += Duration::from_millis(20);
        }
        assert!(at[0] >= start + INTERVAL / 4 && at[0] <= start + INTERVAL * 3 / 4, "first after half the interval");
        let gaps: Vec<f64> = at.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
        assert!(gaps.iter().all(|g| (2.5..=7.6).contains(g)), "{gaps:?}");
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        assert!((4.0..6.0).contains(&mean), "{mean}");
        assert!(gaps.windows(2).any(|w| (w[0] - w[1]).abs() > 0.1), "randomised, not a fixed period");
    }

    #[test]
    fn ntp_time_is_since_1900() {
        let t = UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(ntp(t), ((NTP_UNIX_OFFSET + 1) << 32) | (1 << 31));
        assert_eq!(ntp_middle(ntp(t)), (((NTP_UNIX_OFFSET + 1) & 0xffff) << 16) as u32 | 0x8000);
    }
}
