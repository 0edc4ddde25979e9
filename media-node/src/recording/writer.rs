//! One active recording of a call: the timeline, and a WAV file in the spool written
//! as the call goes (so memory stays bounded whatever the length). Finishing it
//! finalises the WAV and leaves a manifest beside it: from then on the recording is
//! durable on local disk, whatever happens to storage or to this process.
//!
//! Before the first sample, the recording's destination is written beside the
//! `.wav.part` (`.wav.part.meta`), so that a node killed mid-call (kill -9, an OOM
//! kill, SIGKILL after the grace period) finds at its next start what it was writing
//! and where it was to go (`recover`).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::destination::{object_key, safe_name, Destination};
use crate::core::recording::{Channels, RecordingTimeline, TIMELINE_RATE};
use crate::core::resample::Resampler;

#[derive(Debug, Clone)]
pub struct RecordingSpec {
    pub call_id: String,
    pub trace_id: String,
    pub destination: Destination,
    /// 8000 or 16000.
    pub rate: u32,
    pub channels: Channels,
    /// 1 for the first start/stop segment of a call, then 2, 3, ...
    pub segment: u32,
}

/// A finished recording waiting to be stored: the manifest written beside the WAV.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecordingJob {
    pub wav: PathBuf,
    /// "s3" or "file".
    pub kind: String,
    /// Bucket for S3, folder under the recordings root for files.
    pub target: String,
    pub key: String,
    pub call_id: String,
    pub trace_id: String,
    pub bytes: u64,
    pub seconds: f64,
    /// The node stopped before finishing it; this is what reached its disk.
    #[serde(default)]
    pub cut_short: bool,
}

impl RecordingJob {
    pub fn uri(&self) -> String {
        match self.kind.as_str() {
            "s3" => format!("s3://{}/{}", self.target, self.key),
            _ => {
                let dir = self.target.trim_matches('/');
                if dir.is_empty() {
                    format!("file://{}", self.key)
                } else {
                    format!("file://{dir}/{}", self.key)
                }
            }
        }
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.wav.with_extension("json")
    }

    pub fn write_manifest(&self) -> std::io::Result<()> {
        write_json(&self.manifest_path(), self)
    }

    /// A manifest (or a part's `.meta`) as written; None when missing or unreadable.
    pub fn read(path: &Path) -> Option<RecordingJob> {
        std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok())
    }
}

/// The destination of a recording still being written: `<name>.wav.part.meta`.
pub fn meta_path(part: &Path) -> PathBuf {
    let mut name = part.as_os_str().to_owned();
    name.push(".meta");
    PathBuf::from(name)
}

/// Written whole or not at all: to a temporary name, then renamed over.
fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value).expect("manifest serialises"))?;
    std::fs::rename(tmp, path)
}

pub struct RecordingWriter {
    spec: RecordingSpec,
    timeline: RecordingTimeline,
    /// Per channel, the timeline's rate to the file's (identity when they match).
    resamplers: Vec<Resampler>,
    /// A 16 kHz recording keeps a wideband timeline: narrowband audio (a G.711 caller,
    /// the bot's 8 kHz prompts) is brought up to it per side, caller then bot.
    widen: Option<Box<[Widen; 2]>>,
    wav: hound::WavWriter<BufWriter<File>>,
    part: PathBuf,
    /// The manifest it will have, sizes still 0; also in the `.meta` file.
    job: RecordingJob,
    frames_written: u64,
    mixed: Vec<i16>,
    channel_buf: Vec<Vec<i16>>,
    out_buf: Vec<Vec<i16>>,
}

