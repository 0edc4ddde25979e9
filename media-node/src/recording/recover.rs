//! Recordings a node did not finish because it was stopped hard (kill -9, an OOM kill,
//! SIGKILL after the grace period), recovered at its next start. What reached the disk
//! is in the spool as `<name>.wav.part`, its header still saying 0 bytes (the sizes
//! are written when a WAV is finalised), with its destination beside it in
//! `<name>.wav.part.meta`. Recovery sets the header's sizes from the file's length
//! (cut to whole frames), renames it to `<name>.wav` and writes the manifest, flagged
//! `cut_short`: from there it is stored like any finished recording.
//!
//! Runs before the node serves, so no `.part` it touches is being written.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::writer::{meta_path, RecordingJob};

#[derive(Debug, Default)]
pub struct Recovered {
    /// Recordings cut short and now ready to store.
    pub cut_short: Vec<RecordingJob>,
    /// Finished recordings whose manifest the stop came before (the WAV is whole).
    pub finished: Vec<RecordingJob>,
    /// `.part` files with no destination beside them (from before destinations were
    /// written first, or damaged): left in place, named in the log and counted.
    pub orphaned: Vec<PathBuf>,
}

pub fn recover_spool(spool: &Path) -> Recovered {
    let mut out = Recovered::default();
    let Ok(entries) = std::fs::read_dir(spool) else { return out };
    let mut parts = Vec::new();
    let mut metas = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".wav.part") {
            parts.push(p);
        } else if name.ends_with(".wav.part.meta") {
            metas.push(p);
        }
    }
    for part in parts {
        match salvage(&part) {
            Ok(Some(job)) => out.cut_short.push(job),
            Ok(None) => out.orphaned.push(part),
            Err(e) => {
                tracing::warn!(part = %part.display(), error = %e, "could not recover a recording cut short; left in the spool");
                out.orphaned.push(part);
            }
        }
    }
    // A destination without its `.part`: the stop came between the WAV's rename and
    // its manifest (the WAV is whole), or after the manifest (nothing to do).
    for meta in metas {
        let part = meta.with_extension("");
        if part.exists() {
            continue; // handled above (orphaned if it could not be read)
        }
        if let Some(mut job) = RecordingJob::read(&meta) {
            // The WAV beside the part's name, never a path read from a file.
            job.wav = part.with_extension("");
            if job.wav.exists() && !job.manifest_path().exists() {
                if let Ok((bytes, seconds)) = wav_size(&job.wav) {
                    job.bytes = bytes;
                    job.seconds = seconds;
                    if job.write_manifest().is_ok() {
                        out.finished.push(job);
                    }
                }
            }
        }
        if !part.exists() {
            let _ = std::fs::remove_file(&meta);
        }
    }
    out
}

/// Turns one `.part` into a finished recording flagged cut short: its header set from
/// what reached the disk, renamed, with its manifest. None when no destination is
/// beside it. Used at start for what a hard stop left, and at once for a recording
/// whose writing failed (a full spool), so what it kept is stored without a restart.
pub fn salvage(part: &Path) -> std::io::Result<Option<RecordingJob>> {
    let meta = meta_path(part);
    let Some(job) = RecordingJob::read(&meta) else { return Ok(None) };
    let job = recover_part(part, job)?;
    let _ = std::fs::remove_file(&meta);
    Ok(Some(job))
}

fn recover_part(part: &Path, mut job: RecordingJob) -> std::io::Result<RecordingJob> {
    let (bytes, seconds) = repair_header(part)?;
    // The destination read from the spool names the WAV beside the part; never trust
    // a path from a file for where to write.
    job.wav = part.with_extension("");
    std::fs::rename(part, &job.wav)?;
    job.bytes = bytes;
    job.seconds = seconds;
    job.cut_short = true;
    job.write_manifest()?;
    Ok(job)
}

