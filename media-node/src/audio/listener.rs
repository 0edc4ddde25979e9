//! Formats the caller's 8 kHz timeline for one listener: resampled to the rate it asked
//! for and cut into exact 20 ms frames of s16le bytes.

use bytes::Bytes;

use super::CALL_RATE;
use crate::core::resample::Resampler;

pub const LISTEN_RATES: [u32; 4] = [8000, 16000, 24000, 48000];

pub fn media_type(rate: u32) -> String {
    format!("audio/L16;rate={rate}")
}

pub struct ListenerFormat {
    resampler: Resampler,
    frame_samples: usize,
    pending: Vec<i16>,
    scratch: Vec<i16>,
}

impl ListenerFormat {
    pub fn new(rate: u32) -> ListenerFormat {
        ListenerFormat {
            resampler: Resampler::new(CALL_RATE, rate),
            frame_samples: rate as usize / 50,
            pending: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Feeds call audio; returns every whole 20 ms frame now available.
    pub fn push(&mut self, pcm: &[i16], frames: &mut Vec<Bytes>) {
        self.scratch.clear();
        self.resampler.process_into(pcm, &mut self.scratch);
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
        f.push(&[0; 80], &mut frames);
        assert!(frames.is_empty());
        f.push(&[0; 240], &mut frames); // 320 samples at 8k = 40 ms
        assert_eq!(frames.len(), 2);
        assert!(frames.iter().all(|b| b.len() == 640));
        assert_eq!(media_type(16000), "audio/L16;rate=16000");
    }
}
