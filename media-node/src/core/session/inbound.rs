//! The caller's audio on its way in: which codec a payload type is, decoding (and
//! Opus's loss rebuilding), the 16 kHz copy of a wideband caller, the jitter buffer,
//! interarrival jitter, and the analysis taps (VAD, DTMF, telephone-events) on what
//! the jitter buffer releases.

use std::time::Instant;

use super::io::Counters;
use crate::core::analysis::{AnalysisConfig, Analyzer, Signal};
use crate::core::codec::{self, AudioCodec, ByCodec, Decoder};
use crate::core::interarrival::Interarrival;
use crate::core::jitter::{Heard, JitterBuffer, JitterConfig, JitterStats, RtpId};
use crate::core::rtp::RtpPacket;
use crate::core::voice_processing::{ProcessingConfig, VoiceProcessing};

/// The longest run of lost packets the decoder rebuilds (FEC and concealment); a
/// longer one is a dropout, left to the jitter buffer's silence (libopus's concealment
/// has faded out long before: measured, near silence by its second 20 ms frame).
pub(super) const MAX_REBUILT_PACKETS: u16 = 5;

/// A clock read only to measure time spent in codecs, for a metric: handed in, so the
/// core reads none of its own (the call task hands in the monotonic clock).
pub type Stopwatch = fn() -> Instant;

#[derive(Debug, Clone, Copy)]
struct LastIn {
    ssrc: u32,
    seq: u16,
    /// Its RTP timestamp, and the same on the call's 8 kHz.
    ts: u32,
    ts8: u32,
    samples: u32,
}

/// What inbound counted since the last `take_counters` (the jitter buffer's and the
/// analysis's own totals are turned into deltas against what was reported).
#[derive(Debug, Default)]
struct Counts {
    packets_in: u64,
    bytes_in: u64,
    unsupported_payload: u64,
    decode_errors: ByCodec<u64>,
    decode_nanos: ByCodec<u64>,
    fec_recovered: u64,
    plc_concealed: u64,
    reported_jitter: JitterStats,
    reported_events: (u64, u64),
}

pub(super) struct Inbound {
    /// The negotiated payload types; None: the static G.711 ones.
    receive: Option<Vec<(u8, AudioCodec)>>,
    /// The caller's codec now (its payload type and decoder).
    decoder: Option<(u8, Decoder)>,
    /// The caller's last audio packet (for timestamp scaling and Opus FEC).
    last_in: Option<LastIn>,
    jitter: JitterBuffer,
    interarrival: Interarrival,
    analyzer: Analyzer,
    /// What the analysis found, on its way to the session's events.
    pub(super) signals: Vec<Signal>,
    /// The end of the caller's audio analysed so far (timeline position).
    heard_end: u64,
    /// Set while the caller's audio is echoed back: its decoded audio in arrival order.
    echoed: Option<Vec<i16>>,
    /// Echo cancellation and noise suppression, when the call has either on.
    processing: Option<VoiceProcessing>,
    processing_nanos: u64,
    stopwatch: Stopwatch,
    counts: Counts,
}

impl Inbound {
    pub(super) fn new(jitter: JitterConfig, analysis: AnalysisConfig, start: Instant, stopwatch: Stopwatch) -> Inbound {
        Inbound {
            receive: None,
            decoder: None,
            last_in: None,
            jitter: JitterBuffer::new(jitter, start),
            interarrival: Interarrival::default(),
            analyzer: Analyzer::new(analysis),
            signals: Vec::new(),
            heard_end: 0,
            echoed: None,
            processing: None,
            processing_nanos: 0,
            stopwatch,
            counts: Counts::default(),
        }
    }

    /// Echo cancellation and noise suppression on or off; a change starts them afresh.
    pub(super) fn set_processing(&mut self, cfg: ProcessingConfig) {
        if self.processing.as_ref().map(|p| p.config()) != Some(cfg) {
            let wideband = self.decoder.as_ref().is_some_and(|(_, d)| d.is_wideband());
            self.processing = VoiceProcessing::new(cfg, wideband);
            self.analyzer.set_as_sent_detector(cfg.echo_cancellation);
        }
    }

