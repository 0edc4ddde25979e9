//! The audio codecs a call may run, and one direction's codec state: what turns the
//! call's audio into a payload and back. G.711 is stateless; G.722 carries its ADPCM
//! state at its 16 kHz; Opus (libopus) runs at 16 kHz, with in-band FEC, while RTP counts
//! it at 48 kHz; G.729 (g729-sys, a pure-Rust port) is 10 ms frames of 10 bytes, Annex
//! B's 2-byte SID frames understood on the way in.
//!
//! The call's timeline is 8 kHz for every codec (the jitter buffer's positions,
//! playback, the analysis), and a wideband codec (G.722, Opus) carries 16 kHz audio
//! beside it both ways: what it decoded (`decode_wide`), which the jitter buffer keeps
//! with the 8 kHz copy, so the agent's 16 kHz listener and a 16 kHz recording get the
//! caller's real wideband audio; and what the node plays (`encode_frame`), a prompt's or
//! a TTS stream's own 16 kHz audio where it has one, so the caller hears it, not 8 kHz
//! audio upsampled. Speech and DTMF analysis need no more than the telephone band and
//! stay on the 8 kHz copy.

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
    G729,
}

/// Something counted per codec, indexed in `AudioCodec`'s order.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ByCodec<T>(pub [T; 5]);

impl<T> ByCodec<T> {
    pub const CODECS: [AudioCodec; 5] = [AudioCodec::Pcmu, AudioCodec::Pcma, AudioCodec::G722, AudioCodec::Opus, AudioCodec::G729];

    pub fn get_mut(&mut self, codec: AudioCodec) -> &mut T {
        &mut self.0[codec as usize]
    }
}

/// The longest Opus packet (120 ms) in the call's 8 kHz samples: the most FEC rebuilds
/// before a packet, and the most one packet decodes to.
pub const MAX_PACKET_SAMPLES: u32 = 960;

/// libopus's complexity (0-10) for the calls' encoders when the node does not set
/// one: 3, from the measured table in BENCHMARKS.md (`--bench opus_complexity`, at the
/// call's 28 kb/s with FEC) and the interop test with ffmpeg: 1 costs a third of 5 but
/// gives up the band above 4 kHz (0.27 of a prompt's 6 kHz tone reached ffmpeg); 3
/// keeps it (0.97) at four fifths of 5's CPU.
/// Not behind the `opus` feature: the node's settings name it either way.
pub const OPUS_COMPLEXITY: i32 = 3;

/// The payload type the node offers Opus on (dynamic; what WebRTC stacks use).
pub const OPUS_PT: u8 = 111;
/// Opus wideband (16 kHz audio): 28 kbit/s (less when the far end's maxaveragebitrate
/// says so), with room for in-band FEC at 10 % loss when the far end takes it.
#[cfg(feature = "opus")]
const OPUS_BITRATE: i32 = 28_000;
#[cfg(feature = "opus")]
const OPUS_EXPECTED_LOSS: i32 = 10;

impl AudioCodec {
    /// Every codec the node runs, in its default order of preference.
    #[cfg(feature = "opus")]
    pub const ALL: &'static [AudioCodec] = &[AudioCodec::Pcmu, AudioCodec::Pcma, AudioCodec::G722, AudioCodec::Opus, AudioCodec::G729];
    /// Built without the `opus` feature (no cmake for libopus), the node runs the rest.
    #[cfg(not(feature = "opus"))]
    pub const ALL: &'static [AudioCodec] = &[AudioCodec::Pcmu, AudioCodec::Pcma, AudioCodec::G722, AudioCodec::G729];

    /// The payload type the node offers it on: the static one of RFC 3551, or for
    /// Opus the dynamic one WebRTC uses.
    pub fn static_payload_type(self) -> u8 {
        match self {
            AudioCodec::Pcmu => 0,
            AudioCodec::Pcma => 8,
            AudioCodec::G722 => 9,
            AudioCodec::Opus => OPUS_PT,
            AudioCodec::G729 => 18,
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
            AudioCodec::G729 => "G729",
        }
    }

