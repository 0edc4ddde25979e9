//! A scripted far end: sends PCM as paced G.711 RTP from a real UDP socket and
//! collects the RTP that comes back. Used by `mediactl demo`, the tests and load runs.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use media_node::call::udp;
use media_node::core::codec::{AudioCodec, Encoder};
use media_node::core::g711::Codec;
use media_node::core::rtp::{self, RtpHeader};
use media_node::core::srtp::{Inbound, MasterKey, Outbound};

#[derive(Debug, Clone)]
pub struct ReceivedPacket {
    /// When it reached the caller's socket (the kernel's stamp), not when the caller's
    /// task read it: a busy load generator must not pass its own delays off as the
    /// engine's jitter.
    pub at: Instant,
    pub from: SocketAddr,
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// G.711 decoded; empty for other payload types.
    pub pcm: Vec<i16>,
    pub payload: Vec<u8>,
}

pub struct RtpCaller {
    pub socket: Arc<UdpSocket>,
    pub received: Arc<Mutex<Vec<ReceivedPacket>>>,
    receiver: JoinHandle<()>,
    /// SRTP once keys are given: what the caller receives is decrypted first (packets
    /// that do not authenticate are counted in `srtp_failures`, not kept).
    srtp_in: Arc<Mutex<Option<Inbound>>>,
    srtp_out: Mutex<Option<Outbound>>,
    pub srtp_failures: Arc<std::sync::atomic::AtomicUsize>,
}

impl RtpCaller {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<RtpCaller> {
        let socket = Arc::new(UdpSocket::bind(addr).await?);
        udp::stamp_arrivals(&socket)?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let srtp_in: Arc<Mutex<Option<Inbound>>> = Default::default();
        let srtp_failures: Arc<std::sync::atomic::AtomicUsize> = Default::default();
        let (s, r, keys, failures) = (socket.clone(), received.clone(), srtp_in.clone(), srtp_failures.clone());
        let receiver = tokio::spawn(async move {
            let mut batch = udp::Received::default();
            let mut plain = Vec::new();
            while udp::recv(&s, &mut batch).await.is_ok() {
                for (from, data, at) in batch.iter() {
                    if rtp::is_rtcp(data) {
                        // Reports (rtpengine's land here when the next port up is another
                        // caller's socket) are not the caller's audio.
                        continue;
                    }
                    let data = match keys.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                        None => data,
                        Some(srtp) => match srtp.unprotect_rtp(data, &mut plain) {
                            Ok(_) => &plain[..],
                            Err(e) => {
                                if std::env::var_os("CALLER_SRTP_DEBUG").is_some() {
                                    eprintln!(
                                        "caller SRTP: {e} for seq {} from {from} ({} bytes)",
                                        u16::from_be_bytes([data[2], data[3]]),
                                        data.len()
                                    );
                                }
                                failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                continue;
                            }
                        },
                    };
                    let Ok(p) = rtp::parse(data) else { continue };
                    let mut pcm = Vec::new();
                    if let Some(c) = Codec::from_payload_type(p.payload_type) {
                        c.decode_into(p.payload, &mut pcm);
                    }
                    r.lock().unwrap_or_else(|e| e.into_inner()).push(ReceivedPacket {
                        at,
                        from,
                        marker: p.marker,
                        payload_type: p.payload_type,
                        sequence: p.sequence,
                        timestamp: p.timestamp,
                        ssrc: p.ssrc,
                        pcm,
                        payload: p.payload.to_vec(),
                    });
                }
            }
        });
        Ok(RtpCaller { socket, received, receiver, srtp_in, srtp_out: Mutex::new(None), srtp_failures })
    }

    /// SRTP from now on: what the caller sends under `send`, what it receives under
    /// `receive` (the far end's key, from its SDP).
    pub fn use_srtp(&self, send: MasterKey, receive: MasterKey) {
        *self.srtp_out.lock().unwrap_or_else(|e| e.into_inner()) = Some(Outbound::new(send));
        *self.srtp_in.lock().unwrap_or_else(|e| e.into_inner()) = Some(Inbound::new(receive));
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("bound socket has an address")
    }

    pub fn take_received(&self) -> Vec<ReceivedPacket> {
        std::mem::take(&mut *self.received.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn received_count(&self) -> usize {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Sends 8 kHz PCM as 20 ms packets paced on an absolute schedule. Returns packets sent.
    pub async fn send_speech(&self, to: SocketAddr, pcm: &[i16], codec: Codec, ssrc: u32) -> std::io::Result<usize> {
        Ok(self.send_speech_timed(to, pcm, codec, ssrc).await?.len())
    }

    /// As `send_speech`, returning when each packet left (for latency measurements).
    pub async fn send_speech_timed(&self, to: SocketAddr, pcm: &[i16], codec: Codec, ssrc: u32) -> std::io::Result<Vec<Instant>> {
        self.send_speech_scheduled(to, pcm, codec, ssrc, |k| Duration::from_millis(20 * k as u64)).await
    }

    /// As `send_speech_timed`, in any codec the node runs (G.722 and Opus keep their
    /// state across packets; Opus timestamps count 48 kHz).
    pub async fn send_speech_as(&self, to: SocketAddr, pcm: &[i16], codec: AudioCodec, ssrc: u32) -> std::io::Result<Vec<Instant>> {
        self.send_speech_scheduled(to, pcm, codec, ssrc, |k| Duration::from_millis(20 * k as u64)).await
    }

    /// As `send_speech_as`, packet `k` leaving `at(k)` after the start: a network
    /// that holds packets up and then lets them through at once is a schedule.
    pub async fn send_speech_scheduled(
        &self,
        to: SocketAddr,
        pcm: &[i16],
        codec: impl Into<AudioCodec>,
        ssrc: u32,
        at: impl Fn(usize) -> Duration,
    ) -> std::io::Result<Vec<Instant>> {
        let codec = codec.into();
        let mut enc = Encoder::new(codec);
        let ratio = codec.clock_ratio();
        let start = tokio::time::Instant::now();
        let mut payload = Vec::new();
        let mut sent = Vec::with_capacity(pcm.len() / 160 + 1);
        for (k, frame) in pcm.chunks(160).enumerate() {
            tokio::time::sleep_until(start + at(k)).await;
            enc.encode(frame, &mut payload);
            let header = RtpHeader {
                marker: k == 0,
                payload_type: codec.static_payload_type(),
                sequence: 1000u16.wrapping_add(k as u16),
                timestamp: 5000u32.wrapping_add(k as u32 * 160 * ratio),
                ssrc,
            };
            let mut packet = rtp::build(header, &payload);
            if let Some(srtp) = self.srtp_out.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                srtp.protect_rtp(&mut packet).map_err(std::io::Error::other)?;
            }
            self.socket.send_to(&packet, to).await?;
            sent.push(Instant::now());
        }
        Ok(sent)
    }
}

impl Drop for RtpCaller {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

/// Lays received packets on one 8 kHz timeline by RTP timestamp (relative to the
/// first packet), so silence between talkspurts stays silence.
pub fn timeline(packets: &[ReceivedPacket]) -> Vec<i16> {
    let Some(first) = packets.first() else { return Vec::new() };
    let mut out: Vec<i16> = Vec::new();
    for p in packets {
        let off = p.timestamp.wrapping_sub(first.timestamp) as usize;
        if off > 8000 * 3600 {
            continue;
        }
        if out.len() < off + p.pcm.len() {
            out.resize(off + p.pcm.len(), 0);
        }
        out[off..off + p.pcm.len()].copy_from_slice(&p.pcm);
    }
    out
}
