//! The jitter buffer for what the caller says: a bounded reordering buffer that turns
//! RTP packets into a continuous PCM timeline.
//!
//! Positions are samples on the call's own timeline (sample 0 = session start), the
//! same clock the outbound side uses, so the listener stream and the recording line
//! both directions up. The first packet of a stream (and of every new SSRC or
//! timestamp jump) is mapped to the current playout position; after that, RTP
//! timestamps (extended across wrap) decide where audio lands. In-order audio leaves
//! the moment it arrives (no added latency); a gap is held for at most `hold`, then
//! filled with silence, and silence also fills the time the caller sends nothing, so
//! the output never has holes.
//!
//! Audio that turns up after its place was filled with silence is too late for the
//! live stream, but not for the recording, which is written some time behind: it
//! comes out marked `late`, once, for the recording alone.
//!
//! A wideband codec's packets bring their audio twice, at the timeline's 8 kHz and at
//! 16 kHz (`on_wide_packet`): both are held, cut and handed out together, the 16 kHz
//! copy always twice as long, and the silence filled in for a wideband stream is
//! wideband too, so a listener or recording at 16 kHz never switches rate mid-stream.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

pub const RATE: u32 = 8000;
pub const FRAME_SAMPLES: usize = 160;

#[derive(Debug, Clone, Copy)]
pub struct JitterConfig {
    /// How long a missing packet is waited for before it is declared lost.
    pub hold: Duration,
    /// Packets held at most; past that the oldest gap is given up.
    pub capacity: usize,
    /// A timestamp this far from the expected one is a new stream, not a late packet.
    pub resync_after: Duration,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig { hold: Duration::from_millis(40), capacity: 32, resync_after: Duration::from_secs(2) }
    }
}

/// A piece of the caller's audio at a timeline position.
#[derive(Debug, Clone, PartialEq)]
pub struct Heard {
    /// Position in the continuous listener stream.
    pub pos: u64,
    /// Position on the call's wall clock (sample 0 = session start): when this audio
    /// was really spoken, for the recording. Differs from `pos` by the playout delay
    /// and follows the caller's clock drift.
    pub wall_pos: u64,
    pub pcm: Vec<i16>,
    /// The same audio at 16 kHz when the caller's codec is wideband (G.722, Opus):
    /// exactly twice `pcm`'s length; empty otherwise.
    pub wide: Vec<i16>,
    /// True when this is silence standing in for audio that never came.
    pub concealed: bool,
    /// True when this audio came after its place had been filled with silence: the
    /// live stream has moved on, only the recording takes it.
    pub late: bool,
    /// What the caller really sent, when echo cancellation or noise suppression
    /// changed `pcm` and `wide` (the recording keeps it unless asked otherwise).
    pub as_sent: Option<Box<crate::core::voice_processing::AsSent>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JitterStats {
    pub late: u64,
    pub duplicate: u64,
    pub lost_samples: u64,
    pub reordered: u64,
    pub resyncs: u64,
    /// Timestamp discontinuities inside one SSRC (sequence numbers run on, the
    /// timestamps jump back or far ahead): re-anchored like a new stream.
    pub discontinuities: u64,
    pub overflow: u64,
    /// Times the wall-clock placement was corrected for the caller's clock drift.
    pub realigned: u64,
    /// Samples of late audio handed out for the recording in place of the silence
    /// the live stream got.
    pub recovered_samples: u64,
}

/// Drift is measured over this many in-order packets (about two seconds)...
const DRIFT_WINDOW: u32 = 100;
/// ...except right after a stream starts, when a first packet that happened to be
/// delayed is corrected within 200 ms rather than two seconds.
const FIRST_DRIFT_WINDOW: u32 = 10;
/// A placement error larger than this (8 kHz samples, 5 ms) is corrected.
const DRIFT_TOLERANCE: i64 = 40;
/// How far back (8 kHz samples, 1 s) filled-in silence is remembered so that its
/// audio, turning up late, can still go to the recording. The recording is written
/// half a second behind the call, so older audio would find its place closed anyway.
const RECOVERY_WINDOW: u64 = 8000;

/// How much earlier one in-order packet may move the expected cadence (see on_packet):
/// 1 ms a packet lets the cadence follow a network that got faster by 50 ms a second,
/// while a burst of three packets moves it by 2 ms.
const EARLY_STEP: Duration = Duration::from_millis(1);

/// Which packet of which stream: the jitter buffer orders by timestamp, and checks the
/// timestamps against the sequence numbers and arrival times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpId {
    pub ssrc: u32,
    pub seq: u16,
    pub ts: u32,
}

