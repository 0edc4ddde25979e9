//! The node's one Prometheus registry and every metric it exports.

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::core::codec::ByCodec;
use crate::core::session::Counters;

pub struct Metrics {
    pub registry: Registry,
    pub sessions: IntGauge,
    pub ports: IntGaugeVec,
    pub packets: IntCounterVec,
    pub bytes: IntCounterVec,
    pub malformed: IntCounter,
    pub rtcp: IntCounter,
    pub foreign: IntCounter,
    pub unsupported_payload: IntCounter,
    pub late: IntCounter,
    pub lost_samples: IntCounter,
    pub recovered_samples: IntCounter,
    pub discontinuities: IntCounter,
    pub frames_skipped: IntCounter,
    pub cache_lookups: IntCounterVec,
    pub cache_bytes: IntGauge,
    pub playbacks: IntCounterVec,
    pub listener_frames_dropped: IntCounter,
    pub listeners: IntGauge,
    pub listeners_evicted: IntCounter,
    pub rpc_requests: IntCounterVec,
    pub rpc_seconds: HistogramVec,
    pub allocate_seconds: Histogram,
    pub recordings_in_flight: IntGauge,
    pub uploads_pending: IntGauge,
    pub upload_failures: IntCounter,
    pub recording_bytes: IntCounter,
    pub recording_errors: IntCounter,
    pub recordings_recovered: IntCounter,
    pub recordings_failed: IntCounter,
    pub spool_orphans: IntGauge,
    pub events_published: IntCounter,
    pub events_dropped: IntCounter,
    pub events_outbox: IntGauge,
    pub placements: IntCounterVec,
    pub forwarded: IntCounterVec,
    pub fleet_peers: IntGauge,
    /// The media threads' busy share over the last admission window.
    pub media_load: prometheus::Gauge,
    /// 1 while the node takes new calls, 0 while admission control refuses them.
    pub admitting: IntGauge,
    pub admission_refused: IntCounterVec,
    pub interarrival_jitter: Histogram,
    pub send_lateness: Histogram,
    pub call_events: IntCounterVec,
    pub call_events_lost: IntCounter,
    pub call_event_subscribers: IntGauge,
    pub dtmf_digits: IntCounterVec,
    pub telephone_event_duplicates: IntCounter,
    pub barge_in_echo: IntCounter,
    pub telephone_event_ignored: IntCounter,
    pub negotiated: IntCounterVec,
    pub decode_errors: IntCounterVec,
    pub codec_seconds: prometheus::CounterVec,
    pub fec_recovered: IntCounter,
    pub plc_concealed: IntCounter,
    pub dtmf_redacted_seconds: prometheus::Counter,
    /// Echo cancellation and noise suppression (issue 35).
    pub echo_erle: Histogram,
    pub echo_delay: Histogram,
    pub residual_echo_seconds: prometheus::Counter,
    pub processed_seconds: prometheus::Counter,
    pub processing_cpu_seconds: prometheus::Counter,
    pub turn_latency: HistogramVec,
    pub srtp_authenticated: IntCounter,
    pub srtp_dropped: IntCounterVec,
    pub srtp_unsent: IntCounter,
    pub rtcp_sent: IntCounter,
    pub rtcp_malformed: IntCounter,
    pub far_end_fraction_lost: Histogram,
    pub far_end_jitter: Histogram,
    pub round_trip: Histogram,
    pub calls_by_transport: IntGaugeVec,
    pub calls_by_codec: IntGaugeVec,
    pub negotiated_transport: IntCounterVec,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone())).expect("metric names are unique");
    c
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let counter = |name: &str, help: &str| reg(&r, IntCounter::new(name, help).expect("valid metric"));
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            reg(&r, Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric"))
        };
        let m = Metrics {
            sessions: reg(&r, IntGauge::new("media_sessions_active", "Calls with an RTP session on this node").unwrap()),
            ports: reg(&r, IntGaugeVec::new(Opts::new("media_ports", "RTP ports by state"), &["state"]).unwrap()),
            packets: reg(&r, IntCounterVec::new(Opts::new("media_rtp_packets_total", "RTP packets by direction"), &["direction"]).unwrap()),
            bytes: reg(&r, IntCounterVec::new(Opts::new("media_rtp_bytes_total", "RTP bytes by direction"), &["direction"]).unwrap()),
            malformed: counter("media_rtp_malformed_total", "Datagrams dropped because they were not valid RTP"),
            rtcp: counter("media_rtcp_packets_total", "RTCP packets received (counted, not played)"),
            foreign: counter("media_rtp_foreign_total", "RTP from an address other than the call's latched peer, dropped"),
            call_events: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("media_call_events_total", "Call events found (speech, dtmf, playback, media timeout), by kind"),
                    &["kind"],
                )
                .unwrap(),
            ),
            call_events_lost: counter(
                "media_call_events_lost_total",
                "Call events a slow StreamCallEvents subscriber did not take in time (its own loss, never the call's)",
            ),
            call_event_subscribers: reg(&r, IntGauge::new("media_call_event_subscribers", "Open StreamCallEvents streams").unwrap()),
            dtmf_digits: reg(
                &r,
                IntCounterVec::new(Opts::new("media_dtmf_digits_total", "DTMF digits received, by source (rfc4733, inband)"), &["source"])
                    .unwrap(),
            ),
            turn_latency: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "media_turn_latency_seconds",
                        "Per turn: the caller's speech end to the agent's first audio in (stage=agent), that to its first RTP out (stage=media), and both (stage=total)",
                    )
                    .buckets(vec![0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0]),
                    &["stage"],
                )
                .unwrap(),
            ),
            barge_in_echo: counter(
                "media_barge_in_echo_suppressed_total",
                "Stretches of the caller's audio scored as voice that the echo guard found to be the node's own audio coming back (no speech event, no barge-in)",
            ),
            negotiated: reg(
                &r,
                IntCounterVec::new(Opts::new("media_sdp_negotiations_total", "SDP offers and answers applied to calls, by the codec agreed"), &["codec"])
                    .unwrap(),
            ),
            srtp_authenticated: counter("media_srtp_authenticated_total", "SRTP and SRTCP packets that passed authentication and replay checks"),
            srtp_dropped: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "media_srtp_dropped_total",
                        "SRTP and SRTCP packets dropped before anything used them, by reason (auth, replay, too_old, unknown_mki, key_expired, malformed)",
                    ),
                    &["reason"],
                )
                .unwrap(),
            ),
            srtp_unsent: counter("media_srtp_unsent_total", "Packets the node did not send because its SRTP key's lifetime was used up"),
            rtcp_sent: counter("media_rtcp_sent_total", "RTCP compound packets the node sent (reports and BYE, on calls set up by SDP)"),
            rtcp_malformed: counter("media_rtcp_malformed_total", "RTCP from far ends that was not a well-formed compound packet (dropped)"),
            calls_by_codec: reg(
                &r,
                IntGaugeVec::new(Opts::new("media_calls_by_codec", "Calls now, by the codec the node sends in"), &["codec"]).unwrap(),
            ),
            calls_by_transport: reg(
                &r,
                IntGaugeVec::new(Opts::new("media_calls_by_transport", "Calls now, by media transport (rtp, srtp)"), &["transport"]).unwrap(),
            ),
            negotiated_transport: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("media_sdp_negotiations_by_transport_total", "SDP offers and answers applied to calls, by transport (rtp, srtp) and SRTP policy"),
                    &["transport", "policy"],
                )
                .unwrap(),
            ),
            decode_errors: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("media_rtp_decode_errors_total", "Caller payloads the negotiated codec refused (corrupt Opus, G.729 of a bad size), dropped"),
                    &["codec"],
                )
                .unwrap(),
            ),
            codec_seconds: reg(
                &r,
                prometheus::CounterVec::new(
                    Opts::new("media_codec_seconds_total", "Time the node spent encoding what it sends and decoding what callers send, by codec"),
                    &["codec", "direction"],
                )
                .unwrap(),
            ),
            fec_recovered: counter("media_rtp_fec_recovered_total", "Lost Opus packets rebuilt from the next packet's in-band FEC"),
            plc_concealed: counter(
                "media_rtp_plc_concealed_total",
                "Lost Opus packets (of a run, all but the last, which FEC rebuilds) filled by the decoder's concealment",
            ),
            telephone_event_ignored: counter(
                "media_rtp_telephone_event_ignored_total",
                "RFC 4733 packets dropped as malformed or not a DTMF event (flash, tones), never a digit",
            ),
            dtmf_redacted_seconds: reg(
                &r,
                prometheus::Counter::new("media_dtmf_redacted_seconds_total", "Caller audio silenced by DTMF redaction, in seconds")
                    .unwrap(),
            ),
            telephone_event_duplicates: counter(
                "media_rtp_telephone_event_duplicates_total",
                "RFC 4733 packets that repeated a known event (redundant end packets), counted once as a digit",
            ),
            unsupported_payload: counter("media_rtp_unsupported_payload_total", "RTP with a payload type we do not decode, dropped"),
            late: counter("media_rtp_late_packets_total", "RTP packets that arrived after their audio was due, or twice"),
            lost_samples: counter("media_rtp_lost_samples_total", "8 kHz samples concealed with silence because their packet never came"),
            recovered_samples: counter(
                "media_rtp_recovered_samples_total",
                "8 kHz samples that came too late for the live stream and were handed to the recording in place of the silence",
            ),
            discontinuities: counter(
                "media_rtp_timestamp_discontinuities_total",
                "RTP timestamps that jumped back or far ahead within one SSRC while the sequence numbers ran on; re-anchored",
            ),
            frames_skipped: counter("media_pacer_frames_skipped_total", "Outbound frames skipped after a scheduling stall"),
            cache_lookups: reg(
                &r,
                IntCounterVec::new(Opts::new("media_prompt_cache_lookups_total", "Prompt cache lookups"), &["result"]).unwrap(),
            ),
            cache_bytes: reg(&r, IntGauge::new("media_prompt_cache_bytes", "Bytes of decoded prompts in the cache").unwrap()),
            playbacks: reg(&r, IntCounterVec::new(Opts::new("media_playbacks_total", "Prompts ended, by outcome"), &["outcome"]).unwrap()),
            listener_frames_dropped: counter(
                "media_listener_frames_dropped_total",
                "Frames a slow RecordAudio listener did not take in time",
            ),
            listeners: reg(&r, IntGauge::new("media_listeners_active", "Open RecordAudio streams").unwrap()),
            listeners_evicted: counter(
                "media_listeners_evicted_total",
                "RecordAudio streams ended to make room on a full call after losing every frame for over a second",
            ),
            rpc_requests: reg(
                &r,
                IntCounterVec::new(Opts::new("media_grpc_requests_total", "gRPC requests by method and status code"), &["method", "code"])
                    .unwrap(),
            ),
            rpc_seconds: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new("media_grpc_request_duration_seconds", "gRPC handling time (PlayAudio includes playback)")
                        .buckets(exponential_buckets(0.0001, 4.0, 12).unwrap()),
                    &["method"],
                )
                .unwrap(),
            ),
            allocate_seconds: histogram(
                "media_allocate_port_duration_seconds",
                "AllocatePort handling time",
                exponential_buckets(0.00005, 2.0, 16).unwrap(),
            ),
            recordings_in_flight: reg(&r, IntGauge::new("media_recordings_in_flight", "Recordings being written").unwrap()),
            uploads_pending: reg(
                &r,
                IntGauge::new("media_recording_uploads_pending", "Finished recordings in the spool waiting for storage").unwrap(),
            ),
            upload_failures: counter(
                "media_recording_upload_failures_total",
                "Failed attempts to store a recording (it stays spooled and is retried)",
            ),
            recording_bytes: counter("media_recording_bytes_total", "Bytes of recordings stored"),
            recording_errors: counter("media_recording_write_errors_total", "Errors writing a recording to the spool"),
            recordings_failed: counter(
                "media_recordings_failed_total",
                "Recordings whose spool file could not be written (full disk): the call went on, what was kept is stored cut short",
            ),
            recordings_recovered: counter(
                "media_recordings_recovered_total",
                "Recordings a hard stop (kill -9, OOM) left unfinished, recovered cut short at the next start",
            ),
            spool_orphans: reg(
                &r,
                IntGauge::new(
                    "media_recording_spool_orphans",
                    "Unfinished recordings in the spool with no destination beside them (left in place)",
                )
                .unwrap(),
            ),
            events_published: counter("media_events_published_total", "Events confirmed by RabbitMQ"),
            events_dropped: counter("media_events_dropped_total", "Events dropped because the outbox was full while the broker was away"),
            events_outbox: reg(&r, IntGauge::new("media_events_outbox", "Events waiting for the broker").unwrap()),
            placements: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("media_fleet_placements_total", "New calls placed by this node, by where they went"),
                    &["target"],
                )
                .unwrap(),
            ),
            forwarded: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("media_fleet_forwarded_total", "Requests forwarded to the node that holds the port or call"),
                    &["method", "result"],
                )
                .unwrap(),
            ),
            media_load: reg(
                &r,
                prometheus::Gauge::new(
                    "media_load_ratio",
                    "Share (0-1) of the media threads' time spent on calls over the last 500 ms (what admission control weighs)",
                )
                .unwrap(),
            ),
            admitting: reg(&r, IntGauge::new("media_admitting", "1 while the node takes new calls, 0 while it refuses them (at capacity)").unwrap()),
            admission_refused: reg(
                &r,
                IntCounterVec::new(
                    prometheus::Opts::new("media_admission_refused_total", "AllocatePorts refused because the node was at capacity, by reason"),
                    &["reason"],
                )
                .unwrap(),
            ),
            fleet_peers: reg(
                &r,
                IntGauge::new("media_fleet_peers", "Other nodes of the pool this node knows (from their MediaNodes)").unwrap(),
            ),
            interarrival_jitter: histogram(
                "media_rtp_interarrival_jitter_seconds",
                "RFC 3550 interarrival jitter of callers' RTP, sampled per call every 5 s and at its end",
                vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16],
            ),
            far_end_fraction_lost: histogram(
                "media_rtcp_far_end_fraction_lost",
                "Fraction of the node's RTP the far end reports lost (RTCP receiver reports), per report",
                vec![0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5],
            ),
            far_end_jitter: histogram(
                "media_rtcp_far_end_jitter_seconds",
                "Interarrival jitter of the node's RTP as the far end reports it (RTCP), per report",
                vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16],
            ),
            echo_erle: histogram(
                "media_echo_return_loss_enhancement_db",
                "Echo cancellation: how much of the node's own echo AEC3 removes (ERLE, dB), per call each second the bot talks",
                vec![0.0, 3.0, 6.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 60.0],
            ),
            echo_delay: histogram(
                "media_echo_delay_seconds",
                "Echo cancellation: the echo's delay AEC3 found (the network both ways, the phone, the room, the jitter buffer), per call each second the bot talks",
                vec![0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0],
            ),
            residual_echo_seconds: reg(
                &r,
                prometheus::Counter::new(
                    "media_residual_echo_seconds_total",
                    "Caller audio in which echo of the node's own audio was still found after cancellation, in seconds",
                )
                .unwrap(),
            ),
            processed_seconds: reg(
                &r,
                prometheus::Counter::new(
                    "media_voice_processed_seconds_total",
                    "Caller audio that went through echo cancellation or noise suppression, in seconds",
                )
                .unwrap(),
            ),
            processing_cpu_seconds: reg(
                &r,
                prometheus::Counter::new(
                    "media_voice_processing_cpu_seconds_total",
                    "CPU time echo cancellation and noise suppression took (divide by media_voice_processed_seconds_total for the cost per call-second)",
                )
                .unwrap(),
            ),
            round_trip: histogram(
                "media_rtcp_round_trip_seconds",
                "Round trip to the far end from its RTCP reports echoing the node's (LSR/DLSR)",
                vec![0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0],
            ),
            send_lateness: histogram(
                "media_rtp_send_lateness_seconds",
                "How late each outbound RTP packet left against its 20 ms schedule (the node's own pacing jitter)",
                vec![0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05],
            ),
            registry: r,
        };
        // Every label shows from the start, at 0, so a rate() over it works at once.
        for reason in crate::core::session::SrtpDrops::REASONS {
            m.srtp_dropped.with_label_values(&[reason.reason()]);
        }
        m.admitting.set(1);
        for reason in crate::admission::Refusal::REASONS {
            m.admission_refused.with_label_values(&[reason]);
        }
        for t in ["rtp", "srtp"] {
            m.calls_by_transport.with_label_values(&[t]);
        }
        for codec in crate::core::codec::AudioCodec::ALL {
            m.decode_errors.with_label_values(&[codec.name()]);
            m.calls_by_codec.with_label_values(&[codec.name()]);
        }
        m
    }

    pub fn add_session_counters(&self, c: &Counters) {
        self.packets.with_label_values(&["in"]).inc_by(c.packets_in);
        self.packets.with_label_values(&["out"]).inc_by(c.packets_out);
        self.bytes.with_label_values(&["in"]).inc_by(c.bytes_in);
        self.bytes.with_label_values(&["out"]).inc_by(c.bytes_out);
        self.malformed.inc_by(c.malformed);
        self.rtcp.inc_by(c.rtcp);
        self.foreign.inc_by(c.foreign);
        self.unsupported_payload.inc_by(c.unsupported_payload);
        self.telephone_event_duplicates.inc_by(c.telephone_event_duplicates);
        self.barge_in_echo.inc_by(c.barge_in_echo);
        self.telephone_event_ignored.inc_by(c.telephone_event_ignored);
        for (codec, (n, (enc, dec))) in ByCodec::<u64>::CODECS.iter().zip(c.decode_errors.0.iter().zip(c.codec_nanos.0)) {
            if *n > 0 {
                self.decode_errors.with_label_values(&[codec.name()]).inc_by(*n);
            }
            if enc > 0 {
                self.codec_seconds.with_label_values(&[codec.name(), "encode"]).inc_by(enc as f64 * 1e-9);
            }
            if dec > 0 {
                self.codec_seconds.with_label_values(&[codec.name(), "decode"]).inc_by(dec as f64 * 1e-9);
            }
        }
        self.fec_recovered.inc_by(c.fec_recovered);
        self.plc_concealed.inc_by(c.plc_concealed);
        self.srtp_authenticated.inc_by(c.srtp_in);
        self.srtp_unsent.inc_by(c.srtp_unsent);
        self.rtcp_sent.inc_by(c.rtcp_sent);
        self.rtcp_malformed.inc_by(c.rtcp_malformed);
        if c.srtp_dropped.total() > 0 {
            for (reason, n) in crate::core::session::SrtpDrops::REASONS.iter().zip(c.srtp_dropped.0) {
                self.srtp_dropped.with_label_values(&[reason.reason()]).inc_by(n);
            }
        }
        let p = &c.processing;
        if p.processed_samples > 0 {
            let rate = crate::core::jitter::RATE as f64;
            self.processed_seconds.inc_by(p.processed_samples as f64 / rate);
            self.residual_echo_seconds.inc_by(p.residual_echo_samples as f64 / rate);
            self.processing_cpu_seconds.inc_by(c.processing_nanos as f64 * 1e-9);
        }
        if c.redacted_samples > 0 {
            self.dtmf_redacted_seconds.inc_by(c.redacted_samples as f64 / crate::core::jitter::RATE as f64);
        }
        self.late.inc_by(c.late);
        self.lost_samples.inc_by(c.lost_samples);
        self.recovered_samples.inc_by(c.recovered_samples);
        self.discontinuities.inc_by(c.discontinuities);
        self.frames_skipped.inc_by(c.frames_skipped);
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding");
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
