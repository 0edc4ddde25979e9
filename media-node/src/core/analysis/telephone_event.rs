//! RFC 4733 telephone-events: the digits a trunk sends as RTP instead of tones.
//!
//! One digit is many packets with the same RTP timestamp (the event's start): updates
//! with a growing duration, then an end packet that senders repeat (usually three
//! times) because it must not be lost. The receiver turns that into one start and one
//! end per digit, counts repeated ends once, and when an end never arrives (every copy
//! lost) ends the digit itself: at the next event, or when packets stop coming.

use std::time::{Duration, Instant};

/// Event codes 0-15 are the DTMF digits (RFC 4733 §3.2).
const DIGITS: &[u8; 16] = b"0123456789*#ABCD";

/// An event ends by itself this long after its last packet (senders refresh every
/// 50 ms at most; RFC 4733 §2.5.1.5 leaves the receiver's timeout to it).
pub const STALE_AFTER: Duration = Duration::from_millis(800);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToneEvent {
    pub event: u8,
    pub end: bool,
    /// Power level as -dBm0 (0-63).
    pub volume: u8,
    /// Duration so far in RTP timestamp units.
    pub duration: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("telephone-event payload of {0} bytes (at least 4 expected)")]
pub struct Malformed(pub usize);

/// Parses the first (and in practice only) event block of a payload.
pub fn parse(payload: &[u8]) -> Result<ToneEvent, Malformed> {
    if payload.len() < 4 {
        return Err(Malformed(payload.len()));
    }
    Ok(ToneEvent {
        event: payload[0],
        end: payload[1] & 0x80 != 0,
        volume: payload[1] & 0x3f,
        duration: u16::from_be_bytes([payload[2], payload[3]]),
    })
}

pub fn encode(ev: ToneEvent) -> [u8; 4] {
    let d = ev.duration.to_be_bytes();
    [ev.event, (if ev.end { 0x80 } else { 0 }) | (ev.volume & 0x3f), d[0], d[1]]
}

/// The DTMF digit of an event code, None for the other events (fax tones, ...).
pub fn digit(event: u8) -> Option<char> {
    DIGITS.get(event as usize).map(|&b| b as char)
}

/// The event code of a DTMF digit.
pub fn event_code(digit: char) -> Option<u8> {
    DIGITS.iter().position(|&b| b as char == digit.to_ascii_uppercase()).map(|i| i as u8)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    Started {
        digit: char,
        timestamp: u32,
    },
    /// `duration` in RTP timestamp units; `end_seen` false when every end packet was
    /// lost and the receiver ended it.
    Ended {
        digit: char,
        timestamp: u32,
        duration: u32,
        end_seen: bool,
    },
}

struct Active {
    timestamp: u32,
    digit: char,
    duration: u32,
    last_packet: Instant,
}

#[derive(Default)]
pub struct EventReceiver {
    active: Option<Active>,
    /// Timestamps of events already ended: their repeated end packets (and late
    /// updates) are not a new digit.
    ended: [Option<u32>; 4],
    next_slot: usize,
    /// Packets that repeated what was already known (redundant ends, late updates).
    pub duplicates: u64,
    /// Events that are not DTMF digits, or malformed payloads.
    pub ignored: u64,
}

impl EventReceiver {
    pub fn on_packet(&mut self, now: Instant, timestamp: u32, payload: &[u8], out: &mut Vec<Received>) {
        let Ok(ev) = parse(payload) else {
            self.ignored += 1;
            return;
        };
        let Some(digit) = digit(ev.event) else {
            self.ignored += 1;
            return;
        };
        if self.ended.contains(&Some(timestamp)) {
            self.duplicates += 1;
            return;
        }
        if self.active.as_ref().is_some_and(|a| a.timestamp != timestamp) {
            // A new event while the old one never ended: its end packets were lost.
            self.end_active(false, out);
        }
        let a = self.active.get_or_insert_with(|| {
            out.push(Received::Started { digit, timestamp });
            Active { timestamp, digit, duration: 0, last_packet: now }
        });
        a.duration = a.duration.max(ev.duration as u32);
        a.last_packet = now;
        if ev.end {
            self.end_active(true, out);
        }
    }

    /// Ends an event whose packets stopped coming.
    pub fn on_tick(&mut self, now: Instant, out: &mut Vec<Received>) {
        if self.active.as_ref().is_some_and(|a| now.saturating_duration_since(a.last_packet) >= STALE_AFTER) {
            self.end_active(false, out);
        }
    }

    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    fn end_active(&mut self, end_seen: bool, out: &mut Vec<Received>) {
        if let Some(a) = self.active.take() {
            out.push(Received::Ended { digit: a.digit, timestamp: a.timestamp, duration: a.duration, end_seen });
            self.ended[self.next_slot] = Some(a.timestamp);
            self.next_slot = (self.next_slot + 1) % self.ended.len();
        }
    }
}