    pub fn from_name(name: &str) -> Option<AudioCodec> {
        AudioCodec::ALL.iter().copied().find(|c| c.name().eq_ignore_ascii_case(name.trim()))
    }

    /// True for the codecs that carry 16 kHz audio (G.722, Opus).
    pub fn is_wideband(self) -> bool {
        matches!(self, AudioCodec::G722 | AudioCodec::Opus)
    }

    /// What SDP and RTP timestamps count (8000 for G.722 too, RFC 3551 §4.5.2; 48000
    /// for Opus whatever its audio's rate, RFC 7587 §4.1).
    pub fn rtp_clock(self) -> u32 {
        match self {
            AudioCodec::Opus => 48000,
            _ => 8000,
        }
    }

    /// The packet length the node sends for a far end that asks for `ptime` ms: a
    /// multiple of 10 ms from 10 to 60 (G.711 and G.722 take any length, G.729 is 10 ms
    /// frames); Opus has no 30 or 50 ms frame, so those become 20 and 40.
    pub fn packet_ms(self, ptime: u32) -> u32 {
        let ms = (ptime.clamp(10, 60) / 10) * 10;
        match (self, ms) {
            (AudioCodec::Opus, 30 | 50) => ms - 10,
            _ => ms,
        }
    }

    /// RTP clock ticks per sample of the call's 8 kHz audio (6 for Opus, else 1).
    pub fn clock_ratio(self) -> u32 {
        self.rtp_clock() / super::jitter::RATE
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

/// What a far end's Opus `fmtp` asks of the Opus it receives (RFC 7587 §6.1); the
/// defaults are the RFC's for a far end that says nothing. `usedtx` is not among them:
/// the node sends nothing between its prompts already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusPrefs {
    /// `maxplaybackrate`: the widest band worth sending (48000 when not said).
    pub max_playback_rate: u32,
    /// `maxaveragebitrate`, in bit/s, when said.
    pub max_average_bitrate: Option<u32>,
    /// `useinbandfec=1`: its decoder takes in-band FEC, so the node spends bits on it.
    pub inband_fec: bool,
    /// `cbr=1`: it prefers constant bitrate.
    pub cbr: bool,
}

impl Default for OpusPrefs {
    fn default() -> Self {
        OpusPrefs { max_playback_rate: 48000, max_average_bitrate: None, inband_fec: false, cbr: false }
    }
}

impl OpusPrefs {
    /// From an `a=fmtp` value (`useinbandfec=1; maxplaybackrate=16000`): parameters are
    /// split on `;`, names taken in any case; unknown ones and values out of the RFC's
    /// ranges are passed over, leaving the default.
    pub fn parse(fmtp: &str) -> OpusPrefs {
        let mut p = OpusPrefs::default();
        for (name, value) in fmtp.split(';').filter_map(|kv| kv.split_once('=')) {
            let value = value.trim().parse::<u32>().ok();
            match (name.trim().to_ascii_lowercase().as_str(), value) {
                ("maxplaybackrate", Some(v @ 8000..=48000)) => p.max_playback_rate = v,
                ("maxaveragebitrate", Some(v @ 6000..=510_000)) => p.max_average_bitrate = Some(v),
                ("useinbandfec", Some(v @ 0..=1)) => p.inband_fec = v == 1,
                ("cbr", Some(v @ 0..=1)) => p.cbr = v == 1,
                _ => {}
            }
        }
        p
    }
}

/// One outbound direction: the call's frames to payloads, from its 8 kHz audio or,
/// for a wideband codec, from 16 kHz audio where the source has it.
pub struct Encoder {
    pub codec: AudioCodec,
    /// What the far end asked of Opus (the default for other codecs).
    pub opus: OpusPrefs,
    state: EncoderState,
}

enum EncoderState {
    G711(G711),
    /// Boxed: its filter state is large next to the others. The resampler brings 8 kHz
    /// audio up to the codec's 16 kHz (a source with no 16 kHz copy).
    G722(Box<(Resampler, G722Encoder, Vec<i16>)>),
    /// At 16 kHz, as G.722.
    #[cfg(feature = "opus")]
    Opus(Box<(Resampler, OpusEncoder, Vec<i16>)>),
    /// Without Annex B (the node answers annexb=no): a voice frame every 10 ms.
    G729(Box<g729_sys::Encoder>),
}

impl Encoder {
    pub fn new(codec: AudioCodec) -> Encoder {
        Encoder::with_prefs(codec, OpusPrefs::default())
    }

