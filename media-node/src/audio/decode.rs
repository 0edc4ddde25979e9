//! Turning prompt bytes into mono PCM at the call's 8 kHz (or 16 kHz, the copy a
//! wideband call sends): any WAV sample format, channel count and rate (downmixed, then
//! band-limited resampling), and FLAC, MP3 and Ogg Vorbis through symphonia (found by
//! their content, not their name). Ogg Opus is demuxed by symphonia, which has no Opus
//! decoder, and decoded by libopus (the call's codec already) straight to the rate.

use std::io::Cursor;

use thiserror::Error;

use super::CALL_RATE;
use crate::core::resample;

/// A prompt longer than this is refused rather than held in memory.
pub const MAX_PROMPT_SECONDS: u64 = 600;

#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("not a readable WAV file: {0}")]
    Wav(#[from] hound::Error),
    #[error("WAV has {0} channels")]
    Channels(u16),
    #[error("WAV sample rate {0} Hz is out of range (4000..=192000)")]
    Rate(u32),
    #[error("prompt is {0} s long; the limit is {MAX_PROMPT_SECONDS} s")]
    TooLong(u64),
    #[error("not a WAV, FLAC, MP3, Ogg Vorbis or Ogg Opus prompt: {0}")]
    Format(String),
}

/// A prompt file's audio at the call's rate: WAV as always, else FLAC, MP3 or Ogg
/// Vorbis. A corrupt frame in a compressed prompt is skipped, as players do.
pub fn prompt_to_call_pcm(bytes: &[u8]) -> Result<Vec<i16>, DecodeError> {
    prompt_to_pcm(bytes, CALL_RATE)
}

/// As `prompt_to_call_pcm`, at `out_rate` (8000 or 16000; libopus decodes at either).
pub fn prompt_to_pcm(bytes: &[u8], out_rate: u32) -> Result<Vec<i16>, DecodeError> {
    if bytes.starts_with(b"RIFF") || bytes.starts_with(b"RIFX") {
        return wav_to_pcm(bytes, out_rate);
    }
    compressed_to_pcm(bytes, out_rate)
}

fn compressed_to_pcm(bytes: &[u8], out_rate: u32) -> Result<Vec<i16>, DecodeError> {
    use symphonia::core::audio::SampleBuffer;
    use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
    use symphonia::core::errors::Error;
    use symphonia::core::formats::FormatOptions;
    use symphonia::core::io::MediaSourceStream;
    use symphonia::core::meta::MetadataOptions;
    use symphonia::core::probe::Hint;

    let bad = |e: Error| DecodeError::Format(e.to_string());
    let mss = MediaSourceStream::new(Box::new(Cursor::new(bytes.to_vec())), Default::default());
    let probed =
        symphonia::default::get_probe().format(&Hint::new(), mss, &FormatOptions::default(), &MetadataOptions::default()).map_err(bad)?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| DecodeError::Format("no audio track".into()))?;
    let (track_id, params) = (track.id, track.codec_params.clone());
    let rate = params.sample_rate.ok_or_else(|| DecodeError::Format("no sample rate".into()))?;
    if !(4000..=192_000).contains(&rate) {
        return Err(DecodeError::Rate(rate));
    }
    // The length the container states (FLAC's STREAMINFO, a WAV-like header, an Ogg
    // stream's last granule), refused before anything is decoded.
    if let Some(frames) = params.n_frames {
        check_length(frames as usize, rate)?;
    }
    if params.codec == symphonia::core::codecs::CODEC_TYPE_OPUS {
        return ogg_opus_to_pcm(format.as_mut(), track_id, params.delay.unwrap_or(0), out_rate);
    }
    let mut decoder = symphonia::default::get_codecs().make(&params, &DecoderOptions::default()).map_err(bad)?;
    // Brought to the call's rate as it is decoded: memory follows the output.
    let mut clip = resample::ClipResampler::new(rate, out_rate);
    let mut mono: Vec<i16> = Vec::new();
    while let Some(packet) = next_packet(format.as_mut(), track_id)? {
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            Err(Error::DecodeError(_)) => continue,
            Err(e) => return Err(bad(e)),
        };
        let spec = *decoded.spec();
        let channels = spec.channels.count().max(1);
        let mut buf = SampleBuffer::<f32>::new(decoded.capacity() as u64, spec);
        buf.copy_interleaved_ref(decoded);
        mono.clear();
        mono.extend(buf.samples().chunks(channels).map(|frame| {
            let avg = frame.iter().sum::<f32>() / frame.len() as f32;
            (avg * 32767.0).round().clamp(-32768.0, 32767.0) as i16
        }));
        clip.push(&mono);
        check_length(clip.fed() as usize, rate)?;
    }
    if clip.fed() == 0 {
        return Err(DecodeError::Format("no audio in it".into()));
    }
    Ok(clip.finish())
}

