//! A load run: N concurrent calls against a media engine, each with a caller sending
//! 20 ms PCMU speech, a prompt played back to the caller, a live listener on the
//! caller's audio and a recording. Measures what decides a fleet's cost: loss both
//! ways, pacing jitter of what the engine sends, latency from an RTP packet in to its
//! audio out to the listener, AllocatePort latency, and the engine's CPU seconds and
//! peak RSS (from /proc, for a process this tool started).
//!
//! The engine is a media node, or rtpengine (Debian's `rtpengine-daemon`, userspace,
//! driven over its ng protocol: offer/answer between the caller and an "agent" socket
//! that stands in for the listener, `play media` for the prompt, `start recording`,
//! `delete`), so both are measured the same way in one run. The figures go to
//! BENCHMARKS.md; nothing here asserts a speed.

mod media_node;
pub mod options;
pub mod procfs;
pub mod report;
mod rtpengine;

pub use options::{CallParts, Engine, LoadOptions};
pub use report::{EngineUsage, LoadReport, MAX_JITTER_P99_MS, MAX_LOSS};

/// Speech with a low noise floor, so every packet carries audio a listener can tell
/// from the silence a node plays while no packet is due.
pub(crate) fn never_silent(mut pcm: Vec<i16>) -> Vec<i16> {
    for (i, s) in pcm.iter_mut().enumerate() {
        *s = s.saturating_add(if i % 2 == 0 { 64 } else { -64 });
    }
    pcm
}

/// The caller's audio in turns: it talks for `share` of every `TURN_CYCLE` seconds
/// and listens the rest, sending the line's noise (about -50 dBFS) as a phone does,
/// while the bot talks. `share` 1 leaves the speech as it is.
pub fn in_turns(mut speech: Vec<i16>, rate: u32, share: f64) -> Vec<i16> {
    if share >= 1.0 {
        return speech;
    }
    let cycle = (TURN_CYCLE * rate as f64) as usize;
    let talk = (share.max(0.0) * cycle as f64) as usize;
    let mut x: u32 = 0x9e37_79b9;
    for (i, s) in speech.iter_mut().enumerate() {
        if i % cycle >= talk {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *s = (x >> 25) as i16 - 64;
        }
    }
    speech
}

/// Seconds of one talk-and-listen cycle (`in_turns`).
pub const TURN_CYCLE: f64 = 10.0;

pub async fn run(opts: LoadOptions) -> anyhow::Result<LoadReport> {
    match opts.engine {
        Engine::MediaNode => media_node::run(opts).await,
        Engine::Rtpengine => rtpengine::run(opts).await,
    }
}

/// Runs each level in turn (a fresh engine each time) and returns every report and the
/// largest level that held.
pub async fn ramp(opts: LoadOptions, levels: &[usize]) -> anyhow::Result<(Vec<LoadReport>, Option<usize>)> {
    let mut reports = Vec::new();
    let mut best = None;
    for &calls in levels {
        let r = match run(LoadOptions { calls, work_dir: opts.work_dir.join(format!("{}-{calls}", opts.engine.name())), ..opts.clone() })
            .await
        {
            Ok(r) => r,
            Err(e) => {
                // A saturated engine stops answering: that level did not hold, and no
                // larger one will.
                println!("{}: {calls} calls failed: {e:#}\n", opts.engine.name());
                break;
            }
        };
        println!("{r}");
        if r.holds() {
            best = Some(calls);
        }
        reports.push(r);
    }
    Ok((reports, best))
}