impl RecordingWriter {
    /// Opens the spool file; the recording's first sample is at timeline `start_pos`.
    pub fn create(spec: RecordingSpec, spool: &Path, start_pos: u64) -> std::io::Result<RecordingWriter> {
        std::fs::create_dir_all(spool)?;
        let started = Timestamp::now();
        let part = spool.join(format!("{}-{}-{:08x}.wav.part", safe_name(&spec.call_id), started.as_millisecond(), rand::random::<u32>()));
        let date = started.to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC);
        let (kind, target, prefix) = match &spec.destination {
            Destination::S3 { bucket, prefix } => ("s3", bucket.clone(), prefix.clone()),
            Destination::File { dir } => ("file", dir.display().to_string(), String::new()),
        };
        let job = RecordingJob {
            wav: part.with_extension(""),
            kind: kind.into(),
            target,
            key: object_key(&prefix, (date.year(), date.month(), date.day()), &spec.call_id, spec.segment),
            call_id: spec.call_id.clone(),
            trace_id: spec.trace_id.clone(),
            bytes: 0,
            seconds: 0.0,
            cut_short: false,
        };
        // The destination first: a `.part` is never on disk without it.
        write_json(&meta_path(&part), &job)?;
        let wav_spec = hound::WavSpec {
            channels: spec.channels.count(),
            sample_rate: spec.rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let wav = hound::WavWriter::new(BufWriter::new(File::create(&part)?), wav_spec).map_err(std::io::Error::other)?;
        let n = spec.channels.count() as usize;
        // A 16 kHz recording holds 16 kHz: a wideband caller is recorded as it came,
        // not through the 8 kHz timeline.
        let wideband = spec.rate > TIMELINE_RATE as u32;
        let timeline =
            if wideband { RecordingTimeline::wideband(spec.channels, start_pos) } else { RecordingTimeline::new(spec.channels, start_pos) };
        Ok(RecordingWriter {
            resamplers: (0..n).map(|_| Resampler::new(timeline.rate(), spec.rate)).collect(),
            widen: wideband.then(|| Box::new([Widen::new(), Widen::new()])),
            timeline,
            spec,
            wav,
            part,
            job,
            frames_written: 0,
            mixed: Vec::new(),
            channel_buf: vec![Vec::new(); n],
            out_buf: vec![Vec::new(); n],
        })
    }

    pub fn spec(&self) -> &RecordingSpec {
        &self.spec
    }

    /// The caller's audio at `wall_pos`: `pcm` at 8 kHz and, from a wideband codec,
    /// `wide`, the same at 16 kHz (empty otherwise).
    pub fn add_caller(&mut self, wall_pos: u64, pcm: &[i16], wide: &[i16]) {
        let widen = self.widen.as_deref_mut().map(|w| &mut w[0]);
        self.timeline.add_caller(wall_pos, at_rate(widen, wall_pos, pcm, wide));
    }

    /// The bot's audio sent at `pos`: `pcm` at 8 kHz and, where a wideband codec sent
    /// its source's own 16 kHz audio, `wide` (empty otherwise).
    pub fn add_bot(&mut self, pos: u64, pcm: &[i16], wide: &[i16]) {
        let widen = self.widen.as_deref_mut().map(|w| &mut w[1]);
        self.timeline.add_bot(pos, at_rate(widen, pos, pcm, wide));
    }

    pub fn late_samples(&self) -> u64 {
        self.timeline.late_samples
    }

    /// Timeline position up to which the recording is written.
    pub fn flushed_until(&self) -> u64 {
        self.timeline.flushed()
    }

    /// Writes out everything before timeline position `pos`.
    pub fn flush_until(&mut self, pos: u64) -> std::io::Result<()> {
        self.mixed.clear();
        self.timeline.flush_until(pos, &mut self.mixed);
        self.write_mixed()
    }

    fn write_mixed(&mut self) -> std::io::Result<()> {
        if self.mixed.is_empty() {
            return Ok(());
        }
        let n = self.channel_buf.len();
        if n == 1 && self.resamplers[0].is_identity() {
            // Mono at the call's own rate, the common case: the mix is the file's
            // samples, with no splitting into channels and no copy on the way.
            let mut block = self.wav.get_i16_writer(self.mixed.len() as u32);
            for &s in &self.mixed {
                block.write_sample(s);
            }
            block.flush().map_err(std::io::Error::other)?;
            self.frames_written += self.mixed.len() as u64;
            return Ok(());
        }
        for c in &mut self.channel_buf {
            c.clear();
        }
        for frame in self.mixed.chunks(n) {
            for (c, s) in frame.iter().enumerate() {
                self.channel_buf[c].push(*s);
            }
        }
        for c in 0..n {
            self.out_buf[c].clear();
            self.resamplers[c].process_into(&self.channel_buf[c], &mut self.out_buf[c]);
        }
        let frames = self.out_buf[0].len();
        // One buffered block per flush: hound's per-sample path checks and pads every
        // sample, which showed up in load profiles.
        let mut block = self.wav.get_i16_writer((frames * n) as u32);
        for i in 0..frames {
            for c in 0..n {
                block.write_sample(self.out_buf[c][i]);
            }
        }
        block.flush().map_err(std::io::Error::other)?;
        self.frames_written += frames as u64;
        Ok(())
    }

