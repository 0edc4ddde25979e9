//! Opus (RFC 6716; in RTP, RFC 7587) through libopus, the reference implementation,
//! built from the source `opusic-sys` bundles (a static library, so nothing is fetched
//! or found on the host at build time but a C compiler and cmake). The wrapper is ours
//! and small: create, encode, decode, conceal, recover from in-band FEC, destroy.
//!
//! A call's encoder and decoder run at 16 kHz, wideband (libopus encodes and decodes
//! at 8, 12, 16, 24 or 48 kHz natively, so no resampling is added here); RTP still
//! counts 48000 a second (RFC 7587 §4.1), which the session scales.

use std::ptr::NonNull;

use opusic_sys as ffi;

/// opus_defines.h: the values are the C API's, stable since libopus 1.0.
const OPUS_APPLICATION_VOIP: i32 = 2048;
const OPUS_SET_BITRATE_REQUEST: i32 = 4002;
const OPUS_SET_MAX_BANDWIDTH_REQUEST: i32 = 4004;
const OPUS_SET_VBR_REQUEST: i32 = 4006;
const OPUS_BANDWIDTH_NARROWBAND: i32 = 1101;
const OPUS_BANDWIDTH_MEDIUMBAND: i32 = 1102;
const OPUS_BANDWIDTH_WIDEBAND: i32 = 1103;
const OPUS_SET_COMPLEXITY_REQUEST: i32 = 4010;
const OPUS_SET_INBAND_FEC_REQUEST: i32 = 4012;
const OPUS_SET_PACKET_LOSS_PERC_REQUEST: i32 = 4014;
/// The largest packet libopus writes (RFC 6716 §3.4: 1275 bytes a frame).
const MAX_PACKET: usize = 1275;

/// The complexity new encoders start with (`set_default_complexity`).
static COMPLEXITY: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(super::codec::OPUS_COMPLEXITY);

/// Sets the complexity every encoder made from now on starts with (the node's
/// MEDIA_OPUS_COMPLEXITY, set once at start); clamped to libopus's 0-10.
pub fn set_default_complexity(c: i32) {
    COMPLEXITY.store(c.clamp(0, 10), std::sync::atomic::Ordering::Relaxed);
}

pub struct OpusEncoder(NonNull<ffi::OpusEncoder>);

// The encoder state is plain memory libopus owns; one call's task uses it at a time.
unsafe impl Send for OpusEncoder {}

impl OpusEncoder {
    /// A mono VoIP encoder at `rate` with in-band FEC for `loss_percent` expected loss.
    pub fn new(rate: u32, bitrate: i32, loss_percent: i32) -> Option<OpusEncoder> {
        let mut err = 0;
        // SAFETY: valid arguments; libopus returns null (and an error) or a state we own.
        let p = unsafe { ffi::opus_encoder_create(rate as i32, 1, OPUS_APPLICATION_VOIP, &mut err) };
        let enc = OpusEncoder(NonNull::new(p)?);
        // SAFETY: a live encoder; each request takes one opus_int32.
        unsafe {
            ffi::opus_encoder_ctl(enc.0.as_ptr(), OPUS_SET_BITRATE_REQUEST, bitrate);
            ffi::opus_encoder_ctl(enc.0.as_ptr(), OPUS_SET_COMPLEXITY_REQUEST, COMPLEXITY.load(std::sync::atomic::Ordering::Relaxed));
            ffi::opus_encoder_ctl(enc.0.as_ptr(), OPUS_SET_INBAND_FEC_REQUEST, (loss_percent > 0) as i32);
            ffi::opus_encoder_ctl(enc.0.as_ptr(), OPUS_SET_PACKET_LOSS_PERC_REQUEST, loss_percent);
        }
        Some(enc)
    }

