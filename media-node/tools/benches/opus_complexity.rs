//! libopus's complexity against CPU and quality for a call's speech
//! (`cargo bench -p media-tools --bench opus_complexity --features opus`): real speech
//! (the repository's two recordings, 8 kHz, brought to the 16 kHz a call's encoder
//! runs at, or a 16 kHz WAV named by OPUS_BENCH_WAV), encoded as a call encodes it (20 ms frames, 28 kb/s, VoIP, FEC for 10 %
//! loss), timed per second of audio, then decoded and compared with what went in.
//! The node's MEDIA_OPUS_COMPLEXITY default comes from this table (BENCHMARKS.md).

use std::time::Instant;

use media_node::core::analysis::bands::{Analyser, FRAME as BANDS_FRAME};
use media_node::core::goertzel::power_at;
use media_node::core::opus::{OpusDecoder, OpusEncoder};
use media_node::core::resample::Resampler;

const RATE: u32 = 16000;
const FRAME: usize = 320;
/// A call's encoder settings (core/codec.rs): 28 kb/s, in-band FEC for 10 % loss.
const BITRATE: i32 = 28_000;
const LOSS: i32 = 10;

/// The speech: a 16 kHz mono WAV named by OPUS_BENCH_WAV (e.g. espeak-ng's, which has
/// the 4-8 kHz band a telephone recording lacks), or the repository's recordings.
fn speech() -> Vec<i16> {
    if let Ok(path) = std::env::var("OPUS_BENCH_WAV") {
        let wav = hound::WavReader::open(&path).expect("OPUS_BENCH_WAV names a WAV");
        assert_eq!((wav.spec().sample_rate, wav.spec().channels), (RATE, 1), "16 kHz mono");
        return wav.into_samples::<i16>().map(|s| s.expect("a sample")).collect();
    }
    let mut pcm8 = Vec::new();
    for bytes in [&include_bytes!("../../testdata/speech-8k.wav")[..], &include_bytes!("../../testdata/speech2-8k.wav")[..]] {
        let wav = hound::WavReader::new(bytes).expect("a WAV");
        pcm8.extend(wav.into_samples::<i16>().map(|s| s.expect("a sample")));
    }
    let mut up = Resampler::new(8000, RATE);
    let mut out = Vec::new();
    up.process_into(&pcm8, &mut out);
    out
}

/// Correlation and SNR (dB) of `got` against `want` at the lag (0..=max_lag samples
/// late) where they match best: the codec's own delay.
fn compare(want: &[i16], got: &[i16], max_lag: usize) -> (f64, f64) {
    let mut best = (f64::MIN, 0.0);
    for lag in 0..=max_lag {
        let n = want.len().min(got.len().saturating_sub(lag));
        let (a, b) = (&want[..n], &got[lag..lag + n]);
        let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
        for (&x, &y) in a.iter().zip(b) {
            let (x, y) = (x as f64, y as f64);
            ab += x * y;
            aa += x * x;
            bb += y * y;
        }
        let corr = ab / (aa * bb).sqrt().max(1e-9);
        if corr > best.0 {
            let err: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum();
            best = (corr, 10.0 * (aa / err.max(1e-9)).log10());
        }
    }
    best
}

/// Log-spectral distance (dB) between `want` and `got` (aligned), both brought back to
/// 8 kHz: per 16 ms frame with speech in it, the RMS over the 8 speech bands
/// (250-3500 Hz) of the difference of their levels in dB, averaged over the frames. It
/// weighs what a listener or a speech-to-text engine hears, which the waveform's SNR
/// (noise shaping moves it) does not.
fn spectral_distance(want: &[i16], got: &[i16]) -> f64 {
    let down = |x: &[i16]| {
        let mut r = Resampler::new(RATE, 8000);
        let mut out = Vec::new();
        r.process_into(x, &mut out);
        out
    };
    let (a, b) = (down(want), down(got));
    let mut analyser = Analyser::default();
    let (mut sum, mut frames) = (0.0f64, 0usize);
    for (fa, fb) in a.chunks_exact(BANDS_FRAME).zip(b.chunks_exact(BANDS_FRAME)) {
        let (ba, bb) = (analyser.bands(fa), analyser.bands(fb));
        if ba.iter().sum::<f32>() < 1e4 {
            continue; // a pause: no speech to compare
        }
        let d: f64 = ba.iter().zip(&bb).map(|(&x, &y)| (10.0 * ((x as f64 + 1.0) / (y as f64 + 1.0)).log10()).powi(2)).sum::<f64>()
            / ba.len() as f64;
        sum += d.sqrt();
        frames += 1;
    }
    sum / frames.max(1) as f64
}

