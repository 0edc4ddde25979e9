//! The node's one configuration: flags and environment (the names the platform's
//! deployments already set), validated at start with errors that say what to fix.

use crate::core::analysis::vad::VadConfig;
use crate::core::analysis::AnalysisConfig;
use crate::core::codec::AudioCodec;

/// A codec list (`PCMU,G722`, any case): every name known, none twice, at least one.
pub fn parse_codecs(list: &str) -> Result<Vec<AudioCodec>, String> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let c = AudioCodec::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = AudioCodec::ALL.iter().map(|c| c.name()).collect();
            format!("{:?} is not a codec this node runs ({})", crate::echo::clip(name), known.join(", "))
        })?;
        if !out.contains(&c) {
            out.push(c);
        }
    }
    if out.is_empty() {
        return Err("names no codec".into());
    }
    Ok(out)
}
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::cluster::ReporterConfig;
use crate::recording::destination::Destination;
use crate::recording::store::{S3Settings, StoreConfig};

#[derive(Debug, Clone, Parser)]
#[command(name = "media-node", about = "Real-time media node: RTP sessions, prompts, live listen, gRPC MediaService")]
pub struct NodeArgs {
    /// gRPC port of the MediaService.
    #[arg(long, env = "MEDIA_SERVICE_GRPC_PORT", default_value_t = 13031)]
    pub grpc_port: u16,
    /// HTTP port for /metrics, /healthz and /readyz.
    #[arg(long, env = "MEDIA_SERVICE_METRICS_PORT", default_value_t = 13032)]
    pub metrics_port: u16,
    /// Address the gRPC and HTTP servers bind.
    #[arg(long, env = "MEDIA_SERVICE_LISTEN_ADDRESS", default_value = "0.0.0.0")]
    pub service_listen_address: IpAddr,
    /// First UDP port of the RTP range.
    #[arg(long, env = "RTP_SERVICE_PORT_MIN", default_value_t = 10000)]
    pub rtp_port_min: u16,
    /// Last UDP port of the RTP range (RTCP of the last even port must fit).
    #[arg(long, env = "RTP_SERVICE_PORT_MAX", default_value_t = 20000)]
    pub rtp_port_max: u16,
    /// Seconds a released port waits before reuse.
    #[arg(long, env = "RTP_SERVICE_PORT_QUARANTINE_SECONDS", default_value_t = 5.0)]
    pub quarantine_seconds: f64,
    /// Address RTP sockets bind.
    #[arg(long, env = "RTP_SERVICE_LISTEN_ADDRESS", default_value = "0.0.0.0")]
    pub rtp_listen_address: IpAddr,
    /// IP callers must put in their SDP; defaults to the RTP listen address when that
    /// is specific, else to loopback.
    #[arg(long, env = "RTP_SERVICE_ADVERTISED_IP")]
    pub advertised_ip: Option<IpAddr>,
    /// Root directory for file:// prompts.
    #[arg(long, env = "ASSETS_BASE_PATH", default_value = "assets")]
    pub assets_base_path: PathBuf,
    /// Bytes of decoded prompts kept in memory.
    #[arg(long, env = "MEDIA_PROMPT_CACHE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub prompt_cache_bytes: usize,
    /// Adopt the source address of the caller's first RTP packet (symmetric RTP).
    #[arg(long, env = "RTP_SERVICE_SYMMETRIC_RTP", default_value_t = true, action = clap::ArgAction::Set)]
    pub symmetric_rtp: bool,
    /// How long a missing RTP packet is waited for, in milliseconds.
    #[arg(long, env = "RTP_SERVICE_JITTER_MS", default_value_t = 40)]
    pub jitter_ms: u64,
    /// No RTP from a caller for this many seconds (after its first packet) is a
    /// media_timeout event (the signalling side hangs up dead calls on it); 0 turns it off.
    #[arg(long, env = "MEDIA_RTP_TIMEOUT_SECONDS", default_value_t = 30.0)]
    pub media_timeout_seconds: f64,
    /// Detect the caller's speech (speech events, the node's barge-in).
    #[arg(long, env = "MEDIA_VAD", default_value_t = true, action = clap::ArgAction::Set)]
    pub vad: bool,
    /// Voice-activity score (0 to 1) from which the caller's audio counts as voice.
    #[arg(long, env = "MEDIA_VAD_THRESHOLD", default_value_t = 0.6)]
    pub vad_threshold: f32,
    /// Voice must last this long to be speech_started (barge-in counts from a 32 ms
    /// voice run: its own time decides).
    #[arg(long, env = "MEDIA_VAD_MIN_SPEECH_MS", default_value_t = 64)]
    pub vad_min_speech_ms: u64,
    /// Non-voice this long ends speech (speech_stopped); pauses between words are shorter.
    #[arg(long, env = "MEDIA_VAD_MIN_SILENCE_MS", default_value_t = 400)]
    pub vad_min_silence_ms: u64,
    /// Look for DTMF tones in the caller's audio (for trunks that send digits in-band).
    #[arg(long, env = "MEDIA_INBAND_DTMF", default_value_t = true, action = clap::ArgAction::Set)]
    pub inband_dtmf: bool,
    /// Codecs the node takes in SDP offer/answer, first preferred (PCMU, PCMA, G722,
    /// opus, G729). G.722 first by default: a wideband caller's 16 kHz audio reaches the
    /// agent and the recording as it was sent, and speech recognition does clearly
    /// better on it; G.711 next, as every trunk offers it. Codecs not named are still
    /// taken, after these. A request may give its own order.
    #[arg(long, env = "PREFERRED_AUDIO_CODEC", default_value = "G722,PCMU,PCMA")]
    pub preferred_audio_codec: String,
    /// Secure media (SRTP, keys by SDES in the SDP): `optional` takes SRTP or plain RTP
    /// as the far end offers, and the node's offers carry keys on RTP/AVP; `required`
    /// refuses plain offers and answers and offers RTP/SAVP; `off` refuses RTP/SAVP. A
    /// request may give its own. Calls that never negotiate SDP stay plain RTP.
    #[arg(long, env = "MEDIA_SRTP_POLICY", default_value = "optional")]
    pub srtp_policy: String,
    /// On SIGTERM, how long calls in flight may go on before the node closes.
    #[arg(long, env = "MEDIA_SERVICE_DRAIN_SECONDS", default_value_t = 300)]
    pub drain_seconds: u64,
    /// Server certificate (PEM) for gRPC TLS.
    #[arg(long, env = "MEDIA_SERVICE_CERT_PATH")]
    pub cert_path: Option<PathBuf>,
    /// Server private key (PEM) for gRPC TLS.
    #[arg(long, env = "MEDIA_SERVICE_KEY_PATH")]
    pub key_path: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to: turns TLS into mTLS.
    #[arg(long, env = "GRPC_TLS_CA_PATH")]
    pub tls_ca_path: Option<PathBuf>,
    /// With mTLS, the name peers' certificates carry (e.g. media-node.telephony.svc):
    /// nodes of a pool forward to each other over mTLS, presenting their own
    /// certificate. Without it, a peer's certificate must name its IP.
    #[arg(long, env = "MEDIA_PEER_TLS_DOMAIN")]
    pub peer_tls_domain: Option<String>,
    /// Accepted for recordings (S3 endpoint, region, credentials, bucket).
    #[arg(long, env = "BUCKET_ENDPOINT_URL")]
    pub bucket_endpoint_url: Option<String>,
    #[arg(long, env = "BUCKET_REGION")]
    pub bucket_region: Option<String>,
    #[arg(long, env = "BUCKET_ACCESS_KEY_ID", hide_env_values = true)]
    pub bucket_access_key_id: Option<String>,
    #[arg(long, env = "BUCKET_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub bucket_secret_access_key: Option<String>,
    #[arg(long, env = "BUCKET_NAME")]
    pub bucket_name: Option<String>,
    #[arg(long, env = "RABBITMQ_URL", hide_env_values = true)]
    pub rabbitmq_url: Option<String>,
    #[arg(long, env = "TENANT_ID")]
    pub tenant_id: Option<String>,
    /// Local spool for recordings being written and those waiting for storage.
    #[arg(long, env = "RECORDINGS_SPOOL_DIR", default_value = "spool")]
    pub recordings_spool_dir: PathBuf,
    /// Root for file:// recording destinations.
    #[arg(long, env = "RECORDINGS_ROOT", default_value = "recordings")]
    pub recordings_root: PathBuf,
    /// Destination when StartRecording names none (default: s3://$BUCKET_NAME/recordings).
    #[arg(long, env = "RECORDINGS_DEFAULT_URI")]
    pub recordings_default_uri: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "MEDIA_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
    /// Threads of the media runtime that runs calls (default: one per usable CPU).
    #[arg(long, env = "MEDIA_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Nice value (0-19) of the gRPC/HTTP threads; see BENCHMARKS.md.
    #[arg(long, env = "MEDIA_SERVING_NICE", default_value_t = 0)]
    pub serving_nice: i32,
    /// Admission control: the busy share (percent of the media threads' time) past
    /// which the node refuses new calls (RESOURCE_EXHAUSTED) and reports itself
    /// overloaded; 0 turns it off. See the README and BENCHMARKS.md.
    #[arg(long, env = "MEDIA_MAX_LOAD_PERCENT", default_value_t = 55)]
    pub max_load_percent: u32,
    /// libopus's encoder complexity (0-10) for Opus calls: CPU against quality, the
    /// measured table is in BENCHMARKS.md.
    #[arg(long, env = "MEDIA_OPUS_COMPLEXITY", default_value_t = crate::core::codec::OPUS_COMPLEXITY)]
    pub opus_complexity: i32,
    /// Cancel the echo of the node's own audio in every call's caller audio from the
    /// start (a call may turn it on or off: SetAudioProcessing). Off by default: it
    /// multiplies a call's CPU by about four (BENCHMARKS.md).
    #[arg(long, env = "MEDIA_ECHO_CANCELLATION", default_value_t = false, action = clap::ArgAction::Set)]
    pub echo_cancellation: bool,
    /// Suppress the caller's background noise in every call from the start.
    #[arg(long, env = "MEDIA_NOISE_SUPPRESSION", default_value_t = false, action = clap::ArgAction::Set)]
    pub noise_suppression: bool,
    // What the operator gives a node pod: its MediaNode, pool, Kubernetes Node and the
    // advertise rule (downward API and the pool's spec). Unset outside a pool.
    #[arg(long, env = "MEDIA_NODE_NAME", hide = true)]
    pub media_node_name: Option<String>,
    #[arg(long, env = "MEDIA_NODE_NAMESPACE", hide = true)]
    pub media_node_namespace: Option<String>,
    #[arg(long, env = "POD_NAMESPACE", hide = true)]
    pub pod_namespace: Option<String>,
    #[arg(long, env = "MEDIA_POOL_NAME", hide = true)]
    pub media_pool_name: Option<String>,
    #[arg(long, env = "NODE_NAME", hide = true)]
    pub kube_node_name: Option<String>,
    #[arg(long, env = "MEDIA_ADVERTISE_SOURCE", default_value = "ExternalIP", hide = true)]
    pub advertise_source: String,
    #[arg(long, env = "MEDIA_ADVERTISE_ADDRESS", hide = true)]
    pub advertise_address: Option<String>,
    #[arg(long, env = "POD_IP", hide = true)]
    pub pod_ip: Option<IpAddr>,
}

