//! What the bot says: the prompt playing now, the streamed TTS queue behind it, and
//! the echo queue used for loop tests. All 8 kHz PCM; the pacer pulls one 20 ms frame
//! at a time. Barge-in is a method here: it drops everything queued at once.

use std::collections::VecDeque;
use std::sync::Arc;

use super::jitter::FRAME_SAMPLES;

pub type PlaybackId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaybackOutcome {
    /// Played to the last sample.
    Finished,
    /// Cut by a newer prompt (barge-in by replacement).
    Interrupted,
    /// Cut by a stop (control://stop_audio).
    Stopped,
    /// The call ended while it played.
    CallEnded,
    /// The caller spoke over it for the prompt's barge-in time (the node's own barge-in).
    BargeIn,
}

/// A prompt that ended, and how much of it went out (8 kHz samples).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub id: PlaybackId,
    pub played: usize,
}

impl Cut {
    pub fn played_ms(&self) -> u64 {
        super::analysis::samples_to_ms(self.played as u64)
    }
}

/// The one place a playback's end is named: the message PlayAudio replies with (what
/// callers already match on), and the label of metrics and events.
impl PlaybackOutcome {
    /// PlayAudioResponse.message.
    pub fn message(self) -> &'static str {
        match self {
            PlaybackOutcome::Finished => "finished",
            PlaybackOutcome::Interrupted => "interrupted by a new prompt",
            PlaybackOutcome::Stopped => "stopped",
            PlaybackOutcome::CallEnded => "call ended",
            PlaybackOutcome::BargeIn => "interrupted by the caller's speech (barge-in)",
        }
    }

    /// `media_playbacks_total{outcome}` and the `outcome` of `call.media.playback.finished`.
    pub fn label(self) -> &'static str {
        match self {
            PlaybackOutcome::Finished => "finished",
            PlaybackOutcome::Interrupted => "interrupted",
            PlaybackOutcome::Stopped => "stopped",
            PlaybackOutcome::CallEnded => "call_ended",
            PlaybackOutcome::BargeIn => "barge_in",
        }
    }
}

struct Prompt {
    id: PlaybackId,
    pcm: Arc<[i16]>,
    pos: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSource {
    Prompt,
    Stream,
    Echo,
}

/// A point in the streamed audio the agent asked to hear about (its mark), by id.
pub type MarkId = u64;

/// What became of a mark: its audio went out to the caller, or a barge-in dropped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkFate {
    Played(MarkId),
    Cleared(MarkId),
}

pub struct Playback {
    prompt: Option<Prompt>,
    stream: VecDeque<i16>,
    echo: VecDeque<i16>,
    echo_cap: usize,
    /// Streamed samples queued and sent so far (the stream's own clock, for marks).
    stream_pushed: u64,
    stream_sent: u64,
    /// Marks waiting for their audio, at their stream position.
    marks: VecDeque<(u64, MarkId)>,
    fates: Vec<MarkFate>,
}

impl Default for Playback {
    fn default() -> Self {
        Playback {
            prompt: None,
            stream: VecDeque::new(),
            echo: VecDeque::new(),
            echo_cap: 8000,
            stream_pushed: 0,
            stream_sent: 0,
            marks: VecDeque::new(),
            fates: Vec::new(),
        }
    }
}

impl Playback {
    /// Starts a prompt, cutting whatever plays; returns the one cut, if any.
    pub fn play(&mut self, id: PlaybackId, pcm: Arc<[i16]>) -> Option<Cut> {
        let cut = self.barge_in();
        self.prompt = Some(Prompt { id, pcm, pos: 0 });
        cut
    }

    /// Drops the prompt and every queued sample; returns the prompt cut, if any.
    pub fn barge_in(&mut self) -> Option<Cut> {
        self.clear_stream();
        self.echo.clear();
        self.prompt.take().map(|p| Cut { id: p.id, played: p.pos })
    }

    pub fn current(&self) -> Option<PlaybackId> {
        self.prompt.as_ref().map(|p| p.id)
    }

    /// The prompt whose first frame is next, if one is.
    pub fn starting(&self) -> Option<PlaybackId> {
        self.prompt.as_ref().filter(|p| p.pos == 0).map(|p| p.id)
    }

    pub fn push_stream(&mut self, pcm: &[i16]) {
        self.stream.extend(pcm);
        self.stream_pushed += pcm.len() as u64;
    }

    /// A mark after everything streamed so far: reported played once that audio has
    /// gone out (at once when nothing is queued), cleared if a barge-in drops it.
    pub fn mark(&mut self, id: MarkId) {
        if self.stream_pushed <= self.stream_sent {
            self.fates.push(MarkFate::Played(id));
        } else {
            self.marks.push_back((self.stream_pushed, id));
        }
    }

    /// Drops the queued stream; its marks are cleared.
    pub fn clear_stream(&mut self) {
        self.stream.clear();
        self.stream_pushed = self.stream_sent;
        self.fates.extend(self.marks.drain(..).map(|(_, id)| MarkFate::Cleared(id)));
    }

    /// Streamed samples that went out so far (all streams of the call).
    pub fn stream_sent(&self) -> u64 {
        self.stream_sent
    }

    /// What became of marks since the last call.
    pub fn take_mark_fates(&mut self, out: &mut Vec<MarkFate>) {
        out.append(&mut self.fates);
    }

    pub fn stream_queued(&self) -> usize {
        self.stream.len()
    }

