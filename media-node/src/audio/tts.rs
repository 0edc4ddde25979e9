//! Streamed TTS audio as StreamAudioToCall carries it: 16 kHz s16le bytes in chunks of
//! any length (a chunk may split a sample), turned into the call's 8 kHz PCM. The
//! decoder keeps the odd byte and the resampler's history across chunks, so the audio
//! is the same however the sender cut it.
//!
//! For a call in a wideband codec the decoder also keeps the stream's 16 kHz audio
//! (`take_wide`), so the caller hears the TTS engine's own wideband speech.

use crate::core::resample::Resampler;

/// The rate StreamAudioToCall's `audio_chunk` is in.
pub const TTS_RATE: u32 = 16000;

pub struct TtsDecoder {
    resampler: Resampler,
    /// The first byte of a sample whose second byte is in the next chunk.
    carry: Option<u8>,
    samples: Vec<i16>,
    /// Keep the 16 kHz samples too (a wideband call), for `take_wide`.
    keep_wide: bool,
    wide: Vec<i16>,
    /// What `StreamDecoder::push` converted since `next_piece` last took it.
    pending: Option<Vec<i16>>,
}

impl Default for TtsDecoder {
    fn default() -> Self {
        TtsDecoder::new()
    }
}

impl TtsDecoder {
    pub fn new() -> TtsDecoder {
        TtsDecoder {
            resampler: Resampler::new(TTS_RATE, super::CALL_RATE),
            carry: None,
            samples: Vec::new(),
            keep_wide: false,
            wide: Vec::new(),
            pending: None,
        }
    }

    /// A decoder that also keeps the stream's 16 kHz audio (`take_wide`).
    pub fn wideband() -> TtsDecoder {
        TtsDecoder { keep_wide: true, ..TtsDecoder::new() }
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
        if self.keep_wide {
            self.wide.extend_from_slice(&self.samples);
        }
        self.resampler.process(&self.samples)
    }

    /// The 16 kHz audio of what was decoded since the last call (a wideband decoder's;
    /// empty otherwise).
    pub fn take_wide(&mut self) -> Vec<i16> {
        std::mem::take(&mut self.wide)
    }
}

/// What a StreamAudioToCall stream's chunks carry (its first message says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    Pcm16k,
    OggOpus,
    OpusPackets,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
// Built without libopus, only NoOpus is ever made.
#[cfg_attr(not(feature = "opus"), allow(dead_code))]
pub enum StreamError {
    #[error("audio_chunk {0}: {1}")]
    Ogg(u64, super::ogg::OggError),
    #[error("audio_chunk {0}: the Ogg stream is not Opus (its first packet is not OpusHead)")]
    NotOpus(u64),
    #[error("audio_chunk {0}: OpusHead says {1} channels under mapping family {2} (the node takes family 0: mono or stereo)")]
    Channels(u64, u8, u8),
    #[error("at the stream's end: {0}")]
    End(super::ogg::OggError),
    #[error("audio_chunk {0}: libopus refused an Opus packet ({1} bytes)")]
    BadPacket(u64, usize),
    #[error("Opus streams need the node built with the opus feature (libopus)")]
    NoOpus,
}

/// A stream's chunks to the call's 8 kHz PCM, in whichever format it declared.
pub enum StreamDecoder {
    Pcm(TtsDecoder),
    #[cfg(feature = "opus")]
    Opus(Box<OpusStream>),
}

#[cfg(feature = "opus")]
pub struct OpusStream {
    /// Some for Ogg Opus; raw packets otherwise.
    ogg: Option<super::ogg::OggPackets>,
    decoder: crate::core::opus::OpusDecoder,
    /// Ogg Opus's two header packets still to come (OpusHead, OpusTags).
    headers: u8,
    /// Samples at the start still to drop (OpusHead's pre-skip, at the decoder's rate).
    pre_skip: usize,
    /// Packets taken from the chunks and not yet decoded (decoding waits for
    /// `next_piece`, so a few bytes that decode to hours cost nothing until played).
    packets: std::collections::VecDeque<Vec<u8>>,
    /// The demuxer's output, reused.
    demuxed: Vec<Vec<u8>>,
    chunks: u64,
    /// A wideband call's: libopus decodes at 16 kHz, kept for `take_wide`, and this
    /// brings it to the call's 8 kHz.
    wide: Option<(Resampler, Vec<i16>)>,
}

