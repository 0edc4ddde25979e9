//! The node's own barge-in: when the caller has spoken over the prompt (or the
//! streamed TTS) for its barge-in time, the audio is cut. Speech that the echo guard
//! finds to be the node's own audio coming back does not count.

use std::time::Duration;

use super::io::Counters;
use crate::core::analysis::echo_guard::EchoGuard;
use crate::core::jitter::RATE;

/// What a barge-in cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Interrupt {
    Prompt,
    Stream,
}

/// What is playing, as far as barge-in cares.
#[derive(Debug, Clone, Copy)]
pub(super) struct Playing {
    /// A prompt is current.
    pub prompt: bool,
    /// Streamed samples are queued.
    pub stream_queued: bool,
}

/// The longest stretch of speech the echo guard judges at once (200 ms).
const JUDGED: u64 = 1600;

#[derive(Default)]
pub(super) struct BargeIn {
    /// The barge-in time of the prompt playing, and where on the timeline it started.
    prompt: Option<(Duration, Option<u64>)>,
    /// The barge-in time of the streamed audio.
    stream: Option<Duration>,
    /// Where the streamed audio playing now began going out.
    stream_since: Option<u64>,
    echo_guard: EchoGuard,
    /// The speech onset whose echo verdict was counted.
    echo_counted: Option<u64>,
    /// Where the caller's speech last turned out to be echo: barge-in counts speech
    /// from there, so it needs its full time of real speech.
    echo_until: u64,
    /// Barge-ins not made because the speech was echo (once per speech segment).
    echo_refused: u64,
}

impl BargeIn {
    /// A new prompt with its barge-in time (None: the caller may talk over it).
    pub(super) fn on_play(&mut self, barge_in: Option<Duration>) {
        self.prompt = barge_in.map(|d| (d, None));
    }

    /// The prompt's first frame went out at `pos`.
    pub(super) fn prompt_started(&mut self, pos: u64) {
        if let Some((_, started)) = &mut self.prompt {
            *started = Some(pos);
        }
    }

    /// A prompt ended; `any_current`: another is current (queued after it).
    pub(super) fn prompt_ended(&mut self, any_current: bool) {
        if !any_current {
            self.prompt = None;
        }
    }

    pub(super) fn set_stream(&mut self, barge_in: Option<Duration>) {
        self.stream = barge_in;
    }

    /// The frame at `pos` was streamed audio (Some) or not.
    pub(super) fn streaming(&mut self, pos: Option<u64>) {
        match pos {
            Some(pos) => {
                self.stream_since.get_or_insert(pos);
            }
            None => self.stream_since = None,
        }
    }

    /// The node's own audio as it went out (echo mode's excepted: it is the caller's).
    pub(super) fn on_played(&mut self, pos: u64, pcm: &[i16]) {
        self.echo_guard.on_played(pos, pcm);
    }

    /// The caller's audio as the jitter buffer released it.
    pub(super) fn on_heard(&mut self, pos: u64, pcm: &[i16]) {
        self.echo_guard.on_heard(pos, pcm);
    }

