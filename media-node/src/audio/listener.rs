//! Formats the caller's audio for one listener: resampled to the rate it asked for and
//! cut into exact 20 ms frames of s16le bytes. A wideband caller (G.722, Opus) comes
//! with its 16 kHz audio beside the 8 kHz timeline copy; a listener above 8 kHz takes
//! that one, so the agent hears what the caller's phone really sent, not telephone-band
//! audio upsampled.

use bytes::Bytes;

use super::CALL_RATE;
use crate::core::codec::WIDE_RATE;
use crate::core::resample::Resampler;

pub const LISTEN_RATES: [u32; 4] = [8000, 16000, 24000, 48000];

pub fn media_type(rate: u32) -> String {
    format!("audio/L16;rate={rate}")
}

pub struct ListenerFormat {
    /// The 8 kHz timeline to the listener's rate.
    resampler: Resampler,
    /// A wideband caller's 16 kHz audio to the listener's rate; None for a listener at
    /// 8 kHz, which the timeline copy already serves.
    wide: Option<Resampler>,
    frame_samples: usize,
    pending: Vec<i16>,
    scratch: Vec<i16>,
}

impl ListenerFormat {
    pub fn new(rate: u32) -> ListenerFormat {
        ListenerFormat {
            resampler: Resampler::new(CALL_RATE, rate),
            wide: (rate > CALL_RATE).then(|| Resampler::new(WIDE_RATE, rate)),
            frame_samples: rate as usize / 50,
            pending: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Feeds call audio (`pcm` at 8 kHz; `wide`, the same audio at 16 kHz or empty);
    /// returns every whole 20 ms frame now available.
    pub fn push(&mut self, pcm: &[i16], wide: &[i16], frames: &mut Vec<Bytes>) {
        self.scratch.clear();
        match &mut self.wide {
            Some(w) if !wide.is_empty() => w.process_into(wide, &mut self.scratch),
            _ => self.resampler.process_into(pcm, &mut self.scratch),
        }
        self.pending.extend_from_slice(&self.scratch);
        let whole = self.pending.len() / self.frame_samples * self.frame_samples;
        for chunk in self.pending[..whole].chunks_exact(self.frame_samples) {
            // Sized once and filled pairwise: the compiler vectorises this, where a
            // push of two bytes per sample checked the capacity each time.
            let mut b = vec![0u8; chunk.len() * 2];
            for (d, s) in b.chunks_exact_mut(2).zip(chunk) {
                d.copy_from_slice(&s.to_le_bytes());
            }
            frames.push(Bytes::from(b));
        }
        self.pending.drain(..whole);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_packet_sizes_become_exact_20ms_frames() {
        let mut f = ListenerFormat::new(16000);
        let mut frames = Vec::new();
        f.push(&[0; 80], &[], &mut frames);
        assert!(frames.is_empty());
        f.push(&[0; 240], &[], &mut frames); // 320 samples at 8k = 40 ms
        assert_eq!(frames.len(), 2);
        assert!(frames.iter().all(|b| b.len() == 640));
        assert_eq!(media_type(16000), "audio/L16;rate=16000");
    }

    fn samples(frames: &[Bytes]) -> Vec<i16> {
        frames.iter().flat_map(|b| b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]))).collect()
    }

    /// A wideband caller's 6 kHz tone reaches a 16 kHz listener; the 8 kHz copy
    /// beside it (which cannot hold 6 kHz) is what an 8 kHz listener gets. Fed 20 ms at
    /// a time with a narrowband stretch in between, as a codec switch would.
    #[test]
    fn a_wideband_callers_16k_audio_reaches_listeners_above_8k() {
        use crate::core::goertzel::power_at;
        use crate::core::resample::tests::tone;
        let wide = tone(6000.0, 16000, 16000, 8000.0);
        let narrow = crate::core::resample::convert(&wide, 16000, 8000);
        let (mut at16, mut at8, mut at48) = (ListenerFormat::new(16000), ListenerFormat::new(8000), ListenerFormat::new(48000));
        let (mut f16, mut f8, mut f48) = (Vec::new(), Vec::new(), Vec::new());
        for (n, w) in narrow.chunks(160).zip(wide.chunks(320)) {
            at16.push(n, w, &mut f16);
            at8.push(n, w, &mut f8);
            at48.push(n, w, &mut f48);
        }
        let (s16, s8, s48) = (samples(&f16), samples(&f8), samples(&f48));
        assert_eq!((s16.len(), s8.len(), s48.len()), (16000, 8000, 48000), "exact 20 ms frames at each rate");
        // The 16 kHz listener gets the caller's samples as they were.
        assert_eq!(s16, wide);
        let full = power_at(&wide[..8000], 16000, 6000.0);
        assert!(power_at(&s48[2400..26400], 48000, 6000.0) > 0.8 * full, "6 kHz at 48 kHz too");
        // What an 8 kHz path carries of it: nothing (it is above its Nyquist).
        let upsampled = crate::core::resample::convert(&s8, 8000, 16000);
        assert!(power_at(&upsampled[800..8800], 16000, 6000.0) < 1e-3 * full);
        // A narrowband stretch (a switch to G.711) between wide ones keeps the frames exact.
        let mut f = Vec::new();
        let mut l = ListenerFormat::new(16000);
        l.push(&narrow[..160], &wide[..320], &mut f);
        l.push(&narrow[160..480], &[], &mut f);
        l.push(&narrow[480..640], &wide[960..1280], &mut f);
        assert_eq!(samples(&f).len(), 1280);
    }
}
