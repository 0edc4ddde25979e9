//! The node's own barge-in: when the caller has spoken over the prompt (or the
//! streamed TTS) for its barge-in time, the audio is cut. The speech it counts is the
//! analysis's, which the echo guard has already cleared of the node's own audio coming
//! back (`analysis::echo_guard`).

use std::time::Duration;

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

#[derive(Default)]
pub(super) struct BargeIn {
    /// The barge-in time of the prompt playing, and where on the timeline it started.
    prompt: Option<(Duration, Option<u64>)>,
    /// The barge-in time of the streamed audio.
    stream: Option<Duration>,
    /// Where the streamed audio playing now began going out.
    stream_since: Option<u64>,
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
        let spoken = heard_end.saturating_sub(onset.max(started));
        if spoken * 1000 < min.as_millis() as u64 * u64::from(RATE) {
            return None;
        }
        if prompt.is_some() {
            Some(Interrupt::Prompt)
        } else {
            self.stream_since = None;
            Some(Interrupt::Stream)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS200: Duration = Duration::from_millis(200);

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
        assert_eq!(b.judge(Some(0), 5600, PROMPT), Some(Interrupt::Prompt));
    }

    #[test]
    fn streamed_audio_is_cut_only_while_it_plays_and_no_prompt_does() {
        let mut b = BargeIn::default();
        b.set_stream(Some(MS200));
        b.streaming(Some(1000));
        let streaming = Playing { prompt: false, stream_queued: true };
        assert_eq!(b.judge(Some(1000), 5000, PROMPT), None, "a prompt plays, without a barge-in of its own");
        assert_eq!(b.judge(Some(1000), 5000, Playing { prompt: false, stream_queued: false }), None, "nothing queued");
        assert_eq!(b.judge(Some(1000), 5000, streaming), Some(Interrupt::Stream));
        // Cut: the next streamed audio starts afresh.
        assert_eq!(b.judge(Some(1000), 5000, streaming), None);
    }
}