impl StreamDecoder {
    /// A decoder for a call at 8 kHz; `wideband` (a call in G.722 or Opus) also keeps
    /// the stream's 16 kHz audio for `take_wide`.
    pub fn new(format: StreamFormat, wideband: bool) -> Result<StreamDecoder, StreamError> {
        match format {
            StreamFormat::Pcm16k if wideband => Ok(StreamDecoder::Pcm(TtsDecoder::wideband())),
            StreamFormat::Pcm16k => Ok(StreamDecoder::Pcm(TtsDecoder::new())),
            #[cfg(feature = "opus")]
            StreamFormat::OggOpus | StreamFormat::OpusPackets => {
                let ogg = format == StreamFormat::OggOpus;
                Ok(StreamDecoder::Opus(Box::new(OpusStream {
                    ogg: ogg.then(super::ogg::OggPackets::default),
                    // libopus never refuses a decoder for a valid rate and one channel.
                    decoder: crate::core::opus::OpusDecoder::new(if wideband { TTS_RATE } else { super::CALL_RATE })
                        .ok_or(StreamError::NoOpus)?,
                    headers: if ogg { 2 } else { 0 },
                    pre_skip: 0,
                    packets: Default::default(),
                    demuxed: Vec::new(),
                    chunks: 0,
                    wide: wideband.then(|| (Resampler::new(TTS_RATE, super::CALL_RATE), Vec::new())),
                })))
            }
            #[cfg(not(feature = "opus"))]
            StreamFormat::OggOpus | StreamFormat::OpusPackets => {
                let _ = wideband;
                Err(StreamError::NoOpus)
            }
        }
    }

    /// The 16 kHz audio of what `decode` gave since the last call: a wideband
    /// decoder's, the same audio as its 8 kHz output; empty otherwise.
    pub fn take_wide(&mut self) -> Vec<i16> {
        match self {
            StreamDecoder::Pcm(d) => d.take_wide(),
            #[cfg(feature = "opus")]
            StreamDecoder::Opus(o) => o.wide.as_mut().map(|(_, w)| std::mem::take(w)).unwrap_or_default(),
        }
    }

    /// The call PCM of one chunk, all of it (empty for a keep-alive, or while a page
    /// or a sample is incomplete): `push` and every `next_piece`. An error ends the
    /// stream: what came before it still plays. (Tests and fuzzing; the node takes
    /// pieces as playback needs them.)
    #[cfg(test)]
    pub fn decode(&mut self, chunk: &[u8]) -> Result<Vec<i16>, StreamError> {
        self.push(chunk)?;
        let mut pcm = Vec::new();
        while let Some(piece) = self.next_piece(usize::MAX)? {
            pcm.extend(piece);
        }
        Ok(pcm)
    }

    /// Takes a chunk; its audio comes out of `next_piece`. PCM is converted here (it
    /// is never more samples than bytes); Opus is only demuxed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), StreamError> {
        match self {
            StreamDecoder::Pcm(d) => {
                let pcm = d.decode(chunk);
                d.pending.get_or_insert_with(Vec::new).extend(pcm);
                Ok(())
            }
            #[cfg(feature = "opus")]
            StreamDecoder::Opus(o) => o.push(chunk),
        }
    }

    /// The call's 8 kHz PCM of what was pushed, decoded now: packets until `max`
    /// samples are reached (so at most one packet over; less at the end), their 16 kHz
    /// copy in `take_wide`; None when nothing is left. A caller that takes pieces only
    /// as playback needs them holds little decoded audio, however much a chunk decodes
    /// to.
    pub fn next_piece(&mut self, max: usize) -> Result<Option<Vec<i16>>, StreamError> {
        match self {
            // PCM's one piece a chunk keeps its two copies two to one: `max` does not
            // split it.
            StreamDecoder::Pcm(d) => {
                let _ = max;
                Ok(d.pending.take())
            }
            #[cfg(feature = "opus")]
            StreamDecoder::Opus(o) => o.next_piece(max),
        }
    }

    /// The client ended the stream: what it left unfinished is an error (an Ogg page
    /// cut short, bytes that are no page, a packet continued past the last page).
    pub fn finish(&self) -> Result<(), StreamError> {
        match self {
            StreamDecoder::Pcm(_) => Ok(()),
            #[cfg(feature = "opus")]
            StreamDecoder::Opus(o) => o.ogg.as_ref().map_or(Ok(()), |ogg| ogg.finish().map_err(StreamError::End)),
        }
    }
}

