//! One call's offer/answer, in one place: the `o=` session id and versions, the
//! call's SDES keys across offers and answers, and what was agreed (codec, direction,
//! where to send, wideband), turned into the session's media settings. Owned by the
//! call's task; the gRPC layer maps a request to a `Request` and the outcome back.

use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

use super::codec::AudioCodec;
use super::sdp::{self, Negotiated, SessionDescription};
use super::session::{MediaSettings, RtcpTarget};
use super::srtp::sdes::{CallSdes, SrtpPolicy};
use super::srtp::{CallKeys, Suite};

/// What the far end sent, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    /// Nothing: the node makes the offer.
    Nothing,
    Offer(String),
    /// The far end's answer to the node's last offer.
    Answer(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub remote: Remote,
    pub policy: SrtpPolicy,
    /// The node's codecs, preferred first.
    pub prefer: Vec<AudioCodec>,
    /// The address the node's SDP gives for its media.
    pub ip: IpAddr,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    /// The node's offer; nothing applies until the far end answers it.
    Offered {
        local_sdp: String,
    },
    Agreed(Box<Agreement>),
}

/// What both sides agreed, and what the call applies from it.
#[derive(Debug, Clone)]
pub struct Agreement {
    /// The node's answer; empty when the far end's SDP was the answer.
    pub local_sdp: String,
    /// For the session, from the next packet.
    pub media: MediaSettings,
    pub negotiated: Negotiated,
    /// The SDES keys, when SRTP was agreed (the response names their suite).
    pub keys: Option<CallKeys>,
    /// Prompts and TTS are worth making at 16 kHz: the codec is wideband and the far
    /// end plays it so (not an Opus far end that said maxplaybackrate=8000).
    pub wideband: bool,
}

impl Agreement {
    pub fn codec(&self) -> AudioCodec {
        self.negotiated.codec.audio_codec()
    }

    /// Where the far end's media goes, when its SDP said (None on hold by 0.0.0.0).
    pub fn remote(&self) -> Option<SocketAddr> {
        self.negotiated.remote
    }
}

