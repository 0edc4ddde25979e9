//! Fuzz targets for every parser that takes input from outside the node: RTP and RTCP
//! datagrams, the jitter buffer and the whole call core fed arbitrary packet
//! sequences, SRTP and SRTCP packets, SDES crypto lines, SDP offers, audio URIs, WAV prompts, TTS chunks and recording destinations. Each
//! target is a `fn(&[u8])` (the shape libFuzzer and cargo-fuzz use) that asserts
//! invariants: no panic, bounded output and memory, a round trip where one exists.
//!
//! They run under plain `cargo test` on the stable toolchain: each first replays its
//! committed corpus (`media-node/fuzz/corpus/<target>/`, one file per input; an input
//! that once found a bug stays there as its regression test), then tries mutations of
//! the corpus (bit flips, byte runs, splices, cuts, random bytes) for
//! `MEDIA_FUZZ_SECONDS` (default 20). The seed is printed and `MEDIA_FUZZ_SEED`
//! replays it; an input that fails is written out to be added to the corpus.
//!
//! This is a mutation fuzzer without coverage feedback: it finds what random and
//! near-valid inputs find, not what needs a long chain of coverage. bolero, the
//! front-end we would have used for libFuzzer, pins `indexmap =2.11.2` in its derive
//! crate and would downgrade the whole workspace's indexmap (h2, tonic, kube) for a
//! test tool; the targets keep libFuzzer's shape so they can move to it later.

#[cfg(test)]
mod driver {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use rand::{Rng, SeedableRng};

    /// Inputs are kept at most this long: memory stays bounded, and every parser here
    /// rejects far less than this long before it matters.
    const MAX_INPUT: usize = 64 * 1024;

    fn corpus_dir(target: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz").join("corpus").join(target)
    }

