//! A call's TTS streams (StreamAudioToCall): the attached one, streams a newer one
//! replaced while their audio still plays out, their marks, and how each ends. The
//! session plays the audio and says when a mark's audio went out or was cleared; this
//! keeps who is told what, in order: every mark acknowledged (played or cleared)
//! before its stream's final answer.

use tokio::sync::{mpsc, oneshot};

use crate::core::analysis::samples_to_ms;
use crate::core::playback::MarkId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Everything sent was played.
    Played,
    /// Another StreamAudioToCall took over the call.
    Replaced,
    /// Barge-in (a new prompt or a stop) cut it; the rest of that stream is discarded.
    Interrupted,
    /// The caller spoke over it (the node's own barge-in).
    BargeIn,
    CallEnded,
}

impl StreamEnd {
    /// StreamAudioToCallResponse.error_message for a stream that did not play out.
    pub fn message(self) -> &'static str {
        match self {
            StreamEnd::Played => "",
            StreamEnd::Replaced => "another StreamAudioToCall took over this call",
            StreamEnd::Interrupted => "interrupted by barge-in (stop or new prompt)",
            StreamEnd::BargeIn => "interrupted by the caller's speech (barge-in)",
            StreamEnd::CallEnded => "the call ended",
        }
    }
}

/// A piece of streamed TTS at the call's rate (and at 16 kHz, or empty), and the
/// agent's mark after it.
pub struct TtsChunk {
    pub pcm: Vec<i16>,
    pub wide: Vec<i16>,
    pub mark: Option<String>,
}

/// A mark's acknowledgement: its audio went out (or was cleared), and how much of its
/// stream had played by then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkAck {
    pub mark: String,
    pub cleared: bool,
    pub played_ms: u64,
}

/// Where a stream's client hears of it: its marks as they happen, then how it ended
/// and how many ms of it went out.
pub struct StreamReplies {
    pub acks: mpsc::Sender<MarkAck>,
    pub done: oneshot::Sender<(StreamEnd, u64)>,
}

struct AttachedStream {
    chunks: Option<mpsc::Receiver<TtsChunk>>,
    replies: StreamReplies,
    /// Its marks not yet acknowledged, in order, by the session's id.
    marks: Vec<(MarkId, String)>,
    /// Marks of chunks it had sent that the call never took (they sat in the channel
    /// when the stream stopped being read): answered as cleared at its end, last.
    unread: Vec<String>,
    /// The session's streamed-sample count where its audio begins.
    sent_base: u64,
}

impl AttachedStream {
    /// How much of this stream went out, given the session's streamed-sample count.
    fn played_ms(&self, sent: u64) -> u64 {
        samples_to_ms(sent.saturating_sub(self.sent_base))
    }

    /// The call takes no more of its chunks: the marks of those already sent are kept
    /// for its end (their audio is discarded).
    fn stop_reading(&mut self) {
        let Some(mut chunks) = self.chunks.take() else { return };
        chunks.close();
        while let Ok(c) = chunks.try_recv() {
            self.unread.extend(c.mark);
        }
    }

    /// The stream's end: the marks it did not reach are cleared (acknowledged before
    /// the final answer), and its sender learns how it ended and how much of it played.
    fn finish(mut self, end: StreamEnd, sent: u64) {
        self.stop_reading();
        let played_ms = self.played_ms(sent);
        for mark in self.marks.into_iter().map(|(_, m)| m).chain(self.unread) {
            let _ = self.replies.acks.try_send(MarkAck { mark, cleared: true, played_ms });
        }
        let _ = self.replies.done.send((end, played_ms));
    }
}

/// A stream a newer one replaced while its audio was still queued: it plays out, its
/// marks are acknowledged as they go, and its sender gets the final answer once the
/// internal mark after its last sample went out (or was cleared).
struct RetiredStream {
    stream: AttachedStream,
    end_mark: MarkId,
    /// The sender had sent everything: its audio played out is `Played`, not `Replaced`.
    complete: bool,
}

impl RetiredStream {
    /// How it ended once its audio all went out: played, if its sender had sent
    /// everything, else taken over.
    fn played_out(&self) -> StreamEnd {
        if self.complete {
            StreamEnd::Played
        } else {
            StreamEnd::Replaced
        }
    }
}