    /// Where the recording is to be stored.
    pub fn uri(&self) -> String {
        self.job.uri()
    }

    /// Gives up writing after an error: the file is closed as it is (whatever its
    /// writer could still put out) and its `.part` path returned, for `recover::salvage`.
    pub fn abandon(self) -> PathBuf {
        let part = self.part.clone();
        // hound finalises on drop, ignoring errors: what is buffered goes out if it can.
        drop(self);
        part
    }

    /// Ends the recording at `end_pos`, finalises the WAV and writes its manifest.
    /// On an error, the `.part` is left as it is for `recover::salvage`, with the error.
    pub fn finish(mut self, end_pos: u64) -> Result<RecordingJob, (std::io::Error, PathBuf)> {
        self.mixed.clear();
        self.timeline.finish(end_pos, &mut self.mixed);
        if let Err(e) = self.write_mixed() {
            return Err((e, self.abandon()));
        }
        let RecordingWriter { wav, part, mut job, frames_written, spec, .. } = self;
        if let Err(e) = wav.finalize() {
            return Err((std::io::Error::other(e), part));
        }
        // From the rename on, the WAV is whole: a failure after it is recovered from
        // the `.meta` left beside the part's name (at the next start).
        std::fs::rename(&part, &job.wav).map_err(|e| (e, part.clone()))?;
        job.bytes = std::fs::metadata(&job.wav).map_err(|e| (e, part.clone()))?.len();
        job.seconds = frames_written as f64 / spec.rate as f64;
        job.write_manifest().map_err(|e| (e, part.clone()))?;
        let _ = std::fs::remove_file(meta_path(&part));
        Ok(job)
    }
}

/// What of one side's audio goes on the timeline: the 8 kHz `pcm` on an 8 kHz one
/// (`widen` None); on a wideband one its 16 kHz copy `wide`, or without one `pcm`
/// brought up by that side's `widen`.
fn at_rate<'a>(widen: Option<&'a mut Widen>, pos: u64, pcm: &'a [i16], wide: &'a [i16]) -> &'a [i16] {
    match widen {
        None => pcm,
        Some(_) if !wide.is_empty() => wide,
        Some(w) => w.widen(pos, pcm),
    }
}

/// One side's narrowband audio brought to a wideband timeline. Audio that follows on
/// from the last piece goes through the same resampler, so a run of 20 ms pieces is
/// resampled as one stream (no edge at every piece); a piece elsewhere (late audio,
/// a gap) starts afresh.
struct Widen {
    up: Resampler,
    /// The position just after the last piece.
    next: Option<u64>,
    buf: Vec<i16>,
}

impl Widen {
    fn new() -> Widen {
        Widen { up: Resampler::new(TIMELINE_RATE as u32, 2 * TIMELINE_RATE as u32), next: None, buf: Vec::new() }
    }

