//! Two pure-Rust ports of WebRTC's AEC3 on a speakerphone call, side by side, before
//! one is built into the node (issue 35): `cargo bench -p media-tools --bench
//! echo_cancellers`. The bot's prompt (the repository's speech, at the 16 kHz a
//! wideband call's reference is) comes back delayed, quieter and through a room's
//! tail; the caller talks over it for the last stretch. Each canceller gets the prompt
//! as its render (reference) signal and the caller's line as its capture, in 10 ms
//! frames, and is measured for how far it takes the echo down (ERLE, from 2 s on and
//! over the whole echo-only stretch), how much of the caller's own voice survives
//! double talk (correlation with what the caller said), and its CPU per call-second.

use std::time::Instant;

use media_node::core::resample::Resampler;

const RATE: u32 = 16000;
const FRAME: usize = 160;

fn speech(bytes: &[u8]) -> Vec<f32> {
    let wav = hound::WavReader::new(bytes).expect("a WAV");
    let pcm8: Vec<i16> = wav.into_samples::<i16>().map(|s| s.expect("a sample")).collect();
    let mut up = Resampler::new(8000, RATE);
    let mut out = Vec::new();
    up.process_into(&pcm8, &mut out);
    out.iter().map(|&s| s as f32 / 32768.0).collect()
}

/// A deterministic noise source (xorshift), -1..1.
struct Noise(u32);

impl Noise {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0 as f32 / u32::MAX as f32 * 2.0 - 1.0
    }
}

struct Call {
    /// What the node played (the reference).
    render: Vec<f32>,
    /// What came back from the caller: the echo, the caller's voice, line noise.
    capture: Vec<f32>,
    /// The echo alone and the caller alone, to measure against.
    echo: Vec<f32>,
    caller: Vec<f32>,
    /// Where the caller starts talking.
    talk_from: usize,
}

/// 20 s of prompt; its echo 200 ms late at -6 dB, with a room's tail (decaying noise
/// over 150 ms, 12 dB under the direct path); the caller from 14 s on; noise at
/// -60 dBFS.
fn speakerphone() -> Call {
    let mut prompt = speech(include_bytes!("../../testdata/speech-8k.wav"));
    let caller_says = speech(include_bytes!("../../testdata/speech2-8k.wav"));
    let n = 20 * RATE as usize;
    while prompt.len() < n {
        let again = prompt.clone();
        prompt.extend(again);
    }
    prompt.truncate(n);
    let delay = RATE as usize / 5;
    let mut noise = Noise(0x1234_5678);
    let tail_len = (0.15 * RATE as f32) as usize;
    let mut ir = vec![0.0f32; tail_len];
    ir[0] = 0.5;
    let tail_gain = 0.5 * 10f32.powf(-12.0 / 20.0) * (3.0 / tail_len as f32).sqrt();
    for (i, h) in ir.iter_mut().enumerate().skip(1) {
        *h = tail_gain * noise.next() * (-6.9 * i as f32 / tail_len as f32).exp();
    }
    let mut echo = vec![0.0f32; n];
    for (t, e) in echo.iter_mut().enumerate().skip(delay) {
        let src = t - delay;
        *e = ir.iter().enumerate().take(src + 1).map(|(k, h)| h * prompt[src - k]).sum();
    }
    let talk_from = 14 * RATE as usize;
    let mut caller = vec![0.0f32; n];
    for (i, s) in caller_says.iter().enumerate() {
        if talk_from + i < n {
            caller[talk_from + i] = *s;
        }
    }
    let capture = (0..n).map(|t| (echo[t] + caller[t] + 0.001 * noise.next()).clamp(-1.0, 1.0)).collect();
    Call { render: prompt, capture, echo, caller, talk_from }
}

fn energy(x: &[f32]) -> f64 {
    x.iter().map(|&s| (s as f64) * (s as f64)).sum()
}

fn erle(c: &Call, out: &[f32], from: usize, to: usize) -> f64 {
    10.0 * (energy(&c.echo[from..to]) / energy(&out[from..to]).max(1e-12)).log10()
}