    pub(super) fn processing(&self) -> ProcessingConfig {
        self.processing.as_ref().map(|p| p.config()).unwrap_or_default()
    }

    /// Echo of the node's audio still in the caller's processed audio.
    pub(super) fn residual_echo(&self) -> bool {
        self.processing.as_ref().is_some_and(|p| p.residual_echo())
    }

    /// A frame of the call's clock went out at `pos`, with this audio (None: none).
    pub(super) fn on_frame(&mut self, pos: u64, sent: Option<(&[i16], &[i16])>) {
        if let Some(p) = &mut self.processing {
            p.on_frame(pos, sent);
        }
    }

    /// Echo cancellation and noise suppression of what the jitter buffer released
    /// live (late audio is the recording's alone, and stays as sent).
    pub(super) fn process(&mut self, heard: &mut [Heard]) {
        let Some(p) = &mut self.processing else { return };
        let began = (self.stopwatch)();
        for h in heard.iter_mut().filter(|h| !h.late) {
            h.as_sent = Some(Box::new(p.process(h)));
        }
        self.processing_nanos += (self.stopwatch)().saturating_duration_since(began).as_nanos() as u64;
    }

    /// What offer/answer agreed the caller sends, and the clock of the call's
    /// telephone-events. A re-offer may give the payload type the caller sends another
    /// codec: its decoder starts again then.
    pub(super) fn set_media(&mut self, receive: Vec<(u8, AudioCodec)>, event_clock: u32) {
        self.analyzer.set_event_clock(event_clock);
        if let Some((pt, d)) = &self.decoder {
            if receive.iter().find(|(p, _)| p == pt).map(|(_, c)| *c) != Some(d.codec) {
                self.decoder = None;
            }
        }
        self.receive = Some(receive);
    }

    /// Echo mode on (the caller's audio is handed back to be played) or off.
    pub(super) fn set_echo(&mut self, on: bool) {
        self.echoed = on.then(Vec::new);
    }

    /// The caller's audio decoded since the last call, for echo mode (empty when off).
    pub(super) fn take_echoed(&mut self) -> Option<&mut Vec<i16>> {
        self.echoed.as_mut().filter(|e| !e.is_empty())
    }

    /// The codec the caller sends in, once it has sent any.
    pub(super) fn codec(&self) -> Option<AudioCodec> {
        self.decoder.as_ref().map(|(_, d)| d.codec)
    }

    pub(super) fn heard_end(&self) -> u64 {
        self.heard_end
    }

    pub(super) fn speech_onset(&mut self) -> Option<u64> {
        self.analyzer.speech_onset()
    }

    /// RFC 3550 interarrival jitter of the caller's RTP so far, in seconds.
    pub(super) fn interarrival_seconds(&self) -> f64 {
        self.interarrival.seconds()
    }

    pub(super) fn interarrival_jitter(&self) -> Option<f64> {
        self.interarrival.has_data().then(|| self.interarrival.seconds())
    }

    /// An RFC 4733 telephone-event packet (`len`: the datagram's size).
    pub(super) fn on_telephone_event(&mut self, now: Instant, packet: &RtpPacket<'_>, len: usize) {
        self.counts.packets_in += 1;
        self.counts.bytes_in += len as u64;
        let pos = self.jitter.position();
        self.analyzer.on_rtp(now, pos, &mut self.signals);
        self.analyzer.on_telephone_event(now, pos, packet.timestamp, packet.payload, &mut self.signals);
    }