    fn widen(&mut self, pos: u64, pcm: &[i16]) -> &[i16] {
        if self.next != Some(pos) {
            self.up = Resampler::new(TIMELINE_RATE as u32, 2 * TIMELINE_RATE as u32);
        }
        self.next = Some(pos + pcm.len() as u64);
        self.buf.clear();
        self.up.process_into(pcm, &mut self.buf);
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_playable_stereo_wav_with_a_manifest() {
        let spool = tempdir();
        let spec = RecordingSpec {
            call_id: "c-1".into(),
            trace_id: "t".into(),
            destination: Destination::S3 { bucket: "calls".into(), prefix: "rec".into() },
            rate: 16000,
            channels: Channels::Stereo,
            segment: 1,
        };
        let mut w = RecordingWriter::create(spec, &spool, 800).unwrap();
        w.add_caller(800, &[1000; 800], &[]);
        w.add_bot(1600, &[-1000; 800], &[]);
        w.flush_until(1200).unwrap();
        let job = w.finish(2400).unwrap();
        let r = hound::WavReader::open(&job.wav).unwrap();
        assert_eq!(r.spec().channels, 2);
        assert_eq!(r.spec().sample_rate, 16000);
        assert_eq!(r.duration(), 3200, "1600 samples at 8 kHz become 3200 at 16 kHz");
        assert!(job.key.starts_with("rec/") && job.key.ends_with("/c-1.wav"));
        assert_eq!(job.uri(), format!("s3://calls/{}", job.key));
        let back: RecordingJob = serde_json::from_slice(&std::fs::read(job.manifest_path()).unwrap()).unwrap();
        assert_eq!(back, job);
        std::fs::remove_dir_all(spool).unwrap();
    }

    /// A 16 kHz recording of a wideband caller keeps its 6 kHz (the caller's 16 kHz
    /// copy goes in as it came), while the bot's 8 kHz prompt, placed 20 ms at a time,
    /// is brought up as one stream: no edge every 20 ms, the same as resampling it whole.
    /// An 8 kHz recording of the same call cannot hold 6 kHz.
    #[test]
    fn a_16k_recording_keeps_a_wideband_callers_audio() {
        use crate::core::goertzel::power_at;
        let spool = tempdir();
        let tone = |f: f64, rate: u32, n: usize| -> Vec<i16> {
            (0..n).map(|i| (8000.0 * (2.0 * std::f64::consts::PI * f * i as f64 / rate as f64).sin()) as i16).collect()
        };
        let wide = tone(6000.0, 16000, 16000);
        let narrow = crate::core::resample::convert(&wide, 16000, 8000);
        let prompt = tone(440.0, 8000, 8000);
        let record = |rate: u32| {
            let spec = RecordingSpec {
                call_id: format!("wide-{rate}"),
                trace_id: String::new(),
                destination: Destination::File { dir: "x".into() },
                rate,
                channels: Channels::Stereo,
                segment: 1,
            };
            let mut w = RecordingWriter::create(spec, &spool, 0).unwrap();
            for k in 0..50 {
                let (n, wd) = (&narrow[k * 160..(k + 1) * 160], &wide[k * 320..(k + 1) * 320]);
                w.add_caller(k as u64 * 160, n, wd);
                w.add_bot(k as u64 * 160, &prompt[k * 160..(k + 1) * 160], &[]);
                if k % 5 == 4 {
                    w.flush_until(k as u64 * 160).unwrap();
                }
            }
            let job = w.finish(8000).unwrap();
            let mut r = hound::WavReader::open(&job.wav).unwrap();
            assert_eq!(r.spec().sample_rate, rate);
            let all: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
            let caller: Vec<i16> = all.iter().step_by(2).copied().collect();
            let bot: Vec<i16> = all.iter().skip(1).step_by(2).copied().collect();
            (caller, bot)
        };
        let (caller, bot) = record(16000);
        assert_eq!(caller.len(), 16000);
        assert_eq!(caller, wide, "the caller's 16 kHz audio, sample for sample");
        // The prompt went through one resampler: what a whole-file conversion gives,
        // but for its group delay (the same for every piece).
        let mut up = Resampler::new(8000, 16000);
        assert_eq!(bot, up.process(&prompt));
        let (caller8, _) = record(8000);
        let full = power_at(&wide[1000..15000], 16000, 6000.0);
        let at16 = power_at(&caller[1000..15000], 16000, 6000.0);
        let up8 = crate::core::resample::convert(&caller8, 8000, 16000);
        assert!(at16 > 0.99 * full);
        assert!(power_at(&up8[1000..15000], 16000, 6000.0) < 1e-3 * full, "an 8 kHz recording cannot carry 6 kHz");
        std::fs::remove_dir_all(spool).unwrap();
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("writer-test-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
