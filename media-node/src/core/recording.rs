//! The call recording as ONE timeline: the caller's audio placed where it was really
//! spoken (wall positions from the jitter buffer), the bot's placed where it was sent,
//! both on the call's 8 kHz sample clock, mixed with saturation (mono) or kept apart
//! (stereo: caller left, bot right). Gaps are silence. Only a short window is held in
//! memory: everything older than the flush point is handed out to be written, so an
//! hour costs what a minute does.
//!
//! A wideband timeline (`RecordingTimeline::wideband`) keeps two samples per position
//! (16 kHz) on the same clock, so a G.722 or Opus caller's own 16 kHz audio is recorded
//! as it came; positions, the flush schedule and lateness stay in 8 kHz units.

use std::time::Instant;

/// Samples per second of the call's timeline.
pub const TIMELINE_RATE: u64 = 8000;

/// The call's timeline position at `now`: samples of its clock since `started`.
pub fn timeline_position(started: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(started).as_micros() as u64 * TIMELINE_RATE / 1_000_000
}

/// When a recording is written out. It stays `lag` samples behind the present, so late
/// caller audio still lands in its place, and is written a `batch` at a time: mixing
/// and writing on every packet and tick was most of recording's per-call cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushSchedule {
    pub lag: u64,
    pub batch: u64,
}

impl Default for FlushSchedule {
    /// 500 ms behind, 100 ms at a time.
    fn default() -> Self {
        FlushSchedule { lag: TIMELINE_RATE / 2, batch: TIMELINE_RATE / 10 }
    }
}

impl FlushSchedule {
    /// The position to flush up to at timeline position `now`, when a whole batch lies
    /// between what was flushed and the lagged present; None until then.
    pub fn due(&self, now: u64, flushed: u64) -> Option<u64> {
        let upto = now.saturating_sub(self.lag);
        (upto >= flushed.saturating_add(self.batch)).then_some(upto)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    /// Caller and bot mixed into one channel.
    Mono,
    /// Caller on the left, bot on the right.
    Stereo,
}

impl Channels {
    pub fn count(self) -> u16 {
        match self {
            Channels::Mono => 1,
            Channels::Stereo => 2,
        }
    }
}

/// One side's audio from the flush point on: a plain buffer read from `head`, so
/// placing and mixing run over contiguous slices (which the compiler vectorises) and
/// growing it with silence is a memset. Consumed space is reclaimed once it is at
/// least half the buffer, one move of what is left: the buffer stays about twice the
/// window held, however long the call.
#[derive(Debug, Default)]
struct Track {
    buf: Vec<i16>,
    head: usize,
}

impl Track {
    fn len(&self) -> usize {
        self.buf.len() - self.head
    }

    /// Makes the track at least `n` samples long, with silence.
    fn extend_to(&mut self, n: usize) {
        if self.len() < n {
            self.buf.resize(self.head + n, 0);
        }
    }

    /// Adds `pcm` onto the track from `offset`, saturating.
    fn add_at(&mut self, offset: usize, pcm: &[i16]) {
        self.extend_to(offset + pcm.len());
        let at = self.head + offset;
        for (slot, &s) in self.buf[at..at + pcm.len()].iter_mut().zip(pcm) {
            *slot = slot.saturating_add(s);
        }
    }

    /// The first `n` samples (the track must hold them).
    fn front(&self, n: usize) -> &[i16] {
        &self.buf[self.head..self.head + n]
    }

    fn consume(&mut self, n: usize) {
        self.head += n;
        if self.head == self.buf.len() {
            self.buf.clear();
            self.head = 0;
        } else if self.head * 2 >= self.buf.len() {
            self.buf.drain(..self.head);
            self.head = 0;
        }
    }
}

#[derive(Debug)]
pub struct RecordingTimeline {
    channels: Channels,
    /// Samples per timeline position: 1 (8 kHz) or 2 (16 kHz, wideband).
    per_pos: usize,
    /// Timeline position of the first sample not yet handed out.
    flushed: u64,
    caller: Track,
    bot: Track,
    /// Samples that arrived after their place had already been written out.
    pub late_samples: u64,
}

impl RecordingTimeline {
    /// A recording whose first sample is at timeline position `start`.
    pub fn new(channels: Channels, start: u64) -> RecordingTimeline {
        RecordingTimeline { channels, per_pos: 1, flushed: start, caller: Track::default(), bot: Track::default(), late_samples: 0 }
    }