/// How the node's two runtimes are set up (see `call::runtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RuntimeSettings {
    /// Media worker threads; None is one per usable CPU.
    pub media_workers: Option<usize>,
    /// Nice value of the serving threads, 0 to 19.
    pub serving_nice: i32,
}

/// The advertise rules a pool's node may be given.
pub const ADVERTISE_SOURCES: [&str; 3] = ["ExternalIP", "InternalIP", "Explicit"];

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    /// The server name to verify peers' certificates against when forwarding.
    pub peer_domain: Option<String>,
}

/// Validated settings the node runs with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub rtp_listen: IpAddr,
    pub advertised_ip: IpAddr,
    pub port_min: u16,
    pub port_max: u16,
    pub quarantine: Duration,
    pub assets_root: PathBuf,
    pub prompt_cache_bytes: usize,
    pub symmetric_rtp: bool,
    pub jitter_hold: Duration,
    pub analysis: AnalysisConfig,
    /// Offer/answer's codec preference, first preferred.
    pub preferred_codecs: Vec<AudioCodec>,
    pub srtp_policy: crate::core::srtp::sdes::SrtpPolicy,
    pub drain_timeout: Duration,
    pub tls: Option<TlsFiles>,
    pub recording: StoreConfig,
    /// Where platform events go; None publishes nothing.
    pub rabbitmq_url: Option<String>,
    pub tenant_id: String,
    pub runtime: RuntimeSettings,
    /// When the node refuses new calls.
    pub admission: crate::admission::Limits,
    /// libopus's encoder complexity for Opus calls (0-10).
    pub opus_complexity: i32,
    /// Echo cancellation and noise suppression a call starts with.
    pub processing: crate::core::voice_processing::ProcessingConfig,
    /// Set when the operator runs this node in a pool (MEDIA_NODE_NAME given).
    pub cluster: Option<ReporterConfig>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl NodeConfig {
    pub fn from_args(a: &NodeArgs) -> Result<NodeConfig, ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        if a.rtp_port_min >= a.rtp_port_max {
            return bad(format!("RTP_SERVICE_PORT_MIN ({}) must be below RTP_SERVICE_PORT_MAX ({})", a.rtp_port_min, a.rtp_port_max));
        }
        if a.rtp_port_min < 1024 {
            return bad(format!("RTP_SERVICE_PORT_MIN ({}) must be 1024 or above", a.rtp_port_min));
        }
        if !(0.0..=3600.0).contains(&a.quarantine_seconds) || a.quarantine_seconds.is_nan() {
            return bad(format!("RTP_SERVICE_PORT_QUARANTINE_SECONDS ({}) must be between 0 and 3600", a.quarantine_seconds));
        }
        if !(10..=1000).contains(&a.jitter_ms) {
            return bad(format!("RTP_SERVICE_JITTER_MS ({}) must be between 10 and 1000", a.jitter_ms));
        }
        if !(0.0..=86_400.0).contains(&a.media_timeout_seconds) || a.media_timeout_seconds.is_nan() {
            return bad(format!("MEDIA_RTP_TIMEOUT_SECONDS ({}) must be between 0 (off) and 86400", a.media_timeout_seconds));
        }
        if !(0.0..=1.0).contains(&a.vad_threshold) || a.vad_threshold.is_nan() {
            return bad(format!("MEDIA_VAD_THRESHOLD ({}) must be between 0 and 1", a.vad_threshold));
        }
        if !(16..=5000).contains(&a.vad_min_speech_ms) || !(16..=10_000).contains(&a.vad_min_silence_ms) {
            return bad(format!(
                "MEDIA_VAD_MIN_SPEECH_MS ({}) must be 16 to 5000 and MEDIA_VAD_MIN_SILENCE_MS ({}) 16 to 10000",
                a.vad_min_speech_ms, a.vad_min_silence_ms
            ));
        }
        if !a.assets_base_path.is_dir() {
            return bad(format!(
                "ASSETS_BASE_PATH {:?} is not a directory: point it at the folder that holds the prompts",
                a.assets_base_path
            ));
        }
        let tls = match (&a.cert_path, &a.key_path) {
            (None, None) => {
                if a.tls_ca_path.is_some() {
                    return bad("GRPC_TLS_CA_PATH is set but MEDIA_SERVICE_CERT_PATH and MEDIA_SERVICE_KEY_PATH are not".into());
                }
                None
            }
            (Some(cert), Some(key)) => {
                for (name, p) in [
                    ("MEDIA_SERVICE_CERT_PATH", Some(cert)),
                    ("MEDIA_SERVICE_KEY_PATH", Some(key)),
                    ("GRPC_TLS_CA_PATH", a.tls_ca_path.as_ref()),
                ] {
                    if let Some(p) = p {
                        if !p.is_file() {
                            return bad(format!("{name} {p:?} is not a readable file"));
                        }
                    }
                }
                Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: a.tls_ca_path.clone(),
                    peer_domain: a.peer_tls_domain.clone(),
                })
            }
            _ => return bad("set both MEDIA_SERVICE_CERT_PATH and MEDIA_SERVICE_KEY_PATH for TLS, or neither".into()),
        };
        let advertised_ip = a.advertised_ip.unwrap_or(if a.rtp_listen_address.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            a.rtp_listen_address
        });
        let default_uri = a.recordings_default_uri.clone().or_else(|| a.bucket_name.as_ref().map(|b| format!("s3://{b}/recordings")));
        let default_destination = match default_uri {
            Some(u) => Some(Destination::parse(&u, None).map_err(|e| ConfigError(format!("RECORDINGS_DEFAULT_URI / BUCKET_NAME: {e}")))?),
            None => None,
        };
        for (name, dir) in [("RECORDINGS_SPOOL_DIR", &a.recordings_spool_dir), ("RECORDINGS_ROOT", &a.recordings_root)] {
            if let Err(e) = std::fs::create_dir_all(dir) {
                return bad(format!("{name} {dir:?} cannot be created: {e}"));
            }
        }
        let recording = StoreConfig {
            spool_dir: a.recordings_spool_dir.clone(),
            recordings_root: a.recordings_root.clone(),
            s3: S3Settings {
                endpoint: a.bucket_endpoint_url.clone(),
                region: a.bucket_region.clone(),
                access_key_id: a.bucket_access_key_id.clone(),
                secret_access_key: a.bucket_secret_access_key.clone(),
            },
            default_destination,
        };
        if advertised_ip.is_unspecified() {
            return bad("RTP_SERVICE_ADVERTISED_IP cannot be 0.0.0.0: callers must be able to send to it".into());
        }
        if a.worker_threads.is_some_and(|n| !(1..=1024).contains(&n)) {
            return bad(format!("MEDIA_WORKER_THREADS ({}) must be between 1 and 1024", a.worker_threads.unwrap_or(0)));
        }
        if !(0..=19).contains(&a.serving_nice) {
            // Raising priority would need a privilege the node does not ask for.
            return bad(format!("MEDIA_SERVING_NICE ({}) must be between 0 and 19", a.serving_nice));
        }
        if !(0..=10).contains(&a.opus_complexity) {
            return bad(format!("MEDIA_OPUS_COMPLEXITY ({}) must be between 0 and 10", a.opus_complexity));
        }
        if a.max_load_percent > 100 {
            return bad(format!("MEDIA_MAX_LOAD_PERCENT ({}) must be between 0 (off) and 100", a.max_load_percent));
        }
        let cluster = cluster_settings(a)?;
        Ok(NodeConfig {
            grpc_addr: SocketAddr::new(a.service_listen_address, a.grpc_port),
            http_addr: SocketAddr::new(a.service_listen_address, a.metrics_port),
            rtp_listen: a.rtp_listen_address,
            advertised_ip,
            port_min: a.rtp_port_min,
            port_max: a.rtp_port_max,
            quarantine: Duration::from_secs_f64(a.quarantine_seconds),
            assets_root: a.assets_base_path.clone(),
            prompt_cache_bytes: a.prompt_cache_bytes,
            symmetric_rtp: a.symmetric_rtp,
            jitter_hold: Duration::from_millis(a.jitter_ms),
            analysis: AnalysisConfig {
                vad_enabled: a.vad,
                vad: VadConfig {
                    threshold: a.vad_threshold,
                    min_speech: Duration::from_millis(a.vad_min_speech_ms),
                    min_silence: Duration::from_millis(a.vad_min_silence_ms),
                },
                media_timeout: (a.media_timeout_seconds > 0.0).then(|| Duration::from_secs_f64(a.media_timeout_seconds)),
                inband_dtmf: a.inband_dtmf,
            },
            preferred_codecs: parse_codecs(&a.preferred_audio_codec).map_err(|e| ConfigError(format!("PREFERRED_AUDIO_CODEC: {e}")))?,
            srtp_policy: crate::core::srtp::sdes::SrtpPolicy::parse(&a.srtp_policy).ok_or_else(|| {
                ConfigError(format!("MEDIA_SRTP_POLICY: {:?} is not off, optional or required", crate::echo::clip(&a.srtp_policy)))
            })?,
            drain_timeout: Duration::from_secs(a.drain_seconds),
            tls,
            recording,
            rabbitmq_url: a.rabbitmq_url.clone().filter(|u| !u.is_empty()),
            tenant_id: a.tenant_id.clone().unwrap_or_default(),
            runtime: RuntimeSettings { media_workers: a.worker_threads, serving_nice: a.serving_nice },
            admission: crate::admission::Limits { max_load: a.max_load_percent as f64 / 100.0 },
            opus_complexity: a.opus_complexity,
            processing: crate::core::voice_processing::ProcessingConfig {
                echo_cancellation: a.echo_cancellation,
                noise_suppression: a.noise_suppression,
            },
            cluster,
        })
    }

    /// A standalone node on loopback with OS-chosen gRPC/HTTP ports: for the demo and tests.
    pub fn loopback(assets_root: PathBuf, port_min: u16, port_max: u16) -> NodeConfig {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        NodeConfig {
            grpc_addr: SocketAddr::new(lo, 0),
            http_addr: SocketAddr::new(lo, 0),
            rtp_listen: lo,
            advertised_ip: lo,
            port_min,
            port_max,
            quarantine: Duration::from_secs(5),
            prompt_cache_bytes: 16 * 1024 * 1024,
            symmetric_rtp: true,
            jitter_hold: Duration::from_millis(40),
            analysis: AnalysisConfig::default(),
            preferred_codecs: vec![AudioCodec::G722, AudioCodec::Pcmu, AudioCodec::Pcma],
            srtp_policy: Default::default(),
            drain_timeout: Duration::from_secs(30),
            tls: None,
            recording: StoreConfig {
                spool_dir: assets_root.join("spool"),
                recordings_root: assets_root.join("recordings"),
                s3: S3Settings::default(),
                default_destination: Some(Destination::File { dir: PathBuf::new() }),
            },
            rabbitmq_url: None,
            tenant_id: String::new(),
            runtime: RuntimeSettings::default(),
            // Off: the demo and the tests measure behaviour, not capacity, and a test
            // machine's load is not the node's.
            admission: crate::admission::Limits { max_load: 0.0 },
            opus_complexity: crate::core::codec::OPUS_COMPLEXITY,
            processing: Default::default(),
            cluster: None,
            assets_root,
        }
    }
}

