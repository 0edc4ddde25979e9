//! An Ogg demuxer for a stream that arrives in chunks cut anywhere (RFC 3533): pages
//! are found by their capture pattern, checked by their CRC, and their segments joined
//! into packets, however the sender split the bytes. One logical stream is followed
//! (the first page's serial number); others are skipped. Pure: bytes in, packets out.
//!
//! symphonia demuxes whole files (it needs to seek); a TTS stream cannot be sought.

use thiserror::Error;

/// The longest page RFC 3533 allows: a 27-byte header, 255 lacing values, 255 × 255.
const MAX_PAGE: usize = 27 + 255 + 255 * 255;
/// A packet longer than this is not audio (an Opus packet is at most 1275 × 6 bytes).
const MAX_PACKET: usize = 64 * 1024;
/// Capture patterns before the first page whose CRC may fail: each costs a CRC over
/// up to a page, so a stream of fake patterns must not buy CPU without end.
const MAX_FALSE_STARTS: u32 = 8;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OggError {
    #[error("not an Ogg stream: no page in its first {0} bytes")]
    NoPage(usize),
    #[error("Ogg page {0} fails its CRC check")]
    Crc(u32),
    #[error("Ogg page version {0} is not 0")]
    Version(u8),
    #[error("an Ogg packet runs past {MAX_PACKET} bytes")]
    PacketTooLong,
    #[error("the stream ended with {0} bytes that are no whole Ogg page (cut short, or not Ogg)")]
    Trailing(usize),
    #[error("the stream ended inside a packet continued past its last page")]
    Unfinished,
}

#[derive(Debug, Default)]
pub struct OggPackets {
    buf: Vec<u8>,
    /// The packet whose segments continue on the next page.
    partial: Vec<u8>,
    serial: Option<u32>,
    /// Bytes seen before the first page (to give up on a stream that is not Ogg).
    skipped: usize,
    false_starts: u32,
    synced: bool,
    /// Bytes skipped between pages once synced (not Ogg at all).
    junk: usize,
}

/// CRC-32 of Ogg pages: polynomial 0x04c11db7, not reflected, initial 0.
fn crc(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut r = (i as u32) << 24;
            for _ in 0..8 {
                r = if r & 0x8000_0000 != 0 { (r << 1) ^ 0x04c1_1db7 } else { r << 1 };
            }
            *e = r;
        }
        t
    });
    data.iter().fold(0u32, |c, &b| (c << 8) ^ table[((c >> 24) as u8 ^ b) as usize])
}

impl OggPackets {
    /// Takes the next bytes of the stream; appends the packets they complete.
    pub fn push(&mut self, chunk: &[u8], packets: &mut Vec<Vec<u8>>) -> Result<(), OggError> {
        self.buf.extend_from_slice(chunk);
        loop {
            let Some(at) = self.buf.windows(4).position(|w| w == b"OggS") else {
                // Keep the last 3 bytes: the pattern may straddle the next chunk.
                let drop = self.buf.len().saturating_sub(3);
                self.skip(drop)?;
                return Ok(());
            };
            self.skip(at)?;
            if self.buf.len() < 27 {
                return Ok(());
            }
            let segments = usize::from(self.buf[26]);
            if self.buf.len() < 27 + segments {
                return Ok(());
            }
            let lacing = &self.buf[27..27 + segments];
            let body: usize = lacing.iter().map(|&l| usize::from(l)).sum();
            let len = 27 + segments + body;
            if self.buf.len() < len {
                return Ok(());
            }
            if self.buf[4] != 0 {
                return Err(OggError::Version(self.buf[4]));
            }
            let seq = u32::from_le_bytes([self.buf[18], self.buf[19], self.buf[20], self.buf[21]]);
            let stored = u32::from_le_bytes([self.buf[22], self.buf[23], self.buf[24], self.buf[25]]);
            let mut page = self.buf[..len].to_vec();
            page[22..26].fill(0);
            if crc(&page) != stored {
                if !self.synced && self.false_starts < MAX_FALSE_STARTS {
                    // "OggS" inside other data, before the first page: look further on.
                    self.false_starts += 1;
                    self.skip(1)?;
                    continue;
                }
                if !self.synced {
                    return Err(OggError::NoPage(self.skipped));
                }
                return Err(OggError::Crc(seq));
            }
            self.synced = true;
            let serial = u32::from_le_bytes([page[14], page[15], page[16], page[17]]);
            let continued = page[5] & 1 != 0;
            if *self.serial.get_or_insert(serial) == serial {
                if !continued {
                    // A continuation we never saw the start of is dropped with it.
                    self.partial.clear();
                }
                let mut at = 27 + segments;
                for &l in &page[27..27 + segments] {
                    let l = usize::from(l);
                    self.partial.extend_from_slice(&page[at..at + l]);
                    at += l;
                    if self.partial.len() > MAX_PACKET {
                        return Err(OggError::PacketTooLong);
                    }
                    if l < 255 {
                        packets.push(std::mem::take(&mut self.partial));
                    }
                }
            }
            self.buf.drain(..len);
        }
    }