    /// As `new`, holding 16 kHz audio: two samples per 8 kHz position, so what is added
    /// must be 16 kHz audio (an even number of samples).
    pub fn wideband(channels: Channels, start: u64) -> RecordingTimeline {
        RecordingTimeline { per_pos: 2, ..RecordingTimeline::new(channels, start) }
    }

    /// The sample rate of what it holds and hands out.
    pub fn rate(&self) -> u32 {
        TIMELINE_RATE as u32 * self.per_pos as u32
    }

    pub fn channels(&self) -> Channels {
        self.channels
    }

    /// Position up to which audio has been handed out.
    pub fn flushed(&self) -> u64 {
        self.flushed
    }

    /// The caller's audio from position `pos`, at the timeline's rate.
    pub fn add_caller(&mut self, pos: u64, pcm: &[i16]) {
        Self::place(&mut self.caller, self.per_pos, self.flushed, &mut self.late_samples, pos, pcm);
    }

    /// The bot's audio from position `pos`, at the timeline's rate.
    pub fn add_bot(&mut self, pos: u64, pcm: &[i16]) {
        Self::place(&mut self.bot, self.per_pos, self.flushed, &mut self.late_samples, pos, pcm);
    }

    /// `late` counts positions (8 kHz samples) whatever the timeline's rate.
    fn place(track: &mut Track, per_pos: usize, flushed: u64, late: &mut u64, pos: u64, pcm: &[i16]) {
        let (skip, offset) = if pos < flushed { ((flushed - pos) as usize, 0) } else { (0, (pos - flushed) as usize) };
        let (skip, offset) = (skip * per_pos, offset * per_pos);
        if skip >= pcm.len() {
            *late += (pcm.len() / per_pos) as u64;
            return;
        }
        *late += (skip / per_pos) as u64;
        track.add_at(offset, &pcm[skip..]);
    }

    /// Hands out everything before `pos` (interleaved when stereo).
    pub fn flush_until(&mut self, pos: u64, out: &mut Vec<i16>) {
        if pos <= self.flushed {
            return;
        }
        let n = (pos - self.flushed) as usize * self.per_pos;
        // Silence where neither side has audio yet, then both tracks drain in step.
        self.caller.extend_to(n);
        self.bot.extend_to(n);
        let (caller, bot) = (self.caller.front(n), self.bot.front(n));
        match self.channels {
            Channels::Mono => out.extend(caller.iter().zip(bot).map(|(&a, &b)| a.saturating_add(b))),
            Channels::Stereo => {
                out.reserve(2 * n);
                for (&a, &b) in caller.iter().zip(bot) {
                    out.push(a);
                    out.push(b);
                }
            }
        }
        self.caller.consume(n);
        self.bot.consume(n);
        self.flushed = pos;
    }

    /// Ends the recording at `end` (or at the last buffered sample, if later).
    pub fn finish(&mut self, end: u64, out: &mut Vec<i16>) {
        let buffered = self.flushed + self.caller.len().max(self.bot.len()).div_ceil(self.per_pos) as u64;
        self.flush_until(end.max(buffered), out);
    }

