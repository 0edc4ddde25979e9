//! Digits the agent sends into the call as RFC 4733 telephone-events (IVR navigation):
//! one event per digit, an update every 20 ms frame with the duration so far, the end
//! packet three times (RFC 4733 §2.5.1.4), then a pause before the next digit. While
//! digits go out the session sends them instead of audio (the prompt waits), on its
//! own sequence numbers and clock.

use std::collections::VecDeque;

use super::analysis::telephone_event::{encode, event_code, ToneEvent};
use super::jitter::FRAME_SAMPLES;

/// Volume of the events sent, as -dBm0.
const VOLUME: u8 = 10;
const END_REPEATS: u8 = 3;

/// What to send in one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigitFrame {
    /// A telephone-event packet: marker, the event's start offset (samples from the
    /// frame's own timeline position, 0 or negative), payload.
    Event { marker: bool, start_back: u32, payload: [u8; 4] },
    /// The pause between digits: nothing is sent.
    Pause,
}

#[derive(Debug, Clone)]
struct Current {
    event: u8,
    /// Samples sent so far of this event.
    elapsed: u32,
    ends_sent: u8,
}

/// Digits the agent asked to send, checked: 1 to 64 DTMF keys (any case), each
/// lasting 40 to 2000 ms (100 when not given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DigitRequest {
    /// Upper case, every one a DTMF key.
    pub digits: String,
    pub duration_ms: u32,
}

/// Why a SendDtmf request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigitsError {
    #[error("digits must be 1 to 64 of 0-9, *, #, A-D")]
    Length,
    #[error("{0:?} is not a DTMF digit (0-9, *, #, A-D)")]
    NotADigit(String),
    #[error("duration_ms {0} must be 40 to 2000")]
    Duration(u32),
}

impl DigitRequest {
    pub(crate) fn new(digits: &str, duration_ms: u32) -> Result<DigitRequest, DigitsError> {
        let digits = digits.to_ascii_uppercase();
        if digits.is_empty() || digits.len() > 64 {
            return Err(DigitsError::Length);
        }
        if let Some(bad) = digits.chars().find(|&c| event_code(c).is_none()) {
            return Err(DigitsError::NotADigit(bad.to_string()));
        }
        let duration_ms = if duration_ms == 0 { 100 } else { duration_ms };
        if !(40..=2000).contains(&duration_ms) {
            return Err(DigitsError::Duration(duration_ms));
        }
        Ok(DigitRequest { digits, duration_ms })
    }

    /// The digits as RFC 4733 events on the call's 8 kHz, `gap_ms` apart.
    pub(crate) fn sender(&self, gap_ms: u32) -> DigitSender {
        DigitSender::new(&self.digits, self.duration_ms * 8, gap_ms * 8).expect("checked DTMF digits")
    }
}

#[derive(Debug, Clone)]
pub struct DigitSender {
    digits: VecDeque<u8>,
    duration: u32,
    gap: u32,
    current: Option<Current>,
    pause_left: u32,
    /// The event clock over the call's 8 kHz (6 for telephone-event/48000 beside Opus).
    clock_ratio: u32,
}

impl DigitSender {
    /// `digits` must all be DTMF keys (checked by the caller); durations in samples.
    pub fn new(digits: &str, duration: u32, gap: u32) -> Option<DigitSender> {
        let digits = digits.chars().map(event_code).collect::<Option<VecDeque<u8>>>()?;
        Some(DigitSender { digits, duration: duration.max(FRAME_SAMPLES as u32), gap, current: None, pause_left: 0, clock_ratio: 1 })
    }

    /// Events counted on a clock `ratio` times the call's 8 kHz (durations and start
    /// offsets in its units).
    pub fn set_clock_ratio(&mut self, ratio: u32) {
        self.clock_ratio = ratio.max(1);
    }

    /// The next frame's packet; None once every digit has gone out.
    pub fn next_frame(&mut self) -> Option<DigitFrame> {
        let frame = FRAME_SAMPLES as u32;
        if self.current.is_none() {
            if self.pause_left > 0 {
                self.pause_left = self.pause_left.saturating_sub(frame);
                return Some(DigitFrame::Pause);
            }
            let event = self.digits.pop_front()?;
            self.current = Some(Current { event, elapsed: 0, ends_sent: 0 });
        }
        let c = self.current.as_mut().unwrap();
        let first = c.elapsed == 0;
        let start_back = c.elapsed;
        c.elapsed += frame;
        let end = c.elapsed >= self.duration;
        // A duration past 16 bits (1.36 s at 48 kHz) stays at the largest the field holds.
        let duration = (c.elapsed.min(self.duration) * self.clock_ratio).min(u16::MAX as u32) as u16;
        let payload = encode(ToneEvent { event: c.event, end, volume: VOLUME, duration });
        if end {
            c.ends_sent += 1;
            if c.ends_sent >= END_REPEATS {
                self.current = None;
                self.pause_left = self.gap;
            }
        }
        Some(DigitFrame::Event { marker: first, start_back: start_back * self.clock_ratio, payload })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::analysis::telephone_event::{EventReceiver, Received};
    use std::time::Instant;

    #[test]
    fn requests_are_checked_before_anything_is_sent() {
        assert_eq!(DigitRequest::new("12#a", 0), Ok(DigitRequest { digits: "12#A".into(), duration_ms: 100 }));
        assert_eq!(DigitRequest::new("", 100), Err(DigitsError::Length));
        assert_eq!(DigitRequest::new(&"1".repeat(65), 100), Err(DigitsError::Length));
        assert_eq!(DigitRequest::new("12x", 100).unwrap_err().to_string(), "\"X\" is not a DTMF digit (0-9, *, #, A-D)");
        assert_eq!(DigitRequest::new("1", 39), Err(DigitsError::Duration(39)));
        assert_eq!(DigitRequest::new("1", 2001), Err(DigitsError::Duration(2001)));
        let frames = std::iter::successors(Some(DigitRequest::new("5", 40).unwrap().sender(60)), |_| None)
            .map(|mut s| std::iter::from_fn(move || s.next_frame()).count())
            .sum::<usize>();
        assert_eq!(frames, 2 + 2 + 3, "40 ms of event (two frames, the last the first end), two repeated ends, 60 ms of pause");
    }

    #[test]
    fn digits_go_out_as_events_a_receiver_decodes() {
        let mut s = DigitSender::new("12#", 800, 480).unwrap();
        let mut r = EventReceiver::default();
        let mut out = Vec::new();
        let mut frames = 0;
        let mut pos = 10_000u32;
        while let Some(f) = s.next_frame() {
            if let DigitFrame::Event { start_back, payload, .. } = f {
                r.on_packet(Instant::now(), pos - start_back, &payload, &mut out);
            }
            pos += 160;
            frames += 1;
        }
        let ends: Vec<_> = out
            .iter()
            .filter_map(|e| if let Received::Ended { digit, duration, .. } = e { Some((*digit, *duration)) } else { None })
            .collect();
        assert_eq!(ends, vec![('1', 800), ('2', 800), ('#', 800)]);
        // 5 frames of event (the last the first end) + 2 repeated ends, then 3 of
        // pause, per digit: the pause after the last keeps audio from following at once.
        assert_eq!(frames, 3 * (7 + 3));
        assert_eq!(r.duplicates, 6);
        assert!(DigitSender::new("1x", 800, 0).is_none());
    }
}