    /// The widest audio band it codes: what a far end plays back at `rate` can hold
    /// (RFC 7587's `maxplaybackrate`: 8000 is narrowband, 12000 mediumband, more is
    /// wideband, all a 16 kHz encoder makes).
    pub fn set_max_playback_rate(&mut self, rate: u32) {
        let band = match rate {
            ..=8000 => OPUS_BANDWIDTH_NARROWBAND,
            8001..=12000 => OPUS_BANDWIDTH_MEDIUMBAND,
            _ => OPUS_BANDWIDTH_WIDEBAND,
        };
        // SAFETY: a live encoder; the request takes one opus_int32.
        unsafe { ffi::opus_encoder_ctl(self.0.as_ptr(), OPUS_SET_MAX_BANDWIDTH_REQUEST, band) };
    }

    /// libopus's complexity, 0 (cheapest) to 10 (best).
    pub fn set_complexity(&mut self, c: i32) {
        // SAFETY: a live encoder; the request takes one opus_int32.
        unsafe { ffi::opus_encoder_ctl(self.0.as_ptr(), OPUS_SET_COMPLEXITY_REQUEST, c.clamp(0, 10)) };
    }

    /// Constant bitrate (RFC 7587's `cbr=1`) or variable (libopus's default).
    pub fn set_cbr(&mut self, cbr: bool) {
        // SAFETY: a live encoder; the request takes one opus_int32.
        unsafe { ffi::opus_encoder_ctl(self.0.as_ptr(), OPUS_SET_VBR_REQUEST, i32::from(!cbr)) };
    }

    /// Encodes one frame (2.5 to 60 ms of samples at the encoder's rate) into `out`;
    /// an invalid frame length leaves `out` empty.
    pub fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) {
        out.clear();
        out.resize(MAX_PACKET, 0);
        // SAFETY: `pcm` holds `pcm.len()` samples (mono), `out` MAX_PACKET bytes.
        let n = unsafe { ffi::opus_encode(self.0.as_ptr(), pcm.as_ptr(), pcm.len() as i32, out.as_mut_ptr(), MAX_PACKET as i32) };
        out.truncate(n.max(0) as usize);
    }
}

impl Drop for OpusEncoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_encoder_create, destroyed once.
        unsafe { ffi::opus_encoder_destroy(self.0.as_ptr()) }
    }
}

pub struct OpusDecoder {
    dec: NonNull<ffi::OpusDecoder>,
    buf: Vec<i16>,
}

// As for the encoder.
unsafe impl Send for OpusDecoder {}

impl OpusDecoder {
    pub fn new(rate: u32) -> Option<OpusDecoder> {
        let mut err = 0;
        // SAFETY: as for the encoder.
        let p = unsafe { ffi::opus_decoder_create(rate as i32, 1, &mut err) };
        // Room for the longest packet (120 ms) at any rate up to 48 kHz.
        Some(OpusDecoder { dec: NonNull::new(p)?, buf: vec![0; super::codec::MAX_PACKET_SAMPLES as usize * 6] })
    }

    /// Appends the packet's audio; false (nothing appended) for a packet libopus
    /// refuses (corrupt, or not Opus at all), and for an empty one: RFC 6716 §3.4 (R1)
    /// makes a packet at least one byte, and libopus would take it as a loss and
    /// conceal up to 120 ms for nothing.
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> bool {
        if payload.is_empty() {
            return false;
        }
        self.run(payload, 0, self.buf.len(), out)
    }

    /// The decoder's concealment of `samples` that never came (its PLC).
    pub fn conceal(&mut self, samples: usize, out: &mut Vec<i16>) -> bool {
        self.run(&[], 0, samples, out)
    }

    /// Rebuilds the `samples` lost just before `next` from the FEC copy `next` carries
    /// (concealment when it carries none).
    pub fn recover(&mut self, next: &[u8], samples: usize, out: &mut Vec<i16>) -> bool {
        self.run(next, 1, samples, out)
    }

    fn run(&mut self, payload: &[u8], fec: i32, samples: usize, out: &mut Vec<i16>) -> bool {
        let samples = samples.min(self.buf.len());
        let data = if payload.is_empty() { std::ptr::null() } else { payload.as_ptr() };
        // SAFETY: `data` is null (concealment) or `payload.len()` bytes; `buf` holds
        // `samples` mono samples.
        let n = unsafe { ffi::opus_decode(self.dec.as_ptr(), data, payload.len() as i32, self.buf.as_mut_ptr(), samples as i32, fec) };
        if n <= 0 {
            return false;
        }
        out.extend_from_slice(&self.buf[..n as usize]);
        true
    }
}

