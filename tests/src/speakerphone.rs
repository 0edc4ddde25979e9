//! A caller on a speakerphone, made of real parts and driven against the node's own
//! call engine (the sans-IO session) in made-up time, so a minute of call takes a
//! fraction of a second and ten seeds of every case fit in a test run.
//!
//! What the caller's microphone picks up, on the caller's own sample clock:
//! - the node's audio as it really went out (the RTP it sent, decoded), through the
//!   room (an impulse response made by sox's `reverb`: the direct path plus the
//!   room's decaying tail), late by the echo delay and at the echo's level;
//! - the caller's own words (espeak-ng, another voice than the prompt's);
//! - street noise (sox's brown and pink noise mixed), at a given SNR to the words.
//!
//! The caller's clock may run off the node's (ppm) and its packets leave at a phase of
//! the node's frame clock: the echo is resampled onto the caller's clock, as a phone's
//! loudspeaker and microphone would do it.

use std::process::Command;
use std::time::{Duration, Instant};

use media_node::core::analysis::{AnalysisConfig, Signal};
use media_node::core::g711::Codec;
use media_node::core::jitter::JitterConfig;
use media_node::core::playback::PlaybackOutcome;
use media_node::core::resample;
use media_node::core::rtp::{self, RtpHeader};
use media_node::core::session::{Command as SessionCommand, Event, Outputs, Session, SessionConfig, TELEPHONE_EVENT_PT};
use media_node::core::voice_processing::ProcessingConfig;
use realfft::RealFftPlanner;

use crate::voice::read_wav;

const RATE: f64 = 8000.0;
const FRAME: usize = 160;

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what} does not run ({e}): scripts/test installs it from Debian's packages"));
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// `text` spoken by espeak-ng in `voice` (e.g. "en-us", "en+f3"), as 8 kHz PCM.
pub fn espeak_voice_8k(text: &str, voice: &str) -> Vec<i16> {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("speech.wav");
    run(Command::new("espeak-ng").args(["-v", voice, "-w"]).arg(&wav).arg(text), "espeak-ng");
    let (pcm, rate) = read_wav(&wav);
    resample::convert(&pcm, rate, 8000)
}

/// The caller's two sentences, said over the bot or after it in the speakerphone tests.
pub const CALLER_TEXT: [&str; 2] =
    ["Hello? Yes, I want to report a water leak on my street.", "It started this morning, and the road is already flooded."];

/// The caller's two sentences (espeak-ng's female variant, peaks at -6 dBFS), made once.
pub fn caller_words() -> &'static [Vec<i16>; 2] {
    static W: std::sync::OnceLock<[Vec<i16>; 2]> = std::sync::OnceLock::new();
    W.get_or_init(|| CALLER_TEXT.map(|t| normalize(&espeak_voice_8k(t, "en+f3"), -6.0)))
}

/// Rooms the speakerphone tests pick by seed (`sox_room` of 0..ROOMS), made once.
pub const ROOMS: u32 = 10;

pub fn rooms() -> &'static [Vec<f32>] {
    static R: std::sync::OnceLock<Vec<Vec<f32>>> = std::sync::OnceLock::new();
    R.get_or_init(|| (0..ROOMS).map(sox_room).collect())
}

/// The bot's prompt: `text` in espeak-ng's American voice, peaks at -7 dBFS (so +6 dB
/// of handset gain does not clip), repeated to 60 s.
pub fn bot_prompt(text: &str) -> Vec<i16> {
    let spoken = normalize(&espeak_voice_8k(text, "en-us"), -7.0);
    spoken.iter().cycle().take(60 * 8000).copied().collect()
}

/// `pcm` scaled so its loudest sample is `peak_dbfs`.
pub fn normalize(pcm: &[i16], peak_dbfs: f64) -> Vec<i16> {
    let peak = pcm.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0).max(1) as f64;
    let k = 32767.0 * 10f64.powf(peak_dbfs / 20.0) / peak;
    pcm.iter().map(|&s| (s as f64 * k).round().clamp(-32768.0, 32767.0) as i16).collect()
}

