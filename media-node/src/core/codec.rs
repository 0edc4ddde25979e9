//! The audio codecs a call may run, and one direction's codec state: what turns the
//! call's 8 kHz audio into a payload and back. G.711 is stateless; G.722 carries its
//! ADPCM state and converts between its 16 kHz and the call's 8 kHz at the edge.
//!
//! The call's inside is 8 kHz for every codec today (the jitter buffer, playback, the
//! recording and the analysis all run at it), so a G.722 call interoperates with a
//! wideband far end but carries telephone-band audio; wideband inside is issue 15's
//! next step.

use super::g711::Codec as G711;
use super::g722::{G722Decoder, G722Encoder};
use super::resample::Resampler;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudioCodec {
    Pcmu,
    Pcma,
    G722,
}

impl AudioCodec {
    /// Every codec the node runs, in its default order of preference.
    pub const ALL: [AudioCodec; 3] = [AudioCodec::Pcmu, AudioCodec::Pcma, AudioCodec::G722];

    /// The static payload type (RFC 3551), used where nothing was negotiated.
    pub fn static_payload_type(self) -> u8 {
        match self {
            AudioCodec::Pcmu => 0,
            AudioCodec::Pcma => 8,
            AudioCodec::G722 => 9,
        }
    }

    pub fn from_static_payload_type(pt: u8) -> Option<AudioCodec> {
        AudioCodec::ALL.into_iter().find(|c| c.static_payload_type() == pt)
    }

    /// The SDP encoding name.
    pub fn name(self) -> &'static str {
        match self {
            AudioCodec::Pcmu => "PCMU",
            AudioCodec::Pcma => "PCMA",
            AudioCodec::G722 => "G722",
        }
    }

    pub fn from_name(name: &str) -> Option<AudioCodec> {
        AudioCodec::ALL.into_iter().find(|c| c.name().eq_ignore_ascii_case(name.trim()))
    }

    /// What SDP and RTP timestamps count (8000 for G.722 too, RFC 3551 §4.5.2).
    pub fn rtp_clock(self) -> u32 {
        8000
    }

    fn g711(self) -> Option<G711> {
        match self {
            AudioCodec::Pcmu => Some(G711::Pcmu),
            AudioCodec::Pcma => Some(G711::Pcma),
            AudioCodec::G722 => None,
        }
    }
}

impl From<G711> for AudioCodec {
    fn from(c: G711) -> AudioCodec {
        match c {
            G711::Pcmu => AudioCodec::Pcmu,
            G711::Pcma => AudioCodec::Pcma,
        }
    }
}

/// One outbound direction: the call's 8 kHz frames to payloads.
pub struct Encoder {
    pub codec: AudioCodec,
    wide: Option<(Resampler, G722Encoder, Vec<i16>)>,
}

impl Encoder {
    pub fn new(codec: AudioCodec) -> Encoder {
        let wide = (codec == AudioCodec::G722).then(|| (Resampler::new(8000, 16000), G722Encoder::new(), Vec::with_capacity(320)));
        Encoder { codec, wide }
    }

    pub fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) {
        match (self.codec.g711(), &mut self.wide) {
            (Some(c), _) => c.encode_into(pcm, out),
            (None, Some((up, enc, wide))) => {
                wide.clear();
                up.process_into(pcm, wide);
                enc.encode_into(wide, out);
            }
            (None, None) => unreachable!("G.722 has its state"),
        }
    }
}

/// One inbound direction: payloads to the call's 8 kHz audio.
pub struct Decoder {
    pub codec: AudioCodec,
    wide: Option<(G722Decoder, Resampler, Vec<i16>)>,
}

impl Decoder {
    pub fn new(codec: AudioCodec) -> Decoder {
        let wide = (codec == AudioCodec::G722).then(|| (G722Decoder::new(), Resampler::new(16000, 8000), Vec::with_capacity(320)));
        Decoder { codec, wide }
    }

    /// Appends the payload's audio at 8 kHz (every byte of these codecs is valid).
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) {
        match (self.codec.g711(), &mut self.wide) {
            (Some(c), _) => c.decode_into(payload, out),
            (None, Some((dec, down, wide))) => {
                dec.decode_into(payload, wide);
                down.process_into(wide, out);
            }
            (None, None) => unreachable!("G.722 has its state"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips_the_call_s_audio_with_exact_frame_sizes() {
        let tone: Vec<i16> = (0..8000).map(|i| (6000.0 * (i as f64 * 440.0 * std::f64::consts::TAU / 8000.0).sin()) as i16).collect();
        for codec in AudioCodec::ALL {
            let (mut enc, mut dec) = (Encoder::new(codec), Decoder::new(codec));
            let (mut bytes, mut back) = (Vec::new(), Vec::new());
            for f in tone.chunks(160) {
                enc.encode(f, &mut bytes);
                assert_eq!(bytes.len(), 160, "{codec:?}: 20 ms is 160 bytes");
                let before = back.len();
                dec.decode(&bytes, &mut back);
                assert_eq!(back.len() - before, 160, "{codec:?}: 20 ms back");
            }
            let (corr, lag) = media_corr(&tone, &back);
            assert!(corr > 0.95, "{codec:?}: correlation {corr} at lag {lag}");
        }
    }

    fn media_corr(a: &[i16], b: &[i16]) -> (f64, usize) {
        (0..80)
            .map(|lag| {
                let n = a.len() - lag;
                let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
                for i in 0..n {
                    let (x, y) = (a[i] as f64, b[i + lag] as f64);
                    ab += x * y;
                    aa += x * x;
                    bb += y * y;
                }
                (ab / (aa.sqrt() * bb.sqrt()).max(1.0), lag)
            })
            .fold((f64::MIN, 0), |m, v| if v.0 > m.0 { v } else { m })
    }

    #[test]
    fn names_and_static_types() {
        assert_eq!(AudioCodec::from_name("g722"), Some(AudioCodec::G722));
        assert_eq!(AudioCodec::from_static_payload_type(9), Some(AudioCodec::G722));
        assert_eq!(AudioCodec::from_static_payload_type(18), None);
    }
}