/// Why a request was refused (the caller's SDP or its use; INVALID_ARGUMENT).
#[derive(Debug, Error)]
pub enum Refused {
    #[error("remote_sdp is empty: an answer needs the far end's SDP")]
    EmptyAnswer,
    #[error(transparent)]
    Sdp(#[from] sdp::SdpError),
    #[error(transparent)]
    Negotiation(#[from] sdp::NegotiationError),
    #[error("the answer's crypto:{tag} {suite} names no crypto line of the node's offer")]
    UnknownCrypto { tag: u32, suite: Suite },
}

#[derive(Debug)]
pub struct Negotiation {
    port: u16,
    session_id: u64,
    /// The version of the node's last SDP (RFC 3264 §8: each new one is higher).
    version: u64,
    sdes: CallSdes,
}

impl Negotiation {
    /// The `o=` session id names the call: the same in every SDP the node writes for
    /// it, distinct between calls.
    pub fn new(call_id: &str, port: u16) -> Negotiation {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (call_id, port).hash(&mut h);
        // sess-id is a decimal number; kept within 63 bits as most stacks expect.
        Negotiation { port, session_id: h.finish() >> 1, version: 0, sdes: CallSdes::default() }
    }

    /// Answers the far end's offer, takes its answer, or makes the node's offer. New
    /// keys of the node's come from `rng`.
    pub fn negotiate<R: rand::CryptoRng + ?Sized>(&mut self, r: Request, rng: &mut R) -> Result<Outcome, Refused> {
        self.version += 1;
        let (text, is_answer) = match &r.remote {
            Remote::Nothing => return Ok(Outcome::Offered { local_sdp: self.offer(&r, rng) }),
            Remote::Offer(t) if t.is_empty() => return Ok(Outcome::Offered { local_sdp: self.offer(&r, rng) }),
            Remote::Answer(t) if t.is_empty() => return Err(Refused::EmptyAnswer),
            Remote::Offer(t) => (t, false),
            Remote::Answer(t) => (t, true),
        };
        let remote = SessionDescription::parse(text.as_bytes())?;
        let names: Vec<&str> = r.prefer.iter().map(|c| c.name()).collect();
        let agreed = sdp::negotiate(&remote, &names, r.policy)?;
        let keys = match (&agreed.crypto, is_answer) {
            (None, _) => {
                self.sdes.plain();
                None
            }
            (Some(theirs), true) => {
                let refused = || Refused::UnknownCrypto { tag: theirs.tag, suite: theirs.key.suite };
                Some(self.sdes.answered(theirs).ok_or_else(refused)?)
            }
            (Some(theirs), false) => Some(self.sdes.answer(theirs, rng)),
        };
        let codec = agreed.codec.audio_codec();
        let media = MediaSettings {
            send: (agreed.payload_type, codec),
            opus: agreed.opus,
            receive: agreed.receive.clone(),
            telephone_event_pt: agreed.telephone_event,
            telephone_event_clock: agreed.telephone_event_clock,
            sends: agreed.direction.sends(),
            srtp: keys.clone(),
            rtcp: if agreed.rtcp_mux { RtcpTarget::Muxed } else { RtcpTarget::Separate(agreed.rtcp_remote) },
            ptime_ms: agreed.ptime,
        };
        let local_sdp = if is_answer {
            String::new()
        } else {
            let local = keys.as_ref().map(|k| &k.local);
            sdp::answer(&remote, &agreed, r.ip, self.port, self.session_id, self.version, local)
        };
        let wideband = codec.is_wideband() && agreed.opus.max_playback_rate > 8000;
        Ok(Outcome::Agreed(Box::new(Agreement { local_sdp, media, negotiated: agreed, keys, wideband })))
    }

    /// The node's offer: its codecs, and SDES lines unless SRTP is off (RTP/SAVP when
    /// it is required).
    fn offer<R: rand::CryptoRng + ?Sized>(&mut self, r: &Request, rng: &mut R) -> String {
        let crypto = if r.policy == SrtpPolicy::Off { Vec::new() } else { self.sdes.offer(rng) };
        let secure = r.policy == SrtpPolicy::Required;
        sdp::offer(r.ip, self.port, self.session_id, self.version, &r.prefer, sdp::Direction::SendRecv, &crypto, secure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn request(remote: Remote, policy: SrtpPolicy) -> Request {
        Request { remote, policy, prefer: vec![AudioCodec::G722, AudioCodec::Pcmu], ip: "192.0.2.10".parse().unwrap() }
    }

    fn offer(proto: &str, extra: &str) -> String {
        format!(
            "v=0\r\no=far 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 40000 {proto} 0 9 101\r\na=rtpmap:101 telephone-event/8000\r\n{extra}a=sendrecv\r\n"
        )
    }

    fn origin(sdp: &str) -> (String, u64) {
        let o: Vec<&str> = sdp.lines().find(|l| l.starts_with("o=")).unwrap().split_whitespace().collect();
        (o[1].to_string(), o[2].parse().unwrap())
    }

    fn agreed(o: Outcome) -> Agreement {
        match o {
            Outcome::Agreed(a) => *a,
            Outcome::Offered { .. } => panic!("an offer, not an agreement"),
        }
    }

    #[test]
    fn an_answer_keeps_the_session_id_raises_the_version_and_sets_the_media() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut n = Negotiation::new("call-1", 30000);
        let first = agreed(n.negotiate(request(Remote::Offer(offer("RTP/AVP", "")), SrtpPolicy::Optional), &mut rng).unwrap());
        let again =
            agreed(n.negotiate(request(Remote::Offer(offer("RTP/AVP", "a=ptime:40\r\n")), SrtpPolicy::Optional), &mut rng).unwrap());
        let (id1, v1) = origin(&first.local_sdp);
        let (id2, v2) = origin(&again.local_sdp);
        assert_eq!(id1, id2, "one session id for the call");
        assert!(v2 > v1);
        assert_ne!(
            origin(
                &agreed(
                    Negotiation::new("call-2", 30000)
                        .negotiate(request(Remote::Offer(offer("RTP/AVP", "")), SrtpPolicy::Optional), &mut rng)
                        .unwrap()
                )
                .local_sdp
            )
            .0,
            id1
        );
        assert_eq!(first.media.send, (9, AudioCodec::G722));
        assert!(first.wideband && first.keys.is_none() && first.media.srtp.is_none());
        assert_eq!(first.media.telephone_event_pt, Some(101));
        assert_eq!(first.remote(), Some("198.51.100.7:40000".parse().unwrap()));
        assert_eq!(again.media.ptime_ms, 40);
    }

    #[test]
    fn sdes_keys_live_on_through_a_re_offer_and_an_answer_must_name_the_nodes_line() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut n = Negotiation::new("call-1", 30000);
        let key = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";
        let first = agreed(n.negotiate(request(Remote::Offer(offer("RTP/SAVP", key)), SrtpPolicy::Optional), &mut rng).unwrap());
        let again = agreed(n.negotiate(request(Remote::Offer(offer("RTP/SAVP", key)), SrtpPolicy::Optional), &mut rng).unwrap());
        let (k1, k2) = (first.keys.unwrap(), again.keys.unwrap());
        assert_eq!(k1.local, k2.local, "the node's key goes on");
        assert_eq!(first.media.srtp.as_ref().map(|k| &k.remote), Some(&k1.remote));
        // The node offers; an answer with a tag it never offered is refused.
        let Outcome::Offered { local_sdp } = n.negotiate(request(Remote::Nothing, SrtpPolicy::Required), &mut rng).unwrap() else {
            panic!("an offer")
        };
        assert!(local_sdp.contains("RTP/SAVP") && local_sdp.contains("a=crypto:1 "));
        let bad = offer("RTP/SAVP", "a=crypto:9 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n");
        let e = n.negotiate(request(Remote::Answer(bad), SrtpPolicy::Required), &mut rng).unwrap_err();
        assert!(matches!(e, Refused::UnknownCrypto { tag: 9, .. }), "{e}");
        assert!(!e.to_string().contains("WVNf"), "no key in the error: {e}");
    }

    #[test]
    fn empty_answers_plain_offers_under_required_and_junk_are_refused() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut n = Negotiation::new("call-1", 30000);
        assert!(matches!(n.negotiate(request(Remote::Answer(String::new()), SrtpPolicy::Optional), &mut rng), Err(Refused::EmptyAnswer)));
        assert!(matches!(
            n.negotiate(request(Remote::Offer(offer("RTP/AVP", "")), SrtpPolicy::Required), &mut rng),
            Err(Refused::Negotiation(_))
        ));
        assert!(matches!(n.negotiate(request(Remote::Offer("hello".into()), SrtpPolicy::Optional), &mut rng), Err(Refused::Sdp(_))));
        // An empty offer field is the node's own offer, as before.
        assert!(matches!(n.negotiate(request(Remote::Offer(String::new()), SrtpPolicy::Off), &mut rng), Ok(Outcome::Offered { .. })));
    }
}