    /// The stream has ended: bytes that made no whole page, or a packet left
    /// unfinished, are an error (a client's cut-off or garbage tail is not silence).
    pub fn finish(&self) -> Result<(), OggError> {
        if self.junk + self.buf.len() > 0 {
            return Err(OggError::Trailing(self.junk + self.buf.len()));
        }
        if !self.partial.is_empty() {
            return Err(OggError::Unfinished);
        }
        Ok(())
    }

    fn skip(&mut self, n: usize) -> Result<(), OggError> {
        if n == 0 {
            return Ok(());
        }
        self.buf.drain(..n);
        if self.synced {
            self.junk += n;
        } else {
            self.skipped += n;
            if self.skipped > MAX_PAGE {
                return Err(OggError::NoPage(self.skipped));
            }
        }
        Ok(())
    }
}

/// Writes one Ogg page (for tests and tools): `packets` laced in order, the last one
/// complete.
pub fn page(serial: u32, seq: u32, granule: u64, header_type: u8, packets: &[&[u8]]) -> Vec<u8> {
    let mut lacing = Vec::new();
    for p in packets {
        lacing.extend(std::iter::repeat_n(255u8, p.len() / 255));
        lacing.push((p.len() % 255) as u8);
    }
    let mut out = b"OggS".to_vec();
    out.push(0);
    out.push(header_type);
    out.extend_from_slice(&granule.to_le_bytes());
    out.extend_from_slice(&serial.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(lacing.len() as u8);
    out.extend_from_slice(&lacing);
    for p in packets {
        out.extend_from_slice(p);
    }
    let c = crc(&out);
    out[22..26].copy_from_slice(&c.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crc_is_oggs() {
        // CRC-32/POSIX without its final inversion (0x765e7680 ^ 0xffffffff): the
        // parameters libogg uses.
        assert_eq!(crc(b"123456789"), 0x89a1_897f);
    }

    #[test]
    fn packets_come_out_whole_however_the_stream_is_cut() {
        let long: Vec<u8> = (0..700u32).map(|i| i as u8).collect();
        let mut stream = b"ID3junk before the first page".to_vec();
        stream.extend(page(7, 0, 0, 2, &[b"OpusHead-ish", b"second"]));
        stream.extend(page(9, 0, 0, 2, &[b"another stream's"]));
        stream.extend(page(7, 1, 960, 0, &[&long, b""]));
        for cut in [1usize, 2, 5, 27, 100, 4096] {
            let mut d = OggPackets::default();
            let mut got = Vec::new();
            for c in stream.chunks(cut) {
                d.push(c, &mut got).unwrap();
            }
            assert_eq!(got, vec![b"OpusHead-ish".to_vec(), b"second".to_vec(), long.clone(), Vec::new()], "cut {cut}");
        }
    }

    #[test]
    fn a_packet_spanning_pages_is_joined() {
        let big = vec![0xabu8; 600];
        // 600 bytes: lacing 255, 255 on the first page (continued), 90 on the next.
        let mut first = page(1, 0, 0, 0, &[&big[..510]]);
        // page() terminates the packet with a 0 lacing value; drop it to leave it open.
        let segs = first[26] as usize;
        assert_eq!(&first[27..27 + segs], &[255, 255, 0]);
        first[26] = 2;
        first.remove(27 + 2);
        first[22..26].fill(0);
        let c = crc(&first);
        first[22..26].copy_from_slice(&c.to_le_bytes());
        let second = page(1, 1, 0, 1, &[&big[510..]]);
        let mut d = OggPackets::default();
        let mut got = Vec::new();
        d.push(&first, &mut got).unwrap();
        assert!(got.is_empty());
        d.push(&second, &mut got).unwrap();
        assert_eq!(got, vec![big]);
    }

    #[test]
    fn bad_streams_are_refused_clearly() {
        let mut d = OggPackets::default();
        assert_eq!(d.push(&vec![0x11; MAX_PAGE + 10], &mut Vec::new()), Err(OggError::NoPage(MAX_PAGE + 7)));
        let mut good = page(1, 0, 0, 2, &[b"a"]);
        good.extend(page(1, 5, 0, 0, &[b"b"]));
        let n = good.len();
        good[n - 1] ^= 1;
        let mut d = OggPackets::default();
        assert_eq!(d.push(&good, &mut Vec::new()), Err(OggError::Crc(5)));
        // Fake capture patterns, each a whole page that fails its CRC: a few are
        // looked past, then the stream is refused.
        let mut fake = page(1, 0, 0, 2, &[&[7u8; 200]]);
        fake[30] ^= 1;
        let mut d = OggPackets::default();
        let e = d.push(&fake.repeat(20), &mut Vec::new()).unwrap_err();
        assert!(matches!(e, OggError::NoPage(n) if n < fake.len() * (MAX_FALSE_STARTS as usize + 1)), "{e}");
    }
}