    pub fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))
            .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
            .unwrap_or_default();
        files.sort();
        files.into_iter().filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b))).collect()
    }

    fn budget() -> Duration {
        Duration::from_secs_f64(std::env::var("MEDIA_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20.0))
    }

    fn mutate(rng: &mut impl Rng, base: &[u8], others: &[(PathBuf, Vec<u8>)]) -> Vec<u8> {
        let mut v = base.to_vec();
        for _ in 0..rng.random_range(1..=8) {
            match rng.random_range(0..8) {
                0 if !v.is_empty() => {
                    let i = rng.random_range(0..v.len());
                    v[i] ^= 1 << rng.random_range(0..8);
                }
                1 if !v.is_empty() => {
                    let i = rng.random_range(0..v.len());
                    v[i] = [0, 0xff, 0x7f, 0x80, b'/', b'.', b'%', b','][rng.random_range(0..8)];
                }
                2 => {
                    let i = rng.random_range(0..=v.len());
                    let n = rng.random_range(1..64);
                    let b: u8 = rng.random();
                    v.splice(i..i, std::iter::repeat_n(b, n));
                }
                3 if !v.is_empty() => {
                    let i = rng.random_range(0..v.len());
                    let n = rng.random_range(1..=(v.len() - i).min(64));
                    v.drain(i..i + n);
                }
                4 => v.truncate(rng.random_range(0..=v.len())),
                5 if !others.is_empty() => {
                    let other = &others[rng.random_range(0..others.len())].1;
                    let i = rng.random_range(0..=v.len());
                    let j = rng.random_range(0..=other.len());
                    v.truncate(i);
                    v.extend_from_slice(&other[j..]);
                }
                6 => {
                    let n = rng.random_range(0..256);
                    v.extend((0..n).map(|_| rng.random::<u8>()));
                }
                _ if v.len() >= 4 => {
                    // An interesting number into a length or rate field.
                    let i = rng.random_range(0..v.len() - 3);
                    let n: u32 = [0, 1, 0x7fff_ffff, 0xffff_ffff, 8000, 16000, 48000, 65535][rng.random_range(0..8)];
                    v[i..i + 4].copy_from_slice(&n.to_le_bytes());
                }
                _ => {}
            }
        }
        v.truncate(MAX_INPUT);
        v
    }

    /// Replays the corpus, then tries mutations until the time budget is spent.
    pub fn fuzz(target: &str, run: impl Fn(&[u8])) {
        let corpus = corpus(target);
        for (path, input) in &corpus {
            if catch_unwind(AssertUnwindSafe(|| run(input))).is_err() {
                panic!("{target}: corpus input {} fails", path.display());
            }
        }
        let seed: u64 = std::env::var("MEDIA_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
        eprintln!("fuzz {target}: {} corpus inputs, MEDIA_FUZZ_SEED={seed}", corpus.len());
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let deadline = Instant::now() + budget();
        let mut tried = 0u64;
        while Instant::now() < deadline {
            let base: &[u8] =
                if corpus.is_empty() || rng.random_range(0..10) == 0 { &[] } else { &corpus[rng.random_range(0..corpus.len())].1 };
            let input = mutate(&mut rng, base, &corpus);
            if catch_unwind(AssertUnwindSafe(|| run(&input))).is_err() {
                let dir = std::env::temp_dir().join("media-fuzz-crashes");
                let _ = std::fs::create_dir_all(&dir);
                let file = dir.join(format!("{target}-{seed}-{tried}"));
                let _ = std::fs::write(&file, &input);
                panic!(
                    "{target}: input {tried} of MEDIA_FUZZ_SEED={seed} fails; written to {} (copy it into {} as a regression input)",
                    file.display(),
                    corpus_dir(target).display()
                );
            }
            tried += 1;
        }
        eprintln!("fuzz {target}: {tried} inputs tried");
    }

    /// Reads structure out of fuzz bytes (zeros once they run out).
    pub struct Bytes<'a>(pub &'a [u8]);

    impl Bytes<'_> {
        pub fn is_empty(&self) -> bool {
            self.0.is_empty()
        }
        pub fn u8(&mut self) -> u8 {
            let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
            self.0 = rest;
            b
        }
        pub fn u16(&mut self) -> u16 {
            u16::from_le_bytes([self.u8(), self.u8()])
        }
        pub fn u32(&mut self) -> u32 {
            u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
        }
        pub fn take(&mut self, n: usize) -> &[u8] {
            let (head, rest) = self.0.split_at(n.min(self.0.len()));
            self.0 = rest;
            head
        }
    }
}

#[cfg(test)]
mod targets {
    use std::net::SocketAddr;
    use std::path::Component;
    use std::time::{Duration, Instant};

    use super::driver::{fuzz, Bytes};
    use crate::audio::decode::{self, MAX_PROMPT_SECONDS};
    use crate::audio::tts::TtsDecoder;
    use crate::audio::uri::{self, AudioUri};
    use crate::core::codec::{AudioCodec, OpusPrefs};
    use crate::core::jitter::{JitterBuffer, JitterConfig, RtpId};
    use crate::core::playback::Sound;
    use crate::core::rtp::{self, Datagram};
    use crate::core::sdp::{self, SessionDescription};
    use crate::core::session::{Command, MediaSettings, Outputs, RtcpTarget, Session, SessionConfig};
    use crate::recording::Destination;
    use media_tools::wav::Header;

    pub fn rtp_datagram(data: &[u8]) {
        match rtp::classify(data) {
            Ok(Datagram::Rtp(p)) => {
                assert!(p.payload.len() + 12 <= data.len(), "the payload lies inside the datagram");
                // What we would send for it parses back to the same header and payload.
                let h = p.header();
                let again = rtp::build(h, p.payload);
                let q = rtp::parse(&again).expect("our own packet parses");
                assert_eq!(
                    (q.marker, q.payload_type, q.sequence, q.timestamp, q.ssrc),
                    (p.marker, p.payload_type, p.sequence, p.timestamp, p.ssrc)
                );
                assert_eq!(q.payload, p.payload);
            }
            Ok(Datagram::Rtcp) => assert!(rtp::is_rtcp(data)),
            Err(_) => {}
        }
    }

