//! What a WebRTC offer says of its transport (RFC 8839's ICE attributes, RFC 8842's
//! DTLS ones), read from the parsed SDP: the groundwork of issue 36, not yet used by
//! `negotiation`. Pure; the errors name what is missing so a caller can fix its offer.

use crate::core::sdp::{Media, SessionDescription};

/// `a=setup` (RFC 4145, RFC 8842): who opens the DTLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    Active,
    Passive,
    ActPass,
}

impl Setup {
    fn parse(v: &str) -> Option<Setup> {
        match v.trim().to_ascii_lowercase().as_str() {
            "active" => Some(Setup::Active),
            "passive" => Some(Setup::Passive),
            "actpass" => Some(Setup::ActPass),
            _ => None,
        }
    }

    /// The node's answer: passive to an offer that lets it choose (the browser, a full
    /// ICE agent, opens DTLS once its checks succeed), the other role otherwise.
    pub fn answer(self) -> Setup {
        match self {
            Setup::Active | Setup::ActPass => Setup::Passive,
            Setup::Passive => Setup::Active,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Setup::Active => "active",
            Setup::Passive => "passive",
            Setup::ActPass => "actpass",
        }
    }
}

/// A WebRTC m-line's transport, as offered.
#[derive(Clone, PartialEq, Eq)]
pub struct OfferedTransport {
    pub ufrag: String,
    /// The peer's ICE password (a secret: not in `Debug`).
    pub pwd: String,
    /// `sha-256 AB:CD:...`: the peer's certificate must match it.
    pub fingerprint: String,
    pub setup: Setup,
    /// `a=mid`, for the answer's BUNDLE group.
    pub mid: Option<String>,
}

impl std::fmt::Debug for OfferedTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfferedTransport")
            .field("ufrag", &self.ufrag)
            .field("fingerprint", &self.fingerprint)
            .field("setup", &self.setup)
            .field("mid", &self.mid)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("the WebRTC offer has no a=ice-ufrag and a=ice-pwd (RFC 8839)")]
    NoCredentials,
    #[error("a=ice-ufrag must be 4-256 ICE characters and a=ice-pwd 22-256 (RFC 8839)")]
    BadCredentials,
    #[error("the WebRTC offer has no a=fingerprint with sha-256 (RFC 8122): the node checks the peer's certificate by it")]
    NoFingerprint,
    #[error("a=setup must be active, passive or actpass (RFC 8842)")]
    BadSetup,
    #[error("the WebRTC offer must multiplex RTCP on the RTP port (a=rtcp-mux, RFC 8858): a WebRTC leg has one port")]
    NoRtcpMux,
}