    /// An audio packet from the far end (`len`: the datagram's size): decoded (lost
    /// packets before it rebuilt where the codec can), into the jitter buffer, which
    /// releases what is due into `heard`. Returns the caller's codec when it changed
    /// on a call that negotiated nothing (the node answers in it).
    pub(super) fn on_audio(
        &mut self,
        now: Instant,
        packet: &RtpPacket<'_>,
        len: usize,
        heard: &mut Vec<Heard>,
    ) -> Option<(u8, AudioCodec)> {
        let pt = packet.payload_type;
        let codec = match &self.receive {
            Some(map) => map.iter().find(|(p, _)| *p == pt).map(|(_, c)| *c),
            // Never negotiated: G.711 only, as before SDP came (PT 9 or 18 from a caller
            // that negotiated nothing is counted, not decoded).
            None => AudioCodec::from_static_payload_type(pt).filter(|c| matches!(c, AudioCodec::Pcmu | AudioCodec::Pcma)),
        };
        let Some(codec) = codec else {
            // Comfort noise, a codec nobody negotiated: counted, not played.
            self.counts.unsupported_payload += 1;
            return None;
        };
        self.counts.packets_in += 1;
        self.counts.bytes_in += len as u64;
        self.analyzer.on_rtp(now, self.jitter.position(), &mut self.signals);
        let mut switched = None;
        if self.decoder.as_ref().map(|(p, _)| *p) != Some(pt) {
            self.decoder = Some((pt, Decoder::new(codec)));
            if self.receive.is_none() {
                switched = Some((pt, codec));
            }
        }
        self.decode(now, packet, codec, heard);
        switched
    }

    fn decode(&mut self, now: Instant, packet: &RtpPacket<'_>, codec: AudioCodec, heard: &mut Vec<Heard>) {
        if packet.payload.is_empty() {
            // No codec's packet is empty (an Opus decoder would conceal for it, and
            // rebuild the packets before it from nothing): refused like bad framing.
            *self.counts.decode_errors.get_mut(codec) += 1;
            return;
        }
        let Some((_, decoder)) = self.decoder.as_mut() else { return };
        // A wideband codec's 16 kHz audio rides beside the 8 kHz timeline copy.
        let wideband = decoder.is_wideband();
        // The jitter buffer, the interarrival jitter and the timeline count 8 kHz; an
        // Opus stream's 48 kHz timestamps are scaled by their difference from the last
        // packet's (so its wrap-around needs no care).
        let ratio = codec.clock_ratio();
        let ts = match self.last_in {
            Some(l) if ratio > 1 && l.ssrc == packet.ssrc => {
                l.ts8.wrapping_add((packet.timestamp.wrapping_sub(l.ts) as i32 / ratio as i32) as u32)
            }
            _ => packet.timestamp / ratio,
        };
        // Packets lost just before this one: Opus rebuilds them before this one is
        // decoded, in the decoder's own order (libopus needs it so): the last from the
        // in-band FEC copy this packet carries, any before it by the decoder's
        // concealment. They reach the jitter buffer before it gives up on them.
        let mut rebuilt = Vec::new();
        if let Some(l) = self.last_in.filter(|l| l.ssrc == packet.ssrc) {
            let lost = packet.sequence.wrapping_sub(l.seq).wrapping_sub(1);
            let missing = ts.wrapping_sub(l.ts8).wrapping_sub(l.samples);
            if (1..=MAX_REBUILT_PACKETS).contains(&lost) && (1..=u32::from(lost) * codec::MAX_PACKET_SAMPLES).contains(&missing) {
                let began = (self.stopwatch)();
                let each = missing / u32::from(lost);
                for k in 0..u32::from(lost) {
                    // The last lost packet takes what the even split left over.
                    let n = if k + 1 == u32::from(lost) { missing - each * k } else { each };
                    let (mut pcm, mut wide) = (Vec::with_capacity(n as usize), Vec::new());
                    let fec = k + 1 == u32::from(lost);
                    let done = if fec {
                        decoder.recover(packet.payload, n as usize, &mut pcm, wideband.then_some(&mut wide))
                    } else {
                        decoder.conceal(n as usize, &mut pcm, wideband.then_some(&mut wide))
                    };
                    match done {
                        Some(true) => {
                            if fec {
                                self.counts.fec_recovered += 1;
                            } else {
                                self.counts.plc_concealed += 1;
                            }
                            let id = RtpId {
                                ssrc: packet.ssrc,
                                seq: l.seq.wrapping_add(1 + k as u16),
                                ts: l.ts8.wrapping_add(l.samples + each * k),
                            };
                            rebuilt.push((id, pcm, wide));
                        }
                        // A codec with neither (the jitter buffer's silence stands in).
                        None => break,
                        Some(false) => {}
                    }
                }
                *self.counts.decode_nanos.get_mut(codec) += (self.stopwatch)().saturating_duration_since(began).as_nanos() as u64;
            }
        }
        // The jitter buffer keeps the decoded audio, so it is decoded into its own Vec.
        let mut pcm = Vec::with_capacity(packet.payload.len() * 2);
        let mut wide = Vec::new();
        let began = (self.stopwatch)();
        let decoded = decoder.decode_wide(packet.payload, &mut pcm, wideband.then_some(&mut wide));
        *self.counts.decode_nanos.get_mut(codec) += (self.stopwatch)().saturating_duration_since(began).as_nanos() as u64;
        if !decoded {
            // A payload the codec refuses: dropped and counted, never played.
            *self.counts.decode_errors.get_mut(codec) += 1;
            return;
        }
        for (id, lost, lost_wide) in rebuilt {
            self.jitter.on_wide_packet(now, id, lost, lost_wide, heard);
        }
        self.last_in = Some(LastIn { ssrc: packet.ssrc, seq: packet.sequence, ts: packet.timestamp, ts8: ts, samples: pcm.len() as u32 });
        if let Some(e) = &mut self.echoed {
            e.extend_from_slice(&pcm);
        }
        self.interarrival.on_packet(now, packet.ssrc, ts);
        self.jitter.on_wide_packet(now, RtpId { ssrc: packet.ssrc, seq: packet.sequence, ts }, pcm, wide, heard);
    }

