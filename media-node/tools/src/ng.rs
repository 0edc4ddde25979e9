//! A client of rtpengine's ng control protocol, for driving rtpengine in the load
//! benchmark: each message is `<cookie> <bencoded dictionary>` in one UDP datagram,
//! and the reply carries the same cookie. Only what the benchmark needs: offer,
//! answer, play media, start recording, delete.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail};
use tokio::net::UdpSocket;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bencode {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Bencode>),
    Dict(BTreeMap<Vec<u8>, Bencode>),
}

impl Bencode {
    pub fn str(s: &str) -> Bencode {
        Bencode::Bytes(s.as_bytes().to_vec())
    }

    pub fn dict<'a>(entries: impl IntoIterator<Item = (&'a str, Bencode)>) -> Bencode {
        Bencode::Dict(entries.into_iter().map(|(k, v)| (k.as_bytes().to_vec(), v)).collect())
    }

    pub fn get(&self, key: &str) -> Option<&Bencode> {
        match self {
            Bencode::Dict(d) => d.get(key.as_bytes()),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Bencode::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Bencode::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Bencode::Bytes(b) => {
                out.extend_from_slice(format!("{}:", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Bencode::List(l) => {
                out.push(b'l');
                l.iter().for_each(|v| v.encode(out));
                out.push(b'e');
            }
            Bencode::Dict(d) => {
                // Keys are sorted: BTreeMap order is the canonical bencode order.
                out.push(b'd');
                for (k, v) in d {
                    Bencode::Bytes(k.clone()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// Decodes one value from the front of `data`; returns it and the bytes used.
    pub fn decode(data: &[u8]) -> anyhow::Result<(Bencode, usize)> {
        match data.first() {
            Some(b'i') => {
                let end = data.iter().position(|&c| c == b'e').ok_or_else(|| anyhow!("unterminated integer"))?;
                Ok((Bencode::Int(std::str::from_utf8(&data[1..end])?.parse()?), end + 1))
            }
            Some(b'l') | Some(b'd') => {
                let is_dict = data[0] == b'd';
                let (mut pos, mut items) = (1, Vec::new());
                while data.get(pos) != Some(&b'e') {
                    if pos >= data.len() {
                        bail!("unterminated list");
                    }
                    let (v, used) = Bencode::decode(&data[pos..])?;
                    items.push(v);
                    pos += used;
                }
                if !is_dict {
                    return Ok((Bencode::List(items), pos + 1));
                }
                if items.len() % 2 != 0 {
                    bail!("dictionary with a key and no value");
                }
                let mut d = BTreeMap::new();
                let mut it = items.into_iter();
                while let (Some(Bencode::Bytes(k)), Some(v)) = (it.next(), it.next()) {
                    d.insert(k, v);
                }
                Ok((Bencode::Dict(d), pos + 1))
            }
            Some(c) if c.is_ascii_digit() => {
                let colon = data.iter().position(|&c| c == b':').ok_or_else(|| anyhow!("string without length"))?;
                let len: usize = std::str::from_utf8(&data[..colon])?.parse()?;
                let start = colon + 1;
                let bytes = data.get(start..start + len).ok_or_else(|| anyhow!("string shorter than its length"))?;
                Ok((Bencode::Bytes(bytes.to_vec()), start + len))
            }
            _ => bail!("not bencode"),
        }
    }
}

/// One control connection (its own UDP socket, so replies need no demultiplexing).
pub struct NgClient {
    socket: UdpSocket,
    server: SocketAddr,
    next: u64,
}

impl NgClient {
    pub async fn connect(server: SocketAddr) -> anyhow::Result<NgClient> {
        let socket = UdpSocket::bind(SocketAddr::new(server.ip(), 0)).await?;
        Ok(NgClient { socket, server, next: rand::random::<u32>() as u64 })
    }

    /// Sends a command and waits for its reply; a reply whose result is not "ok" is an error.
    pub async fn command(&mut self, message: Bencode) -> anyhow::Result<Bencode> {
        self.next += 1;
        let cookie = format!("{:x}", self.next);
        let mut out = format!("{cookie} ").into_bytes();
        message.encode(&mut out);
        let mut buf = vec![0u8; 65536];
        for _ in 0..3 {
            self.socket.send_to(&out, self.server).await?;
            // rtpengine answers `play media` only once it has decoded the file, and N
            // calls ask at once: on a slow host the last answer takes seconds.
            let Ok(r) = tokio::time::timeout(Duration::from_secs(5), self.socket.recv_from(&mut buf)).await else {
                continue; // lost datagram: the protocol's own remedy is a resend with the same cookie
            };
            let (n, _) = r?;
            let reply = &buf[..n];
            let Some(space) = reply.iter().position(|&c| c == b' ') else {
                continue; // not a reply to us
            };
            if &reply[..space] != cookie.as_bytes() {
                continue;
            }
            let (v, _) = Bencode::decode(&reply[space + 1..])?;
            return match v.get("result").and_then(Bencode::as_str) {
                Some("ok") => Ok(v),
                other => {
                    Err(anyhow!("rtpengine: {} ({})", other.unwrap_or("?"), v.get("error-reason").and_then(Bencode::as_str).unwrap_or("")))
                }
            };
        }
        bail!("rtpengine did not answer")
    }
}

/// The audio port of the first m= line of an SDP body.
pub fn sdp_audio_port(sdp: &str) -> Option<u16> {
    sdp.lines().find_map(|l| l.strip_prefix("m=audio ")).and_then(|rest| rest.split_whitespace().next()).and_then(|p| p.parse().ok())
}

/// A minimal PCMU offer or answer for a party at `addr`.
/// An offer or answer for one codec (its payload type as the node offers it).
pub fn codec_sdp(addr: SocketAddr, session: u64, codec: media_node::core::codec::AudioCodec) -> String {
    let pt = codec.static_payload_type();
    let channels = if codec.sdp_channels() > 1 { format!("/{}", codec.sdp_channels()) } else { String::new() };
    format!(
        "v=0\r\no=- {session} 1 IN IP4 {ip}\r\ns=load\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {pt}\r\na=rtpmap:{pt} {name}/{clock}{channels}\r\na=ptime:20\r\na=sendrecv\r\n",
        ip = addr.ip(),
        port = addr.port(),
        name = codec.name(),
        clock = codec.rtp_clock(),
    )
}

/// `codec_sdp` as RTP/SAVP with the caller's SDES key (AES_CM_128_HMAC_SHA1_80).
pub fn srtp_sdp(
    addr: SocketAddr,
    session: u64,
    codec: media_node::core::codec::AudioCodec,
    key: &media_node::core::srtp::MasterKey,
) -> String {
    let plain = codec_sdp(addr, session, codec);
    let line = media_node::core::srtp::sdes::format(1, key);
    plain.replacen(" RTP/AVP ", " RTP/SAVP ", 1).replacen("a=sendrecv\r\n", &format!("{}\r\na=sendrecv\r\n", line.as_str()), 1)
}

/// The key of the first crypto line in `sdp` (the far end's, for what it sends).
pub fn sdp_crypto_key(sdp: &str) -> Option<media_node::core::srtp::MasterKey> {
    sdp.lines().find_map(|l| l.trim().strip_prefix("a=crypto:")).and_then(|v| media_node::core::srtp::sdes::parse(v).ok()).map(|c| c.key)
}

pub fn pcmu_sdp(addr: SocketAddr, session: u64) -> String {
    format!(
        "v=0\r\no=- {session} 1 IN IP4 {ip}\r\ns=load\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n",
        ip = addr.ip(),
        port = addr.port()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bencode_round_trip() {
        let v = Bencode::dict([
            ("command", Bencode::str("offer")),
            ("flags", Bencode::List(vec![Bencode::str("trust-address")])),
            ("n", Bencode::Int(-42)),
        ]);
        let mut out = Vec::new();
        v.encode(&mut out);
        assert_eq!(out, b"d7:command5:offer5:flagsl13:trust-addresse1:ni-42ee".to_vec());
        let (back, used) = Bencode::decode(&out).unwrap();
        assert_eq!((back, used), (v, out.len()));
        assert!(Bencode::decode(b"5:abc").is_err(), "short string");
        assert!(Bencode::decode(b"d3:key").is_err(), "unterminated dict");
    }

    #[test]
    fn sdp_port_is_found() {
        let sdp = pcmu_sdp("127.0.0.1:40002".parse().unwrap(), 1);
        assert_eq!(sdp_audio_port(&sdp), Some(40002));
        assert_eq!(sdp_audio_port("v=0\r\n"), None);
    }
}