#[cfg(feature = "opus")]
impl OpusStream {
    fn push(&mut self, chunk: &[u8]) -> Result<(), StreamError> {
        self.chunks += 1;
        let n = self.chunks;
        match &mut self.ogg {
            Some(ogg) => {
                ogg.push(chunk, &mut self.demuxed).map_err(|e| StreamError::Ogg(n, e))?;
                self.packets.extend(self.demuxed.drain(..));
            }
            None if chunk.is_empty() => {}
            None => self.packets.push_back(chunk.to_vec()),
        }
        Ok(())
    }

    fn next_piece(&mut self, max: usize) -> Result<Option<Vec<i16>>, StreamError> {
        let n = self.chunks;
        let mut pcm = Vec::new();
        // The decoder's own rate: 16 kHz for a wideband call, else the call's.
        let per_call_sample = if self.wide.is_some() { 2 } else { 1 };
        while pcm.len() / per_call_sample < max {
            let Some(p) = self.packets.pop_front() else { break };
            if self.headers == 2 {
                // OpusHead (RFC 7845 §5.1): the pre-skip is 48 kHz samples; channel
                // mapping family 0 is mono or stereo (others are multistream, which a
                // mono decoder would mistake).
                if p.len() < 19 || !p.starts_with(b"OpusHead") {
                    return Err(StreamError::NotOpus(n));
                }
                let (channels, family) = (p[9], p[18]);
                if family != 0 || !(1..=2).contains(&channels) {
                    return Err(StreamError::Channels(n, channels, family));
                }
                let rate = if self.wide.is_some() { TTS_RATE } else { super::CALL_RATE };
                self.pre_skip = usize::from(u16::from_le_bytes([p[10], p[11]])) * rate as usize / 48_000;
                self.headers = 1;
                continue;
            }
            if self.headers == 1 {
                // OpusTags: the encoder's name and comments, nothing to play.
                self.headers = 0;
                continue;
            }
            let before = pcm.len();
            if !self.decoder.decode(&p, &mut pcm) {
                return Err(StreamError::BadPacket(n, p.len()));
            }
            let skip = self.pre_skip.min(pcm.len() - before);
            pcm.drain(before..before + skip);
            self.pre_skip -= skip;
        }
        if pcm.is_empty() && self.packets.is_empty() {
            return Ok(None);
        }
        match &mut self.wide {
            // Decoded at 16 kHz: kept as it is, and brought to the call's rate.
            Some((down, kept)) => {
                kept.extend_from_slice(&pcm);
                Ok(Some(down.process(&pcm)))
            }
            None => Ok(Some(pcm)),
        }
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

    /// A wideband call's decoder keeps the stream's own 16 kHz samples beside the
    /// 8 kHz audio it gives, however the bytes are cut; an 8 kHz call's keeps none.
    #[test]
    fn a_wideband_decoder_keeps_the_16k_audio() {
        let tone: Vec<i16> = (0..3200).map(|i| ((i as f64 * 6000.0 * std::f64::consts::TAU / 16000.0).sin() * 8000.0) as i16).collect();
        let all = bytes(&tone);
        let mut d = StreamDecoder::new(StreamFormat::Pcm16k, true).unwrap();
        let (mut pcm, mut wide) = (Vec::new(), Vec::new());
        for c in all.chunks(333) {
            pcm.extend(d.decode(c).unwrap());
            wide.extend(d.take_wide());
        }
        assert_eq!(wide, tone);
        assert_eq!(pcm, TtsDecoder::new().decode(&all), "the 8 kHz audio is as before");
        let mut narrow = StreamDecoder::new(StreamFormat::Pcm16k, false).unwrap();
        narrow.decode(&all).unwrap();
        assert!(narrow.take_wide().is_empty());
    }

    #[test]
    fn a_lone_byte_waits_for_its_pair() {
        let mut d = TtsDecoder::new();
        assert!(d.decode(&[0x34]).is_empty());
        assert_eq!(d.carry, Some(0x34));
        d.decode(&[0x12]);
        assert_eq!(d.carry, None);
    }

    #[cfg(feature = "opus")]
    fn opus_packets(pcm8k: &[i16]) -> Vec<Vec<u8>> {
        let mut enc = crate::core::opus::OpusEncoder::new(8000, 24000, 0).unwrap();
        pcm8k
            .chunks_exact(160)
            .map(|f| {
                let mut out = Vec::new();
                enc.encode(f, &mut out);
                out
            })
            .collect()
    }

    #[cfg(feature = "opus")]
    #[test]
    fn ogg_opus_and_raw_opus_streams_decode_to_the_same_audio_however_cut() {
        use super::super::ogg::page;
        let tone: Vec<i16> = (0..8000).map(|i| ((i as f64 * 440.0 * std::f64::consts::TAU / 8000.0).sin() * 8000.0) as i16).collect();
        let packets = opus_packets(&tone);
        let mut raw = StreamDecoder::new(StreamFormat::OpusPackets, false).unwrap();
        let mut from_raw = Vec::new();
        for p in &packets {
            from_raw.extend(raw.decode(p).unwrap());
            assert!(raw.decode(&[]).unwrap().is_empty(), "keep-alive");
        }
        assert_eq!(from_raw.len(), 8000, "20 ms a packet, at 8 kHz");
        // The same packets in Ogg, with a pre-skip of 312 samples at 48 kHz (52 at 8 kHz).
        let mut stream = ogg_head(1, 0, 312);
        for (k, group) in packets.chunks(10).enumerate() {
            let refs: Vec<&[u8]> = group.iter().map(|p| p.as_slice()).collect();
            stream.extend(page(3, 2 + k as u32, 0, 0, &refs));
        }
        for cut in [1usize, 13, 500, 100_000] {
            let mut d = StreamDecoder::new(StreamFormat::OggOpus, false).unwrap();
            let mut got = Vec::new();
            for c in stream.chunks(cut) {
                got.extend(d.decode(c).unwrap());
            }
            assert_eq!(got, from_raw[52..], "cut every {cut} bytes, the pre-skip dropped");
        }
    }

    #[cfg(feature = "opus")]
    #[test]
    fn streams_that_are_not_opus_end_with_a_clear_error() {
        let mut d = StreamDecoder::new(StreamFormat::OggOpus, false).unwrap();
        let vorbis = super::super::ogg::page(1, 0, 0, 2, &[b"\x01vorbis and the rest of its header"]);
        assert_eq!(d.decode(&vorbis), Err(StreamError::NotOpus(1)));
        let mut d = StreamDecoder::new(StreamFormat::OggOpus, false).unwrap();
        let e = d.decode(&[0u8; 70_000]).unwrap_err();
        assert!(e.to_string().starts_with("audio_chunk 1: not an Ogg stream"), "{e}");
        let mut d = StreamDecoder::new(StreamFormat::OpusPackets, false).unwrap();
        // A code-3 packet that claims 0 frames is invalid (RFC 6716 §3.2.5).
        assert_eq!(d.decode(&[0x03, 0x00]), Err(StreamError::BadPacket(1, 2)));
    }

    /// An Ogg Opus stream's header pages: OpusHead (its channels, mapping family and
    /// pre-skip at 48 kHz) and OpusTags.
    #[cfg(feature = "opus")]
    fn ogg_head(channels: u8, family: u8, pre_skip: u16) -> Vec<u8> {
        use super::super::ogg::page;
        let mut head = b"OpusHead".to_vec();
        head.extend_from_slice(&[1, channels]);
        head.extend_from_slice(&pre_skip.to_le_bytes());
        head.extend_from_slice(&48000u32.to_le_bytes());
        head.extend_from_slice(&[0, 0, family]);
        let mut stream = page(3, 0, 0, 2, &[&head]);
        stream.extend(page(3, 1, 0, 0, &[b"OpusTags\0\0\0\0\0\0\0\0"]));
        stream
    }

    /// A few bytes that decode to a lot are decoded a piece at a time, as they are
    /// taken: memory follows the piece, not the chunk.
    #[cfg(feature = "opus")]
    #[test]
    fn a_chunk_is_decoded_a_piece_at_a_time() {
        use super::super::ogg::page;
        let tone: Vec<i16> = (0..16_000).map(|i| ((i as f64 * 440.0 * std::f64::consts::TAU / 8000.0).sin() * 8000.0) as i16).collect();
        let packets = opus_packets(&tone);
        let mut stream = ogg_head(1, 0, 0);
        for (k, group) in packets.chunks(50).enumerate() {
            let refs: Vec<&[u8]> = group.iter().map(|p| p.as_slice()).collect();
            stream.extend(page(3, 2 + k as u32, 0, 0, &refs));
        }
        let mut d = StreamDecoder::new(StreamFormat::OggOpus, false).unwrap();
        d.push(&stream).unwrap();
        let mut pieces = Vec::new();
        while let Some(p) = d.next_piece(1600).unwrap() {
            pieces.push(p.len());
        }
        assert_eq!(pieces.iter().sum::<usize>(), 16_000, "all of it, in the end");
        assert!(pieces.len() >= 10 && pieces.iter().all(|&n| n <= 1600), "pieces of 200 ms at most: {pieces:?}");
        assert!(d.finish().is_ok(), "the stream ended on a page boundary");
    }

    /// An empty Opus packet is no packet (RFC 6716 R1); a channel count mapping family
    /// 0 does not allow; a page cut short or bytes after the last page at the end: each
    /// ends the stream with what is wrong.
    #[cfg(feature = "opus")]
    #[test]
    fn empty_packets_odd_heads_and_unfinished_ends_are_bad_audio() {
        use super::super::ogg::page;
        let packets = opus_packets(&[1000i16; 1600]);
        let mut stream = ogg_head(1, 0, 0);
        stream.extend(page(3, 2, 0, 0, &[packets[0].as_slice(), &[]]));
        let mut d = StreamDecoder::new(StreamFormat::OggOpus, false).unwrap();
        assert_eq!(d.decode(&stream), Err(StreamError::BadPacket(1, 0)));
        let mut d = StreamDecoder::new(StreamFormat::OggOpus, false).unwrap();
        assert_eq!(d.decode(&ogg_head(255, 0, 0)), Err(StreamError::Channels(1, 255, 0)));
        let mut d = StreamDecoder::new(StreamFormat::OggOpus, false).unwrap();
        assert_eq!(d.decode(&ogg_head(6, 1, 0)), Err(StreamError::Channels(1, 6, 1)));
        // Whole pages, then a page cut short: the audio before it plays, the end says so.
        let mut good = ogg_head(2, 0, 0);
        good.extend(page(3, 2, 0, 0, &[packets[0].as_slice()]));
        let cut = page(3, 3, 0, 0, &[packets[1].as_slice()]);
        let mut d = StreamDecoder::new(StreamFormat::OggOpus, false).unwrap();
        assert_eq!(d.decode(&good).unwrap().len(), 160);
        assert!(d.finish().is_ok());
        d.decode(&cut[..cut.len() - 5]).unwrap();
        assert!(matches!(d.finish(), Err(StreamError::End(super::super::ogg::OggError::Trailing(_)))));
        // Whole pages, then 2 KB of garbage.
        let mut d = StreamDecoder::new(StreamFormat::OggOpus, false).unwrap();
        d.decode(&good).unwrap();
        d.decode(&[0x5a; 2048]).unwrap();
        let e = d.finish().unwrap_err();
        assert_eq!(
            e.to_string(),
            "at the stream's end: the stream ended with 2048 bytes that are no whole Ogg page (cut short, or not Ogg)"
        );
    }
}