/// `sent` and `queued` below are the session's streamed samples gone out so far and
/// still waiting.
#[derive(Default)]
pub struct Streams {
    attached: Option<AttachedStream>,
    retired: Vec<RetiredStream>,
    next_mark: MarkId,
}

impl Streams {
    /// A new stream takes over. The one attached before, if its audio is still
    /// queued, plays out as a retired stream: the internal mark returned goes into the
    /// session's queue after its last sample, and says when.
    pub fn attach(&mut self, chunks: mpsc::Receiver<TtsChunk>, replies: StreamReplies, sent: u64, queued: usize) -> Option<MarkId> {
        let end_mark = self.retire(sent, queued);
        let sent_base = sent + queued as u64;
        self.attached = Some(AttachedStream { chunks: Some(chunks), replies, marks: Vec::new(), unread: Vec::new(), sent_base });
        end_mark
    }

    fn retire(&mut self, sent: u64, queued: usize) -> Option<MarkId> {
        let mut s = self.attached.take()?;
        let complete = s.chunks.is_none();
        s.stop_reading();
        let retired = RetiredStream { stream: s, end_mark: self.next_mark, complete };
        if queued == 0 {
            let end = retired.played_out();
            retired.stream.finish(end, sent);
            return None;
        }
        self.next_mark += 1;
        let mark = retired.end_mark;
        self.retired.push(retired);
        Some(mark)
    }

    /// The attached stream's chunks, while its sender sends.
    pub fn chunks(&mut self) -> Option<&mut mpsc::Receiver<TtsChunk>> {
        self.attached.as_mut().and_then(|s| s.chunks.as_mut())
    }

    /// The attached stream's sender has sent everything.
    pub fn input_ended(&mut self) {
        if let Some(s) = &mut self.attached {
            s.chunks = None;
        }
    }

    /// A chunk's mark, given the session's id for it (None without an attached stream).
    pub fn mark(&mut self, name: String) -> Option<MarkId> {
        let s = self.attached.as_mut()?;
        let id = self.next_mark;
        self.next_mark += 1;
        s.marks.push((id, name));
        Some(id)
    }

    /// A mark's fate, for whichever stream (attached or retired) it belongs to.
    pub fn on_mark(&mut self, id: MarkId, cleared: bool, sent: u64) {
        let streams = self.attached.iter_mut().chain(self.retired.iter_mut().map(|r| &mut r.stream));
        for s in streams {
            if let Some(i) = s.marks.iter().position(|(m, _)| *m == id) {
                let (_, mark) = s.marks.remove(i);
                // The acks channel is sized for every mark a client can have queued
                // (see service.rs); a client that stopped reading loses its acks,
                // never the call's time.
                let _ = s.replies.acks.try_send(MarkAck { mark, cleared, played_ms: s.played_ms(sent) });
                return;
            }
        }
        if let Some(i) = self.retired.iter().position(|r| r.end_mark == id) {
            let r = self.retired.remove(i);
            let end = if cleared { StreamEnd::Interrupted } else { r.played_out() };
            r.stream.finish(end, sent);
        }
    }

    /// Ends the attached stream, if one is. An end that drops the queued audio ends
    /// the retired streams too.
    pub fn end(&mut self, end: StreamEnd, sent: u64) {
        if let Some(s) = self.attached.take() {
            s.finish(end, sent);
        }
        if end != StreamEnd::Played {
            for r in self.retired.drain(..) {
                r.stream.finish(end, sent);
            }
        }
    }