/// `got` moved back by the codec's delay (the lag `compare` found).
fn aligned(want: &[i16], got: &[i16], max_lag: usize) -> Vec<i16> {
    let mut best = (f64::MIN, 0);
    for lag in 0..=max_lag {
        let n = want.len().min(got.len().saturating_sub(lag));
        let ab: f64 = want[..n].iter().zip(&got[lag..lag + n]).map(|(&x, &y)| x as f64 * y as f64).sum();
        if ab > best.0 {
            best = (ab, lag);
        }
    }
    got[best.1..].to_vec()
}

fn main() {
    let pcm = speech();
    let seconds = pcm.len() as f64 / RATE as f64;
    println!("{:.1} s of speech at 16 kHz, 20 ms frames, 28 kb/s, VoIP, in-band FEC for 10 % loss", seconds);
    println!(
        "{:>10} {:>22} {:>12} {:>10} {:>16} {:>14} {:>12}",
        "complexity", "encode µs/call-second", "correlation", "SNR dB", "spectral dist dB", "6 kHz kept", "6 kHz cold"
    );
    for complexity in 0..=10 {
        let mut best = f64::MAX;
        let mut packets = Vec::new();
        // The best of five: the fastest run is the one least disturbed by the machine.
        for _ in 0..5 {
            let mut enc = OpusEncoder::new(RATE, BITRATE, LOSS).expect("an encoder");
            enc.set_complexity(complexity);
            packets.clear();
            let mut out = Vec::with_capacity(1500);
            let t = Instant::now();
            for frame in pcm.chunks_exact(FRAME) {
                enc.encode(frame, &mut out);
                packets.push(out.clone());
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        let mut dec = OpusDecoder::new(RATE).expect("a decoder");
        let mut decoded = Vec::with_capacity(pcm.len());
        for p in &packets {
            dec.decode(p, &mut decoded);
        }
        let (corr, snr) = compare(&pcm, &decoded, 400);
        let lsd = spectral_distance(&pcm, &aligned(&pcm, &decoded, 400));
        // The band a wideband call adds: a 6 kHz tone over the speech, as the ffmpeg
        // interop test sends, and the share of its power that comes through.
        let toned: Vec<i16> = pcm
            .iter()
            .enumerate()
            .map(|(i, &s)| s.saturating_add((3000.0 * (2.0 * std::f64::consts::PI * 6000.0 * i as f64 / RATE as f64).sin()) as i16))
            .collect();
        let mut enc = OpusEncoder::new(RATE, BITRATE, LOSS).expect("an encoder");
        enc.set_complexity(complexity);
        let mut dec = OpusDecoder::new(RATE).expect("a decoder");
        let (mut out, mut back) = (Vec::new(), Vec::new());
        for frame in toned.chunks_exact(FRAME) {
            enc.encode(frame, &mut out);
            dec.decode(&out, &mut back);
        }
        let kept = power_at(&back, RATE, 6000.0) / power_at(&toned[..back.len()], RATE, 6000.0);
        // A prompt that starts high after silence (200 ms of it, then 1.2 s of a 6 kHz
        // tone at -12 dBFS, as the interop test with ffmpeg plays): how much of it the
        // encoder carries from the start.
        let after_silence: Vec<i16> = (0..RATE as usize * 7 / 5)
            .map(|i| if i < 3200 { 0 } else { (8000.0 * (2.0 * std::f64::consts::PI * 6000.0 * i as f64 / RATE as f64).sin()) as i16 })
            .collect();
        let mut enc = OpusEncoder::new(RATE, BITRATE, LOSS).expect("an encoder");
        enc.set_complexity(complexity);
        let mut dec = OpusDecoder::new(RATE).expect("a decoder");
        back.clear();
        for frame in after_silence.chunks_exact(FRAME) {
            enc.encode(frame, &mut out);
            dec.decode(&out, &mut back);
        }
        let cold = power_at(&back, RATE, 6000.0) / power_at(&after_silence[..back.len()], RATE, 6000.0);
        println!("{complexity:>10} {:>22.1} {corr:>12.4} {snr:>10.1} {lsd:>16.2} {kept:>14.3} {cold:>12.3}", best / seconds * 1e6);
    }
}
