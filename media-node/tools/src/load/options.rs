//! What a load run is asked to do: which engine, how many calls for how long, at what
//! set-up rate, with which parts of a call, and the fixed ports the engines it starts
//! listen on.

use std::path::PathBuf;
use std::time::Duration;

/// The gRPC port of a media node the load tool starts.
pub const NODE_GRPC_PORT: u16 = 29031;
/// The metrics port of a media node the load tool starts (read at the end of a run).
pub const NODE_METRICS_PORT: u16 = 29032;
/// rtpengine's ng control port in load runs.
pub const RTPENGINE_NG_PORT: u16 = 29033;
/// The first RTP port of either engine the tool starts; the range grows with the calls.
pub const ENGINE_RTP_PORT_MIN: u16 = 10000;
/// The last RTP port rtpengine may use.
pub const RTPENGINE_RTP_PORT_MAX: u16 = 19999;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    MediaNode,
    Rtpengine,
}

impl Engine {
    pub fn name(&self) -> &'static str {
        match self {
            Engine::MediaNode => "media-node",
            Engine::Rtpengine => "rtpengine",
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub calls: usize,
    pub seconds: f64,
    /// gRPC URL of a running node; None starts the media-node binary beside this one.
    pub target: Option<String>,
    pub work_dir: PathBuf,
    pub engine: Engine,
    /// Pin the engine to these CPUs (`taskset -c`), e.g. "0", so its CPU share is a
    /// real per-core figure and the load generator (run on the others) does not
    /// disturb it.
    pub engine_cpus: Option<String>,
    /// Which parts of a call run (all by default); turning one off shows its cost.
    pub parts: CallParts,
    /// Calls set up per second (AllocatePort, or rtpengine's offer), each one timed.
    pub allocate_rate: u32,
    /// AllocatePorts timed on their own before the calls (then released), so the
    /// p99 comes from enough samples; 0 times the calls' own allocations instead.
    /// Media node only.
    pub allocations: usize,
    /// The callers' codec: PCMU (as before: no SDP, static payload type) or, set up by
    /// NegotiateSdp, PCMA, G722 or opus; rtpengine transcodes it to PCMU for the agent.
    pub codec: media_node::core::codec::AudioCodec,
    /// The callers speak SRTP (SDES keys, AES_CM_128_HMAC_SHA1_80): the node, or
    /// rtpengine, decrypts what they send and encrypts what it plays to them.
    pub srtp: bool,
    /// The node's MEDIA_MAX_LOAD_PERCENT (admission control) for a node this tool
    /// starts; None leaves the node's default.
    pub max_load_percent: Option<u32>,
    /// Share of the time the callers talk (in turns, see `in_turns`); 1 is all the time.
    pub talk_share: f64,
}

impl LoadOptions {
    /// The gap between two call set-ups at `allocate_rate`.
    pub(crate) fn setup_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.allocate_rate.max(1) as f64)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallParts {
    /// A live RecordAudio listener at 16 kHz.
    pub listen: bool,
    /// A mono recording.
    pub record: bool,
    /// A StreamCallEvents subscriber per call.
    pub events: bool,
    /// The node's call analysis (voice detector and in-band DTMF), on by default as in
    /// production; off only for a node this tool starts, to see its cost.
    pub analysis: bool,
}

impl Default for CallParts {
    fn default() -> Self {
        CallParts { listen: true, record: true, events: false, analysis: true }
    }
}