    /// A tick: the jitter buffer releases what is due (or silence for what is lost)
    /// into `heard`, and the analysis learns the time.
    pub(super) fn on_tick(&mut self, now: Instant, heard: &mut Vec<Heard>) {
        self.jitter.on_tick(now, heard);
        self.analyzer.on_tick(now, self.jitter.position(), &mut self.signals);
    }

    /// The analysis over one piece of the caller's audio the jitter buffer released.
    pub(super) fn analyse(&mut self, h: &Heard) {
        let as_sent = h.as_sent.as_ref().map_or(&h.pcm[..], |a| &a.pcm[..]);
        // A canceller still converging leaves echo the detector would take for speech.
        let pcm = if self.processing.as_ref().is_some_and(|p| p.converged()) { &h.pcm[..] } else { as_sent };
        self.analyzer.on_heard_processed(h.pos, pcm, as_sent, &mut self.signals);
        self.heard_end = self.heard_end.max(h.pos + h.pcm.len() as u64);
    }

    /// The node's own audio as it went out, for the echo guard.
    pub(super) fn on_played(&mut self, pos: u64, pcm: &[i16]) {
        self.analyzer.on_played(pos, pcm);
    }

    pub(super) fn take_counters(&mut self, c: &mut Counters) {
        c.barge_in_echo = self.analyzer.take_echo_held();
        if let Some(p) = &mut self.processing {
            c.processing = p.take_stats();
        }
        c.processing_nanos = std::mem::take(&mut self.processing_nanos);
        let k = &mut self.counts;
        c.packets_in = std::mem::take(&mut k.packets_in);
        c.bytes_in = std::mem::take(&mut k.bytes_in);
        c.unsupported_payload = std::mem::take(&mut k.unsupported_payload);
        c.decode_errors = std::mem::take(&mut k.decode_errors);
        for (both, decode) in c.codec_nanos.0.iter_mut().zip(std::mem::take(&mut k.decode_nanos).0) {
            both.1 = decode;
        }
        c.fec_recovered = std::mem::take(&mut k.fec_recovered);
        c.plc_concealed = std::mem::take(&mut k.plc_concealed);
        let (j, r) = (self.jitter.stats, k.reported_jitter);
        c.late = (j.late + j.duplicate) - (r.late + r.duplicate);
        c.lost_samples = j.lost_samples - r.lost_samples;
        c.recovered_samples = j.recovered_samples - r.recovered_samples;
        c.discontinuities = j.discontinuities - r.discontinuities;
        k.reported_jitter = j;
        let (dup, ignored) = self.analyzer.event_counts();
        c.telephone_event_duplicates = dup - k.reported_events.0;
        c.telephone_event_ignored = ignored - k.reported_events.1;
        k.reported_events = (dup, ignored);
    }
}