    pub fn push_echo(&mut self, pcm: &[i16]) {
        self.echo.extend(pcm);
        let excess = self.echo.len().saturating_sub(self.echo_cap);
        self.echo.drain(..excess);
    }

    pub fn clear_echo(&mut self) {
        self.echo.clear();
    }

    /// Fills one frame. Returns where it came from (None = nothing to send) and the
    /// prompt that finished in this frame, if one did.
    pub fn next_frame(&mut self, frame: &mut [i16; FRAME_SAMPLES]) -> (Option<FrameSource>, Option<Cut>) {
        if let Some(p) = &mut self.prompt {
            let n = (p.pcm.len() - p.pos).min(FRAME_SAMPLES);
            frame[..n].copy_from_slice(&p.pcm[p.pos..p.pos + n]);
            frame[n..].fill(0);
            p.pos += n;
            let finished = (p.pos >= p.pcm.len()).then_some(Cut { id: p.id, played: p.pos });
            if finished.is_some() {
                self.prompt = None;
            }
            return (Some(FrameSource::Prompt), finished);
        }
        for (queue, source) in [(&mut self.stream, FrameSource::Stream), (&mut self.echo, FrameSource::Echo)] {
            if !queue.is_empty() {
                let n = queue.len().min(FRAME_SAMPLES);
                for (slot, s) in frame.iter_mut().zip(queue.drain(..n)) {
                    *slot = s;
                }
                frame[n..].fill(0);
                if source == FrameSource::Stream {
                    self.stream_sent += n as u64;
                    while self.marks.front().is_some_and(|&(at, _)| at <= self.stream_sent) {
                        let (_, id) = self.marks.pop_front().unwrap();
                        self.fates.push(MarkFate::Played(id));
                    }
                }
                return (Some(source), None);
            }
        }
        (None, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_plays_in_frames_then_finishes() {
        let mut pb = Playback::default();
        pb.play(1, vec![5i16; 400].into());
        let mut f = [0i16; FRAME_SAMPLES];
        assert_eq!(pb.next_frame(&mut f), (Some(FrameSource::Prompt), None));
        assert_eq!(pb.next_frame(&mut f), (Some(FrameSource::Prompt), None));
        assert_eq!(pb.next_frame(&mut f), (Some(FrameSource::Prompt), Some(Cut { id: 1, played: 400 })));
        assert_eq!(&f[..80], &[5; 80]);
        assert_eq!(&f[80..], &[0; 80], "the last partial frame is padded with silence");
        assert_eq!(pb.next_frame(&mut f), (None, None));
    }

    #[test]
    fn new_prompt_cuts_current_and_flushes_queues() {
        let mut pb = Playback::default();
        pb.play(1, vec![1i16; 8000].into());
        pb.push_stream(&[2; 1600]);
        let mut f = [0i16; FRAME_SAMPLES];
        pb.next_frame(&mut f);
        assert_eq!(pb.play(2, vec![3i16; 160].into()), Some(Cut { id: 1, played: 160 }), "one frame of it went out");
        assert_eq!(pb.starting(), Some(2));
        assert_eq!(pb.stream_queued(), 0);
        pb.next_frame(&mut f);
        assert_eq!(pb.starting(), None);
        assert_eq!(f, [3; FRAME_SAMPLES], "the very next frame is the new prompt");
    }

    #[test]
    fn stream_plays_after_prompt() {
        let mut pb = Playback::default();
        pb.push_stream(&[9; 200]);
        let mut f = [0i16; FRAME_SAMPLES];
        assert_eq!(pb.next_frame(&mut f).0, Some(FrameSource::Stream));
        assert_eq!(pb.next_frame(&mut f).0, Some(FrameSource::Stream));
        assert_eq!(&f[..40], &[9; 40]);
        assert_eq!(pb.next_frame(&mut f).0, None);
    }

    #[test]
    fn marks_are_played_when_their_audio_goes_out_and_cleared_by_barge_in() {
        let mut pb = Playback::default();
        let mut f = [0i16; FRAME_SAMPLES];
        let mut fates = Vec::new();
        pb.mark(1); // nothing queued: played at once
        pb.push_stream(&[1; 200]);
        pb.mark(2);
        pb.push_stream(&[1; 100]);
        pb.mark(3);
        pb.push_stream(&[1; 400]);
        pb.mark(4);
        pb.take_mark_fates(&mut fates);
        assert_eq!(fates, vec![MarkFate::Played(1)]);
        pb.next_frame(&mut f); // 160 of 200: mark 2 not yet
        pb.take_mark_fates(&mut fates);
        assert_eq!(fates.len(), 1);
        pb.next_frame(&mut f); // 320: marks 2 (200) and 3 (300)
        pb.take_mark_fates(&mut fates);
        assert_eq!(fates[1..], [MarkFate::Played(2), MarkFate::Played(3)]);
        assert!(pb.barge_in().is_none());
        pb.take_mark_fates(&mut fates);
        assert_eq!(fates[3..], [MarkFate::Cleared(4)]);
        assert_eq!(pb.stream_sent(), 320);
        // After the clear, a new stream's marks count from where the stream stands.
        pb.push_stream(&[1; 160]);
        pb.mark(5);
        pb.next_frame(&mut f);
        pb.take_mark_fates(&mut fates);
        assert_eq!(fates[4..], [MarkFate::Played(5)]);
    }
}