/// A packet up to this many sequence numbers ahead of the newest continues the stream
/// (RFC 3550 A.1's MAX_DROPOUT); further is a jump the timestamps are left to judge.
const MAX_DROPOUT: i16 = 3000;
/// A next packet whose timestamp runs ahead of the time since the newest one by more
/// than this (8 kHz samples, 1 s) restarted its clock: network delay varies by far less.
const FORWARD_JUMP: i64 = 8000;

struct StreamMap {
    ssrc: u32,
    /// The newest packet so far (highest sequence number) and when it came.
    newest_seq: u16,
    newest_ts: u32,
    newest_at: Instant,
    last_ts: u32,
    last_ext: i64,
    /// timeline position = extended timestamp + offset
    offset: i64,
}

pub struct JitterBuffer {
    cfg: JitterConfig,
    start: Instant,
    /// wall position = stream position + wall_delta.
    wall_delta: i64,
    /// Smallest (arrival - expected) over the current drift window: network delay only
    /// ever adds, so the minimum tracks the sender's clock against ours.
    window_min: i64,
    window_count: u32,
    window_len: u32,
    next_pos: u64,
    /// The wall time at which timeline position `anchor.1` was due.
    anchor: (Instant, u64),
    stream: Option<StreamMap>,
    /// Each packet's audio at 8 kHz, and at 16 kHz (or empty) for a wideband stream.
    buffer: BTreeMap<u64, (Vec<i16>, Vec<i16>)>,
    /// The newest packet was wideband: silence filled in is wideband too.
    wideband: bool,
    /// Timeline ranges [start, end) filled with silence in the last RECOVERY_WINDOW,
    /// oldest first; what late audio has since filled in is cut out, so a duplicate
    /// of it is not recorded twice.
    concealed: VecDeque<(u64, u64)>,
    pub stats: JitterStats,
}

fn samples(d: Duration) -> u64 {
    (d.as_micros() as u64 * RATE as u64) / 1_000_000
}

impl JitterBuffer {
    pub fn new(cfg: JitterConfig, start: Instant) -> JitterBuffer {
        JitterBuffer {
            cfg,
            start,
            wall_delta: 0,
            window_min: i64::MAX,
            window_count: 0,
            window_len: FIRST_DRIFT_WINDOW,
            next_pos: 0,
            anchor: (start, 0),
            stream: None,
            buffer: BTreeMap::new(),
            wideband: false,
            concealed: VecDeque::new(),
            stats: JitterStats::default(),
        }
    }

    /// Timeline position of the next sample to be emitted.
    pub fn position(&self) -> u64 {
        self.next_pos
    }

    pub fn buffered_packets(&self) -> usize {
        self.buffer.len()
    }

    fn due(&self, pos: u64) -> Instant {
        let ahead = pos.saturating_sub(self.anchor.1);
        self.anchor.0 + Duration::from_micros(ahead * 1_000_000 / RATE as u64)
    }

    fn arrival_pos(&self, now: Instant) -> i64 {
        samples(now.saturating_duration_since(self.start)) as i64
    }

    /// Follows the caller's clock: compares when in-order audio arrives with where
    /// the RTP timestamps place it, and corrects the wall placement when the smallest
    /// difference over a window drifts past the tolerance.
    fn track_drift(&mut self, now: Instant, pos: u64) {
        let late = self.arrival_pos(now) - (pos as i64 + self.wall_delta);
        self.window_min = self.window_min.min(late);
        self.window_count += 1;
        if self.window_count >= self.window_len {
            if self.window_min.abs() > DRIFT_TOLERANCE {
                self.wall_delta += self.window_min;
                self.stats.realigned += 1;
            }
            self.window_min = i64::MAX;
            self.window_count = 0;
            self.window_len = DRIFT_WINDOW;
        }
    }

    fn map(&mut self, now: Instant, id: RtpId) -> i64 {
        let RtpId { ssrc, seq, ts } = id;
        match &mut self.stream {
            Some(s) if s.ssrc == ssrc => {
                let seq_ahead = seq.wrapping_sub(s.newest_seq) as i16;
                if (1..=MAX_DROPOUT).contains(&seq_ahead) {
                    // The next packets of the stream: their timestamps must move on about
                    // as time did. A source switch behind an SBC or a PBX (or a resume
                    // after hold) that keeps the SSRC and the sequence numbers but
                    // restarts the timestamps would otherwise land on audio already
                    // played: lost live, and laid over the past in the recording.
                    let ts_ahead = ts.wrapping_sub(s.newest_ts) as i32 as i64;
                    let elapsed = samples(now.saturating_duration_since(s.newest_at)) as i64;
                    if ts_ahead < 0 || ts_ahead > elapsed + FORWARD_JUMP {
                        self.stats.discontinuities += 1;
                        self.stats.resyncs += 1;
                        self.resync(now, id);
                        return self.next_pos as i64;
                    }
                    s.newest_seq = seq;
                    s.newest_ts = ts;
                    s.newest_at = now;
                }
                let delta = ts.wrapping_sub(s.last_ts) as i32 as i64;
                s.last_ts = ts;
                s.last_ext += delta;
                s.last_ext + s.offset
            }
            _ => {
                if self.stream.is_some() {
                    self.stats.resyncs += 1;
                }
                self.resync(now, id);
                self.next_pos as i64
            }
        }
    }