    /// An encoder for `codec` that, for Opus, follows what the far end asked (`opus`).
    pub fn with_prefs(codec: AudioCodec, opus: OpusPrefs) -> Encoder {
        let state = match codec {
            AudioCodec::Pcmu => EncoderState::G711(G711::Pcmu),
            AudioCodec::Pcma => EncoderState::G711(G711::Pcma),
            AudioCodec::G722 => EncoderState::G722(Box::new((Resampler::new(8000, 16000), G722Encoder::new(), Vec::with_capacity(320)))),
            #[cfg(feature = "opus")]
            AudioCodec::Opus => {
                let bitrate = opus.max_average_bitrate.map_or(OPUS_BITRATE, |b| OPUS_BITRATE.min(b as i32));
                let loss = if opus.inband_fec { OPUS_EXPECTED_LOSS } else { 0 };
                match OpusEncoder::new(WIDE_RATE, bitrate, loss) {
                    Some(mut e) => {
                        e.set_max_playback_rate(opus.max_playback_rate);
                        e.set_cbr(opus.cbr);
                        EncoderState::Opus(Box::new((Resampler::new(8000, WIDE_RATE), e, Vec::with_capacity(640))))
                    }
                    // libopus refuses only bad arguments; these are fixed and valid.
                    None => unreachable!("libopus takes mono VoIP at 16 kHz"),
                }
            }
            // Never negotiated without the feature (it is not in AudioCodec::ALL).
            #[cfg(not(feature = "opus"))]
            AudioCodec::Opus => unreachable!("built without the opus feature"),
            AudioCodec::G729 => EncoderState::G729(Box::new(g729_sys::Encoder::new(false))),
        };
        Encoder { codec, opus, state }
    }

    /// Encodes 8 kHz audio (a wideband codec brings it up to its 16 kHz).
    pub fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) {
        self.encode_frame(pcm, None, out)
    }