impl Drop for OpusDecoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_decoder_create, destroyed once.
        unsafe { ffi::opus_decoder_destroy(self.dec.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Best over the codec's delay (under 200 samples).
    fn correlation(a: &[i16], b: &[i16]) -> f64 {
        media_tools::analysis::best_correlation(a, b, 200).0
    }

    /// espeak-ng speech at 8 kHz (testdata/README.md says how it was made).
    fn speech() -> Vec<i16> {
        let wav = hound::WavReader::new(&include_bytes!("../../testdata/speech-8k.wav")[..]).unwrap();
        wav.into_samples::<i16>().map(|s| s.unwrap()).collect()
    }

    #[test]
    fn speech_survives_ten_percent_loss_with_fec_and_concealment() {
        let mut pcm = speech();
        pcm.truncate(pcm.len() / 160 * 160);
        let mut enc = OpusEncoder::new(8000, 24000, 10).unwrap();
        let packets: Vec<Vec<u8>> = pcm
            .chunks(160)
            .map(|f| {
                let mut p = Vec::new();
                enc.encode(f, &mut p);
                assert!(!p.is_empty());
                p
            })
            .collect();
        let decode_all = |lost: &dyn Fn(usize) -> bool, fec: bool| {
            let mut dec = OpusDecoder::new(8000).unwrap();
            let mut out = Vec::new();
            for (i, p) in packets.iter().enumerate() {
                if lost(i) {
                    match packets.get(i + 1).filter(|_| fec && !lost(i + 1)) {
                        Some(next) => assert!(dec.recover(next, 160, &mut out)),
                        None => assert!(dec.conceal(160, &mut out)),
                    }
                } else {
                    assert!(dec.decode(p, &mut out));
                }
            }
            out
        };
        let clean = decode_all(&|_| false, false);
        assert_eq!(clean.len(), pcm.len());
        // Every tenth packet lost, spread (a fixed pattern, so the test cannot flake).
        let lossy = |i: usize| i % 10 == 3;
        let with_fec = decode_all(&lossy, true);
        let plc_only = decode_all(&lossy, false);
        let silence: Vec<i16> = {
            let mut s = clean.clone();
            for (i, f) in s.chunks_mut(160).enumerate() {
                if lossy(i) {
                    f.fill(0);
                }
            }
            s
        };
        let (c_clean, c_fec, c_plc, c_zero) =
            (correlation(&pcm, &clean), correlation(&pcm, &with_fec), correlation(&pcm, &plc_only), correlation(&pcm, &silence));
        println!(
            "Opus 20 kbit/s at 8 kHz, real speech: clean {c_clean:.3}; 10 % loss: FEC {c_fec:.3}, PLC {c_plc:.3}, silence {c_zero:.3}"
        );
        assert!(c_clean > 0.8, "clean {c_clean:.3}");
        // With a tenth of the packets lost the speech is still there: FEC and the
        // decoder's concealment keep most of the clean correlation, and at least what
        // silence in the gaps keeps.
        assert!(c_fec > 0.85 * c_clean && c_plc > 0.8 * c_clean, "10 % loss: FEC {c_fec:.3}, PLC {c_plc:.3} of {c_clean:.3}");
        // FEC rebuilds the lost waveform, so it beats silence in the gaps; PLC only
        // extrapolates (it sounds better than a gap, but correlates less, so it is
        // held to the bound above, not to silence).
        assert!(c_fec > c_zero, "FEC {c_fec:.3} against silence in the gaps {c_zero:.3}");
    }

    #[test]
    fn garbage_is_refused_not_decoded() {
        let mut dec = OpusDecoder::new(8000).unwrap();
        let mut out = Vec::new();
        // A TOC byte for code 3 (arbitrary frames) with a frame count of 0 is invalid.
        assert!(!dec.decode(&[0x03, 0x00], &mut out));
        assert!(out.is_empty());
    }
}
