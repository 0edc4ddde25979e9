//! Turning prompt bytes into the call's 8 kHz mono PCM: any WAV sample format,
//! channel count and rate (downmixed, then band-limited resampling).

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
}

pub fn wav_to_call_pcm(bytes: &[u8]) -> Result<Vec<i16>, DecodeError> {
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
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<Result<_, _>>()?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            reader.samples::<i32>().map(|s| s.map(|v| v as f32 * scale)).collect::<Result<_, _>>()?
        }
    };
    let mono: Vec<i16> = interleaved
        .chunks(spec.channels as usize)
        .map(|frame| {
            let avg = frame.iter().sum::<f32>() / frame.len() as f32;
            (avg * 32767.0).round().clamp(-32768.0, 32767.0) as i16
        })
        .collect();
    Ok(resample::convert(&mono, spec.sample_rate, CALL_RATE))
}

pub fn pcm_bytes_to_call_pcm(bytes: &[u8], rate: u32) -> Vec<i16> {
    let samples: Vec<i16> = bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    resample::convert(&samples, rate, CALL_RATE)
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