    /// Packets as a caller or an attacker might send them: any SSRC, sequence and
    /// timestamp steps, payload lengths and arrival gaps, with ticks between.
    pub fn jitter_buffer(data: &[u8]) {
        let mut b = Bytes(data);
        let t0 = Instant::now();
        let cfg = JitterConfig::default();
        let mut jb = JitterBuffer::new(cfg, t0);
        let mut out = Vec::new();
        let (mut now, mut seq, mut ts) = (t0, 0u16, 0u32);
        let (mut live_end, mut invented) = (None::<u64>, 0u64);
        while !b.is_empty() {
            now += Duration::from_millis(b.u8() as u64);
            let ssrc = (b.u8() % 3) as u32;
            seq = seq.wrapping_add(b.u16());
            ts = ts.wrapping_add(b.u32());
            let len = (b.u16() % 1200) as usize;
            jb.on_packet(now, RtpId { ssrc, seq, ts }, vec![1; len], &mut out);
            jb.on_tick(now, &mut out);
            assert!(jb.buffered_packets() <= cfg.capacity, "the buffer stays bounded");
            for h in out.drain(..) {
                if h.late {
                    continue;
                }
                if let Some(end) = live_end {
                    assert_eq!(h.pos, end, "the live stream has no hole or overlap");
                }
                live_end = Some(h.pos + h.pcm.len() as u64);
                if h.concealed {
                    invented += h.pcm.len() as u64;
                }
            }
        }
        // Silence is only filled in for time that passed: whatever its timestamps
        // claim, a sender cannot make the node invent audio ahead of the clock (for
        // every listener and the recording).
        let elapsed = now.duration_since(t0).as_millis() as u64 * 8;
        assert!(invented <= elapsed + 160, "{invented} samples of silence invented in {elapsed}");
    }

    /// The whole call core: datagrams from one of a few addresses, ticks, barge-ins;
    /// by the input's length, a call that never negotiates (G.711 by payload type, as
    /// the corpus was made for), or one negotiated to G.722 at 30 ms or Opus at 40 ms
    /// that plays a prompt with its 16 kHz copy and takes every codec the node runs (so
    /// wideband packets, their loss rebuilding and multi-frame packets are reached).
    pub fn session(data: &[u8]) {
        let mut b = Bytes(data);
        let t0 = Instant::now();
        let cfg = SessionConfig {
            ssrc: 1,
            initial_sequence: 2,
            initial_timestamp: 3,
            symmetric_rtp: true,
            jitter: JitterConfig::default(),
            analysis: Default::default(),
            telephone_event_pt: crate::core::session::TELEPHONE_EVENT_PT,
            wall_start: std::time::SystemTime::now(),
            stopwatch: Instant::now,
            processing: Default::default(),
        };
        let mut s = Session::new(cfg, t0);
        let mut out = Outputs::default();
        let peers: [SocketAddr; 3] = ["127.0.0.1:4000".parse().unwrap(), "127.0.0.2:4000".parse().unwrap(), "[::1]:4002".parse().unwrap()];
        let mut now = t0;
        let setups = [None, Some((9, AudioCodec::G722, 30)), Some((111, AudioCodec::Opus, 40))];
        let setup = setups[data.len() % setups.len()].filter(|(_, c, _)| AudioCodec::ALL.contains(c));
        let mut wide = None;
        if let Some((pt, codec, ptime)) = setup {
            let receive = vec![(0, AudioCodec::Pcmu), (8, AudioCodec::Pcma), (9, AudioCodec::G722), (18, AudioCodec::G729), (pt, codec)];
            let m = MediaSettings {
                send: (pt, codec),
                opus: OpusPrefs { inband_fec: true, ..Default::default() },
                receive,
                telephone_event_pt: Some(101),
                // telephone-event/8000 beside Opus, as baresip offers it.
                telephone_event_clock: 8000,
                sends: true,
                srtp: None,
                rtcp: RtcpTarget::Separate(None),
                ptime_ms: ptime,
            };
            s.handle_command(Command::SetMedia(m), &mut out);
            s.handle_command(Command::SetTarget(peers[0]), &mut out);
            wide = Some(vec![50i16; 1599].into());
        }
        s.handle_command(Command::Play { id: 1, pcm: Sound { pcm: vec![100i16; 800].into(), wide }, barge_in: None }, &mut out);
        s.handle_command(Command::Stream { pcm: vec![7; 400], wide: vec![9; 799], mark: None }, &mut out);
        while !b.is_empty() {
            now += Duration::from_millis(b.u8() as u64);
            let from = b.u8();
            if from == 255 {
                s.handle_command(Command::Stop, &mut out);
            }
            let len = b.u8() as usize * 2;
            let datagram = b.take(len).to_vec();
            s.handle_datagram(now, peers[from as usize % 3], &datagram, &mut out);
            s.handle_tick(now, &mut out);
            assert!(out.transmit.len() <= 300, "a tick sends at most its catch-up");
            out.clear();
        }
    }

