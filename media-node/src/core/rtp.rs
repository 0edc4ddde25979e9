//! RTP packets (RFC 3550 §5.1) and the RTCP/RTP split on a muxed port (RFC 5761 §4).
//!
//! Parsing borrows from the datagram; nothing here allocates on the receive path
//! except the caller's decode buffer.

use thiserror::Error;

pub const RTP_VERSION: u8 = 2;
const FIXED_HEADER_LEN: usize = 12;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RtpError {
    #[error("datagram of {0} bytes is shorter than an RTP header")]
    TooShort(usize),
    #[error("RTP version {0} is not 2")]
    BadVersion(u8),
    #[error("CSRC list or header extension runs past the end of the datagram")]
    Truncated,
    #[error("padding length {0} is larger than the payload")]
    BadPadding(u8),
}

/// A parsed RTP packet borrowing its payload from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub csrc_count: u8,
    pub payload: &'a [u8],
}

impl RtpPacket<'_> {
    /// The header fields the node writes (CSRCs aside), to build or compare packets.
    pub fn header(&self) -> RtpHeader {
        RtpHeader {
            marker: self.marker,
            payload_type: self.payload_type,
            sequence: self.sequence,
            timestamp: self.timestamp,
            ssrc: self.ssrc,
        }
    }
}

/// What a datagram on an RTP port turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Datagram<'a> {
    Rtp(RtpPacket<'a>),
    /// RTCP multiplexed on the RTP port: recognised, counted, never played.
    Rtcp,
}

/// RFC 5761 §4: on a muxed port, the second byte 192..=223 (payload types
/// 64..=95 with the marker bit) belongs to RTCP (SR=200, RR=201, ...).
pub fn is_rtcp(data: &[u8]) -> bool {
    data.len() >= 8 && data[0] >> 6 == RTP_VERSION && (192..=223).contains(&data[1])
}

pub fn classify(data: &[u8]) -> Result<Datagram<'_>, RtpError> {
    if is_rtcp(data) {
        return Ok(Datagram::Rtcp);
    }
    parse(data).map(Datagram::Rtp)
}

/// The length of the header (fixed part, CSRCs, extension): what SRTP leaves in the
/// clear and authenticates. Padding is not looked at (it is encrypted under SRTP).
pub fn header_len(data: &[u8]) -> Result<usize, RtpError> {
    if data.len() < FIXED_HEADER_LEN {
        return Err(RtpError::TooShort(data.len()));
    }
    let version = data[0] >> 6;
    if version != RTP_VERSION {
        return Err(RtpError::BadVersion(version));
    }
    let mut offset = FIXED_HEADER_LEN + 4 * (data[0] & 0x0f) as usize;
    if offset > data.len() {
        return Err(RtpError::Truncated);
    }
    if data[0] & 0x10 != 0 {
        // 16-bit profile id, 16-bit length in 32-bit words, then the words.
        if offset + 4 > data.len() {
            return Err(RtpError::Truncated);
        }
        let words = u16::from_be_bytes([data[offset + 2], data[offset + 3]]) as usize;
        offset += 4 + 4 * words;
        if offset > data.len() {
            return Err(RtpError::Truncated);
        }
    }
    Ok(offset)
}

pub fn parse(data: &[u8]) -> Result<RtpPacket<'_>, RtpError> {
    let offset = header_len(data)?;
    let padding = data[0] & 0x20 != 0;
    let csrc_count = data[0] & 0x0f;
    let marker = data[1] & 0x80 != 0;
    let payload_type = data[1] & 0x7f;
    let sequence = u16::from_be_bytes([data[2], data[3]]);
    let timestamp = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
    let ssrc = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
    let mut end = data.len();
    if padding {
        let pad = data[data.len() - 1];
        if pad == 0 || pad as usize > end - offset {
            return Err(RtpError::BadPadding(pad));
        }
        end -= pad as usize;
    }
    Ok(RtpPacket { marker, payload_type, sequence, timestamp, ssrc, csrc_count, payload: &data[offset..end] })
}

/// Header fields of a packet we send (no CSRC, no extension, no padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

/// Appends the packet to `out` (cleared first) so a send buffer can be reused.
pub fn build_into(out: &mut Vec<u8>, header: RtpHeader, payload: &[u8]) {
    out.clear();
    out.reserve(FIXED_HEADER_LEN + payload.len());
    out.push(RTP_VERSION << 6);
    out.push((u8::from(header.marker) << 7) | (header.payload_type & 0x7f));
    out.extend_from_slice(&header.sequence.to_be_bytes());
    out.extend_from_slice(&header.timestamp.to_be_bytes());
    out.extend_from_slice(&header.ssrc.to_be_bytes());
    out.extend_from_slice(payload);
}

pub fn build(header: RtpHeader, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    build_into(&mut out, header, payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> RtpHeader {
        RtpHeader { marker: true, payload_type: 8, sequence: 65535, timestamp: 0xdead_beef, ssrc: 42 }
    }

    #[test]
    fn build_then_parse_round_trips() {
        let bytes = build(header(), &[1, 2, 3]);
        let p = parse(&bytes).unwrap();
        assert!(p.marker);
        assert_eq!((p.payload_type, p.sequence, p.timestamp, p.ssrc), (8, 65535, 0xdead_beef, 42));
        assert_eq!(p.payload, &[1, 2, 3]);
    }

    #[test]
    fn skips_csrc_extension_and_padding() {
        let mut d = vec![0x80 | 0x20 | 0x10 | 2, 0, 0, 1, 0, 0, 0, 160, 0, 0, 0, 7];
        d.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]); // two CSRCs
        d.extend_from_slice(&[0xbe, 0xde, 0, 1, 9, 9, 9, 9]); // one-word extension
        d.extend_from_slice(&[0xaa, 0xbb]); // payload
        d.extend_from_slice(&[0, 0, 3]); // three bytes of padding
        let p = parse(&d).unwrap();
        assert_eq!(p.csrc_count, 2);
        assert_eq!(p.payload, &[0xaa, 0xbb]);
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(parse(&[0x80; 5]), Err(RtpError::TooShort(5)));
        assert_eq!(parse(&[0x40; 12]).unwrap_err(), RtpError::BadVersion(1));
        let mut csrc = vec![0x8f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        csrc.extend_from_slice(&[0; 8]);
        assert_eq!(parse(&csrc), Err(RtpError::Truncated));
        let ext = [0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        assert_eq!(parse(&ext), Err(RtpError::Truncated));
        let pad = [0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 200];
        assert_eq!(parse(&pad), Err(RtpError::BadPadding(200)));
    }

    #[test]
    fn rtcp_is_told_apart_from_rtp() {
        let receiver_report = [0x81, 201, 0, 7, 0, 0, 0, 1];
        assert_eq!(classify(&receiver_report), Ok(Datagram::Rtcp));
        let pcmu = build(RtpHeader { marker: false, payload_type: 0, sequence: 1, timestamp: 0, ssrc: 1 }, &[0xff; 160]);
        assert!(matches!(classify(&pcmu), Ok(Datagram::Rtp(_))));
        // PCMU with the marker bit is 0x80 = 128: RTP, not RTCP.
        let marked = build(RtpHeader { marker: true, payload_type: 0, sequence: 1, timestamp: 0, ssrc: 1 }, &[0xff; 160]);
        assert!(matches!(classify(&marked), Ok(Datagram::Rtp(_))));
    }
}