/// The part through the whole session, as the call task drives it.
#[cfg(test)]
mod session_tests {
    use super::super::tests::*;
    use super::super::*;
    use super::MAX_REBUILT_PACKETS;
    use crate::core::codec::{Decoder, Encoder, OpusPrefs};
    use crate::core::jitter::Heard;
    use crate::core::rtp::{self, RtpHeader};
    use std::time::Instant;

    /// Opus loss in the decoder's order: a lost packet is rebuilt from the next one's
    /// FEC copy, a run of two or three by concealment then FEC, before the packet after
    /// them is decoded; a run longer than MAX_REBUILT_PACKETS is left to silence.
    #[cfg(feature = "opus")]
    #[test]
    fn lost_opus_packets_are_rebuilt_in_the_decoders_order() {
        let (speech, onset) = speech();
        let speech = &speech[onset..];
        let frames: Vec<&[i16]> = speech.chunks_exact(FRAME_SAMPLES).take(100).collect();
        // As a far end that takes FEC asks (useinbandfec=1): the packets carry it.
        let mut enc = Encoder::with_prefs(AudioCodec::Opus, OpusPrefs { inband_fec: true, ..Default::default() });
        let packets: Vec<Vec<u8>> = frames
            .iter()
            .map(|f| {
                let mut p = Vec::new();
                enc.encode(f, &mut p);
                p
            })
            .collect();
        // What the same packets decode to with nothing lost.
        let mut dec = Decoder::new(AudioCodec::Opus);
        let mut clean = Vec::new();
        packets.iter().for_each(|p| assert!(dec.decode(p, &mut clean)));
        let lost = |k: usize| k == 20 || k == 40 || k == 41 || (60..=62).contains(&k) || (80..=87).contains(&k);
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        let mut m = media((111, AudioCodec::Opus), Some(101), true);
        m.receive = vec![(111, AudioCodec::Opus)];
        s.handle_command(Command::SetMedia(m), &mut out);
        let mut heard = Vec::new();
        for (k, p) in packets.iter().enumerate() {
            let now = t0 + MS20 * k as u32;
            if !lost(k) {
                let ts = 1000 + k as u32 * 960;
                let data = rtp::build(RtpHeader { marker: false, payload_type: 111, sequence: k as u16, timestamp: ts, ssrc: 7 }, p);
                s.handle_datagram(now, caller(), &data, &mut out);
            }
            s.handle_tick(now, &mut out);
            heard.append(&mut out.heard);
        }
        s.handle_tick(t0 + MS20 * 110, &mut out);
        heard.append(&mut out.heard);
        let c = s.take_counters();
        assert_eq!((c.fec_recovered, c.plc_concealed), (3, 3), "FEC for the last of each run, concealment before it");
        let live: Vec<&Heard> = heard.iter().filter(|h| !h.late).collect();
        let at = |k: usize| live.iter().find(|h| h.pos == k as u64 * 160).unwrap_or_else(|| panic!("frame {k} on the timeline"));
        let loud = |pcm: &[i16]| pcm.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / pcm.len() as f64;
        // Against the clean decode of the same frame (the codec's delay included).
        for k in [20, 40, 41, 60, 62] {
            let h = at(k);
            assert!(!h.concealed && h.wide.len() == 320, "frame {k} was rebuilt in time, wideband");
            assert!(loud(&h.pcm) > 1e-3 * loud(&clean[k * 160..k * 160 + 160]), "frame {k} is not silence");
        }
        // The second concealed frame of a run is the decoder's too, though libopus has
        // faded it out by then (measured: near silence by its second 20 ms).
        assert!(!at(61).concealed);
        assert!((80..=87).all(|k| at(k).concealed), "a long dropout is silence");
        // The caller's audio is exactly what libopus gives when used as its API asks:
        // for a run of lost packets, concealment for all but the last, FEC from the
        // next packet for the last, then that packet. (Decoding the next packet first
        // and its FEC copy after, as the node did, leaves another decoder state.)
        let mut dec = Decoder::new(AudioCodec::Opus);
        let mut want = Vec::new();
        let mut last = None;
        for (k, p) in packets.iter().enumerate().filter(|(k, _)| !lost(*k)) {
            let gap = last.map_or(0, |l| k - l - 1);
            if (1..=MAX_REBUILT_PACKETS as usize).contains(&gap) {
                (1..gap).for_each(|_| assert_eq!(dec.conceal(160, &mut want, None), Some(true)));
                assert_eq!(dec.recover(p, 160, &mut want, None), Some(true));
            } else {
                want.resize(want.len() + 160 * gap, 0);
            }
            assert!(dec.decode(p, &mut want));
            last = Some(k);
        }
        let live_pcm: Vec<i16> = live.iter().flat_map(|h| h.pcm.iter().copied()).collect();
        assert_eq!(live.first().map(|h| h.pos), Some(0));
        let differs = live_pcm.iter().zip(&want).position(|(a, b)| a != b);
        assert!(live_pcm.len() >= want.len() && differs.is_none(), "the caller's audio differs from libopus's from sample {differs:?}");
    }