    /// Starts mapping a (new) stream so that `ts` lands at the current playout position,
    /// and on the wall clock at its arrival.
    fn resync(&mut self, now: Instant, RtpId { ssrc, seq, ts }: RtpId) {
        self.give_up_buffer();
        self.wall_delta = self.arrival_pos(now) - self.next_pos as i64;
        self.window_min = i64::MAX;
        self.window_count = 0;
        self.window_len = FIRST_DRIFT_WINDOW;
        self.stream = Some(StreamMap {
            ssrc,
            newest_seq: seq,
            newest_ts: ts,
            newest_at: now,
            last_ts: ts,
            last_ext: ts as i64,
            offset: self.next_pos as i64 - ts as i64,
        });
    }

    fn give_up_buffer(&mut self) {
        let dropped: u64 = self.buffer.values().map(|p| p.0.len() as u64).sum();
        self.stats.lost_samples += dropped;
        self.buffer.clear();
    }

    pub fn on_packet(&mut self, now: Instant, id: RtpId, pcm: Vec<i16>, out: &mut Vec<Heard>) {
        self.on_wide_packet(now, id, pcm, Vec::new(), out)
    }

    /// A packet's audio at 8 kHz (`pcm`, which places it) and, for a wideband codec,
    /// at 16 kHz (`wide`: twice as long, or empty for a narrowband one).
    pub fn on_wide_packet(&mut self, now: Instant, id: RtpId, pcm: Vec<i16>, wide: Vec<i16>, out: &mut Vec<Heard>) {
        if pcm.is_empty() {
            return;
        }
        // The pure core trusts no caller to keep the ratio: a wide copy of another
        // length is not carried (the 8 kHz audio still is).
        let mut wide = if wide.len() == pcm.len() * 2 { wide } else { Vec::new() };
        self.wideband = !wide.is_empty();
        let mut pos = self.map(now, id);
        let window = samples(self.cfg.resync_after) as i64;
        if (pos - self.next_pos as i64).abs() > window {
            // A timestamp jump (sender restart, hold/resume): treat as a new stream.
            self.stats.resyncs += 1;
            self.resync(now, id);
            pos = self.next_pos as i64;
        }
        let mut pcm = pcm;
        if pos < self.next_pos as i64 {
            let behind = (self.next_pos as i64 - pos) as usize;
            if let Ok(at) = u64::try_from(pos) {
                let n = behind.min(pcm.len());
                self.recover(at, &pcm[..n], wide.get(..2 * n).unwrap_or_default(), out);
            }
            if behind >= pcm.len() {
                self.stats.late += 1;
                return;
            }
            // Partly late: keep the part that is still in the future.
            pcm.drain(..behind);
            if !wide.is_empty() {
                wide.drain(..2 * behind);
            }
            pos = self.next_pos as i64;
        }
        let pos = pos as u64;
        if self.buffer.contains_key(&pos) {
            self.stats.duplicate += 1;
            return;
        }
        if pos > self.next_pos || !self.buffer.is_empty() {
            self.stats.reordered += u64::from(self.buffer.range(pos..).next().is_some());
        }
        self.buffer.insert(pos, (pcm, wide));
        if pos == self.next_pos {
            // In order: it plays now, and the cadence is measured from its arrival. One
            // that comes early (the 2nd and 3rd packet of a burst) moves the cadence
            // earlier by at most EARLY_STEP: a sender that bursts would otherwise have
            // every packet after a burst awaited a burst too early, and cut as lost.
            // A late one moves it at once (the network's delay grew).
            let expected = self.due(pos);
            let at = if now < expected { expected.checked_sub(EARLY_STEP).map_or(now, |e| now.max(e)) } else { now };
            self.anchor = (at, pos);
            self.track_drift(now, pos);
        }
        self.drain(out);
        while self.buffer.len() > self.cfg.capacity {
            self.stats.overflow += 1;
            let head_due = self.buffer.keys().next().is_some_and(|&head| self.due(head) <= now);
            if !head_due {
                // Audio from the future past what the buffer holds: a sender running
                // ahead of real time, or one forging timestamps. Dropping its farthest
                // packet costs what it sent too early; giving up the gap instead would
                // invent silence ahead of the clock, as much as its timestamps claim,
                // for every listener and the recording.
                if let Some((_, (dropped, _))) = self.buffer.pop_last() {
                    self.stats.lost_samples += dropped.len() as u64;
                }
                continue;
            }
            self.conceal_gap(out);
            self.drain(out);
        }
    }