/// A room's impulse response at 8 kHz from sox's `reverb` (the dry path included),
/// scaled so the direct path is 1, cut where the tail has fallen 70 dB. `seed` varies
/// the room: its reverberance, size and high-frequency damping.
pub fn sox_room(seed: u32) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let imp = dir.path().join("impulse.wav");
    let ir = dir.path().join("room.wav");
    let spec = hound::WavSpec { channels: 1, sample_rate: 8000, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(&imp, spec).unwrap();
    for i in 0..16000 {
        w.write_sample(if i == 0 { 16000i16 } else { 0 }).unwrap();
    }
    w.finalize().unwrap();
    let reverberance = 50 + (seed * 7) % 40; // 50-89 %
    let damping = 30 + (seed * 13) % 50;
    let scale = 60 + (seed * 11) % 41;
    run(
        Command::new("sox").arg(&imp).args(["-e", "floating-point", "-b", "32"]).arg(&ir).args([
            "reverb",
            &reverberance.to_string(),
            &damping.to_string(),
            &scale.to_string(),
            "0",
            "0",
            "0",
        ]),
        "sox reverb",
    );
    let r = hound::WavReader::open(&ir).unwrap();
    let mut h: Vec<f32> = r.into_samples::<f32>().map(|s| s.unwrap()).collect();
    let direct = h[0];
    assert!(direct > 0.1, "sox's reverb keeps the dry path");
    for v in &mut h {
        *v /= direct;
    }
    let total: f32 = h.iter().map(|v| v * v).sum();
    let mut left = total;
    let end = h
        .iter()
        .position(|v| {
            left -= v * v;
            left < total * 1e-7
        })
        .unwrap_or(h.len());
    h.truncate(end.max(1));
    h
}

/// Street noise: sox's brown and pink noise mixed, `seconds` long, unit RMS. `seed`
/// picks where in a longer recording of it the caller's stretch begins.
pub fn sox_street_noise(seconds: f64, seed: u32) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("street.wav");
    let len = seconds + 5.0 * seed as f64 + 1.0;
    run(
        Command::new("sox").args(["-R", "-n", "-r", "8000", "-b", "16", "-c", "1"]).arg(&wav).args([
            "synth",
            &format!("{len:.3}"),
            "brownnoise",
            "synth",
            &format!("{len:.3}"),
            "pinknoise",
            "mix",
            "gain",
            "-12",
        ]),
        "sox synth",
    );
    let (pcm, _) = read_wav(&wav);
    let from = (5.0 * seed as f64 * RATE) as usize;
    let cut: Vec<f32> = pcm[from..from + (seconds * RATE) as usize].iter().map(|&s| s as f32).collect();
    let rms = (cut.iter().map(|v| v * v).sum::<f32>() / cut.len() as f32).sqrt().max(1.0);
    cut.into_iter().map(|v| v / rms).collect()
}

/// The power of speech while it is active (frames within 30 dB of its loudest), the
/// level an SNR is stated against.
pub fn active_power(pcm: &[i16]) -> f64 {
    let powers: Vec<f64> = pcm.chunks(160).map(|c| c.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / c.len() as f64).collect();
    let max = powers.iter().cloned().fold(0.0, f64::max);
    let active: Vec<f64> = powers.into_iter().filter(|&p| p > max * 1e-3).collect();
    active.iter().sum::<f64>() / active.len().max(1) as f64
}

/// The caller's side of the call.
#[derive(Clone, Default)]
pub struct Speakerphone {
    /// The echo: how late the node's audio comes back, and how loud (dB; None: no echo).
    pub echo_delay_ms: u32,
    pub echo_db: Option<f64>,
    /// The room's impulse response (direct path 1.0), or None for a plain delayed copy.
    pub room: Option<Vec<f32>>,
    /// The caller's own words and noise, on the caller's clock (sample 0 = the first
    /// packet's first sample); shorter than the call is silence after.
    pub talk: Vec<i16>,
    pub noise: Vec<f32>,
    /// How far the caller's clock runs from the node's, in parts per million.
    pub drift_ppm: f64,
    /// When the caller's first packet leaves, after the node's first frame.
    pub phase: Duration,
}

/// What the node did on the call.
pub struct CallLog {
    /// The session's events, each with the node time (since the start) it came at.
    pub events: Vec<(Duration, Event)>,
    /// The listener-stream position of the caller's sample 0 (to place the caller's
    /// words on the node's timeline).
    pub heard_origin: Option<u64>,
    /// What the node sent, decoded, on its timeline.
    pub sent: Vec<i16>,
    /// The caller's audio as the node heard it, by listener-stream position.
    pub heard: Vec<i16>,
    /// Stretches of voice the echo guard held back as the node's own audio.
    pub echo_held: u64,
}