    #[test]
    fn negotiated_payload_types_decide_what_is_heard() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        // Without negotiation G.722 (PT 9) is not taken, as before.
        let mut enc = Encoder::new(AudioCodec::G722);
        let mut payload = Vec::new();
        enc.encode(&[3000; 160], &mut payload);
        let g722 = |seq: u16, payload: &[u8]| {
            rtp::build(RtpHeader { marker: false, payload_type: 9, sequence: seq, timestamp: seq as u32 * 160, ssrc: 5 }, payload)
        };
        s.handle_datagram(t0, caller(), &g722(1, &payload), &mut out);
        assert_eq!(s.take_counters().unsupported_payload, 1);
        // Nor G.729 (PT 18): the node keeps answering in PCMU.
        let g729 = rtp::build(RtpHeader { marker: false, payload_type: 18, sequence: 1, timestamp: 0, ssrc: 5 }, &[0u8; 20]);
        s.handle_datagram(t0, caller(), &g729, &mut out);
        assert_eq!(s.take_counters().unsupported_payload, 1);
        assert_eq!(s.outbound_codec(), AudioCodec::Pcmu);
        s.handle_command(Command::SetMedia(media((9, AudioCodec::G722), Some(101), true)), &mut out);
        for k in 2..10u16 {
            enc.encode(&[3000; 160], &mut payload);
            s.handle_datagram(t0 + MS20 * k as u32, caller(), &g722(k, &payload), &mut out);
        }
        let c = s.take_counters();
        assert_eq!((c.packets_in, c.unsupported_payload), (8, 0));
        let heard: Vec<i16> = out.heard.iter().flat_map(|h| h.pcm.iter().copied()).collect();
        assert_eq!(heard.len(), 8 * 160, "G.722 is heard at the call's 8 kHz");
        assert!(out.heard.iter().all(|h| h.wide.len() == 2 * h.pcm.len()), "with its own 16 kHz audio beside it");
        assert!(heard[640..].iter().all(|&v| (2500..3500).contains(&v)), "{:?}", &heard[640..650]);
        // A payload type the negotiation did not name is not decoded.
        s.handle_datagram(t0 + MS20 * 11, caller(), &rtp_from_caller(18, 11, 11 * 160, 0), &mut out);
        assert_eq!(s.take_counters().unsupported_payload, 1);
    }

    #[test]
    fn heard_audio_is_decoded_by_payload_type_and_reply_follows_codec() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        s.handle_datagram(t0, caller(), &rtp_from_caller(0, 1, 0, 4000), &mut out);
        s.handle_datagram(t0 + MS20, caller(), &rtp_from_caller(8, 2, 160, -4000), &mut out);
        assert_eq!(out.heard.len(), 2);
        assert!((out.heard[0].pcm[0] - 4000).abs() < 200);
        assert!((out.heard[1].pcm[0] + 4000).abs() < 200);
        assert!(out.events.contains(&Event::CodecChanged(AudioCodec::Pcma)));
        s.handle_command(Command::Play { id: 1, pcm: vec![100i16; 160].into(), barge_in: None }, &mut out);
        run_ticks(&mut s, t0, 0, 1, &mut out);
        assert_eq!(rtp::parse(&out.transmit[0].data).unwrap().payload_type, 8, "we answer in PCMA now");
    }

    #[test]
    fn refused_payloads_and_codec_time_are_counted_by_codec() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        let mut m = media((9, AudioCodec::G722), Some(101), true);
        m.receive.push((18, AudioCodec::G729));
        s.handle_command(Command::SetMedia(m), &mut out);
        // G.729 of 7 bytes is neither 10-byte frames nor a 2-byte SID.
        let bad = rtp::build(RtpHeader { marker: false, payload_type: 18, sequence: 1, timestamp: 160, ssrc: 99 }, &[0x55; 7]);
        s.handle_datagram(t0, caller(), &bad, &mut out);
        s.handle_datagram(t0 + MS20, caller(), &rtp_from_caller(0, 2, 320, 4000), &mut out);
        s.handle_command(Command::Play { id: 1, pcm: vec![1000i16; 160 * 5].into(), barge_in: None }, &mut out);
        run_ticks(&mut s, t0, 1, 6, &mut out);
        let c = s.take_counters();
        assert_eq!(c.decode_errors.0[AudioCodec::G729 as usize], 1);
        assert_eq!(c.decode_errors.0.iter().sum::<u64>(), 1);
        let (enc, dec) = (c.codec_nanos.0[AudioCodec::G722 as usize].0, c.codec_nanos.0[AudioCodec::Pcmu as usize].1);
        assert!(enc > 0 && dec > 0, "G.722 encoding and PCMU decoding took time: {enc} ns, {dec} ns");
        assert_eq!(c.codec_nanos.0[AudioCodec::Opus as usize], (0, 0));
    }

    /// An empty payload is no codec's packet: refused and counted, never decoded (an
    /// empty Opus packet used to reach libopus as a loss: 360 ms of concealment at
    /// 16 kHz each, and a rebuild of the packets before it from nothing).
    #[test]
    fn empty_payloads_are_refused_and_counted_never_played() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut out = Outputs::default();
        let mut m = media((0, AudioCodec::Pcmu), Some(101), true);
        #[cfg(feature = "opus")]
        m.receive.push((111, AudioCodec::Opus));
        s.handle_command(Command::SetMedia(m), &mut out);
        let empty = |pt, seq: u16| {
            rtp::build(RtpHeader { marker: false, payload_type: pt, sequence: seq, timestamp: u32::from(seq) * 160, ssrc: 99 }, &[])
        };
        s.handle_datagram(t0, caller(), &empty(0, 1), &mut out);
        #[cfg(feature = "opus")]
        {
            // Three Opus packets lost before it: nothing is rebuilt from an empty one.
            s.handle_datagram(t0, caller(), &empty(111, 5), &mut out);
        }
        run_ticks(&mut s, t0, 0, 10, &mut out);
        let c = s.take_counters();
        assert_eq!(c.decode_errors.0[AudioCodec::Pcmu as usize], 1);
        #[cfg(feature = "opus")]
        assert_eq!((c.decode_errors.0[AudioCodec::Opus as usize], c.plc_concealed, c.fec_recovered), (1, 0, 0));
        assert!(out.heard.iter().all(|h| h.pcm.iter().all(|&v| v == 0)), "nothing but silence heard");
    }
}