/// The WAV's layout as hound writes it: RIFF, fmt, then data to the end of the file.
struct Layout {
    /// Offset of the data chunk's size field.
    data_size_at: u64,
    data_start: u64,
    block_align: u64,
    byte_rate: u64,
}

fn layout(file: &mut std::fs::File) -> std::io::Result<Layout> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not a WAV being written: {what}"));
    let mut head = [0u8; 12];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut head)?;
    if &head[0..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return Err(bad("no RIFF/WAVE header"));
    }
    let mut at = 12u64;
    let mut format: Option<(u64, u64)> = None;
    // A handful of chunks at most before the data: hound writes fmt then data.
    for _ in 0..16 {
        let mut chunk = [0u8; 8];
        file.seek(SeekFrom::Start(at))?;
        file.read_exact(&mut chunk)?;
        let size = u32::from_le_bytes(chunk[4..8].try_into().unwrap()) as u64;
        match &chunk[0..4] {
            b"fmt " => {
                let mut fmt = [0u8; 16];
                file.read_exact(&mut fmt)?;
                let byte_rate = u32::from_le_bytes(fmt[8..12].try_into().unwrap()) as u64;
                let block_align = u16::from_le_bytes(fmt[12..14].try_into().unwrap()) as u64;
                if block_align == 0 || byte_rate == 0 {
                    return Err(bad("fmt chunk with no frame size"));
                }
                format = Some((block_align, byte_rate));
            }
            b"data" => {
                let (block_align, byte_rate) = format.ok_or_else(|| bad("data before fmt"))?;
                return Ok(Layout { data_size_at: at + 4, data_start: at + 8, block_align, byte_rate });
            }
            _ => {}
        }
        at += 8 + size + (size & 1);
    }
    Err(bad("no data chunk"))
}

/// Sets the RIFF and data sizes from the file's length, cut to whole frames.
/// Returns the file's bytes and seconds of audio.
pub fn repair_header(path: &Path) -> std::io::Result<(u64, f64)> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let l = layout(&mut file)?;
    let len = file.metadata()?.len();
    let data = (len.saturating_sub(l.data_start) / l.block_align * l.block_align).min(u32::MAX as u64 - l.data_start);
    let end = l.data_start + data;
    file.set_len(end)?;
    file.seek(SeekFrom::Start(4))?;
    file.write_all(&((end - 8) as u32).to_le_bytes())?;
    file.seek(SeekFrom::Start(l.data_size_at))?;
    file.write_all(&(data as u32).to_le_bytes())?;
    file.sync_all()?;
    Ok((end, data as f64 / l.byte_rate as f64))
}

