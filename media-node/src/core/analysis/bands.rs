//! The caller's audio (and the node's own) as the energy in a few bands of the
//! telephone band, per 16 ms, and the noise floor under each band.
//!
//! Street noise is loud below 250 Hz and falls with frequency (brown and pink), speech
//! has its formants between 300 and 3400 Hz, and two voices rarely fill the same bands
//! at the same moment: comparing band by band, not the whole level, is what lets the
//! voice detector tell speech from the noise it sits in, and the echo guard tell the
//! caller's voice from the bot's own coming back.

use std::sync::{Arc, OnceLock};

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

/// Samples per analysis frame (16 ms at 8 kHz: the voice detector's frame).
pub const FRAME: usize = 128;
/// Bands, in FFT bins of 62.5 Hz: 250-500, 500-750, 750-1000, 1000-1500, 1500-2000,
/// 2000-2500, 2500-3000 and 3000-3500 Hz. Below 250 Hz is left out: street noise and
/// mains hum live there, speech's formants do not.
const EDGES: [usize; 9] = [4, 8, 12, 16, 24, 32, 40, 48, 56];
pub const BANDS: usize = EDGES.len() - 1;

/// Mean-square energy per band, in 16-bit sample units squared.
pub type Bands = [f32; BANDS];

pub struct Analyser {
    fft: Arc<dyn RealToComplex<f32>>,
    input: Vec<f32>,
    spectrum: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
}

fn window() -> &'static [f32; FRAME] {
    static W: OnceLock<[f32; FRAME]> = OnceLock::new();
    W.get_or_init(|| std::array::from_fn(|i| (std::f32::consts::PI * (i as f32 + 0.5) / FRAME as f32).sin().powi(2)))
}

impl Default for Analyser {
    fn default() -> Self {
        static FFT: OnceLock<Arc<dyn RealToComplex<f32>>> = OnceLock::new();
        let fft = FFT.get_or_init(|| RealFftPlanner::<f32>::new().plan_fft_forward(FRAME)).clone();
        let (input, spectrum, scratch) = (fft.make_input_vec(), fft.make_output_vec(), fft.make_scratch_vec());
        Analyser { fft, input, spectrum, scratch }
    }
}

impl Analyser {
    /// The bands of one frame (`pcm` is FRAME samples; shorter is padded with silence).
    pub fn bands(&mut self, pcm: &[i16]) -> Bands {
        let w = window();
        for (i, x) in self.input.iter_mut().enumerate() {
            *x = pcm.get(i).map_or(0.0, |&s| s as f32 * w[i]);
        }
        self.fft.process_with_scratch(&mut self.input, &mut self.spectrum, &mut self.scratch).expect("sizes from the plan");
        // Hann's power gain (3/8) and the bins' share of the frame: a sine of
        // amplitude A reads about A²/2 in its band, as its mean square would.
        let scale = 2.0 / (FRAME as f32 * FRAME as f32 * 0.375);
        std::array::from_fn(|b| self.spectrum[EDGES[b]..EDGES[b + 1]].iter().map(|c| c.norm_sqr()).sum::<f32>() * scale)
    }
}

/// Each band's noise floor by minimum statistics (Martin's method, simplified): the
/// least smoothed energy over the last ~1.5 s, times the bias of a minimum over the
/// mean of noise. Speech pauses between words often enough for the minimum to find the
/// noise under it; a level that stays (the noise grew) becomes the floor within 1.5 s.
#[derive(Debug, Clone)]
pub struct NoiseFloor {
    smoothed: Bands,
    /// Minimum of each sub-window of SUB frames, the current one last.
    mins: [Bands; WINDOWS],
    current: usize,
    frames: usize,
    floor: Bands,
    /// Take digital silence as a floor of its own (FLOOR_MIN) instead of skipping it.
    with_silence: bool,
}

const SUB: usize = 24;
const WINDOWS: usize = 4;
/// Noise's smoothed energy sits above its own minimum over 1.5 s by about this much.
const BIAS: f32 = 2.0;
/// No floor below -70 dBFS per band: digital silence is not a floor to stand above.
const FLOOR_MIN: f32 = 0.1;