    pub fn audio_uri(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else { return };
        match uri::parse(text) {
            Ok(AudioUri::File(path)) => {
                assert!(!path.as_os_str().is_empty());
                assert!(path.components().all(|c| matches!(c, Component::Normal(_))), "{path:?} stays under the root");
                assert!(!path.to_string_lossy().contains('\0'));
            }
            Ok(AudioUri::Pcm { rate, bytes }) => {
                assert!((4000..=192_000).contains(&rate));
                assert!(bytes.len() <= text.len(), "base64 only shrinks");
                assert_eq!(bytes.len() % 2, 0);
            }
            Ok(AudioUri::Wav(bytes)) => assert!(bytes.len() <= text.len()),
            Ok(AudioUri::Control(_)) => assert!(text.trim().starts_with("control://")),
            Err(e) => assert!(e.to_string().len() < 400, "an error echoes little of the input"),
        }
    }

    /// WAV prompts as they come, and behind a header whose fields come from the input
    /// (lying lengths, 0 channels, absurd rates, 0 or odd bit depths, float): either an
    /// error, or at most the prompt length limit.
    pub fn wav_prompt(data: &[u8]) {
        let _ = decode::wav_to_call_pcm(data);
        let mut b = Bytes(data);
        let channels = b.u16() % 8;
        let rate = b.u32();
        let bits = [8u16, 16, 24, 32, 0, 12, 64][b.u8() as usize % 7];
        let float = b.u8() & 1 == 1;
        let lie = b.u8();
        let payload = b.0;
        let data_len = match lie % 3 {
            0 => payload.len() as u32,
            1 => u32::MAX,
            _ => (payload.len() as u32).wrapping_mul(1000),
        };
        let wav = media_tools::wav::with_header(Header { channels, rate, bits, float, data_len }, payload);
        if let Ok(pcm) = decode::wav_to_call_pcm(&wav) {
            assert!(pcm.len() as u64 <= (MAX_PROMPT_SECONDS + 1) * 8000);
        }
    }

    /// Compressed prompts (FLAC, MP3, Ogg) of any bytes: never a panic, and the budget
    /// holds: no more than the prompt limit of audio comes out, whatever the bytes
    /// claim or decode to.
    pub fn compressed_prompt(data: &[u8]) {
        for rate in [8000, 16000] {
            if let Ok(pcm) = decode::prompt_to_pcm(data, rate) {
                assert!(pcm.len() as u64 <= (MAX_PROMPT_SECONDS + 1) * u64::from(rate), "{} samples at {rate}", pcm.len());
            }
        }
    }