impl CallLog {
    /// Speech events as (started, stopped) caller sample positions; stopped is None
    /// for speech still going at the end.
    pub fn speech(&self) -> Vec<(u64, Option<u64>)> {
        let origin = self.heard_origin.unwrap_or(0);
        let mut out: Vec<(u64, Option<u64>)> = Vec::new();
        for (_, e) in &self.events {
            match e {
                Event::Signal(Signal::SpeechStarted { pos, .. }) => out.push((pos.saturating_sub(origin), None)),
                Event::Signal(Signal::SpeechStopped { pos, .. }) => {
                    if let Some(last) = out.last_mut() {
                        last.1 = Some(pos.saturating_sub(origin));
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// How the prompt ended and how much of it played.
    pub fn prompt_end(&self) -> Option<(PlaybackOutcome, u64)> {
        self.events.iter().find_map(|(_, e)| match e {
            Event::PlaybackEnded { outcome, played_ms, .. } => Some((*outcome, *played_ms)),
            _ => None,
        })
    }
}

/// `ir` convolved with what grows in `input`, in blocks, by FFT (overlap-add).
struct Convolver {
    ir: Vec<f32>,
    block: usize,
    size: usize,
    ir_spectrum: Vec<realfft::num_complex::Complex<f32>>,
    planner: RealFftPlanner<f32>,
    out: Vec<f32>,
    done: usize,
}

impl Convolver {
    fn new(ir: Vec<f32>) -> Convolver {
        let block = 800;
        let size = (ir.len() + block).next_power_of_two();
        let mut planner = RealFftPlanner::<f32>::new();
        let fft = planner.plan_fft_forward(size);
        let mut padded = ir.clone();
        padded.resize(size, 0.0);
        let mut ir_spectrum = fft.make_output_vec();
        fft.process(&mut padded, &mut ir_spectrum).unwrap();
        Convolver { ir, block, size, ir_spectrum, planner, out: Vec::new(), done: 0 }
    }

    /// Extends the output to cover `input[..upto]` (whole blocks only).
    fn advance(&mut self, input: &[f32], upto: usize) {
        if self.ir.len() == 1 {
            let k = self.ir[0];
            self.out.extend(input[self.out.len().min(upto)..upto].iter().map(|v| v * k));
            self.done = upto;
            return;
        }
        while self.done + self.block <= upto {
            let fwd = self.planner.plan_fft_forward(self.size);
            let inv = self.planner.plan_fft_inverse(self.size);
            let mut buf = vec![0.0f32; self.size];
            buf[..self.block].copy_from_slice(&input[self.done..self.done + self.block]);
            let mut spec = fwd.make_output_vec();
            fwd.process(&mut buf, &mut spec).unwrap();
            for (s, h) in spec.iter_mut().zip(&self.ir_spectrum) {
                *s *= h / self.size as f32;
            }
            inv.process(&mut spec, &mut buf).unwrap();
            let need = self.done + self.size;
            if self.out.len() < need {
                self.out.resize(need, 0.0);
            }
            for (i, v) in buf.iter().enumerate() {
                self.out[self.done + i] += v;
            }
            self.done += self.block;
        }
    }

    /// The echo at fractional position `x` (what has been computed; 0 beyond).
    fn at(&self, x: f64) -> f32 {
        if x < 0.0 {
            return 0.0;
        }
        let i = x.floor() as usize;
        let f = (x - i as f64) as f32;
        let a = self.out.get(i).copied().unwrap_or(0.0);
        let b = self.out.get(i + 1).copied().unwrap_or(0.0);
        a + (b - a) * f
    }
}

/// A phone's loudspeaker through its room, for a caller that runs in real time: what
/// it plays goes in by position on the phone's own clock, the echo comes out.
pub struct RoomEcho {
    conv: Convolver,
    played: Vec<f32>,
}

impl RoomEcho {
    /// `room`: an impulse response (`sox_room`), or None for a plain copy.
    pub fn new(room: Option<Vec<f32>>) -> RoomEcho {
        RoomEcho { conv: Convolver::new(room.unwrap_or_else(|| vec![1.0])), played: Vec::new() }
    }

    /// The loudspeaker plays `pcm` from `pos` on.
    pub fn play(&mut self, pos: usize, pcm: &[i16]) {
        if self.played.len() < pos + pcm.len() {
            self.played.resize(pos + pcm.len(), 0.0);
        }
        for (i, &v) in pcm.iter().enumerate() {
            self.played[pos + i] = v as f32;
        }
    }

    /// What the room returns at `pos` (silence where the loudspeaker has not played
    /// far enough yet: a caller asks for it one echo delay late).
    pub fn at(&mut self, pos: usize) -> f32 {
        let upto = self.played.len() / 800 * 800;
        self.conv.advance(&self.played, upto);
        self.conv.at(pos as f64)
    }
}

/// The same caller over real UDP, in real time, against a node: every 20 ms its phone
/// plays the node's PCMU by RTP timestamp through `room` and sends what its
/// microphone picks up, the room's echo 200 ms late plus `talk` (from its first frame
/// on), for at most `seconds` or until `done` says so.
pub async fn phone_over_udp(
    caller: &crate::RtpCaller,
    node_rtp: std::net::SocketAddr,
    room: Option<Vec<f32>>,
    talk: &[i16],
    seconds: usize,
    done: impl Fn() -> bool,
) {
    let mut room = RoomEcho::new(room);
    let t0 = Instant::now();
    let mut first: Option<(u32, usize)> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut payload = Vec::new();
    for m in 0..seconds * 50 {
        tick.tick().await;
        for p in caller.take_received().into_iter().filter(|p| p.payload_type == 0) {
            let (ts0, pos0) = *first.get_or_insert((p.timestamp, (p.at.duration_since(t0).as_secs_f64() * RATE) as usize));
            room.play(pos0 + p.timestamp.wrapping_sub(ts0) as usize, &p.pcm);
        }
        let frame: Vec<i16> = (0..FRAME)
            .map(|i| {
                let n = m * FRAME + i;
                let echo = if n >= 1600 { room.at(n - 1600) } else { 0.0 };
                let says = talk.get(n).copied().unwrap_or(0);
                (echo + says as f32).round().clamp(-32768.0, 32767.0) as i16
            })
            .collect();
        payload.clear();
        Codec::Pcmu.encode_into(&frame, &mut payload);
        let header = RtpHeader { marker: m == 0, payload_type: 0, sequence: m as u16, timestamp: (m * FRAME) as u32, ssrc: 0x5eaf };
        caller.socket.send_to(&rtp::build(header, &payload), node_rtp).await.unwrap();
        if done() {
            break;
        }
    }
}

pub fn session_config(analysis: AnalysisConfig) -> SessionConfig {
    SessionConfig {
        ssrc: 0x5eed,
        initial_sequence: 1000,
        initial_timestamp: 90_000,
        symmetric_rtp: true,
        jitter: JitterConfig::default(),
        analysis,
        telephone_event_pt: TELEPHONE_EVENT_PT,
        wall_start: std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        stopwatch: Instant::now,
        processing: Default::default(),
    }
}

/// A call of `seconds`: the node plays `prompt` (with its barge-in time) from the
/// start, the caller's phone sends what its microphone picks up.
pub fn run_call(caller: &Speakerphone, prompt: &[i16], barge_in: Option<Duration>, seconds: f64) -> CallLog {
    run_call_with(caller, prompt, barge_in, seconds, AnalysisConfig::default())
}

pub fn run_call_with(caller: &Speakerphone, prompt: &[i16], barge_in: Option<Duration>, seconds: f64, analysis: AnalysisConfig) -> CallLog {
    run_call_config(caller, prompt, barge_in, seconds, session_config(analysis))
}

/// A call with echo cancellation and noise suppression as `processing` says.
pub fn run_call_processed(
    caller: &Speakerphone,
    prompt: &[i16],
    barge_in: Option<Duration>,
    seconds: f64,
    processing: ProcessingConfig,
) -> CallLog {
    let cfg = SessionConfig { processing, ..session_config(AnalysisConfig::default()) };
    run_call_config(caller, prompt, barge_in, seconds, cfg)
}

pub fn run_call_config(caller: &Speakerphone, prompt: &[i16], barge_in: Option<Duration>, seconds: f64, cfg: SessionConfig) -> CallLog {
    let t0 = Instant::now();
    let peer = "127.0.0.1:41000".parse().unwrap();
    let mut s = Session::new(cfg, t0);
    let mut out = Outputs::default();
    s.handle_command(SessionCommand::SetTarget(peer), &mut out);
    s.handle_command(SessionCommand::Play { id: 1, pcm: prompt.to_vec().into(), barge_in }, &mut out);

    let frames = (seconds * 50.0) as u64;
    let gain = caller.echo_db.map_or(0.0, |db| 10f64.powf(db / 20.0)) as f32;
    let mut room = Convolver::new(caller.room.clone().unwrap_or_else(|| vec![1.0]));
    // What the node sent, on its timeline (sample 0 = its first frame).
    let mut sent: Vec<f32> = Vec::new();
    let mut first_ts: Option<u32> = None;
    let delay = caller.echo_delay_ms as f64 * RATE / 1000.0;
    let ratio = 1.0 + caller.drift_ppm * 1e-6;
    let mut log = CallLog { events: Vec::new(), heard_origin: None, sent: Vec::new(), heard: Vec::new(), echo_held: 0 };
    let mut mic_frame = 0u64;
    let mut payload = Vec::new();
    let mut pcm = Vec::new();
    for k in 0..frames {
        let now = Duration::from_millis(20 * k);
        s.handle_tick(t0 + now, &mut out);
        for t in out.transmit.drain(..) {
            let Ok(p) = rtp::parse(&t.data) else { continue };
            let ts0 = *first_ts.get_or_insert(p.timestamp);
            let at = p.timestamp.wrapping_sub(ts0) as usize;
            pcm.clear();
            Codec::Pcmu.decode_into(p.payload, &mut pcm);
            if sent.len() < at + pcm.len() {
                sent.resize(at + pcm.len(), 0.0);
            }
            for (i, &v) in pcm.iter().enumerate() {
                sent[at + i] = v as f32;
            }
        }
        // Whatever the node did not send by now is silence it will never send.
        let node_now = ((k + 1) as usize) * FRAME;
        if sent.len() < node_now {
            sent.resize(node_now, 0.0);
        }
        room.advance(&sent, node_now / 800 * 800);
        // The caller's microphone frames captured by now (on its clock), sent at once.
        loop {
            let captured_at = caller.phase.as_secs_f64() + (mic_frame + 1) as f64 * 0.02 / ratio;
            if captured_at > now.as_secs_f64() + 0.02 {
                break;
            }
            let base = mic_frame as usize * FRAME;
            let frame: Vec<i16> = (0..FRAME)
                .map(|i| {
                    let n = base + i;
                    // The node-clock time of this microphone sample.
                    let node_pos = (caller.phase.as_secs_f64() + n as f64 / RATE / ratio) * RATE;
                    let echo = if gain > 0.0 { room.at(node_pos - delay) * gain } else { 0.0 };
                    let talk = caller.talk.get(n).copied().unwrap_or(0) as f32;
                    let noise = caller.noise.get(n).copied().unwrap_or(0.0);
                    (echo + talk + noise).round().clamp(-32768.0, 32767.0) as i16
                })
                .collect();
            payload.clear();
            Codec::Pcmu.encode_into(&frame, &mut payload);
            let header = RtpHeader {
                marker: mic_frame == 0,
                payload_type: 0,
                sequence: mic_frame as u16,
                timestamp: (mic_frame * 160) as u32,
                ssrc: 0xca11,
            };
            let arrival = Duration::from_secs_f64(captured_at + 0.001);
            s.handle_datagram(t0 + arrival.max(now), peer, &rtp::build(header, &payload), &mut out);
            if log.heard_origin.is_none() {
                log.heard_origin = out.heard.iter().find(|h| !h.concealed).map(|h| h.pos);
            }
            mic_frame += 1;
        }
        if log.heard_origin.is_none() {
            log.heard_origin = out.heard.iter().find(|h| !h.concealed).map(|h| h.pos);
        }
        for h in out.heard.drain(..).filter(|h| !h.late) {
            let end = h.pos as usize + h.pcm.len();
            if log.heard.len() < end {
                log.heard.resize(end, 0);
            }
            log.heard[h.pos as usize..end].copy_from_slice(&h.pcm);
        }
        out.played.clear();
        out.rtcp.clear();
        log.events.extend(out.events.drain(..).map(|e| (now, e)));
        log.echo_held += s.take_counters().barge_in_echo;
    }
    log.sent = sent.iter().map(|&v| v as i16).collect();
    log
}

/// `f` over every item, on every core (each call is independent), results in order.
pub fn on_every_core<I: Sync, T: Send>(items: &[I], f: impl Fn(&I) -> T + Sync) -> Vec<T> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..cores {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                results.lock().unwrap().push((i, r));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}