impl Default for NoiseFloor {
    fn default() -> Self {
        NoiseFloor {
            smoothed: [0.0; BANDS],
            mins: [[f32::MAX; BANDS]; WINDOWS],
            current: 0,
            frames: 0,
            floor: [FLOOR_MIN; BANDS],
            with_silence: false,
        }
    }
}

impl NoiseFloor {
    /// One frame's bands. Digital silence (a stream's concealed start, a muted phone)
    /// is no noise to stand above: it leaves the floor as it was.
    pub fn push(&mut self, bands: &Bands) {
        if !self.with_silence && bands.iter().all(|&e| e < FLOOR_MIN) {
            return;
        }
        let first = self.frames == 0;
        for ((s, &e), m) in self.smoothed.iter_mut().zip(bands).zip(self.mins[self.current].iter_mut()) {
            *s = if first { e } else { 0.7 * *s + 0.3 * e };
            *m = m.min(*s);
        }
        self.frames += 1;
        if self.frames.is_multiple_of(SUB) {
            self.current = (self.current + 1) % WINDOWS;
            self.mins[self.current] = [f32::MAX; BANDS];
        }
        for b in 0..BANDS {
            let least = self.mins.iter().map(|m| m[b]).fold(f32::MAX, f32::min).min(self.smoothed[b]);
            self.floor[b] = (least * BIAS).max(FLOOR_MIN);
        }
    }

    /// A floor that takes digital silence as what it is: no noise at all.
    pub fn with_silence() -> NoiseFloor {
        NoiseFloor { with_silence: true, ..NoiseFloor::default() }
    }

    /// True once the floor has followed sound (not digital silence) for a sub-window.
    pub fn settled(&self) -> bool {
        self.frames >= SUB
    }

    pub fn floor(&self) -> &Bands {
        &self.floor
    }

    /// How far a frame stands above the floor: the mean over the bands of its SNR in
    /// dB, each band counted from 0 (below the floor) to 30 dB.
    pub fn snr_db(&self, bands: &Bands) -> f32 {
        let sum: f32 = bands.iter().zip(&self.floor).map(|(&e, &n)| (10.0 * (e / n).log10()).clamp(0.0, 30.0)).sum();
        sum / BANDS as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(hz: f32, amp: f32) -> Vec<i16> {
        (0..FRAME).map(|i| (amp * (2.0 * std::f32::consts::PI * hz * i as f32 / 8000.0).sin()) as i16).collect()
    }

    #[test]
    fn a_tone_lands_in_its_band_at_its_power() {
        let mut a = Analyser::default();
        let b = a.bands(&sine(1250.0, 10000.0));
        let i = b.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).unwrap().0;
        assert_eq!(i, 3, "1250 Hz is in 1000-1500 Hz: {b:?}");
        let power = 10000.0f32 * 10000.0 / 2.0;
        assert!((b[3] / power - 1.0).abs() < 0.2, "{} against {power}", b[3]);
        assert!(b[0] < power * 1e-3 && b[7] < power * 1e-3, "{b:?}");
        // Below 250 Hz counts nowhere.
        let low = a.bands(&sine(100.0, 10000.0));
        assert!(low.iter().all(|&e| e < power * 1e-2), "{low:?}");
    }

    #[test]
    fn the_floor_follows_steady_noise_and_ignores_a_burst() {
        let mut x: u32 = 11;
        let mut noise = |amp: f32| -> Vec<i16> {
            (0..FRAME)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    ((x as f32 / u32::MAX as f32 - 0.5) * 2.0 * amp) as i16
                })
                .collect()
        };
        let mut a = Analyser::default();
        let mut f = NoiseFloor::default();
        for _ in 0..200 {
            f.push(&a.bands(&noise(300.0)));
        }
        let quiet = a.bands(&noise(300.0));
        assert!(f.snr_db(&quiet) < 3.0, "noise stands {} dB above its own floor", f.snr_db(&quiet));
        // A loud second does not lift the floor while it lasts; it is 20 dB above it.
        for _ in 0..40 {
            let loud = a.bands(&noise(3000.0));
            assert!(f.snr_db(&loud) > 14.0, "{}", f.snr_db(&loud));
            f.push(&loud);
        }
        // Noise that stays loud becomes the floor.
        for _ in 0..200 {
            f.push(&a.bands(&noise(3000.0)));
        }
        assert!(f.snr_db(&a.bands(&noise(3000.0))) < 3.0);
    }
}
