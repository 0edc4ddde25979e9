//! The audio codecs a call may run, and one direction's codec state: what turns the
//! call's 8 kHz audio into a payload and back. G.711 is stateless; G.722 carries its
//! ADPCM state and converts between its 16 kHz and the call's 8 kHz at the edge; Opus
//! (libopus) runs at 8 kHz itself, with in-band FEC, while RTP counts it at 48 kHz.
//!
//! The call's inside is 8 kHz for every codec today (the jitter buffer, playback, the
//! recording and the analysis all run at it), so a G.722 call interoperates with a
//! wideband far end but carries telephone-band audio; wideband inside is issue 15's
//! next step.

use super::g711::Codec as G711;
use super::g722::{G722Decoder, G722Encoder};
#[cfg(feature = "opus")]
use super::opus::{OpusDecoder, OpusEncoder};
use super::resample::Resampler;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AudioCodec {
    #[default]
    Pcmu,
    Pcma,
    G722,
    Opus,
}

/// The most audio (8 kHz samples) FEC rebuilds before a packet: one Opus packet of 120 ms.
pub const MAX_LOST_SAMPLES: u32 = 960;

/// The payload type the node offers Opus on (dynamic; what WebRTC stacks use).
pub const OPUS_PT: u8 = 111;
/// Opus at the call's 8 kHz: 20 kbit/s leaves room for in-band FEC at 10 % loss.
#[cfg(feature = "opus")]
const OPUS_BITRATE: i32 = 20_000;
#[cfg(feature = "opus")]
const OPUS_EXPECTED_LOSS: i32 = 10;

impl AudioCodec {
    /// Every codec the node runs, in its default order of preference.
    #[cfg(feature = "opus")]
    pub const ALL: &'static [AudioCodec] = &[AudioCodec::Pcmu, AudioCodec::Pcma, AudioCodec::G722, AudioCodec::Opus];
    /// Built without the `opus` feature (no cmake for libopus), the node runs the rest.
    #[cfg(not(feature = "opus"))]
    pub const ALL: &'static [AudioCodec] = &[AudioCodec::Pcmu, AudioCodec::Pcma, AudioCodec::G722];

    /// The payload type the node offers it on: the static one of RFC 3551, or for
    /// Opus the dynamic one WebRTC uses.
    pub fn static_payload_type(self) -> u8 {
        match self {
            AudioCodec::Pcmu => 0,
            AudioCodec::Pcma => 8,
            AudioCodec::G722 => 9,
            AudioCodec::Opus => OPUS_PT,
        }
    }

    /// The codec a static payload type (0-95) names; dynamic ones need an rtpmap.
    pub fn from_static_payload_type(pt: u8) -> Option<AudioCodec> {
        AudioCodec::ALL.iter().copied().find(|c| c.static_payload_type() == pt && pt < 96)
    }

    /// The SDP encoding name.
    pub fn name(self) -> &'static str {
        match self {
            AudioCodec::Pcmu => "PCMU",
            AudioCodec::Pcma => "PCMA",
            AudioCodec::G722 => "G722",
            AudioCodec::Opus => "opus",
        }
    }

    pub fn from_name(name: &str) -> Option<AudioCodec> {
        AudioCodec::ALL.iter().copied().find(|c| c.name().eq_ignore_ascii_case(name.trim()))
    }

    /// What SDP and RTP timestamps count (8000 for G.722 too, RFC 3551 §4.5.2; 48000
    /// for Opus whatever its audio's rate, RFC 7587 §4.1).
    pub fn rtp_clock(self) -> u32 {
        match self {
            AudioCodec::Opus => 48000,
            _ => 8000,
        }
    }

    /// SDP's channel count (Opus is always signalled as 2, RFC 7587 §7).
    pub fn sdp_channels(self) -> u8 {
        match self {
            AudioCodec::Opus => 2,
            _ => 1,
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
    state: EncoderState,
}

enum EncoderState {
    G711(G711),
    /// Boxed: its filter state is large next to the others.
    G722(Box<(Resampler, G722Encoder, Vec<i16>)>),
    #[cfg(feature = "opus")]
    Opus(OpusEncoder),
}

impl Encoder {
    pub fn new(codec: AudioCodec) -> Encoder {
        let state = match codec {
            AudioCodec::Pcmu => EncoderState::G711(G711::Pcmu),
            AudioCodec::Pcma => EncoderState::G711(G711::Pcma),
            AudioCodec::G722 => EncoderState::G722(Box::new((Resampler::new(8000, 16000), G722Encoder::new(), Vec::with_capacity(320)))),
            #[cfg(feature = "opus")]
            AudioCodec::Opus => match OpusEncoder::new(8000, OPUS_BITRATE, OPUS_EXPECTED_LOSS) {
                Some(e) => EncoderState::Opus(e),
                // libopus refuses only bad arguments; these are fixed and valid.
                None => unreachable!("libopus takes mono VoIP at 8 kHz"),
            },
            // Never negotiated without the feature (it is not in AudioCodec::ALL).
            #[cfg(not(feature = "opus"))]
            AudioCodec::Opus => unreachable!("built without the opus feature"),
        };
        Encoder { codec, state }
    }

    pub fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) {
        match &mut self.state {
            EncoderState::G711(c) => c.encode_into(pcm, out),
            EncoderState::G722(g) => {
                let (up, enc, wide) = &mut **g;
                wide.clear();
                up.process_into(pcm, wide);
                enc.encode_into(wide, out);
            }
            #[cfg(feature = "opus")]
            EncoderState::Opus(enc) => enc.encode(pcm, out),
        }
    }
}