fn ice_chars(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// The transport of `media` in `session` (media-level attributes over session-level).
pub fn offered_transport(session: &SessionDescription, media: &Media) -> Result<OfferedTransport, TransportError> {
    let attr =
        |name: &str| media.attribute(name).or_else(|| session.attributes.iter().find(|a| a.name == name).and_then(|a| a.value.as_deref()));
    let (Some(ufrag), Some(pwd)) = (attr("ice-ufrag"), attr("ice-pwd")) else { return Err(TransportError::NoCredentials) };
    if !(4..=256).contains(&ufrag.len()) || !(22..=256).contains(&pwd.len()) || !ice_chars(ufrag) || !ice_chars(pwd) {
        return Err(TransportError::BadCredentials);
    }
    // Several fingerprints may be offered (RFC 8122 §5): the SHA-256 one is ours.
    let fingerprint = media
        .attributes
        .iter()
        .chain(&session.attributes)
        .filter(|a| a.name == "fingerprint")
        .filter_map(|a| a.value.as_deref())
        .find(|v| {
            let mut p = v.split_whitespace();
            p.next().is_some_and(|h| h.eq_ignore_ascii_case("sha-256"))
                && p.next().is_some_and(|x| x.len() == 95 && x.split(':').all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit())))
        })
        .ok_or(TransportError::NoFingerprint)?;
    let setup = match attr("setup") {
        // RFC 8842 §5.2: an offer without it is actpass.
        None => Setup::ActPass,
        Some(v) => Setup::parse(v).ok_or(TransportError::BadSetup)?,
    };
    if !media.attributes.iter().any(|a| a.name == "rtcp-mux") {
        return Err(TransportError::NoRtcpMux);
    }
    Ok(OfferedTransport {
        ufrag: ufrag.to_string(),
        pwd: pwd.to_string(),
        fingerprint: fingerprint.to_string(),
        setup,
        mid: media.attribute("mid").map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The audio part of an offer as Chrome writes it (abridged: one codec).
    const CHROME: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE 0\r\na=msid-semantic: WMS\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
        a=ice-ufrag:Xu7d\r\na=ice-pwd:Ou3ZJ2dWMxf8ZzMGa2hJ4R0P\r\na=ice-options:trickle\r\n\
        a=fingerprint:sha-256 0F:74:31:25:CB:A2:13:EC:28:6F:6D:2C:61:FF:5D:C2:BC:B9:DB:3D:98:14:8D:1A:BB:EA:33:0C:A4:60:A8:8E\r\n\
        a=setup:actpass\r\na=mid:0\r\na=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=sendrecv\r\na=rtcp-mux\r\n\
        a=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n";

    fn offer(text: &str) -> (SessionDescription, Media) {
        let sdp = SessionDescription::parse(text.as_bytes()).unwrap();
        let m = sdp.media[0].clone();
        (sdp, m)
    }

    #[test]
    fn chromes_offer_gives_its_credentials_fingerprint_and_mid() {
        let (sdp, m) = offer(CHROME);
        let t = offered_transport(&sdp, &m).unwrap();
        assert_eq!(
            (t.ufrag.as_str(), t.pwd.as_str(), t.setup, t.mid.as_deref()),
            ("Xu7d", "Ou3ZJ2dWMxf8ZzMGa2hJ4R0P", Setup::ActPass, Some("0"))
        );
        assert!(t.fingerprint.starts_with("sha-256 0F:74"));
        assert_eq!(t.setup.answer(), Setup::Passive);
        assert!(!format!("{t:?}").contains(&t.pwd), "the password is not printed");
    }

    #[test]
    fn what_a_webrtc_leg_cannot_do_without_is_named() {
        for (change, want) in [
            (("a=ice-pwd:Ou3ZJ2dWMxf8ZzMGa2hJ4R0P\r\n", ""), TransportError::NoCredentials),
            (("a=ice-pwd:Ou3ZJ2dWMxf8ZzMGa2hJ4R0P", "a=ice-pwd:short"), TransportError::BadCredentials),
            (("a=fingerprint:sha-256", "a=fingerprint:sha-1"), TransportError::NoFingerprint),
            (("a=setup:actpass", "a=setup:sometimes"), TransportError::BadSetup),
            (("a=rtcp-mux\r\n", ""), TransportError::NoRtcpMux),
        ] {
            let (sdp, m) = offer(&CHROME.replace(change.0, change.1));
            assert_eq!(offered_transport(&sdp, &m), Err(want.clone()), "{change:?}");
        }
        // Session-level credentials count; no a=setup is actpass; active answers passive.
        let moved = CHROME.replace("a=ice-ufrag:Xu7d\r\n", "").replace("a=msid-semantic: WMS\r\n", "a=ice-ufrag:Xu7d\r\n");
        let (sdp, m) = offer(&moved.replace("a=setup:actpass\r\n", ""));
        let t = offered_transport(&sdp, &m).unwrap();
        assert_eq!((t.ufrag.as_str(), t.setup), ("Xu7d", Setup::ActPass));
        let (sdp, m) = offer(&CHROME.replace("a=setup:actpass", "a=setup:active"));
        assert_eq!(offered_transport(&sdp, &m).unwrap().setup.answer(), Setup::Passive);
        let (sdp, m) = offer(&CHROME.replace("a=setup:actpass", "a=setup:passive"));
        assert_eq!(offered_transport(&sdp, &m).unwrap().setup.answer(), Setup::Active);
    }
}