/// The reporter's settings from what the operator gave the pod; None outside a pool.
fn cluster_settings(a: &NodeArgs) -> Result<Option<ReporterConfig>, ConfigError> {
    let given = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
    let Some(name) = given(&a.media_node_name) else { return Ok(None) };
    let source = a.advertise_source.trim();
    if !ADVERTISE_SOURCES.contains(&source) {
        return Err(ConfigError(format!("MEDIA_ADVERTISE_SOURCE {source:?} is not one of {ADVERTISE_SOURCES:?}")));
    }
    let address = given(&a.advertise_address);
    if source == "Explicit" && address.as_deref().and_then(|s| s.trim().parse::<IpAddr>().ok()).is_none() {
        return Err(ConfigError(format!("MEDIA_ADVERTISE_SOURCE Explicit needs an IP in MEDIA_ADVERTISE_ADDRESS (got {address:?})")));
    }
    Ok(Some(ReporterConfig {
        name,
        namespace: given(&a.media_node_namespace).or_else(|| given(&a.pod_namespace)).unwrap_or_else(|| "default".into()),
        pool: given(&a.media_pool_name),
        kube_node: given(&a.kube_node_name),
        advertise_source: source.to_string(),
        advertise_address: address,
        pod_ip: a.pod_ip,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> NodeArgs {
        let mut v = vec![
            "media-node",
            "--assets-base-path",
            ".",
            "--recordings-spool-dir",
            "/tmp/media-node-test-spool",
            "--recordings-root",
            "/tmp/media-node-test-rec",
        ];
        v.extend_from_slice(extra);
        NodeArgs::try_parse_from(v).unwrap()
    }

    #[test]
    fn defaults_are_valid() {
        let c = NodeConfig::from_args(&args(&[])).unwrap();
        assert_eq!(c.grpc_addr.port(), 13031);
        assert_eq!(c.admission.max_load, 0.55, "admission control is on by default");
        let off = NodeConfig::from_args(&args(&["--max-load-percent", "0"])).unwrap();
        assert_eq!(off.admission.max_load, 0.0);
        assert_eq!(c.http_addr.port(), 13032);
        assert_eq!(c.quarantine, Duration::from_secs(5));
    }

    #[test]
    fn errors_name_the_setting_to_fix() {
        let e = NodeConfig::from_args(&args(&["--rtp-port-min", "20000", "--rtp-port-max", "10000"])).unwrap_err();
        assert!(e.to_string().contains("RTP_SERVICE_PORT_MIN"), "{e}");
        let e = NodeConfig::from_args(&args(&["--cert-path", "/nonexistent"])).unwrap_err();
        assert!(e.to_string().contains("MEDIA_SERVICE_KEY_PATH"), "{e}");
        let mut a = args(&[]);
        a.assets_base_path = "/definitely/not/here".into();
        let e = NodeConfig::from_args(&a).unwrap_err();
        assert!(e.to_string().contains("ASSETS_BASE_PATH"), "{e}");
        let e = NodeConfig::from_args(&args(&["--advertised-ip", "0.0.0.0"])).unwrap_err();
        assert!(e.to_string().contains("RTP_SERVICE_ADVERTISED_IP"), "{e}");
        let e = NodeConfig::from_args(&args(&["--worker-threads", "0"])).unwrap_err();
        assert!(e.to_string().contains("MEDIA_WORKER_THREADS"), "{e}");
        let e = NodeConfig::from_args(&args(&["--serving-nice=-5"])).unwrap_err();
        assert!(e.to_string().contains("MEDIA_SERVING_NICE"), "{e}");
        let e = NodeConfig::from_args(&args(&["--opus-complexity", "11"])).unwrap_err();
        assert!(e.to_string().contains("MEDIA_OPUS_COMPLEXITY"), "{e}");
        let e = NodeConfig::from_args(&args(&["--max-load-percent", "150"])).unwrap_err();
        assert!(e.to_string().contains("MEDIA_MAX_LOAD_PERCENT"), "{e}");
        let e = NodeConfig::from_args(&args(&["--media-node-name", "n-0", "--advertise-source", "Public"])).unwrap_err();
        assert!(e.to_string().contains("MEDIA_ADVERTISE_SOURCE"), "{e}");
        let e = NodeConfig::from_args(&args(&["--media-node-name", "n-0", "--advertise-source", "Explicit"])).unwrap_err();
        assert!(e.to_string().contains("MEDIA_ADVERTISE_ADDRESS"), "{e}");
        assert!(NodeArgs::try_parse_from(["media-node", "--pod-ip", "not-an-ip"]).is_err(), "POD_IP must be an IP");
    }

    #[test]
    fn the_operators_settings_make_the_reporters() {
        let c = NodeConfig::from_args(&args(&[])).unwrap();
        assert!(c.cluster.is_none(), "no MEDIA_NODE_NAME: a standalone node");
        assert_eq!(c.runtime, RuntimeSettings::default());
        let c = NodeConfig::from_args(&args(&[
            "--media-node-name",
            "voice-3",
            "--pod-namespace",
            "telephony",
            "--pod-ip",
            "10.1.2.3",
            "--advertise-source",
            "InternalIP",
            "--worker-threads",
            "2",
            "--serving-nice",
            "10",
        ]))
        .unwrap();
        let r = c.cluster.unwrap();
        assert_eq!((r.name.as_str(), r.namespace.as_str(), r.advertise_source.as_str()), ("voice-3", "telephony", "InternalIP"));
        assert_eq!(r.pod_ip, Some("10.1.2.3".parse().unwrap()));
        assert_eq!(c.runtime, RuntimeSettings { media_workers: Some(2), serving_nice: 10 });
    }
}
