//! DTMF redaction: digits the caller keys (a card number, a PIN) are cut out of the
//! audio the agent hears and the recording keeps, silence in their place; the digit
//! events still arrive.
//!
//! A tone is known only once the detector has seen enough of it (two blocks, up to
//! about 38 ms after its first sample), so the caller's audio is held back by a short
//! delay line while redaction is on: a tone's start is silenced before it leaves.
//! Off, the audio flows without the delay, as it always has.

use std::collections::VecDeque;

use crate::core::jitter::Heard;

/// Audio held back while redaction is on (50 ms at 8 kHz): more than the in-band
/// detector needs to be sure of a tone (3 blocks of 102 samples from its first one)
/// plus the margin silenced before it.
pub const DELAY: u64 = 400;
/// Silenced before a digit's reported start and after its end (20 ms): the partial
/// detector blocks at either end of a tone, and the tail an RFC 4733 trunk leaves.
pub const MARGIN: u64 = 160;
/// Spans kept after they end, for audio that arrives late (the recording takes it).
const KEEP: u64 = 16_000;

#[derive(Debug, Default)]
pub struct Redactor {
    held: VecDeque<Heard>,
    /// Positions silenced, `[from, until)`; `until` is None while the digit lasts.
    spans: VecDeque<(u64, Option<u64>)>,
    /// Samples silenced so far (the metric).
    pub silenced: u64,
}

impl Redactor {
    /// A digit began at `pos` (its first detected sample).
    pub fn digit_started(&mut self, pos: u64) {
        self.spans.push_back((pos.saturating_sub(MARGIN), None));
    }

    /// A digit that began at `start` ended at `end`.
    pub fn digit_ended(&mut self, start: u64, end: u64) {
        let until = end + MARGIN;
        match self.spans.back_mut() {
            Some((_, open @ None)) => *open = Some(until),
            _ => self.spans.push_back((start.saturating_sub(MARGIN), Some(until))),
        }
    }

    /// Takes the audio the jitter buffer released and hands on, silenced where a digit
    /// was, what is older than the delay (`heard_end`: the newest position heard).
    /// Late audio (for the recording only) is in the past already and goes on at once.
    pub fn pass(&mut self, frames: impl Iterator<Item = Heard>, heard_end: u64, out: &mut Vec<Heard>) {
        for mut h in frames {
            if h.late {
                self.silence(&mut h);
                out.push(h);
            } else {
                self.held.push_back(h);
            }
        }
        while let Some(front) = self.held.front() {
            if front.pos + front.pcm.len() as u64 + DELAY > heard_end {
                break;
            }
            let mut h = self.held.pop_front().unwrap();
            self.silence(&mut h);
            out.push(h);
        }
        self.prune();
    }

    /// Hands on everything held (redaction turned off, or the call ends): a digit still
    /// going on stays silenced to the end of what was heard.
    pub fn flush(&mut self, out: &mut Vec<Heard>) {
        while let Some(mut h) = self.held.pop_front() {
            self.silence(&mut h);
            out.push(h);
        }
    }

    fn silence(&mut self, h: &mut Heard) {
        let (start, end) = (h.pos, h.pos + h.pcm.len() as u64);
        for &(from, until) in &self.spans {
            let until = until.unwrap_or(u64::MAX);
            let (a, b) = (from.max(start), until.min(end));
            if a < b {
                let (from, to) = ((a - start) as usize, (b - start) as usize);
                h.pcm[from..to].fill(0);
                // The 16 kHz copy a wideband call carries is silenced alike: the agent
                // and a 16 kHz recording hear it, not the 8 kHz audio.
                if let Some(w) = h.wide.get_mut(2 * from..2 * to) {
                    w.fill(0);
                }
                // And what the caller sent, kept beside processed audio for the
                // recording: a digit never reaches it by that way round.
                if let Some(sent) = &mut h.as_sent {
                    if let Some(p) = sent.pcm.get_mut(from..to) {
                        p.fill(0);
                    }
                    if let Some(w) = sent.wide.get_mut(2 * from..2 * to) {
                        w.fill(0);
                    }
                }
                self.silenced += b - a;
            }
        }
    }

