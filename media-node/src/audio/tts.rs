//! Streamed TTS audio as StreamAudioToCall carries it: 16 kHz s16le bytes in chunks of
//! any length (a chunk may split a sample), turned into the call's 8 kHz PCM. The
//! decoder keeps the odd byte and the resampler's history across chunks, so the audio
//! is the same however the sender cut it.

use crate::core::resample::Resampler;

/// The rate StreamAudioToCall's `audio_chunk` is in.
pub const TTS_RATE: u32 = 16000;

pub struct TtsDecoder {
    resampler: Resampler,
    /// The first byte of a sample whose second byte is in the next chunk.
    carry: Option<u8>,
    samples: Vec<i16>,
}

impl Default for TtsDecoder {
    fn default() -> Self {
        TtsDecoder::new()
    }
}

impl TtsDecoder {
    pub fn new() -> TtsDecoder {
        TtsDecoder { resampler: Resampler::new(TTS_RATE, super::CALL_RATE), carry: None, samples: Vec::new() }
    }

    /// The call PCM of one chunk (empty for a keep-alive, or while too little came).
    pub fn decode(&mut self, chunk: &[u8]) -> Vec<i16> {
        self.samples.clear();
        let mut rest = chunk;
        if let (Some(first), Some((&second, tail))) = (self.carry, rest.split_first()) {
            self.samples.push(i16::from_le_bytes([first, second]));
            self.carry = None;
            rest = tail;
        }
        let pairs = rest.chunks_exact(2);
        if let [odd] = pairs.remainder() {
            self.carry = Some(*odd);
        }
        self.samples.extend(pairs.map(|b| i16::from_le_bytes([b[0], b[1]])));
        if self.samples.is_empty() {
            return Vec::new();
        }
        self.resampler.process(&self.samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(pcm: &[i16]) -> Vec<u8> {
        pcm.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    #[test]
    fn however_the_stream_is_cut_the_audio_is_the_same() {
        // 200 ms of a 440 Hz tone at 16 kHz.
        let tone: Vec<i16> = (0..3200).map(|i| ((i as f64 * 440.0 * std::f64::consts::TAU / 16000.0).sin() * 8000.0) as i16).collect();
        let all = bytes(&tone);
        let whole = TtsDecoder::new().decode(&all);
        assert_eq!(whole.len(), 1600, "16 kHz in, the call's 8 kHz out");
        // Odd cuts split samples across chunks; empty chunks are keep-alives.
        for cut in [1usize, 3, 7, 333] {
            let mut d = TtsDecoder::new();
            let mut out = Vec::new();
            for c in all.chunks(cut) {
                out.extend(d.decode(c));
                out.extend(d.decode(&[]));
            }
            assert_eq!(out, whole, "cut every {cut} bytes");
        }
    }

    #[test]
    fn a_lone_byte_waits_for_its_pair() {
        let mut d = TtsDecoder::new();
        assert!(d.decode(&[0x34]).is_empty());
        assert_eq!(d.carry, Some(0x34));
        d.decode(&[0x12]);
        assert_eq!(d.carry, None);
    }
}