/// The best correlation of `out` with `want` at a lag of 0 to 100 ms (a canceller may
/// hold its output back by a block or a few), and the lag in samples.
fn correlation(out: &[f32], want: &[f32]) -> (f64, usize) {
    let mut best = (f64::MIN, 0);
    for lag in (0..=RATE as usize / 10).step_by(4) {
        let n = want.len().min(out.len() - lag);
        let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
        for (&x, &y) in out[lag..lag + n].iter().zip(&want[..n]) {
            ab += x as f64 * y as f64;
            aa += x as f64 * x as f64;
            bb += y as f64 * y as f64;
        }
        let c = ab / (aa * bb).sqrt().max(1e-12);
        if c > best.0 {
            best = (c, lag);
        }
    }
    best
}

fn report(name: &str, c: &Call, out: &[f32], seconds: f64) {
    let s = RATE as usize;
    let dt = correlation(&out[c.talk_from..], &c.caller[c.talk_from..]);
    println!(
        "{name:<28} ERLE 2-4 s {:>5.1} dB, 4-14 s {:>5.1} dB; double talk: correlation with the caller {:.3} (at {} samples); {:>7.1} µs of CPU per call-second",
        erle(c, out, 2 * s, 4 * s),
        erle(c, out, 4 * s, c.talk_from),
        dt.0,
        dt.1,
        seconds * 1e6 / 20.0,
    );
}

fn run_sonora(c: &Call) -> (Vec<f32>, f64) {
    use sonora::config::EchoCanceller;
    use sonora::{AudioProcessing, Config, StreamConfig};
    let mut apm = AudioProcessing::builder()
        .config(Config { echo_canceller: Some(EchoCanceller::default()), ..Default::default() })
        .capture_config(StreamConfig::new(RATE, 1))
        .render_config(StreamConfig::new(RATE, 1))
        .build();
    let mut out = Vec::with_capacity(c.capture.len());
    let (mut r_out, mut c_out) = (vec![0.0f32; FRAME], vec![0.0f32; FRAME]);
    let t = Instant::now();
    for (r, k) in c.render.chunks_exact(FRAME).zip(c.capture.chunks_exact(FRAME)) {
        apm.process_render_f32(&[r], &mut [&mut r_out]).expect("render");
        // The node hands its audio to the canceller as it sends it: the path's own
        // delay is all the canceller has to find.
        let _ = apm.set_stream_delay_ms(0);
        apm.process_capture_f32(&[k], &mut [&mut c_out]).expect("capture");
        out.extend_from_slice(&c_out);
    }
    (out, t.elapsed().as_secs_f64())
}

fn run_aec3(c: &Call) -> (Vec<f32>, f64) {
    use aec3::nodes::audio::AudioFormat;
    let format = AudioFormat::ten_ms(RATE, 1);
    let mut p = aec3::pipelines::linear::builder(format, format).initial_delay_ms(0).build().expect("an AEC3 pipeline");
    let mut out = Vec::with_capacity(c.capture.len());
    let mut c_out = vec![0.0f32; FRAME];
    let t = Instant::now();
    for (r, k) in c.render.chunks_exact(FRAME).zip(c.capture.chunks_exact(FRAME)) {
        p.handle_render_frame(r).expect("render");
        if !p.process_capture_frame(k, &mut c_out).expect("capture") {
            c_out.fill(0.0);
        }
        out.extend_from_slice(&c_out);
    }
    (out, t.elapsed().as_secs_f64())
}

fn main() {
    let c = speakerphone();
    println!("20 s speakerphone call at 16 kHz: echo 200 ms late at -6 dB with a 150 ms room tail; the caller talks from 14 s");
    report("nothing (the line as it is)", &c, &c.capture, 0.0);
    let (out, secs) = run_sonora(&c);
    report("sonora 0.2 (AEC3)", &c, &out, secs);
    let (out, secs) = run_aec3(&c);
    report("aec3 0.4 (linear pipeline)", &c, &out, secs);
}
