//! G.722 (ITU-T, 64 kbit/s sub-band ADPCM): wideband audio, 16 kHz samples, one byte
//! for every two, so a 20 ms packet carries 320 samples in 160 bytes. SDP and RTP
//! timestamps still count it at 8000 Hz (RFC 3551 §4.5.2 keeps the clock rate the first
//! draft gave it): a 20 ms packet advances the timestamp by 160, not 320.
//!
//! The codec itself is libg722 (spandsp's, by Steve Underwood, the one Asterisk,
//! FreeSWITCH and sippy carry) as the `ezk-g722` crate translated it to Rust: a proven
//! implementation instead of our own, and pure Rust, so it builds from the registry
//! alone. Encoder and decoder keep the ADPCM state of their direction, one of each per
//! call; calls run it once SDP offer/answer agreed it.

use ezk_g722::libg722::{decoder::Decoder, encoder::Encoder, Bitrate};

/// The static payload type (RFC 3551).
pub const PAYLOAD_TYPE: u8 = 9;
/// What SDP and RTP timestamps count.
pub const RTP_CLOCK: u32 = 8000;
/// The audio's own rate.
pub const SAMPLE_RATE: u32 = 16000;

/// One direction's encoder: 16 kHz PCM in, G.722 bytes out.
pub struct G722Encoder(Encoder);

impl Default for G722Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Encoder {
    pub fn new() -> G722Encoder {
        // 64 kbit/s (mode 1, what RTP carries), 16 kHz input, one code per byte.
        G722Encoder(Encoder::new(Bitrate::Mode1_64000, false, false))
    }

    /// Encodes `pcm` (16 kHz; an even count, as every ptime gives) into `out`.
    pub fn encode_into(&mut self, pcm: &[i16], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.0.encode(pcm));
    }
}

/// One direction's decoder: G.722 bytes in, 16 kHz PCM out.
pub struct G722Decoder(Decoder);

impl Default for G722Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Decoder {
    pub fn new() -> G722Decoder {
        // Note the crate's order here: (rate, packed, eight_k).
        G722Decoder(Decoder::new(Bitrate::Mode1_64000, false, false))
    }

    /// Decodes one payload (any bytes: every byte is a valid code) into 16 kHz PCM,
    /// two samples per byte.
    pub fn decode_into(&mut self, payload: &[u8], out: &mut Vec<i16>) {
        out.clear();
        out.extend_from_slice(&self.0.decode(payload));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Best normalised correlation over the codec's filter-bank delay.
    fn correlation(a: &[i16], b: &[i16], max_lag: usize) -> f64 {
        media_tools::analysis::best_correlation(a, b, max_lag).0
    }
    use crate::core::goertzel::power_at;

    fn tone(freq: f64, amp: f64, n: usize) -> Vec<f64> {
        (0..n).map(|i| amp * (2.0 * std::f64::consts::PI * freq * i as f64 / SAMPLE_RATE as f64).sin()).collect()
    }

    fn round_trip(pcm: &[i16]) -> (Vec<u8>, Vec<i16>) {
        let (mut enc, mut dec) = (G722Encoder::new(), G722Decoder::new());
        let (mut bytes, mut all_bytes, mut out, mut heard) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for frame in pcm.chunks(320) {
            enc.encode_into(frame, &mut bytes);
            assert_eq!(bytes.len(), frame.len() / 2, "one byte for two samples");
            all_bytes.extend_from_slice(&bytes);
            dec.decode_into(&bytes, &mut out);
            heard.extend_from_slice(&out);
        }
        (all_bytes, heard)
    }

    #[test]
    fn wideband_speech_band_survives_a_round_trip() {
        // Low voice band, upper voice band, and 6 kHz, which no 8 kHz codec can carry.
        let n = SAMPLE_RATE as usize; // 1 s
        let mix: Vec<i16> = tone(300.0, 6000.0, n)
            .iter()
            .zip(tone(1700.0, 4000.0, n))
            .zip(tone(6000.0, 3000.0, n))
            .map(|((a, b), c)| (a + b + c) as i16)
            .collect();
        let (bytes, heard) = round_trip(&mix);
        assert_eq!(bytes.len(), n / 2);
        assert_eq!(heard.len(), n);
        let c = correlation(&mix, &heard, 64);
        assert!(c > 0.95, "the signal comes back: correlation {c}");
        let six = tone(6000.0, 3000.0, n).iter().map(|v| *v as i16).collect::<Vec<_>>();
        let (before, after) = (power_at(&six, SAMPLE_RATE, 6000.0), power_at(&heard[1600..], SAMPLE_RATE, 6000.0));
        assert!(after > before * 0.5, "6 kHz survives: {after:.0} of {before:.0}");
    }

    #[test]
    fn the_state_carries_across_packets() {
        // The same 20 ms encoded by a fresh encoder and by one that has run: ADPCM
        // depends on what came before, so the bytes differ, and decoding the running
        // stream with a fresh decoder per packet sounds worse than one decoder.
        let pcm: Vec<i16> = tone(440.0, 8000.0, 3200).iter().map(|v| *v as i16).collect();
        let (bytes, heard) = round_trip(&pcm);
        let mut choppy = Vec::new();
        for chunk in bytes.chunks(160) {
            let mut out = Vec::new();
            G722Decoder::new().decode_into(chunk, &mut out);
            choppy.extend(out);
        }
        assert!(correlation(&pcm, &heard, 64) > correlation(&pcm, &choppy, 64));
    }

    #[test]
    fn any_bytes_decode_without_panic() {
        let mut dec = G722Decoder::new();
        let mut out = Vec::new();
        let junk: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        dec.decode_into(&junk, &mut out);
        assert_eq!(out.len(), 8192);
        dec.decode_into(&[], &mut out);
        assert!(out.is_empty());
    }
}
