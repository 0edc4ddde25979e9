//! WAV files whose header says whatever it is told, truthfully or not: what a hostile
//! caller hands the node as a prompt (0 channels, absurd rates, lengths past the end).
//! hound refuses to write such files, which is the point of writing them by hand.

#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub channels: u16,
    pub rate: u32,
    pub bits: u16,
    /// IEEE float (format 3) instead of integer PCM (format 1).
    pub float: bool,
    /// What the data chunk claims to hold, in bytes.
    pub data_len: u32,
}

/// A RIFF/WAVE file with `header`'s fields as given, then `payload` as the data.
pub fn with_header(header: Header, payload: &[u8]) -> Vec<u8> {
    let Header { channels, rate, bits, float, data_len } = header;
    let block = channels.wrapping_mul(bits / 8);
    let mut w = b"RIFF".to_vec();
    w.extend_from_slice(&36u32.wrapping_add(data_len).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&(if float { 3u16 } else { 1 }).to_le_bytes());
    w.extend_from_slice(&channels.to_le_bytes());
    w.extend_from_slice(&rate.to_le_bytes());
    w.extend_from_slice(&rate.wrapping_mul(block as u32).to_le_bytes());
    w.extend_from_slice(&block.to_le_bytes());
    w.extend_from_slice(&bits.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data_len.to_le_bytes());
    w.extend_from_slice(payload);
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truthful_header_reads_back_with_hound() {
        let pcm: Vec<u8> = (0..320u16).flat_map(|i| (i as i16 * 50).to_le_bytes()).collect();
        let wav = with_header(Header { channels: 1, rate: 8000, bits: 16, float: false, data_len: pcm.len() as u32 }, &pcm);
        let r = hound::WavReader::new(std::io::Cursor::new(wav)).unwrap();
        assert_eq!((r.spec().channels, r.spec().sample_rate, r.duration()), (1, 8000, 320));
    }
}
