//! The node: its calls by port and by call_id, the port pool, the prompt cache, and
//! the drain switch. The gRPC layer translates requests into these operations.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::warn;

use crate::audio::cache::{PromptCache, PromptKey, RefusedPrompts};
use crate::audio::decode::{self, DecodeError};
use crate::audio::uri::{self, UriError};
use crate::call::{spawn_call, BoundSockets, CallCommand, CallContext, CallHandle, ListenerPost};
use crate::config::NodeConfig;
use crate::core::jitter::JitterConfig;
use crate::events::EventPublisher;
use crate::metrics::Metrics;
use crate::ports::{PoolCounts, PoolError, PortPool};
use crate::recording::{DestinationError, RecordingError, RecordingStore};
use crate::sync::{lock, read, write};

/// How many ports an allocation tries when binds fail (another process holds them).
const BIND_ATTEMPTS: usize = 8;

#[derive(Debug, Error)]
pub enum NodeError {
    #[error("node is draining and takes no new calls")]
    Draining,
    /// Admission control: the node is at capacity (the reason says how).
    #[error("{0}")]
    AtCapacity(crate::admission::Refusal),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("no call on port {0}")]
    UnknownPort(u32),
    #[error("no call with call_id {0:?}")]
    UnknownCall(String),
    #[error("could not bind RTP sockets: {0}")]
    Bind(String),
    #[error(transparent)]
    Uri(#[from] UriError),
    #[error("prompt could not be decoded: {0}")]
    Decode(#[from] DecodeError),
    /// A decode refused for another request of the same prompt (shared, or lately).
    #[error("prompt could not be decoded: {0}")]
    Undecodable(Arc<str>),
    #[error("prompt could not be read: {0}")]
    Read(String),
    #[error("the call ended")]
    CallGone,
    #[error(transparent)]
    Recording(#[from] RecordingError),
    #[error(transparent)]
    Destination(#[from] DestinationError),
    #[error(transparent)]
    Digits(#[from] crate::core::dtmf_out::DigitsError),
    #[error(transparent)]
    RecordingFormat(#[from] crate::recording::FormatError),
}

#[derive(Debug, Clone)]
pub struct Allocation {
    pub port: u16,
    pub advertised_ip: IpAddr,
}

#[derive(Default)]
struct Calls {
    by_port: HashMap<u16, Arc<CallHandle>>,
    by_call_id: HashMap<String, u16>,
}

pub struct Node {
    pub config: NodeConfig,
    pub metrics: Arc<Metrics>,
    pub recordings: Arc<RecordingStore>,
    pub events: Arc<EventPublisher>,
    /// What every call shares (settings, metrics, the listener post, storage, events).
    calls_context: CallContext,
    /// The other nodes of the pool (empty on a standalone node).
    pub fleet: crate::fleet::Fleet,
    pool: Mutex<PortPool>,
    calls: Mutex<Calls>,
    prompts: Mutex<PromptCache>,
    /// Prompt decodes under way, by key: concurrent requests for one prompt share it.
    decoding: Mutex<HashMap<PromptKey, Arc<SharedDecode>>>,
    refused: Mutex<RefusedPrompts>,
    /// Prompt decodes running at once, node-wide: each holds its file and its output.
    decode_slots: tokio::sync::Semaphore,
    draining: AtomicBool,
    /// Flips to true once when the node starts draining (SIGTERM or the operator).
    drain_signal: tokio::sync::watch::Sender<bool>,
    /// The IP callers put in SDP; the cluster reporter may resolve it after start.
    advertised_ip: RwLock<IpAddr>,
    next_playback: AtomicU64,
    /// Admission control: whether a new call may come in (see `admission`).
    pub admission: crate::admission::Gate,
}

impl Node {
    pub fn new(config: NodeConfig, metrics: Arc<Metrics>) -> Result<Node, PoolError> {
        let pool = PortPool::new(config.port_min, config.port_max, config.quarantine)?;
        let events =
            EventPublisher::new(config.rabbitmq_url.is_some(), config.tenant_id.clone(), crate::events::OUTBOX_CAPACITY, metrics.clone());
        let recordings = RecordingStore::new(config.recording.clone(), metrics.clone(), events.clone());
        let config_admission = config.admission;
        let calls_context = CallContext {
            symmetric_rtp: config.symmetric_rtp,
            jitter: JitterConfig { hold: config.jitter_hold, ..JitterConfig::default() },
            metrics: metrics.clone(),
            post: ListenerPost::start(metrics.clone()),
            store: recordings.clone(),
            events: events.clone(),
            analysis: config.analysis,
            processing: config.processing,
        };
        let node = Node {
            recordings,
            events,
            calls_context,
            fleet: crate::fleet::Fleet::new(),
            prompts: Mutex::new(PromptCache::new(config.prompt_cache_bytes)),
            decoding: Mutex::new(HashMap::new()),
            refused: Mutex::new(RefusedPrompts::new(REFUSED_PROMPT_KEPT, 256)),
            decode_slots: tokio::sync::Semaphore::new(MAX_PROMPT_DECODES),
            advertised_ip: RwLock::new(config.advertised_ip),
            config,
            metrics,
            pool: Mutex::new(pool),
            calls: Mutex::new(Calls::default()),
            draining: AtomicBool::new(false),
            drain_signal: tokio::sync::watch::channel(false).0,
            next_playback: AtomicU64::new(1),
            admission: crate::admission::Gate::new(config_admission),
        };
        node.refresh_port_gauges();
        Ok(node)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn start_draining(&self) {
        if !self.draining.swap(true, Ordering::SeqCst) {
            self.drain_signal.send_replace(true);
        }
    }

    /// Resolves when the node starts draining, whoever asked for it.
    pub fn drain_requested(&self) -> tokio::sync::watch::Receiver<bool> {
        self.drain_signal.subscribe()
    }

    pub fn advertised_ip(&self) -> IpAddr {
        *read(&self.advertised_ip)
    }

    pub fn set_advertised_ip(&self, ip: IpAddr) {
        *write(&self.advertised_ip) = ip;
    }

    pub fn active_calls(&self) -> usize {
        lock(&self.calls).by_port.len()
    }

    pub fn port_counts(&self) -> PoolCounts {
        lock(&self.pool).counts(Instant::now())
    }

    /// RTP ports held by calls or in quarantine, and all of them: what placement compares.
    pub fn occupancy(&self) -> (i64, i64) {
        let c = self.port_counts();
        ((c.allocated + c.quarantined) as i64, c.total as i64)
    }

    /// True when `port` is in this node's RTP range.
    pub fn owns_port(&self, port: u32) -> bool {
        (self.config.port_min as u32..=self.config.port_max as u32).contains(&port)
    }

    pub fn refresh_port_gauges(&self) {
        let c = self.port_counts();
        self.metrics.ports.with_label_values(&["free"]).set(c.free as i64);
        self.metrics.ports.with_label_values(&["allocated"]).set(c.allocated as i64);
        self.metrics.ports.with_label_values(&["quarantined"]).set(c.quarantined as i64);
        self.metrics.sessions.set(self.active_calls() as i64);
    }

    /// Reserves a port pair and starts the call's task. Idempotent per call_id, so a
    /// caller retrying after a deadline gets the same port, not a leaked second one.
    pub async fn allocate(&self, call_id: &str) -> Result<Allocation, NodeError> {
        if self.is_draining() {
            return Err(NodeError::Draining);
        }
        if !call_id.is_empty() {
            if let Some(&port) = lock(&self.calls).by_call_id.get(call_id) {
                return Ok(Allocation { port, advertised_ip: self.advertised_ip() });
            }
        }
        // A retry of a call already here is answered above: only a new call is refused.
        if let Err(r) = self.admission.admit() {
            self.metrics.admission_refused.with_label_values(&[r.reason()]).inc();
            return Err(NodeError::AtCapacity(r));
        }
        let mut last_err = None;
        for _ in 0..BIND_ATTEMPTS {
            let port = lock(&self.pool).allocate(Instant::now())?;
            match bind_pair(self.config.rtp_listen, port) {
                Ok(sockets) => {
                    let handle = spawn_call(&self.calls_context, port, call_id.to_string(), sockets);
                    {
                        let mut calls = lock(&self.calls);
                        calls.by_port.insert(port, handle);
                        if !call_id.is_empty() {
                            calls.by_call_id.insert(call_id.to_string(), port);
                        }
                    }
                    self.refresh_port_gauges();
                    return Ok(Allocation { port, advertised_ip: self.advertised_ip() });
                }
                Err(e) => {
                    // Someone else holds it: set it aside through the quarantine and try another.
                    warn!(port, error = %e, "RTP port busy, trying another");
                    let _ = lock(&self.pool).release(port, Instant::now());
                    last_err = Some(e);
                }
            }
        }
        Err(NodeError::Bind(last_err.map(|e| e.to_string()).unwrap_or_default()))
    }

    pub fn call(&self, port: u32) -> Result<Arc<CallHandle>, NodeError> {
        u16::try_from(port).ok().and_then(|p| lock(&self.calls).by_port.get(&p).cloned()).ok_or(NodeError::UnknownPort(port))
    }

    pub fn call_by_id(&self, call_id: &str) -> Result<Arc<CallHandle>, NodeError> {
        let calls = lock(&self.calls);
        calls
            .by_call_id
            .get(call_id)
            .and_then(|p| calls.by_port.get(p).cloned())
            .ok_or_else(|| NodeError::UnknownCall(crate::echo::clip(call_id)))
    }

    /// Ends the call: its task stops, its sockets close, and only then does the port
    /// enter quarantine.
    pub async fn release(&self, port: u32) -> Result<(), NodeError> {
        let handle = {
            let mut calls = lock(&self.calls);
            let p = u16::try_from(port).map_err(|_| NodeError::UnknownPort(port))?;
            let h = calls.by_port.remove(&p).ok_or(NodeError::UnknownPort(port))?;
            if calls.by_call_id.get(&h.call_id) == Some(&p) {
                calls.by_call_id.remove(&h.call_id);
            }
            h
        };
        let _ = handle.commands.send(CallCommand::Shutdown).await;
        if let Some(join) = handle.task.lock().await.take() {
            let _ = join.await;
        }
        lock(&self.pool).release(handle.port, Instant::now())?;
        self.refresh_port_gauges();
        Ok(())
    }

    /// Ends every call (used when the drain deadline passes or the node stops).
    pub async fn release_all(&self) {
        let ports: Vec<u16> = lock(&self.calls).by_port.keys().copied().collect();
        for p in ports {
            let _ = self.release(p as u32).await;
        }
    }

    /// Waits until no call is left or the timeout passes; true when empty.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.active_calls() == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn next_playback_id(&self) -> u64 {
        self.next_playback.fetch_add(1, Ordering::Relaxed)
    }

    /// A `file://` prompt's audio at `rate` (the call's 8 kHz, or 16 kHz for the copy a
    /// wideband call sends), from the cache when it holds it.
    pub async fn load_prompt(&self, relative: &Path, rate: u32) -> Result<Arc<[i16]>, NodeError> {
        let full = uri::resolve_under(&self.config.assets_root, relative)?;
        let meta = tokio::fs::metadata(&full).await.map_err(|e| NodeError::Read(e.to_string()))?;
        if !meta.is_file() {
            return Err(NodeError::Uri(UriError::NotFound(relative.display().to_string())));
        }
        let key = PromptKey { path: full.clone(), modified: meta.modified().ok(), len: meta.len(), rate };
        if let Some(pcm) = lock(&self.prompts).get(&key) {
            self.metrics.cache_lookups.with_label_values(&["hit"]).inc();
            return Ok(pcm);
        }
        self.metrics.cache_lookups.with_label_values(&["miss"]).inc();
        if let Some(why) = lock(&self.refused).check(&key, Instant::now()) {
            return Err(NodeError::Undecodable(why));
        }
        // One decode per prompt however many calls ask for it at once.
        let cell = lock(&self.decoding).entry(key.clone()).or_default().clone();
        let result = cell
            .get_or_init(|| async {
                // A few decodes at once, node-wide; the rest wait their turn.
                let _slot = self.decode_slots.acquire().await.map_err(|e| PromptFailure::Read(e.to_string()))?;
                let bytes = tokio::fs::read(&full).await.map_err(|e| PromptFailure::Read(e.to_string()))?;
                let pcm = tokio::task::spawn_blocking(move || decode::prompt_to_pcm(&bytes, rate))
                    .await
                    .map_err(|e| PromptFailure::Read(e.to_string()))?;
                match pcm {
                    Ok(pcm) => {
                        let pcm: Arc<[i16]> = pcm.into();
                        let mut cache = lock(&self.prompts);
                        cache.insert(key.clone(), pcm.clone());
                        self.metrics.cache_bytes.set(cache.bytes() as i64);
                        Ok(pcm)
                    }
                    Err(e) => {
                        let why: Arc<str> = e.to_string().into();
                        lock(&self.refused).remember(key.clone(), why.clone(), Instant::now());
                        Err(PromptFailure::Undecodable(why))
                    }
                }
            })
            .await
            .clone();
        // Done: later requests find the cache (or the refusal). Only this decode's cell
        // goes; one that a request after it started stays for its own waiters.
        let mut decoding = lock(&self.decoding);
        if decoding.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            decoding.remove(&key);
        }
        drop(decoding);
        result.map_err(|f| match f {
            PromptFailure::Read(e) => NodeError::Read(e),
            PromptFailure::Undecodable(why) => NodeError::Undecodable(why),
        })
    }
}

/// Prompt decodes at once, node-wide (a decode holds its file and its output).
const MAX_PROMPT_DECODES: usize = 2;
/// How long a refused prompt is answered from memory.
const REFUSED_PROMPT_KEPT: Duration = Duration::from_secs(60);

/// One prompt's decode, awaited by every request for it meanwhile.
type SharedDecode = tokio::sync::OnceCell<Result<Arc<[i16]>, PromptFailure>>;

/// Why a shared prompt decode failed (each waiter gets its own copy).
#[derive(Debug, Clone)]
enum PromptFailure {
    Read(String),
    Undecodable(Arc<str>),
}

fn bind_pair(ip: IpAddr, port: u16) -> std::io::Result<BoundSockets> {
    let rtp = std::net::UdpSocket::bind(SocketAddr::new(ip, port))?;
    let rtcp = std::net::UdpSocket::bind(SocketAddr::new(ip, port + 1))?;
    rtp.set_nonblocking(true)?;
    rtcp.set_nonblocking(true)?;
    Ok(BoundSockets { rtp, rtcp })
}