    /// TTS chunks cut anywhere: the audio is the same however the sender cut it.
    pub fn tts_chunks(data: &[u8]) {
        let mut b = Bytes(data);
        let cuts: Vec<usize> = b.take(16).iter().map(|&c| c as usize * 7).collect();
        let audio = b.0;
        let whole = TtsDecoder::new().decode(audio);
        let mut d = TtsDecoder::new();
        let mut pieces = Vec::new();
        let mut rest = audio;
        for c in cuts {
            let (head, tail) = rest.split_at(c.min(rest.len()));
            pieces.extend(d.decode(head));
            rest = tail;
        }
        pieces.extend(d.decode(rest));
        assert_eq!(pieces, whole, "chunking does not change the audio");
        assert!(whole.len() <= audio.len() / 4 + 2, "16 kHz s16le to 8 kHz: a quarter of the bytes in samples");
    }

    pub fn recording_destination(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else { return };
        match Destination::parse(text, None) {
            Ok(Destination::S3 { bucket, prefix }) => {
                assert!((3..=63).contains(&bucket.len()));
                let ok = |seg: &str| !seg.is_empty() && seg != ".." && seg != "." && !seg.contains('\\');
                assert!(prefix.is_empty() || prefix.split('/').all(ok), "{prefix:?}");
            }
            Ok(Destination::File { dir }) => {
                assert!(dir.components().all(|c| matches!(c, Component::Normal(_))), "{dir:?} stays under the recordings root");
            }
            Err(e) => assert!(e.to_string().len() < 400),
        }
    }

