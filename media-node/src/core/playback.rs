//! What the bot says: the prompt playing now, the streamed TTS queue behind it, and
//! the echo queue used for loop tests. All 8 kHz PCM on the call's timeline; the pacer
//! pulls one 20 ms frame at a time. Barge-in is a method here: it drops everything
//! queued at once.
//!
//! For a call in a wideband codec a prompt or a stream may also bring the same audio
//! at 16 kHz (`Sound::wide`): it is handed out frame by frame beside the 8 kHz frame
//! (`wide_frame`), so the caller hears the prompt's or the TTS engine's own 16 kHz
//! audio, not 8 kHz audio upsampled. Positions, marks and played time stay in 8 kHz
//! samples.

use std::collections::VecDeque;
use std::sync::Arc;

use super::jitter::FRAME_SAMPLES;

pub type PlaybackId = u64;

/// 16 kHz samples in one 20 ms frame.
pub const WIDE_FRAME_SAMPLES: usize = 2 * FRAME_SAMPLES;

/// A prompt's audio: at the call's 8 kHz, and at 16 kHz for a wideband call (about
/// twice as long: a copy a sample short of that is padded with silence).
#[derive(Debug, Clone, PartialEq)]
pub struct Sound {
    pub pcm: Arc<[i16]>,
    pub wide: Option<Arc<[i16]>>,
}

impl From<Arc<[i16]>> for Sound {
    fn from(pcm: Arc<[i16]>) -> Sound {
        Sound { pcm, wide: None }
    }
}

