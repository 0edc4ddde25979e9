//! The call's DTMF beyond detection (which the inbound analysis does): which payload
//! type carries telephone-events, digits the agent sends out as RFC 4733 events, and
//! redaction of the caller's digits from what listeners and the recording get.

use super::io::{Counters, Event};
use crate::core::analysis::redact::Redactor;
use crate::core::analysis::{DtmfSource, Signal};
use crate::core::dtmf_out::{DigitFrame, DigitSender};
use crate::core::jitter::{Heard, RATE};

/// The telephone-event payload type SIP stacks offer by custom.
pub const TELEPHONE_EVENT_PT: u8 = 101;
/// No telephone-event negotiated (an RTP payload type is 7 bits, so this never matches).
const NO_PT: u8 = 0xff;

pub(super) struct Dtmf {
    /// The telephone-event payload type both ways.
    payload_type: u8,
    /// Its clock over the call's 8 kHz (6 for telephone-event/48000 beside Opus).
    clock_ratio: u32,
    /// Digits going out, if any.
    sending: Option<DigitSender>,
    /// Set while DTMF redaction is on.
    redactor: Option<Redactor>,
    /// What the redactor had silenced when last reported.
    reported_redacted: u64,
    /// Samples silenced by a redactor since turned off, not yet reported.
    redacted: u64,
    /// The jitter buffer's fresh output, on its way through the redactor.
    redact_buf: Vec<Heard>,
}

impl Dtmf {
    pub(super) fn new(payload_type: u8) -> Dtmf {
        Dtmf { payload_type, clock_ratio: 1, sending: None, redactor: None, reported_redacted: 0, redacted: 0, redact_buf: Vec::new() }
    }

    pub(super) fn payload_type(&self) -> u8 {
        self.payload_type
    }

    pub(super) fn clock_ratio(&self) -> u32 {
        self.clock_ratio
    }

    /// Offer/answer's telephone-event payload type (None: none negotiated) and the
    /// clock its events count in.
    pub(super) fn set_events(&mut self, pt: Option<u8>, clock: u32) {
        self.payload_type = pt.unwrap_or(NO_PT);
        self.clock_ratio = (clock / 8000).max(1);
    }

    /// Is this packet a telephone-event?
    pub(super) fn is_event(&self, payload_type: u8) -> bool {
        self.payload_type != NO_PT && payload_type == self.payload_type
    }

    /// Digits to send, counted on the events' clock. Digits still going out are
    /// replaced (the I/O layer answers their sender); DigitsSent then speaks of the new
    /// ones only.
    pub(super) fn send(&mut self, mut digits: DigitSender) {
        digits.set_clock_ratio(self.clock_ratio);
        self.sending = Some(digits);
    }

    /// The frame's telephone-event (or pause) while digits go out; None when none do,
    /// and `DigitsSent` once the last has.
    pub(super) fn next_frame(&mut self, events: &mut Vec<Event>) -> Option<DigitFrame> {
        let sender = self.sending.as_mut()?;
        let frame = sender.next_frame();
        if frame.is_none() {
            self.sending = None;
            events.push(Event::DigitsSent);
        }
        frame
    }

    pub(super) fn redact(&mut self, on: bool, heard: &mut Vec<Heard>) {
        if on {
            if self.redactor.is_none() {
                self.redactor = Some(Redactor::default());
                self.reported_redacted = 0;
            }
        } else {
            self.stop_redacting(heard);
        }
    }

    /// Hands on what the redactor holds (nothing of the caller's audio is lost).
    pub(super) fn stop_redacting(&mut self, heard: &mut Vec<Heard>) {
        if let Some(mut r) = self.redactor.take() {
            r.flush(heard);
            self.redacted += r.silenced - self.reported_redacted;
        }
    }

    /// A digit the analysis found: its span is silenced while redaction is on
    /// (`heard_end`: the end of the caller's audio analysed so far).
    pub(super) fn on_signal(&mut self, s: &Signal, heard_end: u64) {
        let Some(r) = self.redactor.as_mut() else { return };
        if let Signal::Dtmf { pos, duration_ms, end, source, .. } = *s {
            if !end {
                r.digit_started(pos);
            } else {
                let mut until = pos + duration_ms as u64 * u64::from(RATE) / 1000;
                if source == DtmfSource::Rfc4733 {
                    // The event's duration is the trunk's word for it; the tone it may
                    // have left in the audio lasts until the end arrived.
                    until = until.max(heard_end);
                }
                r.digit_ended(pos, until);
            }
        }
    }

    /// The caller's audio from `first` on, through the redactor while it is on (held
    /// back by its delay line).
    pub(super) fn pass(&mut self, heard: &mut Vec<Heard>, first: usize, heard_end: u64) {
        if let Some(r) = self.redactor.as_mut() {
            self.redact_buf.extend(heard.drain(first..));
            r.pass(self.redact_buf.drain(..), heard_end, heard);
        }
    }

    pub(super) fn take_counters(&mut self, c: &mut Counters) {
        c.redacted_samples = std::mem::take(&mut self.redacted);
        if let Some(r) = &self.redactor {
            c.redacted_samples += r.silenced - self.reported_redacted;
            self.reported_redacted = r.silenced;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::analysis::DtmfSource;

    #[test]
    fn no_payload_type_matches_when_none_was_negotiated() {
        let mut d = Dtmf::new(TELEPHONE_EVENT_PT);
        assert!(d.is_event(101) && !d.is_event(0));
        d.set_events(None, 8000);
        assert!((0..=127).all(|pt| !d.is_event(pt)));
        d.set_events(Some(96), 8000);
        assert!(d.is_event(96));
    }

    #[test]
    fn digits_go_out_then_digits_sent_once() {
        let mut d = Dtmf::new(TELEPHONE_EVENT_PT);
        let mut events = Vec::new();
        assert_eq!(d.next_frame(&mut events), None);
        assert!(events.is_empty());
        d.send(DigitSender::new("1", 800, 480).unwrap());
        let frames = std::iter::from_fn(|| d.next_frame(&mut events)).count();
        assert_eq!(frames, 10, "7 of event (with 2 repeated ends), 3 of pause");
        assert_eq!(events, vec![Event::DigitsSent]);
        assert_eq!(d.next_frame(&mut events), None);
        assert_eq!(events.len(), 1);
    }

    fn heard(pos: u64, v: i16) -> Heard {
        Heard { pos, wall_pos: pos, pcm: vec![v; 160], wide: Vec::new(), concealed: false, late: false, as_sent: None }
    }

    #[test]
    fn redaction_silences_a_digit_and_its_count_survives_turning_off() {
        let mut d = Dtmf::new(TELEPHONE_EVENT_PT);
        let mut out = Vec::new();
        d.redact(true, &mut out);
        let digit = |end| Signal::Dtmf { digit: '5', pos: 1600, duration_ms: 100, end, source: DtmfSource::InBand };
        d.on_signal(&digit(false), 1760);
        d.on_signal(&digit(true), 2400);
        for k in 0..20 {
            out.push(heard(k * 160, 1000));
            let first = out.len() - 1;
            d.pass(&mut out, first, (k + 1) * 160);
        }
        d.redact(false, &mut out);
        assert_eq!(out.len(), 20, "every frame handed on");
        let silent = out.iter().filter(|h| h.pcm.iter().all(|&s| s == 0)).count();
        // 1600 - 160 .. 2400 + 160: frames 9 to 15.
        assert_eq!(silent, 7);
        let mut c = Counters::default();
        d.take_counters(&mut c);
        assert_eq!(c.redacted_samples, 7 * 160);
    }
}