fn wav_size(path: &Path) -> std::io::Result<(u64, f64)> {
    let r = hound::WavReader::open(path).map_err(std::io::Error::other)?;
    let seconds = r.duration() as f64 / r.spec().sample_rate as f64;
    Ok((std::fs::metadata(path)?.len(), seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::recording::Channels;
    use crate::recording::{Destination, RecordingSpec, RecordingWriter};

    fn spool() -> PathBuf {
        let d = std::env::temp_dir().join(format!("recover-test-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn spec(channels: Channels, rate: u32) -> RecordingSpec {
        RecordingSpec {
            call_id: "cut-1".into(),
            trace_id: "t".into(),
            destination: Destination::S3 { bucket: "calls".into(), prefix: "rec".into() },
            rate,
            channels,
            segment: 1,
        }
    }

    /// A writer dropped without `finish` and without its buffers reaching the disk in
    /// order, as after kill -9: the file has a 0-size header and some audio.
    fn killed_mid_recording(spool: &Path, channels: Channels, rate: u32) -> PathBuf {
        let mut w = RecordingWriter::create(spec(channels, rate), spool, 0).unwrap();
        w.add_caller(0, &vec![3000; 8000 * 2], &[]);
        w.flush_until(8000 * 2).unwrap();
        // Dropping hound's writer would finalise the header; a killed process does not.
        std::mem::forget(w);
        let part = std::fs::read_dir(spool).unwrap().flatten().map(|e| e.path()).find(|p| p.to_string_lossy().ends_with(".part")).unwrap();
        // What a kill leaves: the header as first written, sizes 0, plus a torn frame.
        let mut f = OpenOptions::new().append(true).open(&part).unwrap();
        f.write_all(&[1]).unwrap();
        part
    }

    #[test]
    fn a_part_left_by_a_kill_becomes_a_valid_wav_with_its_manifest_flagged_cut_short() {
        for (channels, rate) in [(Channels::Mono, 8000), (Channels::Stereo, 16000)] {
            let dir = spool();
            let part = killed_mid_recording(&dir, channels, rate);
            let got = recover_spool(&dir);
            assert_eq!(got.cut_short.len(), 1, "{got:?}");
            assert!(got.orphaned.is_empty());
            let job = &got.cut_short[0];
            assert!(job.cut_short);
            assert!(!part.exists() && !meta_path(&part).exists(), "the part and its destination are gone");
            let r = hound::WavReader::open(&job.wav).expect("a valid WAV");
            assert_eq!(r.spec().sample_rate, rate);
            // What reached the disk is recovered: hound's BufWriter holds up to 8 KB.
            let frames = r.duration() as u64;
            let want = 2 * rate as u64;
            assert!(frames + 8192 / (2 * channels.count() as u64) >= want && frames <= want, "{frames} of {want} frames");
            assert!((job.seconds - frames as f64 / rate as f64).abs() < 1e-9);
            let samples: Vec<i16> = hound::WavReader::open(&job.wav).unwrap().into_samples().map(|s| s.unwrap()).collect();
            let caller: Vec<i16> = samples.iter().step_by(channels.count() as usize).copied().collect();
            assert!(caller.iter().skip(100).take(1000).all(|&s| s > 1000), "the caller's audio itself is there");
            let manifest: RecordingJob = serde_json::from_slice(&std::fs::read(job.manifest_path()).unwrap()).unwrap();
            assert_eq!(&manifest, job);
            assert!(manifest.key.starts_with("rec/") && manifest.key.ends_with("/cut-1.wav"));
            // Nothing left to do on the next start.
            let again = recover_spool(&dir);
            assert!(again.cut_short.is_empty() && again.finished.is_empty() && again.orphaned.is_empty());
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    #[test]
    fn a_part_without_destination_is_left_and_named_and_garbage_is_not_touched() {
        let dir = spool();
        std::fs::write(dir.join("old-1.wav.part"), b"RIFF\0\0\0\0WAVE").unwrap();
        let bad = dir.join("bad-1.wav.part");
        std::fs::write(&bad, vec![0xAB; 100]).unwrap();
        std::fs::write(meta_path(&bad), b"{not json").unwrap();
        let got = recover_spool(&dir);
        assert_eq!(got.orphaned.len(), 2);
        assert!(got.cut_short.is_empty());
        assert_eq!(std::fs::read(&bad).unwrap(), vec![0xAB; 100], "never rewritten");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_stop_between_rename_and_manifest_gets_its_manifest() {
        let dir = spool();
        let w = RecordingWriter::create(spec(Channels::Mono, 8000), &dir, 0).unwrap();
        let job = w.finish(8000).unwrap();
        // As if the stop came just before the manifest: put its destination back.
        std::fs::remove_file(job.manifest_path()).unwrap();
        let part = job.wav.with_extension("wav.part");
        std::fs::write(meta_path(&part), serde_json::to_vec(&RecordingJob { bytes: 0, seconds: 0.0, ..job.clone() }).unwrap()).unwrap();
        let got = recover_spool(&dir);
        assert_eq!(got.finished.len(), 1);
        assert!(!got.finished[0].cut_short);
        assert_eq!(got.finished[0].seconds, 1.0);
        assert!(job.manifest_path().exists() && !meta_path(&part).exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