    /// Samples held in memory (bounded by how far ahead of the flush point audio lands).
    pub fn held(&self) -> usize {
        self.caller.len() + self.bot.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recording_is_written_half_a_second_behind_in_100_ms_batches() {
        let schedule = FlushSchedule::default();
        let started = Instant::now();
        let mut flushed = 0;
        let mut flushes = Vec::new();
        // Ten seconds of a call, polled every 20 ms as the call's ticks do.
        for ms in (0..=10_000u64).step_by(20) {
            let now = timeline_position(started, started + Duration::from_millis(ms));
            if let Some(upto) = schedule.due(now, flushed) {
                assert!(upto + schedule.lag <= now, "never closer to the present than the lag");
                assert!(upto - flushed >= schedule.batch, "never less than a batch");
                flushed = upto;
                flushes.push(ms);
            }
        }
        // The first write once 500 ms of lag and 100 ms of audio have passed, then one
        // every 100 ms.
        assert_eq!(flushes[0], 600);
        assert!(flushes.windows(2).all(|w| w[1] - w[0] == 100), "{flushes:?}");
        assert_eq!(flushed, timeline_position(started, started + Duration::from_millis(9_500)));
        // A recording started late in the call is measured from its own start.
        assert_eq!(schedule.due(40_000, 36_000), None);
        assert_eq!(schedule.due(40_800, 36_000), Some(36_800));
        // A clock read before the start (or at it) is position 0, never a panic.
        assert_eq!(timeline_position(started + Duration::from_secs(1), started), 0);
    }
    use crate::core::jitter::{Heard, JitterBuffer, JitterConfig, RtpId};
    use std::time::{Duration, Instant};

    #[test]
    fn caller_and_bot_interleave_as_they_spoke() {
        let mut t = RecordingTimeline::new(Channels::Mono, 0);
        t.add_bot(0, &[100; 800]); // bot 0..100 ms
        t.add_caller(1600, &[10; 800]); // caller 200..300 ms
        t.add_caller(400, &[1; 160]); // caller talks over the bot at 50 ms
        let mut out = Vec::new();
        t.finish(3200, &mut out);
        assert_eq!(out.len(), 3200);
        assert_eq!(out[0], 100);
        assert_eq!(out[450], 101, "overlapping speech is mixed");
        assert_eq!(out[1000], 0, "the gap is silence");
        assert_eq!(out[1700], 10);
        assert_eq!(out[2500], 0);
    }

    /// A wideband timeline holds two samples per position: placement, mixing,
    /// lateness (counted in positions) and the end all follow the same 8 kHz clock.
    #[test]
    fn a_wideband_timeline_places_16k_audio_on_the_8k_clock() {
        let mut t = RecordingTimeline::wideband(Channels::Mono, 100);
        assert_eq!(t.rate(), 16000);
        t.add_caller(100, &[5; 320]); // 20 ms from position 100
        t.add_bot(180, &[2; 320]); // 20 ms from 10 ms later
        let mut out = Vec::new();
        t.flush_until(200, &mut out);
        assert_eq!(out.len(), 200, "100 positions are 200 samples");
        assert_eq!((out[0], out[159], out[160], out[199]), (5, 5, 7, 7));
        // 40 positions of this piece were already written out.
        t.add_caller(160, &[1; 160]);
        assert_eq!(t.late_samples, 40);
        out.clear();
        t.finish(0, &mut out);
        // What was buffered ends the recording: to position 340 (the bot's end).
        assert_eq!(t.flushed(), 340);
        assert_eq!(out.len(), 280);
        assert_eq!((out[0], out[79], out[80], out[119], out[120], out[279]), (8, 8, 7, 7, 2, 2));
    }

    #[test]
    fn stereo_keeps_caller_left_and_bot_right() {
        let mut t = RecordingTimeline::new(Channels::Stereo, 80);
        t.add_caller(80, &[7; 10]);
        t.add_bot(85, &[-9; 10]);
        let mut out = Vec::new();
        t.finish(100, &mut out);
        assert_eq!(out.len(), 40);
        assert_eq!(&out[..4], &[7, 0, 7, 0]);
        assert_eq!(&out[10..12], &[7, -9]);
    }

    #[test]
    fn mono_mix_matches_a_plain_sum_across_reclaims() {
        // Odd placements and flushes make both tracks reclaim their consumed space many
        // times over; the mix must be the sample-wise saturating sum all the same.
        let mut t = RecordingTimeline::new(Channels::Mono, 0);
        let (mut caller, mut bot) = (vec![0i16; 40_000], vec![0i16; 40_000]);
        let mut out = Vec::new();
        let mut seed = 7u32;
        let mut rnd = |m: u32| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (seed >> 8) % m
        };
        for step in 0..300u64 {
            let pos = step * 120 + rnd(60) as u64;
            let len = 20 + rnd(300) as usize;
            let pcm: Vec<i16> = (0..len).map(|_| rnd(60_000) as i16).collect();
            let track = if step % 3 == 0 {
                t.add_bot(pos, &pcm);
                &mut bot
            } else {
                t.add_caller(pos, &pcm);
                &mut caller
            };
            for (k, &s) in pcm.iter().enumerate() {
                let slot = &mut track[pos as usize + k];
                *slot = slot.saturating_add(s);
            }
            if step % 7 == 6 {
                t.flush_until(step * 120, &mut out);
            }
        }
        t.flush_until(37_000, &mut out);
        let expected: Vec<i16> = caller.iter().zip(&bot).take(37_000).map(|(a, b)| a.saturating_add(*b)).collect();
        assert_eq!(t.late_samples, 0);
        assert!(out == expected, "mono mix differs from the plain sum");
    }

    #[test]
    fn mixing_saturates() {
        let mut t = RecordingTimeline::new(Channels::Mono, 0);
        t.add_caller(0, &[30000]);
        t.add_bot(0, &[30000]);
        let mut out = Vec::new();
        t.finish(1, &mut out);
        assert_eq!(out, vec![i16::MAX]);
    }

