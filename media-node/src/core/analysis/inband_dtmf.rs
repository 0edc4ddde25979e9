//! DTMF tones found in the caller's audio, for trunks that send digits in-band.
//!
//! Goertzel power at the eight DTMF frequencies over blocks of 102 samples at 8 kHz
//! (12.75 ms, the block spandsp and most receivers use), with the ITU-T Q.24 rules
//! that keep speech from triggering it:
//! - each group's strongest tone well above the group's others (a single clear pair);
//! - the pair carries most of the block's energy (speech spreads it over harmonics);
//! - twist within limits: the low group up to `NORMAL_TWIST_DB` stronger than the
//!   high one, the high group up to `REVERSE_TWIST_DB` stronger than the low one;
//! - a minimum level per tone;
//! - timing: two consecutive blocks (25.5 ms) start a digit, so every tone of 40 ms or
//!   more is taken (Q.24's shortest accepted) and none under 25.5 ms is; two blocks
//!   without it end it, so a drop-out of one block (under 13 ms) is bridged.

use crate::core::goertzel::powers_at;

pub const RATE: u32 = 8000;
pub const BLOCK: usize = 102;
const ROWS: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
const COLS: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const KEYS: [[char; 4]; 4] = [['1', '2', '3', 'A'], ['4', '5', '6', 'B'], ['7', '8', '9', 'C'], ['*', '0', '#', 'D']];
pub const NORMAL_TWIST_DB: f64 = 8.0;
pub const REVERSE_TWIST_DB: f64 = 4.0;
/// A group's best tone over the group's second best.
const RELATIVE_PEAK_DB: f64 = 6.0;
/// Share of the block's energy the pair must carry.
const PURITY: f64 = 0.6;
/// Minimum amplitude per tone (about -44 dBFS; Q.24's acceptance levels go down to
/// -25 to -30 dBm0 per tone, well above this).
const MIN_TONE_AMPLITUDE: f64 = 200.0;
const HITS_TO_START: u32 = 2;
const MISSES_TO_END: u32 = 2;

/// A key's (low, high) frequencies in Hz; None for what is not a DTMF key.
pub fn frequencies(digit: char) -> Option<(f64, f64)> {
    KEYS.iter().enumerate().find_map(|(r, row)| row.iter().position(|&k| k == digit).map(|c| (ROWS[r], COLS[c])))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToneDigit {
    /// `pos`: sample position (in the positions fed) where the tone began.
    Started {
        digit: char,
        pos: u64,
    },
    Ended {
        digit: char,
        pos: u64,
        samples: u64,
    },
}

fn db(ratio: f64) -> f64 {
    10.0 * ratio.log10()
}

/// The digit one block holds, if it passes every rule.
pub fn classify_block(block: &[i16]) -> Option<char> {
    let n = block.len() as f64;
    let mean_sq = super::quality::sum_squares(block) / n;
    // power_at never exceeds the block's mean square (Cauchy-Schwarz), so a block too
    // quiet to hold one tone at the minimum level holds no digit: silence and a line's
    // noise cost no Goertzel filter.
    let min_power = MIN_TONE_AMPLITUDE * MIN_TONE_AMPLITUDE / 4.0;
    if mean_sq < min_power {
        return None;
    }
    let all = powers_at(block, RATE, &[ROWS[0], ROWS[1], ROWS[2], ROWS[3], COLS[0], COLS[1], COLS[2], COLS[3]]);
    let (rows, cols) = all.split_at(4);
    let best = |v: &[f64]| {
        let (i, &p) = v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap();
        let second = v.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, &q)| q).fold(0.0, f64::max);
        (i, p, second)
    };
    let (r, rp, r2) = best(rows);
    let (c, cp, c2) = best(cols);
    // power_at gives A²/4 for a sine of amplitude A.
    if rp < min_power || cp < min_power {
        return None;
    }
    if db(rp / r2.max(1e-9)) < RELATIVE_PEAK_DB || db(cp / c2.max(1e-9)) < RELATIVE_PEAK_DB {
        return None;
    }
    let twist = db(rp / cp); // > 0: the low group is stronger
    if twist > NORMAL_TWIST_DB || -twist > REVERSE_TWIST_DB {
        return None;
    }
    // A sine's mean square is A²/2, twice its Goertzel power.
    if 2.0 * (rp + cp) < PURITY * mean_sq {
        return None;
    }
    Some(KEYS[r][c])
}

