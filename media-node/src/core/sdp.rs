//! SDP (RFC 8866) for a call's audio, and offer/answer (RFC 3264) over it: parse what
//! a trunk, a PBX, an SBC or a WebRTC gateway offers, pick the codec by the node's
//! preference, and write the answer carrying the node's address and port. Pure: text in,
//! text out, no sockets and no clock.
//!
//! The parser is strict about structure (every line `x=value`, `v=0` first, an `m=` for
//! media, a `c=` for every media section that is not refused) and lenient about what real
//! offers do within it: CRLF, bare LF or a mix, trailing blanks, attributes it does not
//! know, static payload types with no rtpmap, several m-lines of which only one audio
//! line is taken. Input is bounded before it is read.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

use crate::core::codec::{AudioCodec, OpusPrefs};
use crate::core::srtp::sdes::{self, Crypto, Offered, SrtpPolicy};
use crate::core::srtp::MasterKey;
use crate::echo::clip;

/// Larger SDP is refused before parsing: real offers are 300 bytes to a few KB.
pub const MAX_SDP_BYTES: usize = 64 * 1024;
/// Payload types one m-line may list (RTP has 128).
const MAX_FORMATS: usize = 128;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SdpError {
    #[error("SDP is empty")]
    Empty,
    #[error("SDP is {0} bytes; at most {MAX_SDP_BYTES}")]
    TooLarge(usize),
    #[error("SDP is not UTF-8 text")]
    NotText,
    #[error("SDP line {line}: {what}")]
    Line { line: usize, what: String },
    #[error("SDP must start with v=0")]
    NoVersion,
    #[error("SDP has no m= line")]
    NoMedia,
    #[error("the audio m-line (line {0}) has no c= address, neither its own nor the session's")]
    NoConnection(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub name: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// `audio`, `video`, `application`, ...
    pub kind: String,
    pub port: u16,
    /// `RTP/AVP`, `RTP/SAVP`, `UDP/TLS/RTP/SAVPF`, ...
    pub proto: String,
    pub formats: Vec<String>,
    /// This section's own c= address, if it has one.
    pub connection: Option<IpAddr>,
    pub attributes: Vec<Attribute>,
    /// Line number of the m= line (1-based), for errors.
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    pub origin: String,
    pub connection: Option<IpAddr>,
    pub attributes: Vec<Attribute>,
    pub media: Vec<Media>,
}

/// `line` of the text as it was sent, with its number, for errors.
fn bad(line: usize, what: impl Into<String>) -> SdpError {
    SdpError::Line { line, what: what.into() }
}

fn parse_connection(line: usize, value: &str) -> Result<IpAddr, SdpError> {
    // c=IN IP4 192.0.2.1[/ttl[/n]]
    let mut parts = value.split_whitespace();
    let (net, family, addr) = (parts.next(), parts.next(), parts.next());
    if net != Some("IN") {
        return Err(bad(line, format!("c= network type must be IN: {:?}", clip(value))));
    }
    let addr = addr.ok_or_else(|| bad(line, "c= has no address"))?;
    let addr = addr.split('/').next().unwrap_or(addr);
    let ip: IpAddr =
        addr.parse().map_err(|_| bad(line, format!("c= address {:?} is not an IP address (names are not resolved)", clip(addr))))?;
    match (family, ip) {
        (Some("IP4"), IpAddr::V4(_)) | (Some("IP6"), IpAddr::V6(_)) => Ok(ip),
        _ => Err(bad(line, format!("c= address family does not match: {:?}", clip(value)))),
    }
}

fn parse_attribute(value: &str) -> Attribute {
    match value.split_once(':') {
        Some((name, v)) => Attribute { name: name.trim().to_ascii_lowercase(), value: Some(v.trim().to_string()) },
        None => Attribute { name: value.trim().to_ascii_lowercase(), value: None },
    }
}

impl SessionDescription {
    pub fn parse(bytes: &[u8]) -> Result<SessionDescription, SdpError> {
        if bytes.len() > MAX_SDP_BYTES {
            return Err(SdpError::TooLarge(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| SdpError::NotText)?;
        if text.trim().is_empty() {
            return Err(SdpError::Empty);
        }
        let mut sd = SessionDescription { origin: String::new(), connection: None, attributes: Vec::new(), media: Vec::new() };
        let mut first = true;
        for (i, raw) in text.split('\n').enumerate() {
            let n = i + 1;
            let line = raw.trim_end_matches(['\r', ' ', '\t']);
            if line.is_empty() {
                continue;
            }
            let (kind, value) = line.split_once('=').ok_or_else(|| bad(n, format!("not a type=value line: {:?}", clip(line))))?;
            if kind.len() != 1 || !kind.as_bytes()[0].is_ascii_lowercase() {
                return Err(bad(n, format!("type {:?} is not one lower-case letter", clip(kind))));
            }
            if first {
                if line.trim() != "v=0" {
                    return Err(SdpError::NoVersion);
                }
                first = false;
                continue;
            }
            match (kind, sd.media.last_mut()) {
                ("m", _) => {
                    let mut parts = value.split_whitespace();
                    let kind = parts.next().ok_or_else(|| bad(n, "m= has no media type"))?.to_ascii_lowercase();
                    let port = parts.next().ok_or_else(|| bad(n, "m= has no port"))?;
                    // m=audio 49170/2 RTP/AVP ...: a port count we do not use.
                    let port: u16 = port
                        .split('/')
                        .next()
                        .unwrap_or("")
                        .parse()
                        .map_err(|_| bad(n, format!("m= port {:?} is not a port", clip(port))))?;
                    let proto = parts.next().ok_or_else(|| bad(n, "m= has no transport protocol"))?.to_string();
                    let formats: Vec<String> = parts.map(str::to_string).collect();
                    if formats.is_empty() {
                        return Err(bad(n, "m= lists no formats"));
                    }
                    if formats.len() > MAX_FORMATS {
                        return Err(bad(n, format!("m= lists {} formats; at most {MAX_FORMATS}", formats.len())));
                    }
                    sd.media.push(Media { kind, port, proto, formats, connection: None, attributes: Vec::new(), line: n });
                }
                ("c", Some(m)) => m.connection = Some(parse_connection(n, value)?),
                ("c", None) => sd.connection = Some(parse_connection(n, value)?),
                ("a", Some(m)) => m.attributes.push(parse_attribute(value)),
                ("a", None) => sd.attributes.push(parse_attribute(value)),
                ("o", None) => sd.origin = value.to_string(),
                // s=, t=, b=, i=, u=, e=, p=, z=, r=, k=: nothing the audio path needs.
                _ => {}
            }
        }
        if first {
            return Err(SdpError::NoVersion);
        }
        if sd.media.is_empty() {
            return Err(SdpError::NoMedia);
        }
        Ok(sd)
    }
}

impl Media {
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.iter().find(|a| a.name == name).and_then(|a| a.value.as_deref())
    }

    fn has_flag(&self, name: &str) -> bool {
        self.attributes.iter().any(|a| a.name == name)
    }

    /// The encoding of payload type `pt`: its rtpmap, or the static assignment of RFC 3551.
    pub fn encoding(&self, pt: u8) -> Option<Encoding> {
        let prefix = format!("{pt} ");
        let mapped =
            self.attributes.iter().filter(|a| a.name == "rtpmap").filter_map(|a| a.value.as_deref()).find(|v| v.starts_with(&prefix));
        if let Some(v) = mapped {
            let mut parts = v[prefix.len()..].trim().split('/');
            let name = parts.next()?.trim().to_ascii_uppercase();
            let clock: u32 = parts.next()?.trim().parse().ok()?;
            let channels: u8 = parts.next().map_or(Some(1), |c| c.trim().parse().ok())?;
            return Some(Encoding { name, clock, channels });
        }
        let (name, clock) = match pt {
            0 => ("PCMU", 8000),
            3 => ("GSM", 8000),
            4 => ("G723", 8000),
            8 => ("PCMA", 8000),
            9 => ("G722", 8000),
            13 => ("CN", 8000),
            18 => ("G729", 8000),
            _ => return None,
        };
        Some(Encoding { name: name.into(), clock, channels: 1 })
    }

    pub fn fmtp(&self, pt: u8) -> Option<&str> {
        let prefix = format!("{pt} ");
        self.attributes
            .iter()
            .filter(|a| a.name == "fmtp")
            .filter_map(|a| a.value.as_deref())
            .find(|v| v.starts_with(&prefix))
            .map(|v| v[prefix.len()..].trim())
    }

    pub fn direction(&self, session: &[Attribute]) -> Direction {
        let of = |attrs: &[Attribute]| attrs.iter().find_map(|a| Direction::from_attribute(&a.name));
        of(&self.attributes).or_else(|| of(session)).unwrap_or(Direction::SendRecv)
    }

    /// The offer's packet time in ms, within what the node paces (10 to 60).
    pub fn ptime(&self) -> u32 {
        self.attribute("ptime").and_then(|p| p.trim().parse::<f64>().ok()).map_or(20, |p| (p.round() as u32).clamp(10, 60))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// Upper case, as matched: `PCMU`, `OPUS`, `TELEPHONE-EVENT`.
    pub name: String,
    /// The RTP clock rate (8000 for G.722, as RFC 3551 keeps it).
    pub clock: u32,
    pub channels: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn from_attribute(name: &str) -> Option<Direction> {
        Some(match name {
            "sendrecv" => Direction::SendRecv,
            "sendonly" => Direction::SendOnly,
            "recvonly" => Direction::RecvOnly,
            "inactive" => Direction::Inactive,
            _ => return None,
        })
    }

    /// What the answer says to an offer of `self` (RFC 3264 §6.1).
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// Whether the node sends media under this (its own) direction.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }
}

/// A codec the node can run, as SDP names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecSpec {
    pub name: &'static str,
    pub clock: u32,
    pub channels: u8,
}

/// What the node runs today, in its default order of preference.
pub const SUPPORTED: &[CodecSpec] = &[
    CodecSpec { name: "PCMU", clock: 8000, channels: 1 },
    CodecSpec { name: "PCMA", clock: 8000, channels: 1 },
    CodecSpec { name: "G722", clock: 8000, channels: 1 },
    #[cfg(feature = "opus")]
    CodecSpec { name: "OPUS", clock: 48000, channels: 2 },
    CodecSpec { name: "G729", clock: 8000, channels: 1 },
];

/// What the node's answer and offer say of Opus: it plays and captures up to 16 kHz
/// (wideband both ways: the caller's audio reaches the agent as it was sent, prompts
/// and TTS reach the caller at 16 kHz; more would be thrown away), and it sends
/// in-band FEC.
pub const OPUS_FMTP: &str = "maxplaybackrate=16000;sprop-maxcapturerate=16000;useinbandfec=1";
/// telephone-event at 48000 in the node's offer, beside Opus (101 is at 8000).
pub const TELEPHONE_EVENT_48K_PT: u8 = 110;

/// The packet time the node asks to receive (what its answers and offers say).
pub const NODE_PTIME_MS: u32 = 20;

impl CodecSpec {
    pub fn audio_codec(&self) -> AudioCodec {
        AudioCodec::from_name(self.name).expect("every supported codec runs")
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NegotiationError {
    #[error(transparent)]
    Sdp(#[from] SdpError),
    #[error("the offer has no audio m-line (it offers {0})")]
    NoAudio(String),
    #[error("the audio m-line's profile {0} is not supported (RTP/AVP, RTP/AVPF, RTP/SAVP or RTP/SAVPF with SDES)")]
    Profile(String),
    #[error("the offer asks for SRTP ({0}) and SRTP is off for this call")]
    SrtpOff(String),
    #[error("the SRTP offer has no crypto line this node runs: {0}")]
    NoCrypto(String),
    #[error("SRTP is required for this call and the SDP is plain RTP without a crypto line the node runs ({0})")]
    PlainRefused(String),
    #[error("no common audio codec: the offer has {offered}; this node takes {supported}")]
    NoCommonCodec { offered: String, supported: String },
}

/// What an offer and the node agreed on for the call's audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The payload type the codec has in this call (the offer's numbering).
    pub payload_type: u8,
    pub codec: CodecSpec,
    /// RFC 4733 events, when offered: at the codec's clock rate, or at 8000 beside a
    /// codec of another clock.
    pub telephone_event: Option<u8>,
    /// The clock the telephone-events count in (the codec's when none was offered).
    pub telephone_event_clock: u32,
    /// The far end's ptime (what it asks to receive: the node sends packets of it).
    pub ptime: u32,
    /// The node's own direction (the answer's).
    pub direction: Direction,
    /// Where to send; None on hold by `c=0.0.0.0` or a refused stream.
    pub remote: Option<SocketAddr>,
    /// Which m-line is the call's audio.
    pub audio_index: usize,
    /// What the node takes from the far end, by payload type: the agreed codec, and
    /// every other codec of the line it runs at 8000 (a far end may switch among
    /// those it offered; these share the call's timestamp scale).
    pub receive: Vec<(u8, AudioCodec)>,
    /// The far end's crypto line the node took (SDES): SRTP with its key for what the
    /// node receives. None: plain RTP.
    pub crypto: Option<Crypto>,
    /// The far end offered (or answered) `a=rtcp-mux` (RFC 5761): RTCP on the RTP port.
    pub rtcp_mux: bool,
    /// The far end's `a=rtcp` (RFC 3605): where its RTCP port is, when not the one
    /// above its RTP port.
    pub rtcp_remote: Option<SocketAddr>,
    /// What the far end's fmtp asks of the Opus the node sends (defaults otherwise).
    pub opus: OpusPrefs,
}

/// Answers `offer` by the node's preferences (`prefer`, names like `PCMU`, case
/// insensitive, first preferred; those the node does not run are passed over) and its
/// SRTP policy: RTP/SAVP takes the strongest crypto line the node runs; crypto lines on
/// RTP/AVP (RFC 8643's opportunistic SRTP) are taken unless SRTP is off.
pub fn negotiate(offer: &SessionDescription, prefer: &[&str], srtp: SrtpPolicy) -> Result<Negotiated, NegotiationError> {
    let audio_index = offer.media.iter().position(|m| m.kind == "audio" && m.port != 0).ok_or_else(|| {
        NegotiationError::NoAudio(offer.media.iter().map(|m| format!("{} port {}", m.kind, m.port)).collect::<Vec<_>>().join(", "))
    })?;
    let m = &offer.media[audio_index];
    let secure = match m.proto.to_ascii_uppercase().as_str() {
        "RTP/AVP" | "RTP/AVPF" => false,
        "RTP/SAVP" | "RTP/SAVPF" => true,
        // DTLS-SRTP (UDP/TLS/RTP/SAVPF) and anything else.
        _ => return Err(NegotiationError::Profile(clip(&m.proto))),
    };
    let connection = m.connection.or(offer.connection).ok_or(SdpError::NoConnection(m.line))?;
    let offered: Vec<(u8, Encoding)> = m
        .formats
        .iter()
        .filter_map(|f| f.parse::<u8>().ok().filter(|pt| *pt < 128))
        .filter_map(|pt| m.encoding(pt).map(|e| (pt, e)))
        .collect();
    let mut order: Vec<&CodecSpec> =
        prefer.iter().filter_map(|p| SUPPORTED.iter().find(|c| c.name.eq_ignore_ascii_case(p.trim()))).collect();
    for c in SUPPORTED {
        if !order.contains(&c) {
            order.push(c);
        }
    }
    // Opus is signalled as /2 (RFC 7587 §7), but some stacks write opus/48000 alone.
    let matches = |e: &Encoding, c: &CodecSpec| e.name == c.name && e.clock == c.clock && (e.channels == c.channels || c.name == "OPUS");
    let chosen = order.iter().find_map(|c| offered.iter().find(|(_, e)| matches(e, c)).map(|(pt, _)| (*pt, (*c).clone())));
    let Some((payload_type, codec)) = chosen else {
        let names: Vec<String> = m
            .formats
            .iter()
            .map(|f| match f.parse::<u8>().ok().and_then(|pt| m.encoding(pt)) {
                Some(e) => format!("{}/{} ({f})", e.name, e.clock),
                None => format!("unknown ({})", clip(f)),
            })
            .collect();
        return Err(NegotiationError::NoCommonCodec {
            offered: names.join(", "),
            supported: SUPPORTED.iter().map(|c| c.name).collect::<Vec<_>>().join(", "),
        });
    };
    // telephone-event at the codec's clock; beside a codec of another clock (Opus at
    // 48000), one at 8000 is taken too, as baresip and FreeSWITCH offer it: the events
    // then count on their own 8 kHz clock, as rtpengine and Asterisk do.
    let event_at = |clock: u32| offered.iter().find(|(_, e)| e.name == "TELEPHONE-EVENT" && e.clock == clock).map(|(pt, _)| (*pt, clock));
    let event = event_at(codec.clock).or_else(|| event_at(8000));
    let (telephone_event, telephone_event_clock) = (event.map(|(pt, _)| pt), event.map_or(codec.clock, |(_, clock)| clock));
    let on_hold = connection.is_unspecified();
    let remote = (!on_hold).then_some(SocketAddr::new(connection, m.port));
    let mut direction = m.direction(&offer.attributes).answer();
    if on_hold && direction == Direction::SendRecv {
        // RFC 2543's hold: c=0.0.0.0 means "do not send to me".
        direction = Direction::RecvOnly;
    }
    let mut receive = vec![(payload_type, codec.audio_codec())];
    for (pt, e) in &offered {
        if e.clock != 8000 || receive.iter().any(|(p, _)| p == pt) {
            continue;
        }
        if let Some(c) = SUPPORTED.iter().find(|c| matches(e, c)) {
            receive.push((*pt, c.audio_codec()));
        }
    }
    let offered = Offered::parse(m.attributes.iter().filter(|a| a.name == "crypto").filter_map(|a| a.value.as_deref()));
    let crypto = match (secure, srtp) {
        (true, SrtpPolicy::Off) => return Err(NegotiationError::SrtpOff(clip(&m.proto))),
        (true, _) => Some(offered.best().cloned().ok_or_else(|| NegotiationError::NoCrypto(offered.to_string()))?),
        (false, SrtpPolicy::Off) => None,
        (false, SrtpPolicy::Optional) => offered.best().cloned(),
        (false, SrtpPolicy::Required) => Some(offered.best().cloned().ok_or_else(|| NegotiationError::PlainRefused(offered.to_string()))?),
    };
    let rtcp_remote = remote.and_then(|r| {
        let value = m.attribute("rtcp")?;
        let mut f = value.split_ascii_whitespace();
        let port: u16 = f.next()?.parse().ok().filter(|p| *p != 0)?;
        // `a=rtcp:port IN IP4 addr`; the address defaults to the stream's.
        let ip = match (f.next(), f.next(), f.next()) {
            (Some(_), Some(_), Some(addr)) => addr.parse().ok()?,
            _ => r.ip(),
        };
        Some(SocketAddr::new(ip, port))
    });
    let rtcp_mux = m.has_flag("rtcp-mux");
    let opus = match codec.audio_codec() {
        AudioCodec::Opus => m.fmtp(payload_type).map(OpusPrefs::parse).unwrap_or_default(),
        _ => OpusPrefs::default(),
    };
    Ok(Negotiated {
        payload_type,
        codec,
        telephone_event,
        telephone_event_clock,
        ptime: m.ptime(),
        direction,
        remote,
        audio_index,
        receive,
        crypto,
        rtcp_mux,
        rtcp_remote,
        opus,
    })
}

/// The answer's SDP: every m-line of the offer in its order (RFC 3264 §6), all but the
/// call's audio refused with port 0; the audio line with the node's address and port,
/// the agreed codec and telephone-event, and under SRTP the node's own key (`local`) in
/// a crypto line with the tag and suite it took.
pub fn answer(
    offer: &SessionDescription,
    agreed: &Negotiated,
    ip: IpAddr,
    port: u16,
    session_id: u64,
    version: u64,
    local: Option<&MasterKey>,
) -> String {
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut s = String::new();
    let _ = write!(s, "v=0\r\no=- {session_id} {version} IN {family} {ip}\r\ns=media-node\r\nc=IN {family} {ip}\r\nt=0 0\r\n");
    for (i, m) in offer.media.iter().enumerate() {
        if i != agreed.audio_index {
            let _ = write!(s, "m={} 0 {} {}\r\n", m.kind, m.proto, m.formats.first().map_or("0", String::as_str));
            continue;
        }
        let mut formats = agreed.payload_type.to_string();
        if let Some(te) = agreed.telephone_event {
            let _ = write!(formats, " {te}");
        }
        let _ = write!(s, "m=audio {port} {} {formats}\r\n", m.proto);
        let codec = agreed.codec.audio_codec();
        write_rtpmap(&mut s, agreed.payload_type, codec);
        if let Some(te) = agreed.telephone_event {
            let _ = write!(s, "a=rtpmap:{te} telephone-event/{}\r\na=fmtp:{te} 0-16\r\n", agreed.telephone_event_clock);
        }
        let _ = write!(s, "a=ptime:{NODE_PTIME_MS}\r\n");
        if let (Some(theirs), Some(mine)) = (&agreed.crypto, local) {
            s.push_str(&sdes::format(theirs.tag, mine));
            s.push_str("\r\n");
        }
        if m.has_flag("rtcp-mux") {
            s.push_str("a=rtcp-mux\r\n");
        }
        let _ = write!(s, "a={}\r\n", agreed.direction.as_str());
    }
    s
}

fn write_rtpmap(s: &mut String, pt: u8, codec: AudioCodec) {
    let _ = write!(s, "a=rtpmap:{pt} {}/{}", codec.name(), codec.rtp_clock());
    if codec.sdp_channels() > 1 {
        let _ = write!(s, "/{}", codec.sdp_channels());
    }
    s.push_str("\r\n");
    if codec == AudioCodec::Opus {
        let _ = write!(s, "a=fmtp:{pt} {OPUS_FMTP}\r\n");
    }
    if codec == AudioCodec::G729 {
        // The node takes Annex B's SID frames (as silence: no comfort-noise generator)
        // but sends plain G.729.
        let _ = write!(s, "a=fmtp:{pt} annexb=no\r\n");
    }
}

/// The node's offer (an outbound call, or a re-offer): every codec it runs in the
/// order asked (static payload types, with rtpmaps as most stacks write them),
/// telephone-event on 101, its address and port; the crypto lines given, on RTP/SAVP
/// when `secure` (SRTP required) or on RTP/AVP (opportunistic).
#[allow(clippy::too_many_arguments)]
pub fn offer(
    ip: IpAddr,
    port: u16,
    session_id: u64,
    version: u64,
    prefer: &[AudioCodec],
    direction: Direction,
    crypto: &[Crypto],
    secure: bool,
) -> String {
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut order: Vec<AudioCodec> = Vec::new();
    for c in prefer.iter().copied().chain(AudioCodec::ALL.iter().copied()) {
        if !order.contains(&c) {
            order.push(c);
        }
    }
    let mut s = String::new();
    let _ = write!(s, "v=0\r\no=- {session_id} {version} IN {family} {ip}\r\ns=media-node\r\nc=IN {family} {ip}\r\nt=0 0\r\n");
    let te = crate::core::session::TELEPHONE_EVENT_PT;
    let opus = order.contains(&AudioCodec::Opus);
    let mut formats: Vec<String> = order.iter().map(|c| c.static_payload_type().to_string()).collect();
    formats.push(te.to_string());
    if opus {
        formats.push(TELEPHONE_EVENT_48K_PT.to_string());
    }
    let profile = if secure { "RTP/SAVP" } else { "RTP/AVP" };
    let _ = write!(s, "m=audio {port} {profile} {}\r\n", formats.join(" "));
    for c in &order {
        write_rtpmap(&mut s, c.static_payload_type(), *c);
    }
    let _ = write!(s, "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-16\r\n");
    if opus {
        let te48 = TELEPHONE_EVENT_48K_PT;
        let _ = write!(s, "a=rtpmap:{te48} telephone-event/48000\r\na=fmtp:{te48} 0-16\r\n");
    }
    let _ = write!(s, "a=ptime:{NODE_PTIME_MS}\r\n");
    for c in crypto {
        s.push_str(&sdes::format(c.tag, &c.key));
        s.push_str("\r\n");
    }
    let _ = write!(s, "a={}\r\n", direction.as_str());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(text: &str) -> SessionDescription {
        SessionDescription::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// Plain offers under the default policy (the SRTP tests give theirs).
    fn negotiate(o: &SessionDescription, prefer: &[&str]) -> Result<Negotiated, NegotiationError> {
        super::negotiate(o, prefer, SrtpPolicy::Optional)
    }

    fn answer(o: &SessionDescription, n: &Negotiated, ip: IpAddr, port: u16, session_id: u64, version: u64) -> String {
        super::answer(o, n, ip, port, session_id, version, None)
    }

    /// A carrier SIP trunk: static types, no rtpmap for them, telephone-event.
    const TRUNK: &str = "v=0\r\no=- 3785529617 3785529617 IN IP4 203.0.113.10\r\ns=SIP Call\r\nc=IN IP4 203.0.113.10\r\nt=0 0\r\nm=audio 18232 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n";
    /// Asterisk: G.722 first, rtpmaps for everything, maxptime.
    const ASTERISK: &str = "v=0\r\no=- 1680177843 1680177843 IN IP4 192.0.2.20\r\ns=Asterisk\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\nm=audio 11850 RTP/AVP 9 8 0 101\r\na=rtpmap:9 G722/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=maxptime:150\r\na=sendrecv\r\n";
    /// FreeSWITCH: session-level c= after o=, many codecs, rtcp attribute.
    const FREESWITCH: &str = "v=0\no=FreeSWITCH 1700000000 1700000001 IN IP4 198.51.100.7\ns=FreeSWITCH\nc=IN IP4 198.51.100.7\nt=0 0\nm=audio 24554 RTP/AVP 102 9 0 8 18 101 13\na=rtpmap:102 opus/48000/2\na=fmtp:102 useinbandfec=1; maxaveragebitrate=30000; maxplaybackrate=48000; ptime=20; minptime=10; maxptime=40\na=rtpmap:9 G722/8000\na=rtpmap:0 PCMU/8000\na=rtpmap:8 PCMA/8000\na=rtpmap:18 G729/8000\na=fmtp:18 annexb=no\na=rtpmap:101 telephone-event/8000\na=fmtp:101 0-16\na=rtpmap:13 CN/8000\na=ptime:20\na=rtcp:24555 IN IP4 198.51.100.7\n";
    /// A WebRTC gateway: Opus only at 48 kHz with telephone-event/48000, video too,
    /// media-level c=, odd spacing.
    const WEBRTC: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 126\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:126 telephone-event/48000\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\n";
    /// An SBC with video refused to us later, PCMA and two telephone-events, LF and
    /// trailing blanks.
    const SBC: &str = "v=0  \no=SBC 1 1 IN IP4 10.0.0.5\ns=-\nt=0 0\nm=audio 40000 RTP/AVP 8 0 96 97\nc=IN IP4 10.0.0.5\na=rtpmap:96 telephone-event/16000\na=rtpmap:97 telephone-event/8000 \na=sendonly\nm=video 40002 RTP/AVP 31\nc=IN IP4 10.0.0.5\n";

    #[test]
    fn vendors_offers_are_answered_by_the_nodes_preference() {
        let n = negotiate(&offer(TRUNK), &["PCMU", "PCMA"]).unwrap();
        assert_eq!((n.payload_type, n.codec.name, n.telephone_event), (0, "PCMU", Some(101)));
        assert_eq!(n.remote, Some("203.0.113.10:18232".parse().unwrap()));
        let n = negotiate(&offer(ASTERISK), &["PCMA"]).unwrap();
        assert_eq!((n.payload_type, n.codec.name), (8, "PCMA"), "the node's order, not the offer's");
        let n = negotiate(&offer(FREESWITCH), &[]).unwrap();
        assert_eq!((n.payload_type, n.codec.name, n.telephone_event), (0, "PCMU", Some(101)));
        // The far end may switch among what it offered that the node runs at 8000.
        use AudioCodec::*;
        assert_eq!(n.receive, [(0, Pcmu), (9, G722), (8, Pcma), (18, G729)]);
        let n = negotiate(&offer(SBC), &["pcmu"]).unwrap();
        assert_eq!((n.payload_type, n.telephone_event), (0, Some(97)), "telephone-event at the codec's clock, not 16000");
        assert_eq!(n.direction, Direction::RecvOnly, "their sendonly is our recvonly");
    }

    #[test]
    fn the_answer_keeps_every_m_line_and_refuses_all_but_the_audio() {
        let o = offer(SBC);
        let n = negotiate(&o, &["PCMA"]).unwrap();
        let a = answer(&o, &n, "192.0.2.99".parse().unwrap(), 31000, 7, 1);
        let back = offer(&a);
        assert_eq!(back.media.len(), 2);
        assert_eq!((back.media[0].port, back.media[1].kind.as_str(), back.media[1].port), (31000, "video", 0));
        assert_eq!(back.connection, Some("192.0.2.99".parse().unwrap()));
        assert_eq!(back.media[0].formats, ["8", "97"]);
        assert_eq!(back.media[0].encoding(97).unwrap().name, "TELEPHONE-EVENT");
        assert_eq!(back.media[0].direction(&back.attributes), Direction::RecvOnly);
        // And the answer, offered back to us, negotiates the same codec.
        let again = negotiate(&back, &["PCMU"]).unwrap();
        assert_eq!((again.payload_type, again.codec.name), (8, "PCMA"));
    }

    #[test]
    fn no_common_codec_names_what_was_offered() {
        let e = negotiate(&offer(&FREESWITCH.replace(" 102 9 0 8 18", " 3")), &[]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("GSM/8000 (3)") && text.contains("TELEPHONE-EVENT/8000 (101)") && text.contains("CN/8000 (13)"), "{text}");
        assert!(text.contains("this node takes PCMU, PCMA, G722"), "{text}");
        assert!(matches!(negotiate(&offer(WEBRTC), &[]), Err(NegotiationError::Profile(_))), "DTLS-SRTP is not SDES");
    }

    #[test]
    fn g722_is_taken_where_preferred_and_the_node_s_offer_round_trips() {
        let n = negotiate(&offer(ASTERISK), &["G722", "PCMU"]).unwrap();
        assert_eq!((n.payload_type, n.codec.name, n.telephone_event), (9, "G722", Some(101)));
        let n = negotiate(&offer(FREESWITCH), &["g722"]).unwrap();
        assert_eq!((n.payload_type, n.codec.audio_codec()), (9, AudioCodec::G722));
        // G.722 without an rtpmap (static type 9) is understood.
        let bare = offer("v=0\r\nc=IN IP4 192.0.2.5\r\nm=audio 5004 RTP/AVP 9 101\r\na=rtpmap:101 telephone-event/8000\r\n");
        assert_eq!(negotiate(&bare, &[]).unwrap().codec.name, "G722");
        // The node's own offer, answered by a far end that takes it as it is.
        let ours = super::offer("192.0.2.9".parse().unwrap(), 30002, 5, 1, &[AudioCodec::G722], Direction::SendRecv, &[], false);
        let parsed = offer(&ours);
        #[cfg(feature = "opus")]
        assert_eq!(parsed.media[0].formats, ["9", "0", "8", "111", "18", "101", "110"]);
        #[cfg(not(feature = "opus"))]
        assert_eq!(parsed.media[0].formats, ["9", "0", "8", "18", "101"]);
        let n = negotiate(&parsed, &["G722"]).unwrap();
        assert_eq!((n.codec.name, n.telephone_event, n.remote), ("G722", Some(101), Some("192.0.2.9:30002".parse().unwrap())));
        let a = answer(&parsed, &n, "192.0.2.1".parse().unwrap(), 4000, 2, 1);
        assert!(a.contains("a=rtpmap:9 G722/8000\r\n") && a.contains("a=ptime:20\r\n"), "{a}");
    }

    /// baresip and FreeSWITCH offer telephone-event/8000 beside opus/48000: taken and
    /// answered at 8000 (its own clock); one at 48000 is preferred where both are.
    #[cfg(feature = "opus")]
    #[test]
    fn telephone_event_at_8000_beside_opus_is_taken_and_answered_at_8000() {
        const BARESIP: &str = "v=0\r\no=- 1 2 IN IP4 198.51.100.20\r\ns=-\r\nc=IN IP4 198.51.100.20\r\nt=0 0\r\nm=audio 10000 RTP/AVP 111 9 0 8 101\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 stereo=1;sprop-stereo=1\r\na=rtpmap:9 G722/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n";
        let o = offer(BARESIP);
        let n = negotiate(&o, &["opus"]).unwrap();
        assert_eq!((n.codec.audio_codec(), n.telephone_event, n.telephone_event_clock), (AudioCodec::Opus, Some(101), 8000));
        let a = answer(&o, &n, "192.0.2.1".parse().unwrap(), 4000, 3, 1);
        assert!(a.contains("m=audio 4000 RTP/AVP 111 101\r\n") && a.contains("a=rtpmap:101 telephone-event/8000\r\n"), "{a}");
        let both =
            BARESIP.replace("111 9 0 8 101", "111 9 0 8 101 126").replace("a=sendrecv", "a=rtpmap:126 telephone-event/48000\r\na=sendrecv");
        let n = negotiate(&offer(&both), &["opus"]).unwrap();
        assert_eq!((n.telephone_event, n.telephone_event_clock), (Some(126), 48000));
        let n = negotiate(&o, &["G722"]).unwrap();
        assert_eq!((n.telephone_event, n.telephone_event_clock), (Some(101), 8000));
    }

    #[cfg(feature = "opus")]
    #[test]
    fn opus_with_its_48k_telephone_event_and_the_answer_s_fmtp() {
        // A WebRTC gateway's offer on plain RTP (an SBC in front terminates DTLS).
        let plain = WEBRTC.replace("UDP/TLS/RTP/SAVPF", "RTP/AVP").replace("c=IN IP4 0.0.0.0", "c=IN IP4 198.51.100.9");
        let n = negotiate(&offer(&plain), &["opus"]).unwrap();
        assert_eq!((n.payload_type, n.codec.audio_codec(), n.telephone_event), (111, AudioCodec::Opus, Some(126)));
        let o = offer(&plain);
        let a = answer(&o, &n, "192.0.2.1".parse().unwrap(), 4000, 3, 1);
        assert!(a.contains("m=audio 4000 RTP/AVP 111 126\r\n") && a.contains("a=rtpmap:111 opus/48000/2\r\n"), "{a}");
        assert!(a.contains("a=fmtp:111 maxplaybackrate=16000;sprop-maxcapturerate=16000;useinbandfec=1\r\n"), "{a}");
        assert!(a.contains("a=rtpmap:126 telephone-event/48000\r\n"), "{a}");
        assert!(a.contains("m=video 0 "), "the video line is refused: {a}");
        // opus/48000 without the /2 some stacks leave out is Opus too; by default
        // the node prefers G.711 when both are offered.
        let loose = offer(&FREESWITCH.replace("opus/48000/2", "opus/48000"));
        let n = negotiate(&loose, &["opus"]).unwrap();
        assert_eq!(n.codec.audio_codec(), AudioCodec::Opus);
        // What FreeSWITCH's fmtp asks of the Opus it receives.
        assert_eq!(n.opus, OpusPrefs { max_playback_rate: 48000, max_average_bitrate: Some(30000), inband_fec: true, cbr: false });
        let n = negotiate(&loose, &[]).unwrap();
        assert_eq!((n.codec.name, n.opus), ("PCMU", OpusPrefs::default()));
    }

    #[test]
    fn g729_with_and_without_annex_b() {
        let n = negotiate(&offer(FREESWITCH), &["G729"]).unwrap();
        assert_eq!((n.payload_type, n.codec.audio_codec()), (18, AudioCodec::G729));
        let o = offer(FREESWITCH);
        let a = answer(&o, &n, "192.0.2.1".parse().unwrap(), 4000, 1, 1);
        assert!(a.contains("a=rtpmap:18 G729/8000\r\na=fmtp:18 annexb=no\r\n"), "{a}");
    }

    #[test]
    fn hold_by_zero_address_and_by_direction() {
        let held = offer(&TRUNK.replace("c=IN IP4 203.0.113.10", "c=IN IP4 0.0.0.0"));
        let n = negotiate(&held, &[]).unwrap();
        assert_eq!((n.remote, n.direction), (None, Direction::RecvOnly));
        let n = negotiate(&offer(&TRUNK.replace("a=sendrecv", "a=inactive")), &[]).unwrap();
        assert_eq!(n.direction, Direction::Inactive);
        assert!(!n.direction.sends());
    }

    #[test]
    fn ptime_is_taken_within_what_the_node_paces() {
        assert_eq!(negotiate(&offer(&TRUNK.replace("ptime:20", "ptime:30")), &[]).unwrap().ptime, 30);
        assert_eq!(negotiate(&offer(&TRUNK.replace("ptime:20", "ptime:5")), &[]).unwrap().ptime, 10);
        assert_eq!(negotiate(&offer(&TRUNK.replace("ptime:20", "ptime:120")), &[]).unwrap().ptime, 60);
        assert_eq!(negotiate(&offer(&TRUNK.replace("a=ptime:20\r\n", "")), &[]).unwrap().ptime, 20);
    }

    #[test]
    fn bad_input_is_an_error_that_says_what_is_wrong() {
        let err = |b: &[u8]| SessionDescription::parse(b).unwrap_err().to_string();
        assert_eq!(err(b""), "SDP is empty");
        assert!(err(&vec![b'a'; 1 << 20]).contains("at most 65536"));
        assert_eq!(err(&[0xff, 0xfe, 0, 1]), "SDP is not UTF-8 text");
        assert_eq!(err(b"o=- 1 1 IN IP4 1.2.3.4\r\nv=0\r\n"), "SDP must start with v=0");
        assert_eq!(err(b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\n"), "SDP has no m= line");
        assert!(err(b"v=0\r\nm=audio 1234 RTP/AVP 0\r\nc=IN IP4 example.com\r\n").contains("not an IP address"));
        assert!(err(b"v=0\r\nm=audio 99999 RTP/AVP 0\r\n").contains("line 2: m= port"));
        assert!(err(b"v=0\r\nm=audio 4000 RTP/AVP\r\n").contains("lists no formats"));
        assert!(err(b"v=0\r\nthis is not sdp\r\n").contains("line 2: not a type=value line"));
        // Truncated in the middle of the audio line's attributes: still parses what is there.
        let cut = &TRUNK[..TRUNK.find("a=fmtp").unwrap() + 4];
        assert!(SessionDescription::parse(cut.as_bytes()).is_ok());
        // Missing c=: parses, but cannot be answered.
        let no_c = offer(&TRUNK.replace("c=IN IP4 203.0.113.10\r\n", ""));
        assert_eq!(negotiate(&no_c, &[]).unwrap_err(), NegotiationError::Sdp(SdpError::NoConnection(5)));
        let video_only = offer("v=0\r\nc=IN IP4 1.2.3.4\r\nm=video 5000 RTP/AVP 96\r\n");
        assert_eq!(negotiate(&video_only, &[]).unwrap_err().to_string(), "the offer has no audio m-line (it offers video port 5000)");
    }

    /// A trunk over TLS: SRTP with three crypto lines, one of them unsupported, and MKI.
    const SRTP_TRUNK: &str = "v=0\r\no=- 1 1 IN IP4 203.0.113.10\r\ns=-\r\nc=IN IP4 203.0.113.10\r\nt=0 0\r\nm=audio 18232 RTP/SAVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj|2^20|1:32\r\na=crypto:2 F8_128_HMAC_SHA1_80 inline:MTIzNDU2Nzg5QUJDREUwMTIzNDU2Nzg5QUJjZGVm\r\na=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^31\r\na=sendrecv\r\n";

    #[test]
    fn srtp_offers_take_the_strongest_line_and_the_answer_carries_the_nodes_key() {
        use crate::core::srtp::Suite;
        let o = offer(SRTP_TRUNK);
        // 1:32 is an MKI of 32 bytes: refused; the 80-bit line wins over the F8 one.
        let n = super::negotiate(&o, &[], SrtpPolicy::Optional).unwrap();
        let c = n.crypto.clone().unwrap();
        assert_eq!((c.tag, c.key.suite, c.key.lifetime), (3, Suite::AesCm128HmacSha1_80, 1 << 31));
        let mine = MasterKey::random(Suite::AesCm128HmacSha1_80);
        let a = super::answer(&o, &n, "192.0.2.1".parse().unwrap(), 4000, 1, 1, Some(&mine));
        assert!(a.contains("m=audio 4000 RTP/SAVP 0 101\r\n"), "{a}");
        let back = offer(&a);
        let theirs = super::negotiate(&back, &[], SrtpPolicy::Required).unwrap().crypto.unwrap();
        assert_eq!((theirs.tag, theirs.key), (3, mine), "one crypto line: the offer's tag, the node's own key");
        assert_eq!(a.matches("a=crypto").count(), 1);
        // GCM where offered beats AES-CM.
        let gcm = SRTP_TRUNK.replace(
            "a=sendrecv",
            "a=crypto:9 AEAD_AES_256_GCM inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKis=\r\na=sendrecv",
        );
        assert_eq!(super::negotiate(&offer(&gcm), &[], SrtpPolicy::Optional).unwrap().crypto.unwrap().tag, 9);
    }

    #[test]
    fn the_srtp_policy_decides_between_plain_and_secure() {
        let savp = offer(SRTP_TRUNK);
        let e = super::negotiate(&savp, &[], SrtpPolicy::Off).unwrap_err();
        assert_eq!(e.to_string(), "the offer asks for SRTP (RTP/SAVP) and SRTP is off for this call");
        let plain = offer(TRUNK);
        assert_eq!(super::negotiate(&plain, &[], SrtpPolicy::Optional).unwrap().crypto, None);
        let e = super::negotiate(&plain, &[], SrtpPolicy::Required).unwrap_err();
        assert!(matches!(e, NegotiationError::PlainRefused(_)), "{e}");
        // Opportunistic SRTP (RFC 8643): crypto on RTP/AVP is taken unless SRTP is off.
        let opportunistic = offer(
            &TRUNK
                .replace("a=sendrecv", "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\na=sendrecv"),
        );
        assert!(super::negotiate(&opportunistic, &[], SrtpPolicy::Optional).unwrap().crypto.is_some());
        assert!(super::negotiate(&opportunistic, &[], SrtpPolicy::Required).unwrap().crypto.is_some());
        assert_eq!(super::negotiate(&opportunistic, &[], SrtpPolicy::Off).unwrap().crypto, None);
        // SRTP whose every line is refused names each reason, never a key.
        let none = SRTP_TRUNK.replace("a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^31\r\n", "");
        let e = super::negotiate(&offer(&none), &[], SrtpPolicy::Optional).unwrap_err().to_string();
        assert!(e.contains("crypto:1 AES_CM_128_HMAC_SHA1_32: bad MKI") && e.contains("crypto:2 suite F8_128_HMAC_SHA1_80"), "{e}");
        assert!(!e.contains("NzB4d1BI") && !e.contains("MTIzNDU2"), "{e}");
    }

    #[test]
    fn the_nodes_srtp_offer_lists_its_keys_and_round_trips() {
        use crate::core::srtp::Suite;
        let crypto: Vec<Crypto> =
            Suite::ALL.iter().enumerate().map(|(i, s)| Crypto { tag: i as u32 + 1, key: MasterKey::random(*s) }).collect();
        let o = super::offer("192.0.2.9".parse().unwrap(), 30002, 5, 1, &[AudioCodec::Pcmu], Direction::SendRecv, &crypto, true);
        assert!(o.contains("m=audio 30002 RTP/SAVP "), "{o}");
        let parsed = offer(&o);
        let n = super::negotiate(&parsed, &[], SrtpPolicy::Required).unwrap();
        assert_eq!(n.crypto.unwrap(), crypto[0], "the strongest: AEAD_AES_256_GCM under tag 1");
        let opportunistic =
            super::offer("192.0.2.9".parse().unwrap(), 30002, 5, 1, &[AudioCodec::Pcmu], Direction::SendRecv, &crypto, false);
        assert!(opportunistic.contains("m=audio 30002 RTP/AVP ") && opportunistic.matches("a=crypto:").count() == 6);
    }
}