    /// Encodes a packet's audio: `pcm` at 8 kHz and, when its source has it, `wide`,
    /// the same time at 16 kHz (twice the samples), which a wideband codec encodes as it
    /// is; the others take `pcm`.
    pub fn encode_frame(&mut self, pcm: &[i16], wide: Option<&[i16]>, out: &mut Vec<u8>) {
        let wide = wide.filter(|w| w.len() == 2 * pcm.len());
        match &mut self.state {
            EncoderState::G711(c) => c.encode_into(pcm, out),
            EncoderState::G722(g) => {
                let (up, enc, buf) = &mut **g;
                enc.encode_into(widened(up, buf, pcm, wide), out);
            }
            #[cfg(feature = "opus")]
            EncoderState::Opus(o) => {
                let (up, enc, buf) = &mut **o;
                enc.encode(widened(up, buf, pcm, wide), out);
            }
            EncoderState::G729(enc) => {
                out.clear();
                let mut frame = [0i16; g729_sys::FRAME_SAMPLES];
                for chunk in pcm.chunks(g729_sys::FRAME_SAMPLES) {
                    frame[..chunk.len()].copy_from_slice(chunk);
                    frame[chunk.len()..].fill(0);
                    out.extend_from_slice(&enc.encode(&frame));
                }
            }
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
    /// Decoded at 16 kHz, then brought down to the timeline's 8 kHz.
    #[cfg(feature = "opus")]
    Opus(Box<(OpusDecoder, Resampler, Vec<i16>)>),
    G729(Box<g729_sys::Decoder>),
}

impl Decoder {
    pub fn new(codec: AudioCodec) -> Decoder {
        let state = match codec {
            AudioCodec::Pcmu => DecoderState::G711(G711::Pcmu),
            AudioCodec::Pcma => DecoderState::G711(G711::Pcma),
            AudioCodec::G722 => DecoderState::G722(Box::new((G722Decoder::new(), Resampler::new(16000, 8000), Vec::with_capacity(320)))),
            #[cfg(feature = "opus")]
            AudioCodec::Opus => match OpusDecoder::new(WIDE_RATE) {
                Some(d) => DecoderState::Opus(Box::new((d, Resampler::new(WIDE_RATE, 8000), Vec::with_capacity(640)))),
                None => unreachable!("libopus decodes mono at 16 kHz"),
            },
            #[cfg(not(feature = "opus"))]
            AudioCodec::Opus => unreachable!("built without the opus feature"),
            AudioCodec::G729 => DecoderState::G729(Box::new(g729_sys::Decoder::new())),
        };
        Decoder { codec, state }
    }

    /// True for the codecs that carry 16 kHz audio (G.722, Opus): `decode_wide` hands
    /// it out beside the 8 kHz copy.
    pub fn is_wideband(&self) -> bool {
        self.codec.is_wideband()
    }

    /// Appends the payload's audio at 8 kHz. False for a payload the codec refuses
    /// (corrupt Opus, a G.729 payload that is not 10-byte frames and a SID; every G.711
    /// and G.722 byte is valid); nothing is appended then.
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> bool {
        self.decode_wide(payload, out, None)
    }

    /// As `decode`, and for a wideband codec also appends the same audio at 16 kHz to
    /// `wide` (exactly twice the samples appended to `out`; nothing for the others).
    pub fn decode_wide(&mut self, payload: &[u8], out: &mut Vec<i16>, wide: Option<&mut Vec<i16>>) -> bool {
        match &mut self.state {
            DecoderState::G711(c) => c.decode_into(payload, out),
            DecoderState::G722(g) => {
                let (dec, down, buf) = &mut **g;
                dec.decode_into(payload, buf);
                narrow_and_wide(down, buf, out, wide);
            }
            #[cfg(feature = "opus")]
            DecoderState::Opus(o) => {
                let (dec, down, buf) = &mut **o;
                buf.clear();
                if !dec.decode(payload, buf) {
                    return false;
                }
                narrow_and_wide(down, buf, out, wide);
            }
            DecoderState::G729(dec) => {
                // 10-byte voice frames, then (Annex B) perhaps one 2-byte SID frame of
                // comfort noise (RFC 3551 §4.5.6); anything else is not G.729. The SID
                // frame keeps the timeline (10 ms), but sounds as silence: g729-sys
                // 0.2.1 has no comfort-noise generator (its `decode_sid_frame` zeroes
                // the excitation).
                let (voice, rest) = payload.split_at(payload.len() / 10 * 10);
                if !(rest.is_empty() || rest.len() == 2) || payload.is_empty() {
                    return false;
                }
                for frame in voice.chunks(10) {
                    out.extend_from_slice(&dec.decode(frame, false, false, false));
                }
                if rest.len() == 2 {
                    out.extend_from_slice(&dec.decode(rest, false, true, false));
                }
            }
        }
        true
    }

    /// `samples` (8 kHz) that never came, from the decoder's concealment (and at
    /// 16 kHz into `wide`, when given), continuing what it decoded last; None for codecs
    /// without it (the jitter buffer's silence stands in).
    pub fn conceal(&mut self, samples: usize, out: &mut Vec<i16>, wide: Option<&mut Vec<i16>>) -> Option<bool> {
        self.rebuild(None, samples, out, wide)
    }

    /// The `samples` (8 kHz) lost just before `next`, rebuilt from the in-band FEC
    /// copy Opus carries in `next` (and at 16 kHz into `wide`, when given); None for
    /// codecs without one.
    pub fn recover(&mut self, next: &[u8], samples: usize, out: &mut Vec<i16>, wide: Option<&mut Vec<i16>>) -> Option<bool> {
        self.rebuild(Some(next), samples, out, wide)
    }

    /// Lost audio from the FEC copy in `next`, or from concealment without it.
    fn rebuild(&mut self, next: Option<&[u8]>, samples: usize, out: &mut Vec<i16>, wide: Option<&mut Vec<i16>>) -> Option<bool> {
        match &mut self.state {
            #[cfg(feature = "opus")]
            DecoderState::Opus(o) => {
                let (dec, down, buf) = &mut **o;
                buf.clear();
                // The decoder runs at 16 kHz: twice the timeline's samples.
                let done = match next {
                    Some(next) => dec.recover(next, samples * 2, buf),
                    None => dec.conceal(samples * 2, buf),
                };
                if done {
                    narrow_and_wide(down, buf, out, wide);
                }
                Some(done)
            }
            _ => {
                let _ = (next, samples, out, wide);
                None
            }
        }
    }
}

/// The rate a wideband codec's audio is carried at beside the 8 kHz timeline.
pub const WIDE_RATE: u32 = 16000;

/// A packet's 16 kHz audio: `wide` as it is, or `pcm` brought up into `buf`.
fn widened<'a>(up: &mut Resampler, buf: &'a mut Vec<i16>, pcm: &[i16], wide: Option<&'a [i16]>) -> &'a [i16] {
    match wide {
        Some(w) => w,
        None => {
            buf.clear();
            up.process_into(pcm, buf);
            buf
        }
    }
}

/// 16 kHz audio decoded into `buf`: its 8 kHz copy onto `out`, itself onto `wide`.
/// The resampler's counts are exact (an even number of samples halves exactly), so
/// the two copies stay two to one however the packets are cut.
fn narrow_and_wide(down: &mut Resampler, buf: &[i16], out: &mut Vec<i16>, wide: Option<&mut Vec<i16>>) {
    down.process_into(buf, out);
    if let Some(w) = wide {
        w.extend_from_slice(buf);
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
                    assert!((10..=140).contains(&bytes.len()), "Opus at 28 kbit/s (VBR): {} bytes", bytes.len());
                } else if codec == AudioCodec::G729 {
                    assert_eq!(bytes.len(), 20, "G.729: two 10-byte frames in 20 ms");
                } else {
                    assert_eq!(bytes.len(), 160, "{codec:?}: 20 ms is 160 bytes");
                }
                let before = back.len();
                assert!(dec.decode(&bytes, &mut back));
                assert_eq!(back.len() - before, 160, "{codec:?}: 20 ms back");
            }
            let (corr, lag) = media_tools::analysis::best_correlation(&tone, &back, 200);
            let want = match codec {
                AudioCodec::Opus => 0.9,
                // A CELP codec at 8 kbit/s keeps the spectrum, less the waveform.
                AudioCodec::G729 => 0.8,
                _ => 0.95,
            };
            assert!(corr > want, "{codec:?}: correlation {corr} at lag {lag}");
        }
    }

    #[test]
    fn opus_preferences_come_from_the_far_end_s_fmtp() {
        let p = OpusPrefs::parse("useinbandfec=1; maxaveragebitrate=30000; maxplaybackrate=16000; ptime=20; minptime=10");
        assert_eq!(p, OpusPrefs { max_playback_rate: 16000, max_average_bitrate: Some(30000), inband_fec: true, cbr: false });
        assert_eq!(OpusPrefs::parse("MaxPlaybackRate=8000;CBR=1"), OpusPrefs { max_playback_rate: 8000, cbr: true, ..Default::default() });
        // Out of the RFC's ranges, malformed or unknown: the default stands.
        assert_eq!(
            OpusPrefs::parse("maxplaybackrate=96000; maxaveragebitrate=12; useinbandfec=2; cbr; stereo=1; =3"),
            OpusPrefs::default()
        );
        assert_eq!(OpusPrefs::default().max_playback_rate, 48000);
    }

    /// The node's Opus follows what the far end asked: wideband unless its
    /// maxplaybackrate says narrowband; no more than its maxaveragebitrate; constant
    /// packets for cbr=1; in-band FEC only for useinbandfec=1 (without it, decoding the
    /// next packet's FEC copy is the decoder's concealment, sample for sample).
    #[cfg(feature = "opus")]
    #[test]
    fn opus_sends_what_the_far_end_asked_for() {
        let wide = media_tools::analysis::synth_speech(16000, 2.0, 4);
        let narrow = crate::core::resample::convert(&wide, 16000, 8000);
        let send = |prefs: OpusPrefs| -> Vec<Vec<u8>> {
            let mut enc = Encoder::with_prefs(AudioCodec::Opus, prefs);
            narrow
                .chunks_exact(160)
                .zip(wide.chunks_exact(320))
                .map(|(n, w)| {
                    let mut out = Vec::new();
                    enc.encode_frame(n, Some(w), &mut out);
                    out
                })
                .collect()
        };
        // RFC 6716 §3.1: the TOC byte's configuration says the packet's audio band.
        let band = |p: &[u8]| match p[0] >> 3 {
            0..=3 | 16..=19 => 8000,
            4..=7 => 12000,
            8..=11 | 20..=23 => 16000,
            _ => 24000,
        };
        let default = send(OpusPrefs::default());
        assert!(default.iter().all(|p| band(p) == 16000), "wideband by default");
        let nb = send(OpusPrefs { max_playback_rate: 8000, ..Default::default() });
        assert!(nb.iter().all(|p| band(p) == 8000), "narrowband for maxplaybackrate=8000");
        let mean = |ps: &[Vec<u8>]| ps.iter().map(Vec::len).sum::<usize>() as f64 / ps.len() as f64;
        let capped = send(OpusPrefs { max_average_bitrate: Some(12000), ..Default::default() });
        assert!(mean(&capped) <= 12000.0 / 8.0 / 50.0 * 1.1 && mean(&capped) < mean(&default), "{} < {}", mean(&capped), mean(&default));
        let cbr = send(OpusPrefs { cbr: true, ..Default::default() });
        assert!(cbr.iter().all(|p| p.len() == cbr[0].len()), "constant packets");
        for (fec, packets) in [(false, &default), (true, &send(OpusPrefs { inband_fec: true, ..Default::default() }))] {
            let (mut a, mut b) = (Decoder::new(AudioCodec::Opus), Decoder::new(AudioCodec::Opus));
            let (mut x, mut y) = (Vec::new(), Vec::new());
            for p in &packets[..50] {
                assert!(a.decode(p, &mut x) && b.decode(p, &mut y));
            }
            // Packet 50 lost: one decoder takes 51's FEC copy, the other conceals.
            let (mut rebuilt, mut concealed) = (Vec::new(), Vec::new());
            assert_eq!(a.recover(&packets[51], 160, &mut rebuilt, None), Some(true));
            assert_eq!(b.conceal(160, &mut concealed, None), Some(true));
            assert_eq!(rebuilt != concealed, fec, "FEC carried: {fec}");
        }
    }

    #[test]
    fn g729_takes_annex_b_sid_frames_and_refuses_other_sizes() {
        let mut enc = Encoder::new(AudioCodec::G729);
        let mut voice = Vec::new();
        enc.encode(&[1000; 80], &mut voice);
        assert_eq!(voice.len(), 10);
        let mut dec = Decoder::new(AudioCodec::G729);
        let mut out = Vec::new();
        // A voice frame then a SID frame (RFC 3551 §4.5.6): 10 ms each.
        let mut payload = voice.clone();
        payload.extend([0x4a, 0x10]);
        assert!(dec.decode(&payload, &mut out));
        assert_eq!(out.len(), 160);
        for bad in [&[1u8, 2, 3][..], &[0u8; 13][..], &[][..]] {
            assert!(!dec.decode(bad, &mut out), "{} bytes is no G.729 payload", bad.len());
        }
        assert_eq!(out.len(), 160, "nothing appended for a refused payload");
    }

    #[test]
    fn names_and_static_types() {
        assert_eq!(AudioCodec::from_name("g722"), Some(AudioCodec::G722));
        assert_eq!(AudioCodec::from_static_payload_type(9), Some(AudioCodec::G722));
        assert_eq!(AudioCodec::from_static_payload_type(18), Some(AudioCodec::G729));
        assert_eq!(AudioCodec::from_static_payload_type(3), None, "GSM is not run");
        assert_eq!(AudioCodec::from_static_payload_type(111), None, "dynamic: only an rtpmap names it");
        #[cfg(feature = "opus")]
        assert_eq!(AudioCodec::from_name("OPUS"), Some(AudioCodec::Opus));
    }
}