/// Ogg Opus (RFC 7845) by libopus at `out_rate`: any channel count decodes to
/// mono, OpusHead's pre-skip (`pre_skip`, 48 kHz samples: the encoder's delay) is
/// dropped from the start and the demuxer's end trim (the last granule position) kept,
/// and a packet libopus refuses is skipped like a corrupt frame elsewhere.
#[cfg(feature = "opus")]
fn ogg_opus_to_pcm(
    format: &mut dyn symphonia::core::formats::FormatReader,
    track_id: u32,
    pre_skip: u32,
    out_rate: u32,
) -> Result<Vec<i16>, DecodeError> {
    // Opus's clock is 48 kHz whatever it decodes to.
    let per_sample = (48_000 / out_rate) as usize;
    let mut decoder =
        crate::core::opus::OpusDecoder::new(out_rate).ok_or_else(|| DecodeError::Format("libopus refused a decoder".into()))?;
    let mut pcm = Vec::new();
    let mut frame = Vec::new();
    while let Some(packet) = next_packet(format, track_id)? {
        frame.clear();
        if !decoder.decode(packet.buf(), &mut frame) {
            continue;
        }
        // symphonia 0.5 carries the pre-skip in the track's delay but does not trim
        // packets by it; the end trim it does give.
        let end = frame.len().saturating_sub(packet.trim_end() as usize / per_sample);
        pcm.extend_from_slice(&frame[..end]);
        check_length(pcm.len(), out_rate)?;
    }
    pcm.drain(..(pre_skip as usize / per_sample).min(pcm.len()));
    if pcm.is_empty() {
        return Err(DecodeError::Format("no audio in it".into()));
    }
    Ok(pcm)
}

#[cfg(not(feature = "opus"))]
fn ogg_opus_to_pcm(_: &mut dyn symphonia::core::formats::FormatReader, _: u32, _: u32, _: u32) -> Result<Vec<i16>, DecodeError> {
    Err(DecodeError::Format("Ogg Opus needs the node built with the opus feature (libopus)".into()))
}

/// The next packet of `track_id` (other tracks are skipped); None at the end.
fn next_packet(
    format: &mut dyn symphonia::core::formats::FormatReader,
    track_id: u32,
) -> Result<Option<symphonia::core::formats::Packet>, DecodeError> {
    use symphonia::core::errors::Error;
    loop {
        match format.next_packet() {
            Ok(p) if p.track_id() == track_id => return Ok(Some(p)),
            Ok(_) => {}
            Err(Error::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(Error::ResetRequired) => return Ok(None),
            Err(e) => return Err(DecodeError::Format(e.to_string())),
        }
    }
}

/// Refuses a prompt once `samples` at `rate` run past MAX_PROMPT_SECONDS.
fn check_length(samples: usize, rate: u32) -> Result<(), DecodeError> {
    let seconds = samples as u64 / rate as u64;
    if seconds > MAX_PROMPT_SECONDS {
        return Err(DecodeError::TooLong(seconds));
    }
    Ok(())
}

pub fn wav_to_call_pcm(bytes: &[u8]) -> Result<Vec<i16>, DecodeError> {
    wav_to_pcm(bytes, CALL_RATE)
}

/// A WAV's audio, mono at `out_rate`.
pub fn wav_to_pcm(bytes: &[u8], out_rate: u32) -> Result<Vec<i16>, DecodeError> {
    let mut reader = hound::WavReader::new(Cursor::new(bytes))?;
    let spec = reader.spec();
    if spec.channels == 0 {
        return Err(DecodeError::Channels(0));
    }
    if !(4000..=192_000).contains(&spec.sample_rate) {
        return Err(DecodeError::Rate(spec.sample_rate));
    }
    let seconds = reader.duration() as u64 / spec.sample_rate as u64;
    if seconds > MAX_PROMPT_SECONDS {
        return Err(DecodeError::TooLong(seconds));
    }
    // Read, downmixed and resampled a block at a time: memory follows the output.
    let mut clip = resample::ClipResampler::new(spec.sample_rate, out_rate);
    let channels = spec.channels as usize;
    let (mut frame, mut block) = (Vec::with_capacity(channels), Vec::with_capacity(4096));
    let mut take = |v: f32, clip: &mut resample::ClipResampler| {
        frame.push(v);
        if frame.len() == channels {
            let avg = frame.iter().sum::<f32>() / channels as f32;
            block.push((avg * 32767.0).round().clamp(-32768.0, 32767.0) as i16);
            frame.clear();
            if block.len() == block.capacity() {
                clip.push(&block);
                block.clear();
            }
        }
    };
    match spec.sample_format {
        hound::SampleFormat::Float => {
            for s in reader.samples::<f32>() {
                take(s?, &mut clip);
            }
        }
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            for s in reader.samples::<i32>() {
                take(s? as f32 * scale, &mut clip);
            }
        }
    }
    clip.push(&block);
    Ok(clip.finish())
}