    fn wall(&self, pos: u64) -> u64 {
        (pos as i64 + self.wall_delta).max(0) as u64
    }

    /// Emits everything contiguous from the playout position.
    fn drain(&mut self, out: &mut Vec<Heard>) {
        while let Some(entry) = self.buffer.first_entry() {
            let pos = *entry.key();
            if pos > self.next_pos {
                break;
            }
            let (mut pcm, mut wide) = entry.remove();
            if pos < self.next_pos {
                // Overlaps what was already emitted (odd packet sizes): keep the rest.
                let skip = (self.next_pos - pos) as usize;
                if skip >= pcm.len() {
                    self.stats.late += 1;
                    continue;
                }
                pcm.drain(..skip);
                if !wide.is_empty() {
                    wide.drain(..2 * skip);
                }
            }
            let at = self.next_pos;
            self.next_pos += pcm.len() as u64;
            out.push(Heard { pos: at, wall_pos: self.wall(at), pcm, wide, concealed: false, late: false, as_sent: None });
        }
    }

    /// Hands out, marked late, the parts of `pcm` (audio for `pos..`; `wide`, its 16 kHz
    /// copy or empty) whose place the live stream filled with silence; parts already
    /// played are duplicates and go.
    fn recover(&mut self, pos: u64, pcm: &[i16], wide: &[i16], out: &mut Vec<Heard>) {
        self.forget_old_silence();
        let end = pos + pcm.len() as u64;
        let mut i = 0;
        while let Some(&(start, stop)) = self.concealed.get(i) {
            if start >= end {
                break;
            }
            let (from, to) = (start.max(pos), stop.min(end));
            if from >= to {
                i += 1;
                continue;
            }
            let (a, b) = ((from - pos) as usize, (to - pos) as usize);
            let piece = pcm[a..b].to_vec();
            let wide = wide.get(2 * a..2 * b).map(<[i16]>::to_vec).unwrap_or_default();
            out.push(Heard { pos: from, wall_pos: self.wall(from), pcm: piece, wide, concealed: false, late: true, as_sent: None });
            self.stats.recovered_samples += to - from;
            // Cut the filled part out of the range: what is left is still silence.
            match (start < from, to < stop) {
                (true, true) => {
                    self.concealed[i].1 = from;
                    self.concealed.insert(i + 1, (to, stop));
                    i += 2;
                }
                (true, false) => {
                    self.concealed[i].1 = from;
                    i += 1;
                }
                (false, true) => {
                    self.concealed[i].0 = to;
                    i += 1;
                }
                (false, false) => {
                    self.concealed.remove(i);
                }
            }
        }
    }