    #[test]
    fn late_audio_is_counted_and_dropped() {
        let mut t = RecordingTimeline::new(Channels::Mono, 0);
        let mut out = Vec::new();
        t.flush_until(1000, &mut out);
        t.add_caller(900, &[5; 200]);
        assert_eq!(t.late_samples, 100);
        t.finish(1200, &mut out);
        assert_eq!(out.len(), 1200);
        assert_eq!(out[1000], 5);
    }

    /// An hour of a call through the real jitter buffer: the caller (clock 50 ppm slow,
    /// packets reordered, lost, duplicated and late) speaks a marker burst every 10 s,
    /// the bot answers 1 s later. In the mixed recording each burst is where it was
    /// sent, within one 20 ms frame, and memory stays bounded.
    #[test]
    fn an_hour_on_one_timeline_stays_aligned() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default(), t0);
        let mut rec = RecordingTimeline::new(Channels::Stereo, 0);
        let mut heard: Vec<Heard> = Vec::new();
        let mut out = Vec::new();
        let mut left_onsets = Vec::new();
        let mut right_onsets = Vec::new();
        let mut written = 0u64;
        let mut max_held = 0;
        let frames = 180_000u64; // one hour of 20 ms frames
        let mut pending: Vec<(u64, u64)> = Vec::new(); // (arrival us, frame k)
        for k in 0..frames {
            let sent_us = 500_000 + k * 20_000 * 1_000_050 / 1_000_000;
            let mut arrive = sent_us + 3_000 + (k * 37 % 25) * 1000;
            if k % 97 == 3 {
                arrive += 30_000; // overtaken by the next packets: reordered
            }
            if k % 1013 == 507 {
                continue; // lost
            }
            pending.push((arrive, k));
            if k % 499 == 0 {
                pending.push((arrive + 1000, k)); // duplicated
            }
        }
        pending.sort();
        let speaking = |k: u64| k % 500 < 10; // 200 ms burst every 10 s
        let mut next_tick = 0u64;
        for (arrive_us, k) in pending {
            while next_tick * 20_000 <= arrive_us {
                let now = t0 + Duration::from_micros(next_tick * 20_000);
                jb.on_tick(now, &mut heard);
                // The bot answers each burst 1 s after the caller started it.
                if next_tick >= 75 && (next_tick - 75) % 500 < 10 {
                    rec.add_bot(next_tick * 160, &[-20000; 160]);
                }
                for h in heard.drain(..) {
                    rec.add_caller(h.wall_pos, &h.pcm);
                }
                let flush_to = (next_tick * 160).saturating_sub(4000);
                rec.flush_until(flush_to, &mut out);
                max_held = max_held.max(rec.held());
                // Onset detection on the stream as it is written.
                onsets(&out, written, &mut left_onsets, &mut right_onsets);
                written += out.len() as u64 / 2;
                out.clear();
                next_tick += 1;
            }
            let pcm = if speaking(k) { vec![20000; 160] } else { vec![0; 160] };
            jb.on_packet(t0 + Duration::from_micros(arrive_us), RtpId { ssrc: 9, seq: k as u16, ts: (k * 160) as u32 }, pcm, &mut heard);
        }
        assert!(max_held < 8000 * 2, "memory held stays bounded: {max_held} samples");
        assert!(left_onsets.len() >= 350, "found {} caller bursts", left_onsets.len());
        for (i, &onset) in left_onsets.iter().enumerate() {
            let k = (i as u64) * 500;
            let sent = (500_000 + k * 20_000 * 1_000_050 / 1_000_000) * 8 / 1000;
            let err = onset as i64 - sent as i64;
            assert!(err.abs() <= 160, "caller burst {i} placed {err} samples off");
        }
        for (i, &onset) in right_onsets.iter().enumerate() {
            let expected = (75 + i as u64 * 500) * 160;
            assert_eq!(onset, expected, "bot burst {i} is where it was sent");
        }
        assert!(jb.stats.late + jb.stats.duplicate > 0);
    }

    /// Records the sample index where each channel rises above half scale.
    fn onsets(stereo: &[i16], first: u64, left: &mut Vec<u64>, right: &mut Vec<u64>) {
        for (i, pair) in stereo.chunks(2).enumerate() {
            let at = first + i as u64;
            let l_on = pair[0] > 10000;
            let r_on = pair[1] < -10000;
            if l_on && left.last().is_none_or(|&p| at - p > 8000) {
                left.push(at);
            }
            if r_on && right.last().is_none_or(|&p| at - p > 8000) {
                right.push(at);
            }
        }
    }
}