#[derive(Default)]
pub struct ToneDetector {
    block: Vec<i16>,
    /// Position of the block's first sample.
    block_pos: u64,
    candidate: Option<(char, u64, u32)>,
    active: Option<(char, u64, u64)>,
    misses: u32,
}

impl ToneDetector {
    /// Feeds contiguous audio starting at `pos` (a gap restarts the block).
    pub fn push(&mut self, pos: u64, pcm: &[i16], out: &mut Vec<ToneDigit>) {
        if self.block_pos + self.block.len() as u64 != pos {
            self.block.clear();
            self.block_pos = pos;
        }
        for &s in pcm {
            self.block.push(s);
            if self.block.len() == BLOCK {
                let found = classify_block(&self.block);
                self.on_block(found, self.block_pos, out);
                self.block.clear();
                self.block_pos += BLOCK as u64;
            }
        }
    }

    fn on_block(&mut self, found: Option<char>, pos: u64, out: &mut Vec<ToneDigit>) {
        if let Some((digit, start, _)) = self.active {
            if found == Some(digit) {
                self.misses = 0;
                self.active = Some((digit, start, pos + BLOCK as u64));
                return;
            }
            self.misses += 1;
            if self.misses < MISSES_TO_END {
                return;
            }
            let (_, _, end) = self.active.take().unwrap();
            out.push(ToneDigit::Ended { digit, pos: start, samples: end - start });
            self.misses = 0;
        }
        match (found, self.candidate) {
            (Some(d), Some((c, start, hits))) if d == c => {
                let hits = hits + 1;
                if hits >= HITS_TO_START {
                    self.candidate = None;
                    self.active = Some((d, start, pos + BLOCK as u64));
                    out.push(ToneDigit::Started { digit: d, pos: start });
                } else {
                    self.candidate = Some((c, start, hits));
                }
            }
            (Some(d), _) => {
                self.candidate = Some((d, pos, 1));
                if HITS_TO_START <= 1 {
                    self.on_block(Some(d), pos, out);
                }
            }
            (None, _) => self.candidate = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    /// A DTMF pair: amplitudes of each tone given, frequencies offset by `detune`.
    fn pair(low: f64, high: f64, a_low: f64, a_high: f64, ms: u64) -> Vec<i16> {
        let n = (RATE as u64 * ms / 1000) as usize;
        (0..n)
            .map(|i| {
                let t = i as f64 / RATE as f64;
                (a_low * (2.0 * PI * low * t).sin() + a_high * (2.0 * PI * high * t).sin()) as i16
            })
            .collect()
    }

    fn detect(pcm: &[i16]) -> Vec<ToneDigit> {
        let mut d = ToneDetector::default();
        let mut out = Vec::new();
        for (i, f) in pcm.chunks(160).enumerate() {
            d.push(i as u64 * 160, f, &mut out);
        }
        // trailing silence ends the last digit
        d.push(pcm.len() as u64, &[0; 800], &mut out);
        out
    }

    fn digits(ev: &[ToneDigit]) -> String {
        ev.iter().filter_map(|e| if let ToneDigit::Ended { digit, .. } = e { Some(*digit) } else { None }).collect()
    }

    fn key(d: char) -> (f64, f64) {
        frequencies(d).unwrap()
    }

    #[test]
    fn every_key_is_found_with_its_timing() {
        let mut pcm = Vec::new();
        for d in "0123456789*#ABCD".chars() {
            let (l, h) = key(d);
            pcm.extend(pair(l, h, 6000.0, 6000.0, 80));
            pcm.extend(vec![0i16; 480]);
        }
        let ev = detect(&pcm);
        assert_eq!(digits(&ev), "0123456789*#ABCD");
        let first =
            ev.iter().find_map(|e| if let ToneDigit::Ended { pos, samples, .. } = e { Some((*pos, *samples)) } else { None }).unwrap();
        assert!(first.0 <= BLOCK as u64, "onset within a block: {}", first.0);
        assert!((560..=680).contains(&first.1), "80 ms = 640 samples, within a block: {}", first.1);
    }

    #[test]
    fn q24_limits_on_duration_twist_and_frequency() {
        let (l, h) = key('5');
        // 40 ms: accepted; 20 ms: rejected.
        assert_eq!(digits(&detect(&pair(l, h, 6000.0, 6000.0, 40))), "5");
        assert_eq!(digits(&detect(&pair(l, h, 6000.0, 6000.0, 20))), "");
        // Twist: low 7.5 dB over high accepted, 10 dB rejected; high 3.5 dB over low
        // accepted, 6 dB rejected.
        let g = |db: f64| 10f64.powf(db / 20.0);
        assert_eq!(digits(&detect(&pair(l, h, 8000.0, 8000.0 / g(7.5), 60))), "5");
        assert_eq!(digits(&detect(&pair(l, h, 8000.0, 8000.0 / g(10.0), 60))), "");
        assert_eq!(digits(&detect(&pair(l, h, 8000.0 / g(3.5), 8000.0, 60))), "5");
        assert_eq!(digits(&detect(&pair(l, h, 8000.0 / g(6.0), 8000.0, 60))), "");
        // Frequencies off by 1.5 % (Q.24: must be accepted).
        assert_eq!(digits(&detect(&pair(l * 1.015, h * 0.985, 6000.0, 6000.0, 60))), "5");
        // Too quiet.
        assert_eq!(digits(&detect(&pair(l, h, 100.0, 100.0, 100))), "");
    }

    #[test]
    fn a_short_dropout_is_bridged_and_a_pause_separates_digits() {
        let (l, h) = key('9');
        let mut pcm = pair(l, h, 6000.0, 6000.0, 60);
        pcm.extend(vec![0i16; 40]); // 5 ms drop-out
        pcm.extend(pair(l, h, 6000.0, 6000.0, 60));
        assert_eq!(digits(&detect(&pcm)), "9");
        pcm.extend(vec![0i16; 400]); // 50 ms pause
        pcm.extend(pair(l, h, 6000.0, 6000.0, 60));
        assert_eq!(digits(&detect(&pcm)), "99");
    }

    #[test]
    fn speech_like_sounds_and_noise_give_no_digit() {
        // Voiced speech: a 120 Hz pitch with formant-shaped harmonics, gliding, the
        // kind of sound that puts energy near DTMF frequencies.
        let n = RATE as usize * 3;
        let mut pcm = Vec::with_capacity(n);
        let mut phase = 0.0f64;
        for i in 0..n {
            let t = i as f64 / RATE as f64;
            let f0 = 110.0 + 40.0 * (2.0 * PI * 0.7 * t).sin();
            phase += 2.0 * PI * f0 / RATE as f64;
            let mut v = 0.0;
            for k in 1..30 {
                let f = f0 * k as f64;
                let formant = (-((f - 700.0) / 200.0).powi(2)).exp() + 0.7 * (-((f - 1300.0) / 250.0).powi(2)).exp();
                v += 3000.0 * formant * (phase * k as f64).sin();
            }
            pcm.push(v.clamp(-32000.0, 32000.0) as i16);
        }
        assert_eq!(digits(&detect(&pcm)), "");
        let mut x: u32 = 1;
        let noise: Vec<i16> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as i32 >> 20) as i16
            })
            .collect();
        assert_eq!(digits(&detect(&noise)), "");
        // A single tone (a dial tone's 440 Hz or one DTMF tone alone) is not a digit.
        let single: Vec<i16> = (0..n).map(|i| (8000.0 * (2.0 * PI * 697.0 * i as f64 / RATE as f64).sin()) as i16).collect();
        assert_eq!(digits(&detect(&single)), "");
    }
}