    /// Should the caller's speech (from `onset`, analysed up to `heard_end`) cut what
    /// plays? Speech from before the prompt began does not count.
    pub(super) fn judge(&mut self, onset: Option<u64>, heard_end: u64, playing: Playing) -> Option<Interrupt> {
        let prompt = self.prompt.and_then(|(min, started)| started.map(|s| (min, s)));
        let stream = match (self.stream, self.stream_since) {
            (Some(min), Some(since)) if !playing.prompt && playing.stream_queued => Some((min, since)),
            _ => None,
        };
        let (min, started) = prompt.or(stream)?;
        let onset = onset?;
        let spoken = heard_end.saturating_sub(onset.max(started).max(self.echo_until));
        if spoken * 1000 < min.as_millis() as u64 * u64::from(RATE) {
            return None;
        }
        // The echo guard judges the speech since the last echo verdict (200 ms at
        // most): real speech that starts over the echo barges in once it has lasted
        // the barge-in time on its own.
        if self.echo_guard.is_echo(heard_end, spoken.min(JUDGED)) {
            self.echo_until = heard_end;
            if self.echo_counted != Some(onset) {
                self.echo_counted = Some(onset);
                self.echo_refused += 1;
            }
            return None;
        }
        // Over an echo, real speech may have begun anywhere in the window judged: if
        // the window's first part was still echo alone, the speech counts from where
        // that part ended and must last the barge-in time from there.
        if self.echo_counted == Some(onset) {
            let window = spoken.min(JUDGED);
            let start = heard_end - window;
            let echo_end = [3, 2, 1].map(|q| start + window * q / 4).into_iter().find(|&end| self.echo_guard.is_echo(end, end - start));
            if let Some(end) = echo_end {
                self.echo_until = end;
                return None;
            }
        }
        if prompt.is_some() {
            Some(Interrupt::Prompt)
        } else {
            self.stream_since = None;
            Some(Interrupt::Stream)
        }
    }

    pub(super) fn take_counters(&mut self, c: &mut Counters) {
        c.barge_in_echo = std::mem::take(&mut self.echo_refused);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS200: Duration = Duration::from_millis(200);

    fn tone(n: usize, amp: f64) -> Vec<i16> {
        (0..n).map(|i| (amp * (i as f64 * 0.37).sin() + 0.3 * amp * (i as f64 * 0.11).sin()) as i16).collect()
    }

    const PROMPT: Playing = Playing { prompt: true, stream_queued: false };

    #[test]
    fn speech_before_the_prompt_began_or_shorter_than_its_time_does_not_cut() {
        let mut b = BargeIn::default();
        b.on_play(Some(MS200));
        // Not started yet: nothing to cut.
        assert_eq!(b.judge(Some(0), 8000, PROMPT), None);
        b.prompt_started(4000);
        // Speech since 0, but the prompt began at 4000: 1599 samples count.
        assert_eq!(b.judge(Some(0), 5599, PROMPT), None);
        b.on_heard(4000, &tone(1600, 8000.0));
        assert_eq!(b.judge(Some(0), 5600, PROMPT), Some(Interrupt::Prompt));
    }

    #[test]
    fn the_prompts_own_echo_is_refused_once_per_speech_segment() {
        let mut b = BargeIn::default();
        b.on_play(Some(MS200));
        b.prompt_started(0);
        let played = tone(8000, 8000.0);
        b.on_played(0, &played);
        // The caller's side is the prompt, half as loud, 100 ms late.
        let echo: Vec<i16> = played.iter().map(|&s| s / 2).collect();
        b.on_heard(800, &echo[..7200]);
        assert_eq!(b.judge(Some(800), 8000, PROMPT), None);
        assert_eq!(b.judge(Some(800), 8000, PROMPT), None);
        let mut c = Counters::default();
        b.take_counters(&mut c);
        assert_eq!(c.barge_in_echo, 1, "one segment, one count");
    }

    #[test]
    fn streamed_audio_is_cut_only_while_it_plays_and_no_prompt_does() {
        let mut b = BargeIn::default();
        b.set_stream(Some(MS200));
        b.streaming(Some(1000));
        b.on_heard(1000, &tone(4000, 8000.0));
        let streaming = Playing { prompt: false, stream_queued: true };
        assert_eq!(b.judge(Some(1000), 5000, PROMPT), None, "a prompt plays, without a barge-in of its own");
        assert_eq!(b.judge(Some(1000), 5000, Playing { prompt: false, stream_queued: false }), None, "nothing queued");
        assert_eq!(b.judge(Some(1000), 5000, streaming), Some(Interrupt::Stream));
        // Cut: the next streamed audio starts afresh.
        assert_eq!(b.judge(Some(1000), 5000, streaming), None);
    }
}