/// The packets that send one digit (RFC 4733 §2.5.1): an update every `step`
/// timestamp units, then the end packet three times. Returns (timestamp offset from
/// the event's start is always 0; marker on the first) as (marker, payload) pairs.
pub fn digit_packets(digit: char, duration: u32, step: u32, volume: u8) -> Option<Vec<(bool, [u8; 4])>> {
    let event = event_code(digit)?;
    let duration = duration.min(u16::MAX as u32);
    let mut out = Vec::new();
    let mut d = step.min(duration);
    loop {
        let end = d >= duration;
        if end {
            for _ in 0..3 {
                out.push((false, encode(ToneEvent { event, end: true, volume, duration: duration as u16 })));
            }
            break;
        }
        out.push((out.is_empty(), encode(ToneEvent { event, end: false, volume, duration: d as u16 })));
        d = (d + step).min(duration);
    }
    if let Some(first) = out.first_mut() {
        first.0 = true;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(event: u8, end: bool, duration: u16) -> [u8; 4] {
        encode(ToneEvent { event, end, volume: 10, duration })
    }

    #[test]
    fn parse_and_encode_round_trip() {
        let e = ToneEvent { event: 11, end: true, volume: 7, duration: 1200 };
        assert_eq!(parse(&encode(e)), Ok(e));
        assert_eq!(parse(&[1, 2, 3]), Err(Malformed(3)));
        assert_eq!(digit(11), Some('#'));
        assert_eq!(digit(16), None);
        assert_eq!(event_code('d'), Some(15));
        assert_eq!(event_code('x'), None);
    }

    #[test]
    fn one_digit_with_redundant_ends_is_reported_once() {
        let t0 = Instant::now();
        let mut r = EventReceiver::default();
        let mut out = Vec::new();
        for (i, (_, p)) in digit_packets('5', 800, 160, 10).unwrap().iter().enumerate() {
            r.on_packet(t0 + Duration::from_millis(20 * i as u64), 1000, p, &mut out);
        }
        assert_eq!(
            out,
            vec![
                Received::Started { digit: '5', timestamp: 1000 },
                Received::Ended { digit: '5', timestamp: 1000, duration: 800, end_seen: true }
            ]
        );
        assert_eq!(r.duplicates, 2, "the second and third end packets");
    }

    #[test]
    fn lost_ends_and_lost_starts_still_give_each_digit() {
        let t0 = Instant::now();
        let mut r = EventReceiver::default();
        let mut out = Vec::new();
        // '1': updates only, every end packet lost; then '2' begins.
        r.on_packet(t0, 0, &pkt(1, false, 160), &mut out);
        r.on_packet(t0, 0, &pkt(1, false, 320), &mut out);
        // '2': its first packets lost, only an update and one end arrive.
        r.on_packet(t0, 2000, &pkt(2, false, 480), &mut out);
        r.on_packet(t0, 2000, &pkt(2, true, 640), &mut out);
        // A late update of '2' after its end, and a duplicate of '1': no new digit.
        r.on_packet(t0, 2000, &pkt(2, false, 320), &mut out);
        r.on_packet(t0, 0, &pkt(1, false, 320), &mut out);
        let digits: Vec<_> = out
            .iter()
            .filter_map(|e| if let Received::Ended { digit, end_seen, .. } = e { Some((*digit, *end_seen)) } else { None })
            .collect();
        assert_eq!(digits, vec![('1', false), ('2', true)]);
        assert_eq!(out.len(), 4);
        assert_eq!(r.duplicates, 2);
    }

    #[test]
    fn a_digit_whose_packets_stop_ends_by_itself() {
        let t0 = Instant::now();
        let mut r = EventReceiver::default();
        let mut out = Vec::new();
        r.on_packet(t0, 5, &pkt(10, false, 400), &mut out);
        r.on_tick(t0 + Duration::from_millis(500), &mut out);
        assert!(r.is_active());
        r.on_tick(t0 + STALE_AFTER, &mut out);
        assert_eq!(out.last(), Some(&Received::Ended { digit: '*', timestamp: 5, duration: 400, end_seen: false }));
    }

    #[test]
    fn junk_and_other_events_are_counted_not_digits() {
        let mut r = EventReceiver::default();
        let mut out = Vec::new();
        r.on_packet(Instant::now(), 0, &[1, 2], &mut out);
        r.on_packet(Instant::now(), 0, &pkt(36, true, 100), &mut out); // fax CNG tone
        assert!(out.is_empty());
        assert_eq!(r.ignored, 2);
    }

    #[test]
    fn sending_a_digit_marks_the_first_packet_and_repeats_the_end() {
        let p = digit_packets('#', 1600, 400, 10).unwrap();
        let durations: Vec<_> = p.iter().map(|(_, b)| parse(b).unwrap().duration).collect();
        assert_eq!(durations, vec![400, 800, 1200, 1600, 1600, 1600]);
        assert!(p[0].0 && p[1..].iter().all(|(m, _)| !m));
        assert!(p[3..].iter().all(|(_, b)| parse(b).unwrap().end));
        assert!(digit_packets('x', 100, 10, 0).is_none());
    }
}
