//! Real far-end audio from Debian's programs: espeak-ng speaking a sentence, sox
//! making DTMF tones. scripts/test installs both; a missing one fails the test with
//! what to install, never skips it.

use std::process::Command;

use media_node::core::analysis::inband_dtmf::frequencies;
use media_node::core::resample;

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what} does not run ({e}): scripts/test installs it from Debian's packages"));
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn read_wav(path: &std::path::Path) -> (Vec<i16>, u32) {
    let r = hound::WavReader::open(path).expect("a WAV");
    let rate = r.spec().sample_rate;
    let channels = r.spec().channels as usize;
    let all: Vec<i16> = r.into_samples::<i16>().map(|s| s.unwrap()).collect();
    (all.chunks(channels).map(|c| c[0]).collect(), rate)
}

/// `text` spoken by espeak-ng, as 8 kHz PCM.
pub fn espeak_8k(text: &str) -> Vec<i16> {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("speech.wav");
    run(Command::new("espeak-ng").arg("-w").arg(&wav).arg(text), "espeak-ng");
    let (pcm, rate) = read_wav(&wav);
    resample::convert(&pcm, rate, 8000)
}

/// The digits as in-band DTMF tones made by sox (`synth` of the two sines, mixed),
/// each `tone_ms` long and followed by `gap_ms` of silence, as 8 kHz PCM.
pub fn sox_dtmf_8k(digits: &str, tone_ms: u32, gap_ms: u32) -> Vec<i16> {
    let dir = tempfile::tempdir().unwrap();
    let mut pcm = Vec::new();
    for (i, d) in digits.chars().enumerate() {
        let (low, high) = frequencies(d).expect("a DTMF digit");
        let wav = dir.path().join(format!("d{i}.wav"));
        run(
            Command::new("sox")
                .args(["-n", "-r", "8000", "-b", "16", "-c", "1"])
                .arg(&wav)
                .args(["synth", &format!("{}", tone_ms as f64 / 1000.0), "sine", &low.to_string(), "sine", &high.to_string()])
                .args(["remix", "1,2", "gain", "-6", "pad", "0", &format!("{}", gap_ms as f64 / 1000.0)]),
            "sox",
        );
        pcm.extend(read_wav(&wav).0);
    }
    pcm
}