pub fn pcm_bytes_to_call_pcm(bytes: &[u8], rate: u32) -> Vec<i16> {
    pcm_bytes_to_pcm(bytes, rate, CALL_RATE)
}

/// s16le mono PCM at `rate`, brought to `out_rate`.
pub fn pcm_bytes_to_pcm(bytes: &[u8], rate: u32, out_rate: u32) -> Vec<i16> {
    let samples: Vec<i16> = bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    resample::convert(&samples, rate, out_rate)
}

/// Encodes mono s16 PCM as a WAV file in memory.
pub fn wav_bytes(pcm: &[i16], rate: u32) -> Vec<u8> {
    let spec = hound::WavSpec { channels: 1, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut cursor = Cursor::new(Vec::new());
    {
        let mut w = hound::WavWriter::new(&mut cursor, spec).expect("in-memory WAV writer");
        for &s in pcm {
            w.write_sample(s).expect("in-memory write");
        }
        w.finalize().expect("in-memory finalize");
    }
    cursor.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_known_by_their_content_and_garbage_is_a_clear_error() {
        // A WAV (whatever its name) still goes through hound.
        let wav = wav_bytes(&[1000i16; 1600], 16000);
        assert_eq!(prompt_to_call_pcm(&wav).unwrap().len(), 800);
        for junk in [&b""[..], b"not audio at all, just text", &[0xffu8; 64][..], b"fLaC\x00\x00\x00\x22 truncated"] {
            let e = prompt_to_call_pcm(junk).unwrap_err();
            assert!(matches!(e, DecodeError::Format(_)), "{junk:?}: {e}");
            assert!(e.to_string().starts_with("not a WAV, FLAC, MP3, Ogg Vorbis or Ogg Opus prompt"), "{e}");
        }
    }
    use crate::core::resample::tests::{rms, tone};

    #[test]
    fn stereo_44k1_float_becomes_8k_mono() {
        let spec = hound::WavSpec { channels: 2, sample_rate: 44100, bits_per_sample: 32, sample_format: hound::SampleFormat::Float };
        let mut cursor = Cursor::new(Vec::new());
        {
            let mut w = hound::WavWriter::new(&mut cursor, spec).unwrap();
            for s in tone(500.0, 44100, 44100, 0.5 * 32767.0) {
                w.write_sample(s as f32 / 32767.0).unwrap();
                w.write_sample(s as f32 / 32767.0).unwrap();
            }
            w.finalize().unwrap();
        }
        let pcm = wav_to_call_pcm(&cursor.into_inner()).unwrap();
        assert_eq!(pcm.len(), 8000);
        assert!((rms(&pcm[800..7200]) - 0.5 * 32767.0 / 2f64.sqrt()).abs() < 300.0);
    }

    #[test]
    fn pcm16k_round_trip_length() {
        let bytes: Vec<u8> = vec![0u8; 32000]; // one second at 16 kHz
        assert_eq!(pcm_bytes_to_call_pcm(&bytes, 16000).len(), 8000);
        assert_eq!(wav_to_call_pcm(&wav_bytes(&[0; 8000], 8000)).unwrap().len(), 8000);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(wav_to_call_pcm(b"RIFF....WAVEjunk").is_err());
        assert!(wav_to_call_pcm(&[]).is_err());
    }
}