impl From<Vec<i16>> for Sound {
    fn from(pcm: Vec<i16>) -> Sound {
        Sound { pcm: pcm.into(), wide: None }
    }
}

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
    sound: Sound,
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
    /// The stream's 16 kHz copy, kept beside `stream` while every piece queued since
    /// the queue was last empty brought one (`stream_wide_ok`).
    stream_wide: VecDeque<i16>,
    stream_wide_ok: bool,
    /// The last frame's 16 kHz copy, when its source had one.
    wide: [i16; WIDE_FRAME_SAMPLES],
    has_wide: bool,
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
            stream_wide: VecDeque::new(),
            stream_wide_ok: true,
            wide: [0; WIDE_FRAME_SAMPLES],
            has_wide: false,
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
    pub fn play(&mut self, id: PlaybackId, sound: Sound) -> Option<Cut> {
        let cut = self.barge_in();
        self.prompt = Some(Prompt { id, sound, pos: 0 });
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

    /// Queues streamed audio: `pcm` at 8 kHz and `wide`, the same at 16 kHz, or empty.
    /// A piece without its 16 kHz copy makes the whole queue 8 kHz until it has played.
    pub fn push_stream(&mut self, pcm: &[i16], wide: &[i16]) {
        if self.stream.is_empty() {
            self.stream_wide.clear();
            self.stream_wide_ok = true;
        }
        if wide.is_empty() && !pcm.is_empty() {
            self.stream_wide_ok = false;
            self.stream_wide.clear();
        } else if self.stream_wide_ok {
            self.stream_wide.extend(wide);
        }
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
        self.stream_wide.clear();
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

    /// The 16 kHz copy of the frame `next_frame` last filled, when its source had one.
    pub fn wide_frame(&self) -> Option<&[i16; WIDE_FRAME_SAMPLES]> {
        self.has_wide.then_some(&self.wide)
    }

    /// Fills one frame. Returns where it came from (None = nothing to send) and the
    /// prompt that finished in this frame, if one did.
    pub fn next_frame(&mut self, frame: &mut [i16; FRAME_SAMPLES]) -> (Option<FrameSource>, Option<Cut>) {
        self.has_wide = false;
        if let Some(p) = &mut self.prompt {
            let pcm = &p.sound.pcm;
            let n = (pcm.len() - p.pos).min(FRAME_SAMPLES);
            frame[..n].copy_from_slice(&pcm[p.pos..p.pos + n]);
            frame[n..].fill(0);
            if let Some(wide) = &p.sound.wide {
                let from = (2 * p.pos).min(wide.len());
                let m = (wide.len() - from).min(2 * n);
                self.wide[..m].copy_from_slice(&wide[from..from + m]);
                self.wide[m..].fill(0);
                self.has_wide = true;
            }
            p.pos += n;
            let finished = (p.pos >= pcm.len()).then_some(Cut { id: p.id, played: p.pos });
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
                    if self.stream_wide_ok && !self.stream_wide.is_empty() {
                        // Two to one, but for a sample at most (the streams' resamplers
                        // round their counts up): what is short is silence.
                        let m = self.stream_wide.len().min(2 * n);
                        for (slot, s) in self.wide.iter_mut().zip(self.stream_wide.drain(..m)) {
                            *slot = s;
                        }
                        self.wide[m..].fill(0);
                        self.has_wide = true;
                    }
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
        pb.push_stream(&[2; 1600], &[]);
        let mut f = [0i16; FRAME_SAMPLES];
        pb.next_frame(&mut f);
        assert_eq!(pb.play(2, vec![3i16; 160].into()), Some(Cut { id: 1, played: 160 }), "one frame of it went out");
        assert_eq!(pb.starting(), Some(2));
        assert_eq!(pb.stream_queued(), 0);
        pb.next_frame(&mut f);
        assert_eq!(pb.starting(), None);
        assert_eq!(f, [3; FRAME_SAMPLES], "the very next frame is the new prompt");
    }

    /// A prompt's and a stream's 16 kHz copies come out beside their 8 kHz frames, a
    /// copy a sample short padded with silence; a stream piece without one makes the
    /// queue 8 kHz until it has played; the echo has none.
    #[test]
    fn wide_copies_come_out_with_their_frames() {
        let mut pb = Playback::default();
        let mut f = [0i16; FRAME_SAMPLES];
        let wide: Vec<i16> = (0..399).map(|i| i as i16).collect();
        pb.play(1, Sound { pcm: vec![7; 200].into(), wide: Some(wide.clone().into()) });
        pb.next_frame(&mut f);
        assert_eq!(pb.wide_frame().unwrap()[..], wide[..320]);
        assert_eq!(pb.next_frame(&mut f), (Some(FrameSource::Prompt), Some(Cut { id: 1, played: 200 })));
        let w = pb.wide_frame().unwrap();
        assert_eq!((&w[..79], w[79], &w[80..]), (&wide[320..], 0, &[0; 240][..]), "what is short is silence");
        pb.push_stream(&[1; 160], &[2; 320]);
        pb.push_stream(&[3; 80], &[4; 159]);
        pb.next_frame(&mut f);
        assert_eq!(pb.wide_frame(), Some(&[2; WIDE_FRAME_SAMPLES]));
        pb.next_frame(&mut f);
        assert_eq!(pb.wide_frame().unwrap()[..160], [[4; 159].as_slice(), &[0]].concat()[..]);
        // A piece without a 16 kHz copy: the queue it joins goes out at 8 kHz.
        pb.push_stream(&[5; 160], &[6; 320]);
        pb.push_stream(&[5; 160], &[]);
        pb.next_frame(&mut f);
        assert_eq!((f, pb.wide_frame()), ([5; FRAME_SAMPLES], None));
        pb.next_frame(&mut f);
        assert_eq!(pb.wide_frame(), None);
        // Once it has played, the next stream is wideband again; a piece that brought
        // only a 16 kHz sample (a tiny TTS chunk) keeps its place.
        pb.push_stream(&[8; 160], &[9; 319]);
        pb.push_stream(&[], &[9]);
        pb.next_frame(&mut f);
        assert_eq!(pb.wide_frame(), Some(&[9; WIDE_FRAME_SAMPLES]));
        pb.push_echo(&[1; 160]);
        pb.next_frame(&mut f);
        assert_eq!(pb.wide_frame(), None);
    }

    #[test]
    fn stream_plays_after_prompt() {
        let mut pb = Playback::default();
        pb.push_stream(&[9; 200], &[]);
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
        pb.push_stream(&[1; 200], &[]);
        pb.mark(2);
        pb.push_stream(&[1; 100], &[]);
        pb.mark(3);
        pb.push_stream(&[1; 400], &[]);
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
        pb.push_stream(&[1; 160], &[]);
        pb.mark(5);
        pb.next_frame(&mut f);
        pb.take_mark_fates(&mut fates);
        assert_eq!(fates[4..], [MarkFate::Played(5)]);
    }
}