    /// SDP offers from anyone who can reach the signalling: parse, negotiate, answer;
    /// an answer the node writes always parses back and negotiates the same codec.
    pub fn sdp_offer(data: &[u8]) {
        use rand::SeedableRng;
        let Ok(offer) = SessionDescription::parse(data) else { return };
        let Ok(agreed) = sdp::negotiate(&offer, &["PCMU", "PCMA"], crate::core::srtp::sdes::SrtpPolicy::Optional) else { return };
        let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(data.len() as u32));
        let local = agreed.crypto.as_ref().map(|c| crate::core::srtp::MasterKey::generate(c.key.suite, &mut rng));
        let text = sdp::answer(&offer, &agreed, "192.0.2.1".parse().unwrap(), 30000, 1, 1, local.as_ref());
        let back = SessionDescription::parse(text.as_bytes()).expect("our answer parses");
        assert_eq!(back.media.len(), offer.media.len(), "one m-line per offered m-line");
        let again = sdp::negotiate(&back, &["PCMU", "PCMA"], crate::core::srtp::sdes::SrtpPolicy::Optional).expect("our answer negotiates");
        assert_eq!((again.payload_type, again.codec), (agreed.payload_type, agreed.codec));
        assert_eq!(again.crypto.map(|c| (c.tag, c.key)), agreed.crypto.map(|c| c.tag).zip(local), "our key, under their tag");
    }

    /// SRTP and SRTCP from anyone who finds the port. A packet is taken only if it is
    /// exactly what the key's holder would have sent: re-protecting what came out gives
    /// the input back. And a genuine packet with any one byte changed is refused.
    pub fn srtp_packet(data: &[u8]) {
        use crate::core::srtp::{Inbound, MasterKey, Outbound, Suite};
        let Some((&mode, rest)) = data.split_first() else { return };
        let suite = Suite::ALL[(mode & 0x7f) as usize % Suite::ALL.len()];
        let key = MasterKey::new(suite, &[0x5a; 64][..suite.key_len() + suite.salt_len()]).expect("key length");
        let mut rx = Inbound::new(key.clone());
        let mut out = Vec::new();
        if mode & 0x80 == 0 {
            if rx.unprotect_rtp(rest, &mut out).is_ok() {
                let mut again = out.clone();
                Outbound::new(key.clone()).protect_rtp(&mut again).expect("protects");
                assert_eq!(again, rest, "an accepted packet is a genuine one");
            }
            assert!(out.len() <= rest.len());
            let _ = rx.unprotect_rtcp(rest, &mut out);
            assert!(out.len() <= rest.len());
            return;
        }
        if rest.len() < 14 {
            return;
        }
        let at = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let mut packet = rest[2..].to_vec();
        // A plain 12-byte header (no CSRC, extension or padding) before the payload.
        packet[0] = 0x80;
        let plain = packet.clone();
        Outbound::new(key.clone()).protect_rtp(&mut packet).expect("protects");
        let mut bad = packet.clone();
        let i = at % bad.len();
        bad[i] ^= rest[1] | 1;
        assert!(Inbound::new(key.clone()).unprotect_rtp(&bad, &mut out).is_err(), "a changed byte {i} is refused");
        rx.unprotect_rtp(&packet, &mut out).expect("the genuine packet is taken");
        assert_eq!(out, plain);
    }

    /// `a=crypto` values from an offer: never a panic, never the key in an error, and a
    /// line that parses writes back to itself.
    /// A datagram on a WebRTC leg's port, as the ICE-lite agent takes it: never a
    /// panic, never an address proven without the password, and every reply parses.
    pub fn stun_check(data: &[u8]) {
        use crate::core::ice::{stun, Checked, Credentials, IceLite};
        let mut ice = IceLite::new(Credentials { ufrag: "node".into(), pwd: "node-password-of-24-chars".into() });
        let from: std::net::SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let mut reply = Vec::new();
        let _ = stun::classify(data);
        match ice.on_stun(Instant::now(), from, data, &mut reply) {
            Checked::Answered { .. } | Checked::Nominated { .. } => {
                // Only a message signed with the password gets here: random bytes never.
                let m = stun::parse(data).expect("what was answered parses");
                m.verify(b"node-password-of-24-chars").expect("and carries our integrity");
                assert!(ice.is_validated(from));
            }
            Checked::Refused(_) | Checked::Ignored => assert!(!ice.is_validated(from)),
        }
        if !reply.is_empty() {
            stun::parse(&reply).expect("our reply parses");
        }
    }

    pub fn sdes_crypto(data: &[u8]) {
        use crate::core::srtp::sdes;
        let Ok(text) = std::str::from_utf8(data) else { return };
        match sdes::parse(text) {
            Ok(c) => {
                let line = sdes::format(c.tag, &c.key);
                assert_eq!(sdes::parse(line.strip_prefix("a=crypto:").expect("prefix")).expect("our line parses"), c);
            }
            Err(e) => {
                let material = text.split("inline:").nth(1).and_then(|m| m.split(['|', ' ', ';']).next()).unwrap_or_default();
                // Only what could be key material counts (the suite's own name may follow a
                // stray `inline:`, and it is quoted on purpose).
                let base64 = material.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
                if base64 && material.len() >= 12 {
                    assert!(!e.to_string().contains(material), "the key is quoted in {e}");
                }
            }
        }
    }

    /// RFC 4733 packets in any order, repeated, lost or forged, with time passing between
    /// them: a digit the agent hears starts once and ends once, an end is always of the
    /// digit that started, and no more than one digit is ever held.
    pub fn telephone_events(data: &[u8]) {
        use crate::core::analysis::telephone_event::{EventReceiver, Received};
        let mut b = Bytes(data);
        let mut rx = EventReceiver::default();
        let mut now = Instant::now();
        let mut out = Vec::new();
        let mut open: Option<(char, u32)> = None;
        let mut ended = std::collections::VecDeque::new();
        while !b.is_empty() {
            let op = b.u8();
            now += Duration::from_millis(u64::from(b.u8()) * 8);
            if op & 1 == 0 {
                // Timestamps from a few values, so the same event comes back often.
                let timestamp = u32::from(op >> 1 & 7) * 160;
                let len = usize::from(b.u8() % 8);
                let payload = b.take(len).to_vec();
                rx.on_packet(now, timestamp, &payload, &mut out);
            } else {
                rx.on_tick(now, &mut out);
            }
            for r in out.drain(..) {
                match r {
                    Received::Started { digit, timestamp } => {
                        assert!(open.is_none(), "{digit} started while {open:?} was held");
                        // Repeated end packets and late updates of a digit that ended are not
                        // the digit again (the receiver remembers the last four).
                        assert!(!ended.contains(&timestamp), "{digit} at {timestamp} ended, then started again");
                        open = Some((digit, timestamp));
                    }
                    Received::Ended { digit, timestamp, .. } => {
                        assert_eq!(open.take(), Some((digit, timestamp)), "an end of the digit that started");
                        ended.push_back(timestamp);
                        if ended.len() > 4 {
                            ended.pop_front();
                        }
                    }
                }
            }
            assert_eq!(rx.is_active(), open.is_some());
        }
    }

    /// Ogg Opus TTS streams from any client: never a panic, and the same audio (or the
    /// same refusal) however the bytes are cut into chunks.
    #[cfg(feature = "opus")]
    pub fn ogg_opus_stream(data: &[u8]) {
        use crate::audio::tts::{StreamDecoder, StreamFormat};
        let Some((&cut, stream)) = data.split_first() else { return };
        let run = |size: usize| {
            let mut d = StreamDecoder::new(StreamFormat::OggOpus, false).expect("built with opus");
            let mut pcm = Vec::new();
            for c in stream.chunks(size) {
                match d.decode(c) {
                    Ok(p) => pcm.extend(p),
                    Err(e) => return (pcm, Some(e.to_string().split_once(": ").map(|(_, why)| why.to_string()))),
                }
            }
            (pcm, None)
        };
        let whole = run(stream.len().max(1));
        let pieces = run(usize::from(cut).max(1));
        // A refusal comes at the chunk that holds the bad page, so only its reason and
        // the audio before it are compared.
        assert_eq!(whole.1.is_some(), pieces.1.is_some(), "refused whole and in pieces alike");
        if whole.1.is_none() {
            assert_eq!(whole.0, pieces.0);
        }
        // The budget: taken a piece at a time, no piece holds more than it asked for and
        // one packet (120 ms at 8 kHz), however little the input weighs.
        let mut d = StreamDecoder::new(StreamFormat::OggOpus, false).expect("built with opus");
        if d.push(stream).is_ok() {
            while let Ok(Some(piece)) = d.next_piece(1600) {
                assert!(piece.len() <= 1600 + 960, "a piece of {} samples", piece.len());
            }
        }
    }

    #[cfg(feature = "opus")]
    #[test]
    fn fuzz_ogg_opus_stream() {
        fuzz("ogg_opus_stream", ogg_opus_stream);
    }

    #[test]
    fn fuzz_telephone_events() {
        fuzz("telephone_events", telephone_events);
    }

    #[test]
    fn fuzz_srtp_packet() {
        fuzz("srtp_packet", srtp_packet);
    }

    #[test]
    fn fuzz_stun_check() {
        fuzz("stun_check", stun_check);
    }

    #[test]
    fn fuzz_sdes_crypto() {
        fuzz("sdes_crypto", sdes_crypto);
    }

    #[test]
    fn fuzz_sdp_offer() {
        fuzz("sdp_offer", sdp_offer);
    }

    #[test]
    fn fuzz_rtp_datagram() {
        fuzz("rtp_datagram", rtp_datagram);
    }

    #[test]
    fn fuzz_jitter_buffer() {
        fuzz("jitter_buffer", jitter_buffer);
    }

    #[test]
    fn fuzz_session() {
        fuzz("session", session);
    }

    #[test]
    fn fuzz_audio_uri() {
        fuzz("audio_uri", audio_uri);
    }

    #[test]
    fn fuzz_wav_prompt() {
        fuzz("wav_prompt", wav_prompt);
    }

    #[test]
    fn fuzz_compressed_prompt() {
        fuzz("compressed_prompt", compressed_prompt);
    }

    #[test]
    fn fuzz_tts_chunks() {
        fuzz("tts_chunks", tts_chunks);
    }

    #[test]
    fn fuzz_recording_destination() {
        fuzz("recording_destination", recording_destination);
    }
}