    /// The attached stream is done once its sender has sent everything and its
    /// queued audio has gone out.
    pub fn played_out(&mut self, sent: u64, queued: usize) {
        if self.attached.as_ref().is_some_and(|s| s.chunks.is_none()) && queued == 0 {
            self.end(StreamEnd::Played, sent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Client {
        acks: mpsc::Receiver<MarkAck>,
        done: oneshot::Receiver<(StreamEnd, u64)>,
        _chunks: mpsc::Sender<TtsChunk>,
    }

    fn attach(s: &mut Streams, sent: u64, queued: usize) -> (Client, Option<MarkId>) {
        let (chunk_tx, chunks) = mpsc::channel(4);
        let (acks_tx, acks) = mpsc::channel(16);
        let (done_tx, done) = oneshot::channel();
        let end_mark = s.attach(chunks, StreamReplies { acks: acks_tx, done: done_tx }, sent, queued);
        (Client { acks, done, _chunks: chunk_tx }, end_mark)
    }

    fn acks(c: &mut Client) -> Vec<(String, bool, u64)> {
        std::iter::from_fn(|| c.acks.try_recv().ok()).map(|a| (a.mark, a.cleared, a.played_ms)).collect()
    }

    #[test]
    fn marks_are_acknowledged_in_order_and_the_rest_cleared_before_the_end() {
        let mut s = Streams::default();
        let (mut c, none) = attach(&mut s, 0, 0);
        assert_eq!(none, None);
        let (m1, m2) = (s.mark("m1".into()).unwrap(), s.mark("m2".into()).unwrap());
        s.on_mark(m1, false, 800);
        assert_eq!(acks(&mut c), vec![("m1".into(), false, 100)]);
        s.end(StreamEnd::BargeIn, 1600);
        assert_eq!(acks(&mut c), vec![("m2".into(), true, 200)]);
        assert_eq!(c.done.try_recv(), Ok((StreamEnd::BargeIn, 200)));
        // A late fate of an ended stream's mark goes nowhere.
        s.on_mark(m2, false, 2400);
    }

    #[test]
    fn marks_of_chunks_the_call_never_took_are_cleared_last() {
        let mut s = Streams::default();
        let (chunk_tx, chunks) = mpsc::channel(4);
        let (acks_tx, mut acks_rx) = mpsc::channel(16);
        let (done_tx, mut done) = oneshot::channel();
        s.attach(chunks, StreamReplies { acks: acks_tx, done: done_tx }, 0, 0);
        s.mark("m1".into()).unwrap();
        for mark in [Some("m2"), None, Some("m3")] {
            chunk_tx.try_send(TtsChunk { pcm: vec![0; 160], wide: Vec::new(), mark: mark.map(String::from) }).ok().unwrap();
        }
        s.end(StreamEnd::Interrupted, 0);
        let got: Vec<_> = std::iter::from_fn(|| acks_rx.try_recv().ok()).map(|a| (a.mark, a.cleared)).collect();
        assert_eq!(got, [("m1".into(), true), ("m2".into(), true), ("m3".into(), true)]);
        assert_eq!(done.try_recv(), Ok((StreamEnd::Interrupted, 0)));
        assert!(chunk_tx.is_closed(), "the sender learns the call reads no more");
    }

    #[test]
    fn a_replaced_stream_plays_out_and_ends_at_its_internal_mark() {
        let mut s = Streams::default();
        let (mut old, _) = attach(&mut s, 0, 0);
        let m1 = s.mark("m1".into()).unwrap();
        s.input_ended();
        // 800 samples of the old stream still queued when the new one comes.
        let (mut new, end_mark) = attach(&mut s, 400, 800);
        let end_mark = end_mark.expect("the old stream's audio is queued");
        s.on_mark(m1, false, 800);
        assert_eq!(acks(&mut old), vec![("m1".into(), false, 100)]);
        s.on_mark(end_mark, false, 1200);
        assert_eq!(old.done.try_recv(), Ok((StreamEnd::Played, 150)), "its sender had sent everything");
        // The new stream counts from where its own audio begins.
        let m = s.mark("n1".into()).unwrap();
        s.on_mark(m, false, 2000);
        assert_eq!(acks(&mut new), vec![("n1".into(), false, 100)]);
        assert!(new.done.try_recv().is_err(), "still attached");
        s.input_ended();
        s.played_out(2000, 0);
        assert_eq!(new.done.try_recv(), Ok((StreamEnd::Played, 100)));
    }

    #[test]
    fn a_replaced_stream_with_nothing_queued_ends_at_once_and_a_barge_in_ends_every_stream() {
        let mut s = Streams::default();
        let (mut first, _) = attach(&mut s, 0, 0);
        let (_second, end_mark) = attach(&mut s, 0, 0);
        assert_eq!(end_mark, None);
        assert_eq!(first.done.try_recv(), Ok((StreamEnd::Replaced, 0)), "its sender was still sending");
        let (mut third, end_mark) = attach(&mut s, 0, 160);
        assert!(end_mark.is_some());
        s.end(StreamEnd::Interrupted, 80);
        assert_eq!(third.done.try_recv(), Ok((StreamEnd::Interrupted, 0)));
        assert!(s.chunks().is_none());
    }
}