    fn prune(&mut self) {
        let oldest = self.held.front().map_or(u64::MAX, |h| h.pos);
        while let Some(&(_, Some(until))) = self.spans.front() {
            if until + KEEP >= oldest {
                break;
            }
            self.spans.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::dtmf::tones;
    use crate::core::analysis::inband_dtmf::{ToneDetector, ToneDigit};
    use crate::core::goertzel;

    fn heard(pos: u64, pcm: &[i16]) -> Heard {
        Heard { pos, wall_pos: pos, pcm: pcm.to_vec(), wide: Vec::new(), concealed: false, late: false, as_sent: None }
    }

    /// Runs 8 kHz audio through the detector and the redactor 20 ms at a time, as the
    /// session does, and returns what left.
    fn redact(audio: &[i16]) -> (Vec<i16>, Vec<ToneDigit>) {
        let mut r = Redactor::default();
        let mut det = ToneDetector::default();
        let (mut out, mut found, mut digits) = (Vec::new(), Vec::new(), Vec::new());
        for (k, f) in audio.chunks(160).enumerate() {
            let pos = k as u64 * 160;
            det.push(pos, f, &mut found);
            for d in found.drain(..) {
                match d {
                    ToneDigit::Started { pos, .. } => r.digit_started(pos),
                    ToneDigit::Ended { pos, samples, .. } => r.digit_ended(pos, pos + samples),
                }
                digits.push(d);
            }
            r.pass(std::iter::once(heard(pos, f)), pos + f.len() as u64, &mut out);
        }
        r.flush(&mut out);
        let mut pcm = Vec::new();
        for h in &out {
            assert_eq!(h.pos, pcm.len() as u64, "continuous, in order");
            pcm.extend(&h.pcm);
        }
        (pcm, digits)
    }

    /// The strongest DTMF frequency's power in any 20 ms window, relative to the window's.
    fn dtmf_energy(pcm: &[i16]) -> f64 {
        let freqs = [697.0, 770.0, 852.0, 941.0, 1209.0, 1336.0, 1477.0, 1633.0];
        pcm.chunks(160).map(|w| freqs.iter().map(|&f| goertzel::power_at(w, 8000, f)).fold(0.0, f64::max)).fold(0.0, f64::max)
    }

    #[test]
    fn tones_leave_as_silence_at_every_offset_and_the_speech_around_them_stays() {
        for offset in [0usize, 37, 80, 101, 159] {
            // "Speech" (a 300 Hz hum), then 4 digits of 70 ms with 60 ms gaps, then more.
            let hum: Vec<i16> = (0..4000).map(|i| ((i as f64 * 300.0 * std::f64::consts::TAU / 8000.0).sin() * 3000.0) as i16).collect();
            let mut audio = vec![0i16; offset];
            audio.extend(&hum);
            audio.extend(tones("4242", 70, 60));
            audio.extend(&hum);
            let (out, digits) = redact(&audio);
            assert_eq!(out.len(), audio.len(), "nothing lost, nothing added");
            assert_eq!(digits.iter().filter(|d| matches!(d, ToneDigit::Ended { .. })).count(), 4, "offset {offset}: {digits:?}");
            let tone_part = offset + 4000..audio.len() - 4000;
            assert!(dtmf_energy(&audio[tone_part.clone()]) > 1e5, "the input has tones");
            assert_eq!(dtmf_energy(&out[tone_part.clone()]), 0.0, "offset {offset}: DTMF energy left");
            // The hum before and after is untouched (past the margins).
            let keep = offset..offset + 4000 - 2 * MARGIN as usize;
            assert_eq!(out[keep.clone()], audio[keep]);
            let tail = audio.len() - 4000 + 2 * MARGIN as usize..audio.len();
            assert_eq!(out[tail.clone()], audio[tail]);
        }
    }

    #[test]
    fn late_audio_inside_a_digit_is_silenced_too_and_spans_are_let_go() {
        let mut r = Redactor::default();
        let mut out = Vec::new();
        r.digit_started(1000);
        r.digit_ended(1000, 1800);
        let late = Heard { late: true, ..heard(960, &[5; 160]) };
        r.pass(std::iter::once(late), 4000, &mut out);
        assert_eq!(out[0].pcm.iter().filter(|&&s| s != 0).count(), 0);
        assert_eq!(r.silenced, 160);
        // Long after, the span is forgotten.
        r.pass(std::iter::once(heard(40_000, &[1; 160])), 40_160, &mut out);
        assert!(r.spans.is_empty());
    }
}