    /// Fills silence up to the next buffered packet (or one frame when none waits).
    fn conceal_gap(&mut self, out: &mut Vec<Heard>) {
        let waiting = self.buffer.keys().next().copied();
        let n = match waiting {
            Some(head) => (head - self.next_pos).min(FRAME_SAMPLES as u64),
            None => FRAME_SAMPLES as u64,
        };
        if waiting.is_some() {
            self.stats.lost_samples += n;
        }
        let wide = if self.wideband { vec![0; 2 * n as usize] } else { Vec::new() };
        out.push(Heard {
            pos: self.next_pos,
            wall_pos: self.wall(self.next_pos),
            pcm: vec![0; n as usize],
            wide,
            concealed: true,
            late: false,
            as_sent: None,
        });
        let (start, end) = (self.next_pos, self.next_pos + n);
        match self.concealed.back_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => self.concealed.push_back((start, end)),
        }
        self.next_pos = end;
        self.forget_old_silence();
    }

    fn forget_old_silence(&mut self) {
        while self.concealed.front().is_some_and(|&(_, stop)| stop + RECOVERY_WINDOW < self.next_pos) {
            self.concealed.pop_front();
        }
    }

    /// Advances time: whatever is overdue by more than `hold` becomes silence.
    pub fn on_tick(&mut self, now: Instant, out: &mut Vec<Heard>) {
        // Bounded catch-up: a stalled process resumes with at most 5 s of fill.
        for _ in 0..250 {
            if now < self.due(self.next_pos) + self.cfg.hold {
                break;
            }
            self.conceal_gap(out);
            self.drain(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS20: Duration = Duration::from_millis(20);

    /// A packet of 20 ms frames: its sequence number follows from its timestamp.
    fn id(ssrc: u32, ts: u32) -> RtpId {
        RtpId { ssrc, seq: (ts / 160) as u16, ts }
    }

    fn frame(tag: i16) -> Vec<i16> {
        vec![tag; FRAME_SAMPLES]
    }

    fn flatten(out: &[Heard]) -> Vec<i16> {
        out.iter().flat_map(|h| h.pcm.iter().copied()).collect()
    }

    /// Checks the output is one unbroken timeline from 0.
    fn assert_continuous(out: &[Heard]) {
        let mut pos = out.first().map_or(0, |h| h.pos);
        for h in out {
            assert_eq!(h.pos, pos, "hole or overlap at {pos}");
            pos += h.pcm.len() as u64;
        }
    }

    #[test]
    fn a_sender_that_bursts_loses_nothing_to_the_live_stream() {
        // ffmpeg's G.722 and many gateways: three 20 ms packets at once, a burst every
        // 60 ms on average but 8 ms late every other time (ffmpeg's were 61-71 ms
        // apart). Ticks every 5 ms as the session gives them.
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default(), t0);
        let mut out = Vec::new();
        let ms = |n: u64| Duration::from_millis(n);
        let mut next_tick = 0;
        for k in 0..150u32 {
            let burst = k as u64 / 3;
            let at = burst * 60 + (burst % 2) * 8;
            let arrive = t0 + ms(at);
            while next_tick * 5 < at {
                jb.on_tick(t0 + ms(next_tick * 5), &mut out);
                next_tick += 1;
            }
            jb.on_packet(arrive, id(3, k * 160), frame(k as i16 + 1), &mut out);
        }
        assert_eq!((jb.stats.late, jb.stats.lost_samples), (0, 0), "{:?}", jb.stats);
        assert!(out.iter().all(|h| !h.concealed), "no silence stood in for audio that came");
        assert_continuous(&out);
        assert_eq!(flatten(&out), (0..150).flat_map(|k| frame(k + 1)).collect::<Vec<_>>());
    }

    /// A wideband stream's 16 kHz copy goes through reordering, loss, late arrival and
    /// overlap exactly as its 8 kHz audio does: always twice as long and the same
    /// audio (here each 16 kHz sample is the 8 kHz one's tag), silence stood in for a
    /// lost packet is wideband too, and a copy of the wrong length is not carried.
    #[test]
    fn a_wideband_copy_rides_with_its_audio() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default(), t0);
        let mut out = Vec::new();
        let wide = |tag: i16| vec![tag; 2 * FRAME_SAMPLES];
        let ms = |n: u64| Duration::from_millis(n);
        jb.on_wide_packet(t0, id(4, 0), frame(1), wide(1), &mut out);
        // 160 comes after 320 (reordered); 480 is lost; 640 overlaps 320..800 by half.
        jb.on_wide_packet(t0 + ms(40), id(4, 320), frame(3), wide(3), &mut out);
        jb.on_wide_packet(t0 + ms(41), id(4, 160), frame(2), wide(2), &mut out);
        // 480 is given up for silence, then comes late: for the recording, with its
        // wide copy. 560 overlaps the (now filled) 560..640 and brings 640..800.
        jb.on_tick(t0 + ms(130), &mut out);
        jb.on_wide_packet(t0 + ms(131), id(4, 480), frame(4), wide(4), &mut out);
        let overlap: Vec<i16> = [vec![5; 80], vec![6; 160]].concat();
        let overlap_wide: Vec<i16> = [vec![5; 160], vec![6; 320]].concat();
        jb.on_wide_packet(t0 + ms(132), RtpId { ssrc: 4, seq: 4, ts: 560 }, overlap, overlap_wide, &mut out);
        // A wide copy of the wrong length is dropped, the audio kept.
        jb.on_wide_packet(t0 + ms(150), RtpId { ssrc: 4, seq: 5, ts: 800 }, frame(7), vec![7; 100], &mut out);
        assert_continuous(&out.iter().filter(|h| !h.late).cloned().collect::<Vec<_>>());
        for h in &out {
            let expected: Vec<i16> = if h.pos == 800 { Vec::new() } else { h.pcm.iter().flat_map(|&s| [s, s]).collect() };
            assert_eq!(h.wide, expected, "at {} (late {}, concealed {})", h.pos, h.late, h.concealed);
        }
        assert!(out.iter().any(|h| h.concealed && h.wide.len() == 2 * h.pcm.len()), "wideband silence");
        assert!(out.iter().any(|h| h.late && h.pcm == frame(4)), "the late packet, once, for the recording");
        let live: Vec<i16> = out.iter().filter(|h| !h.late).flat_map(|h| h.pcm.iter().copied()).collect();
        assert_eq!(live, [frame(1), frame(2), frame(3), frame(0), vec![6; 160], frame(7)].concat());
    }

    #[test]
    fn in_order_audio_leaves_on_arrival() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default(), t0);
        let mut out = Vec::new();
        jb.on_packet(t0, id(1, 1000), frame(1), &mut out);
        assert_eq!(out.len(), 1, "no added latency for in-order audio");
        jb.on_packet(t0 + MS20, id(1, 1160), frame(2), &mut out);
        assert_eq!(flatten(&out), [frame(1), frame(2)].concat());
        assert_continuous(&out);
    }

    #[test]
    fn reordered_packets_come_out_in_order() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default(), t0);
        let mut out = Vec::new();
        jb.on_packet(t0, id(7, 0), frame(1), &mut out);
        jb.on_packet(t0 + MS20, id(7, 320), frame(3), &mut out);
        jb.on_packet(t0 + MS20 * 2, id(7, 480), frame(4), &mut out);
        assert_eq!(out.len(), 1, "held while 160 is missing");
        jb.on_packet(t0 + MS20 * 2, id(7, 160), frame(2), &mut out);
        assert_eq!(flatten(&out), [frame(1), frame(2), frame(3), frame(4)].concat());
        assert_eq!(jb.stats.reordered, 1);
        assert_eq!(jb.stats.lost_samples, 0);
    }

    #[test]
    fn lost_packet_becomes_silence_after_hold() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default(), t0);
        let mut out = Vec::new();
        jb.on_packet(t0, id(7, 0), frame(1), &mut out);
        jb.on_packet(t0 + MS20 * 2, id(7, 320), frame(3), &mut out);
        jb.on_tick(t0 + MS20 + Duration::from_millis(39), &mut out);
        assert_eq!(out.len(), 1, "still within hold");
        jb.on_tick(t0 + MS20 + Duration::from_millis(40), &mut out);
        assert_eq!(flatten(&out), [frame(1), frame(0), frame(3)].concat());
        assert_eq!(jb.stats.lost_samples, 160);
        assert_continuous(&out);
        // The lost packet turning up afterwards is late for the live stream: it comes
        // out once more, marked late, for the recording, where the silence was.
        jb.on_packet(t0 + MS20 * 4, id(7, 160), frame(2), &mut out);
        assert_eq!(jb.stats.late, 1);
        assert_eq!(out.len(), 4);
        assert_eq!((out[3].pos, out[3].late, &out[3].pcm), (160, true, &frame(2)));
        assert_eq!(out[3].wall_pos, out[1].wall_pos, "where the silence stood");
        assert_eq!(jb.stats.recovered_samples, 160);
        // A second copy of it finds no silence left to fill.
        jb.on_packet(t0 + MS20 * 4, id(7, 160), frame(2), &mut out);
        assert_eq!(out.len(), 4);
        assert_continuous(&out[..3]);
    }

    #[test]
    fn late_audio_fills_only_the_silence_it_belongs_to() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default(), t0);
        let mut out = Vec::new();
        jb.on_packet(t0, id(7, 0), frame(1), &mut out);
        // The sender stalls for 200 ms: the live stream fills the frames due by then.
        jb.on_tick(t0 + MS20 * 10, &mut out);
        let filled: u64 = out.iter().filter(|h| h.concealed).map(|h| h.pcm.len() as u64).sum();
        assert!(filled >= 7 * 160, "{filled} samples filled");
        // Then everything comes at once, in 60-sample packets, one straddling the edge
        // between what was filled and what is still to come.
        assert_ne!(filled % 60, 0);
        out.clear();
        for k in 0..((filled + 320) / 60) {
            jb.on_packet(t0 + MS20 * 10, id(7, (160 + k * 60) as u32), vec![k as i16 + 1; 60], &mut out);
        }
        let recovered: Vec<i16> = out.iter().filter(|h| h.late).flat_map(|h| h.pcm.iter().copied()).collect();
        assert_eq!(recovered.len() as u64, filled, "exactly the filled part is recovered");
        assert!(recovered.iter().enumerate().all(|(i, &s)| s == (i / 60) as i16 + 1), "in its place");
        let live: Vec<&Heard> = out.iter().filter(|h| !h.late).collect();
        assert_eq!(live.first().map(|h| h.pos), Some(160 + filled), "the live stream goes on from where it was");
        assert_eq!(jb.stats.recovered_samples, filled);
    }

    #[test]
    fn silence_older_than_the_recovery_window_is_forgotten() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default(), t0);
        let mut out = Vec::new();
        jb.on_packet(t0, id(7, 0), frame(1), &mut out);
        // A gap at 160, then 1.5 s of audio, then the gap's packet (still within the
        // 2 s that would make it a new stream).
        for k in 2..77u32 {
            jb.on_tick(t0 + MS20 * k, &mut out);
            jb.on_packet(t0 + MS20 * k, id(7, k * 160), frame(1), &mut out);
        }
        out.clear();
        jb.on_packet(t0 + MS20 * 77, id(7, 160), frame(2), &mut out);
        assert_eq!(jb.stats.resyncs, 0);
        assert!(out.is_empty(), "the recording has long closed that place");
        assert!(jb.concealed.len() <= 1);
    }

    #[test]
    fn duplicates_are_dropped() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default(), t0);
        let mut out = Vec::new();
        jb.on_packet(t0, id(7, 0), frame(1), &mut out);
        jb.on_packet(t0, id(7, 0), frame(1), &mut out);
        jb.on_packet(t0, id(7, 320), frame(3), &mut out);
        jb.on_packet(t0, id(7, 320), frame(3), &mut out);
        assert_eq!(jb.stats.late + jb.stats.duplicate, 2);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn silence_fills_before_and_between_talk() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default(), t0);
        let mut out = Vec::new();
        for k in 1..=10 {
            jb.on_tick(t0 + MS20 * k, &mut out);
        }
        // At 200 ms with a 40 ms hold, the frames due at 0..=160 ms are filled.
        assert_eq!(flatten(&out).len(), 9 * FRAME_SAMPLES);
        jb.on_packet(t0 + MS20 * 10, id(99, 5000), frame(5), &mut out);
        assert_eq!(out.last().unwrap().pcm, frame(5));
        assert_continuous(&out);
    }

    #[test]
    fn timestamp_wrap_is_seamless() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default(), t0);
        let mut out = Vec::new();
        let start = u32::MAX - 159;
        for k in 0..4u32 {
            jb.on_packet(t0 + MS20 * k, id(3, start.wrapping_add(k * 160)), frame(k as i16 + 1), &mut out);
        }
        assert_eq!(flatten(&out), [frame(1), frame(2), frame(3), frame(4)].concat());
        assert_eq!(jb.stats.resyncs, 0);
    }

    #[test]
    fn ssrc_change_and_timestamp_jump_resync_without_holes() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default(), t0);
        let mut out = Vec::new();
        jb.on_packet(t0, id(1, 0), frame(1), &mut out);
        jb.on_packet(t0 + MS20, id(2, 777_777), frame(2), &mut out);
        jb.on_packet(t0 + MS20 * 2, id(2, 777_777 + 8000 * 60), frame(3), &mut out);
        assert_eq!(flatten(&out), [frame(1), frame(2), frame(3)].concat());
        assert_eq!(jb.stats.resyncs, 2);
        assert_continuous(&out);
    }

    /// Two talkspurts of one SSRC, 0.6 s apart, sequence numbers running on; the second
    /// starts its timestamps at `second_ts`. Returns what came out, ticked at 20 ms.
    fn two_talkspurts(jb: &mut JitterBuffer, t0: Instant, second_ts: u32) -> Vec<Heard> {
        let mut out = Vec::new();
        let mut at = t0;
        for k in 0..25u32 {
            at = t0 + MS20 * k;
            jb.on_tick(at, &mut out);
            jb.on_packet(at, RtpId { ssrc: 4, seq: 100 + k as u16, ts: 8000 + k * 160 }, frame(1), &mut out);
        }
        for _ in 0..30 {
            at += MS20;
            jb.on_tick(at, &mut out);
        }
        for k in 0..15u32 {
            at += MS20;
            jb.on_tick(at, &mut out);
            jb.on_packet(at, RtpId { ssrc: 4, seq: 125 + k as u16, ts: second_ts.wrapping_add(k * 160) }, frame(2), &mut out);
        }
        out
    }

    #[test]
    fn timestamps_restarted_within_one_ssrc_are_reanchored() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default(), t0);
        // The second talkspurt restarts its timestamps where the first began.
        let out = two_talkspurts(&mut jb, t0, 8000);
        let live: Vec<&Heard> = out.iter().filter(|h| !h.late).collect();
        let heard: usize = live.iter().filter(|h| h.pcm.first() == Some(&2)).map(|h| h.pcm.len()).sum();
        assert_eq!(heard, 15 * 160, "all 0.3 s of the second talkspurt reach the listener");
        assert!(out.iter().all(|h| !h.late), "nothing of it is taken for late audio (it would overlay the past in the recording)");
        let second = out.iter().find(|h| h.pcm.first() == Some(&2)).unwrap();
        assert!(second.wall_pos >= 8000 * 11 / 10, "placed at its arrival (1.1 s), not over the first talkspurt: {}", second.wall_pos);
        assert_eq!(jb.stats.discontinuities, 1);
        assert_continuous(&out);
    }

    #[test]
    fn a_timestamp_leap_ahead_of_time_is_reanchored_and_a_real_pause_is_not() {
        let t0 = Instant::now();
        // A pause of 0.6 s: the timestamps move on by 0.6 s (DTX), as they should.
        let mut jb = JitterBuffer::new(JitterConfig::default(), t0);
        let out = two_talkspurts(&mut jb, t0, 8000 + 25 * 160 + 31 * 160);
        assert_eq!(jb.stats.discontinuities, 0);
        assert_eq!(jb.stats.resyncs, 0);
        assert_eq!(out.iter().filter(|h| h.pcm.first() == Some(&2)).map(|h| h.pcm.len()).sum::<usize>(), 15 * 160);
        // Timestamps 2 s on while 0.6 s passed (more than FORWARD_JUMP ahead, less than
        // resync_after): re-anchored, no 1.4 s of invented silence before the second
        // talkspurt.
        let mut jb = JitterBuffer::new(JitterConfig::default(), t0);
        let out = two_talkspurts(&mut jb, t0, 8000 + 25 * 160 + 8000 * 2);
        assert_eq!(jb.stats.discontinuities, 1);
        let total: usize = out.iter().map(|h| h.pcm.len()).sum();
        assert!(total <= (25 + 31 + 15) * 160 + 320, "{total} samples out for 1.42 s of call");
        assert_continuous(&out);
    }

    #[test]
    fn overflow_gives_up_the_gap() {
        let t0 = Instant::now();
        let cfg = JitterConfig { capacity: 4, ..Default::default() };
        let mut jb = JitterBuffer::new(cfg, t0);
        let mut out = Vec::new();
        jb.on_packet(t0, id(1, 0), frame(1), &mut out);
        for k in 2..8u32 {
            jb.on_packet(t0, id(1, k * 160), frame(k as i16), &mut out);
        }
        assert!(jb.buffered_packets() <= 4);
        assert!(jb.stats.overflow > 0);
        assert_continuous(&out);
    }

    #[test]
    fn wall_placement_follows_a_drifting_caller_for_an_hour() {
        // The caller's clock runs 80 ppm fast, packets meet 0..30 ms of network jitter.
        // Every packet's wall position must stay within one 20 ms frame of when it was
        // really sent.
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig { hold: Duration::from_millis(60), ..Default::default() }, t0);
        let mut out = Vec::new();
        let mut worst = 0i64;
        let first_send_us = 1_000_000u64; // the caller starts talking at 1 s
        for k in 0..180_000u64 {
            let sent_us = first_send_us + k * 20_000 * 999_920 / 1_000_000;
            let jitter_us = (k * 7919 % 30) * 1000;
            let at = t0 + Duration::from_micros(sent_us + 5_000 + jitter_us);
            jb.on_tick(at, &mut out);
            out.clear();
            jb.on_packet(at, id(42, (k * 160) as u32), frame(1), &mut out);
            for h in out.iter().filter(|h| !h.concealed) {
                let true_pos = (sent_us * 8 / 1000) as i64;
                worst = worst.max((h.wall_pos as i64 - true_pos).abs());
            }
        }
        assert!(worst <= 160, "placement error reached {worst} samples");
        assert!(jb.stats.realigned > 0, "drift was corrected");
    }

    #[test]
    fn a_delayed_first_packet_is_corrected_within_200_ms() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default(), t0);
        let mut out = Vec::new();
        for k in 0..20u64 {
            // The first packet is 30 ms late; the rest arrive 1 ms after sending.
            let delay = if k == 0 { 30_000 } else { 1_000 };
            jb.on_packet(t0 + Duration::from_micros(k * 20_000 + delay), id(1, (k * 160) as u32), frame(1), &mut out);
        }
        let last = out.last().unwrap();
        let true_pos = 19 * 160 + 8; // sent at 380 ms, heard 1 ms later
        assert!((last.wall_pos as i64 - true_pos).abs() <= 16, "placed at {} instead of {true_pos}", last.wall_pos);
    }

    #[test]
    fn sender_clock_drift_does_not_starve_or_flood() {
        // The caller's clock runs 0.1 % slow for ten minutes: no audio may be dropped
        // as late and the buffer must stay small.
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default(), t0);
        let mut out = Vec::new();
        for k in 0..30_000u64 {
            let at = t0 + Duration::from_micros(k * 20_020);
            jb.on_tick(at, &mut out);
            jb.on_packet(at, id(5, (k * 160) as u32), frame(1), &mut out);
        }
        assert_eq!(jb.stats.late, 0);
        assert_eq!(jb.stats.lost_samples, 0);
        assert_eq!(jb.buffered_packets(), 0);
        assert_continuous(&out);
    }
}