/// One inbound direction: payloads to the call's 8 kHz audio.
pub struct Decoder {
    pub codec: AudioCodec,
    state: DecoderState,
}

enum DecoderState {
    G711(G711),
    G722(Box<(G722Decoder, Resampler, Vec<i16>)>),
    #[cfg(feature = "opus")]
    Opus(OpusDecoder),
}

impl Decoder {
    pub fn new(codec: AudioCodec) -> Decoder {
        let state = match codec {
            AudioCodec::Pcmu => DecoderState::G711(G711::Pcmu),
            AudioCodec::Pcma => DecoderState::G711(G711::Pcma),
            AudioCodec::G722 => DecoderState::G722(Box::new((G722Decoder::new(), Resampler::new(16000, 8000), Vec::with_capacity(320)))),
            #[cfg(feature = "opus")]
            AudioCodec::Opus => match OpusDecoder::new(8000) {
                Some(d) => DecoderState::Opus(d),
                None => unreachable!("libopus decodes mono at 8 kHz"),
            },
            #[cfg(not(feature = "opus"))]
            AudioCodec::Opus => unreachable!("built without the opus feature"),
        };
        Decoder { codec, state }
    }

    /// Appends the payload's audio at 8 kHz. False for a payload the codec refuses
    /// (only Opus can: every G.711 and G.722 byte is valid); nothing is appended then.
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> bool {
        match &mut self.state {
            DecoderState::G711(c) => c.decode_into(payload, out),
            DecoderState::G722(g) => {
                let (dec, down, wide) = &mut **g;
                dec.decode_into(payload, wide);
                down.process_into(wide, out);
            }
            #[cfg(feature = "opus")]
            DecoderState::Opus(dec) => return dec.decode(payload, out),
        }
        true
    }

    /// The `samples` (8 kHz) lost just before `next`, rebuilt from the in-band FEC
    /// copy Opus carries in `next`; None for codecs without one.
    pub fn recover(&mut self, next: &[u8], samples: usize, out: &mut Vec<i16>) -> Option<bool> {
        match &mut self.state {
            #[cfg(feature = "opus")]
            DecoderState::Opus(dec) => Some(dec.recover(next, samples, out)),
            _ => {
                let _ = (next, samples, out);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips_the_call_s_audio_with_exact_frame_sizes() {
        let tone: Vec<i16> = (0..8000).map(|i| (6000.0 * (i as f64 * 440.0 * std::f64::consts::TAU / 8000.0).sin()) as i16).collect();
        for &codec in AudioCodec::ALL {
            let (mut enc, mut dec) = (Encoder::new(codec), Decoder::new(codec));
            let (mut bytes, mut back) = (Vec::new(), Vec::new());
            for f in tone.chunks(160) {
                enc.encode(f, &mut bytes);
                if codec == AudioCodec::Opus {
                    assert!((10..=100).contains(&bytes.len()), "Opus at 20 kbit/s: {} bytes", bytes.len());
                } else {
                    assert_eq!(bytes.len(), 160, "{codec:?}: 20 ms is 160 bytes");
                }
                let before = back.len();
                assert!(dec.decode(&bytes, &mut back));
                assert_eq!(back.len() - before, 160, "{codec:?}: 20 ms back");
            }
            let (corr, lag) = media_corr(&tone, &back);
            let want = if codec == AudioCodec::Opus { 0.9 } else { 0.95 };
            assert!(corr > want, "{codec:?}: correlation {corr} at lag {lag}");
        }
    }

    fn media_corr(a: &[i16], b: &[i16]) -> (f64, usize) {
        (0..200)
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
        assert_eq!(AudioCodec::from_static_payload_type(111), None, "dynamic: only an rtpmap names it");
        #[cfg(feature = "opus")]
        assert_eq!(AudioCodec::from_name("OPUS"), Some(AudioCodec::Opus));
    }
}
