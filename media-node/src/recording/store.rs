//! Making finished recordings durable and putting them where they belong.
//!
//! A finished recording is already safe in the spool (WAV + manifest). Delivery then
//! tries to store it (S3, or the local recordings root); if storage is down it stays in
//! the spool and a background loop retries with backoff until it succeeds, also after
//! a restart, since the loop starts by picking up every manifest it finds. Nothing is
//! deleted from the spool before the store has confirmed the object. Recordings a hard
//! stop left unfinished are recovered first (`recover`), flagged cut short.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::destination::Destination;
use super::writer::RecordingJob;
use crate::events::EventPublisher;
use crate::metrics::Metrics;
use crate::sync::lock;

/// Files larger than this go up as multipart uploads, in parts of this size.
const PART_SIZE: u64 = 8 * 1024 * 1024;
/// How long StopRecording waits for storage before it answers "spooled".
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Spooled recordings stored at once by the retry loop.
const RETRY_PARALLEL: usize = 4;
/// Limits on each request to S3 (not on a whole upload, which may take many).
const S3_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const S3_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub spool_dir: PathBuf,
    pub recordings_root: PathBuf,
    pub s3: S3Settings,
    /// Where a StartRecording without output_uri goes.
    pub default_destination: Option<Destination>,
}

/// Where a recording ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// In its final place.
    Stored(String),
    /// Safe in the local spool; will be stored at this URI when storage is back.
    Spooled(String),
}

struct Retry {
    next: Instant,
    delay: Duration,
}

pub struct RecordingStore {
    pub config: StoreConfig,
    s3: aws_sdk_s3::Client,
    metrics: Arc<Metrics>,
    events: Arc<EventPublisher>,
    /// Spooled manifests being retried, by manifest path.
    retries: Mutex<HashMap<PathBuf, Retry>>,
    /// Manifests an attempt is working on right now (never two at once).
    busy: Mutex<std::collections::HashSet<PathBuf>>,
    wake: tokio::sync::Notify,
}

fn s3_client(s: &S3Settings) -> aws_sdk_s3::Client {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let http = aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https();
    let mut b = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .connect_timeout(S3_CONNECT_TIMEOUT)
                .operation_attempt_timeout(S3_REQUEST_TIMEOUT)
                .build(),
        )
        .region(aws_sdk_s3::config::Region::new(s.region.clone().unwrap_or_else(|| "us-east-1".into())));
    if let (Some(ak), Some(sk)) = (&s.access_key_id, &s.secret_access_key) {
        b = b.credentials_provider(aws_sdk_s3::config::Credentials::new(ak, sk, None, None, "media-node-config"));
    }
    if let Some(e) = &s.endpoint {
        // S3-compatible stores (MinIO, Ceph, ...) want path-style addressing.
        b = b.endpoint_url(e).force_path_style(true);
    }
    aws_sdk_s3::Client::from_conf(b.build())
}

impl RecordingStore {
    pub fn new(config: StoreConfig, metrics: Arc<Metrics>, events: Arc<EventPublisher>) -> Arc<RecordingStore> {
        Arc::new(RecordingStore {
            events,
            s3: s3_client(&config.s3),
            config,
            metrics,
            retries: Mutex::new(HashMap::new()),
            busy: Mutex::new(Default::default()),
            wake: tokio::sync::Notify::new(),
        })
    }

    pub fn pending(&self) -> usize {
        lock(&self.retries).len()
    }

    /// One attempt to store a finished recording, waited for at most ATTEMPT_TIMEOUT:
    /// on failure it stays spooled and is retried in the background; an attempt that
    /// is only slow (slow storage) is answered "spooled" and goes on by itself, never
    /// cancelled and started over.
    pub async fn deliver(self: &Arc<Self>, job: RecordingJob) -> Delivered {
        let uri = job.uri();
        let me = self.clone();
        let manifest = job.manifest_path();
        let call_id = job.call_id.clone();
        let attempt = tokio::spawn(async move {
            let result = me.attempt(&job).await;
            if let Err(e) = &result {
                warn!(call_id = %job.call_id, uri = %job.uri(), error = %e, "recording storage failed; kept in spool, will retry");
                me.schedule(job.manifest_path(), Duration::from_secs(1));
            }
            result.is_ok()
        });
        match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
            Ok(Ok(true)) => Delivered::Stored(uri),
            Ok(_) => Delivered::Spooled(uri),
            Err(_) => {
                warn!(%call_id, %uri, "recording storage is slow; answered as spooled, the upload goes on");
                // Should the slow attempt fail, the retry loop has it (it skips it while busy).
                self.schedule(manifest, Duration::from_secs(1));
                Delivered::Spooled(uri)
            }
        }
    }

    fn schedule(&self, manifest: PathBuf, delay: Duration) {
        let mut r = lock(&self.retries);
        r.entry(manifest).or_insert(Retry { next: Instant::now() + delay, delay });
        self.metrics.uploads_pending.set(r.len() as i64);
        drop(r);
        self.wake.notify_one();
    }

    async fn attempt(&self, job: &RecordingJob) -> anyhow::Result<()> {
        if !lock(&self.busy).insert(job.manifest_path()) {
            anyhow::bail!("another attempt is under way");
        }
        self.store_marked(job).await
    }

    /// Stores a job already marked busy, and unmarks it.
    async fn store_marked(&self, job: &RecordingJob) -> anyhow::Result<()> {
        let manifest = job.manifest_path();
        let result = self.store(job).await;
        lock(&self.busy).remove(&manifest);
        match &result {
            Ok(()) => {
                // Only now that the store confirmed it does the spool copy go.
                let _ = std::fs::remove_file(&job.wav);
                let _ = std::fs::remove_file(&manifest);
                let mut r = lock(&self.retries);
                r.remove(&manifest);
                self.metrics.uploads_pending.set(r.len() as i64);
                self.metrics.recording_bytes.inc_by(job.bytes);
                info!(call_id = %job.call_id, uri = %job.uri(), bytes = job.bytes, "recording stored");
                self.events.recording_available(&job.call_id, &job.trace_id, &job.uri(), &self.public_url(job), job.cut_short);
            }
            Err(_) => self.metrics.upload_failures.inc(),
        }
        result
    }

    /// An HTTP address of a stored S3 recording (for consumers that fetch it directly).
    fn public_url(&self, job: &RecordingJob) -> String {
        if job.kind != "s3" {
            return String::new();
        }
        match &self.config.s3.endpoint {
            Some(e) => format!("{}/{}/{}", e.trim_end_matches('/'), job.target, job.key),
            None => {
                format!("https://{}.s3.{}.amazonaws.com/{}", job.target, self.config.s3.region.as_deref().unwrap_or("us-east-1"), job.key)
            }
        }
    }

    async fn store(&self, job: &RecordingJob) -> anyhow::Result<()> {
        match job.kind.as_str() {
            "s3" => self.put_s3(job).await,
            "file" => {
                let dir = crate::audio::uri::relative_prompt_path(&format!("{}/{}", job.target, job.key))
                    .map_err(|e| anyhow::anyhow!("recording path: {e}"))?;
                // Checked again here: a symlink may have appeared since StartRecording.
                let dest = super::destination::contained(&self.config.recordings_root, &dir).map_err(|e| anyhow::anyhow!("{e}"))?;
                if let Some(parent) = dest.parent() {
                    tokio::fs::create_dir_all(parent).await?;
                }
                let tmp = dest.with_extension("wav.tmp");
                tokio::fs::copy(&job.wav, &tmp).await?;
                tokio::fs::rename(&tmp, &dest).await?;
                Ok(())
            }
            other => anyhow::bail!("unknown recording kind {other:?}"),
        }
    }

    async fn put_s3(&self, job: &RecordingJob) -> anyhow::Result<()> {
        let len = tokio::fs::metadata(&job.wav).await?.len();
        if len <= PART_SIZE {
            self.s3
                .put_object()
                .bucket(&job.target)
                .key(&job.key)
                .content_type("audio/wav")
                .metadata("call-id", &job.call_id)
                .body(ByteStream::from_path(&job.wav).await?)
                .send()
                .await?;
            return Ok(());
        }
        let up = self.s3.create_multipart_upload().bucket(&job.target).key(&job.key).content_type("audio/wav").send().await?;
        let id = up.upload_id().ok_or_else(|| anyhow::anyhow!("no upload id"))?.to_string();
        let result = async {
            let mut parts = Vec::new();
            let mut offset = 0u64;
            let mut n = 1;
            while offset < len {
                let size = PART_SIZE.min(len - offset);
                let body = ByteStream::read_from()
                    .path(&job.wav)
                    .offset(offset)
                    .length(aws_sdk_s3::primitives::Length::Exact(size))
                    .build()
                    .await?;
                let part = self.s3.upload_part().bucket(&job.target).key(&job.key).upload_id(&id).part_number(n).body(body).send().await?;
                parts.push(CompletedPart::builder().part_number(n).set_e_tag(part.e_tag().map(String::from)).build());
                offset += size;
                n += 1;
            }
            self.s3
                .complete_multipart_upload()
                .bucket(&job.target)
                .key(&job.key)
                .upload_id(&id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await?;
            anyhow::Ok(())
        }
        .await;
        if result.is_err() {
            let _ = self.s3.abort_multipart_upload().bucket(&job.target).key(&job.key).upload_id(&id).send().await;
        }
        result
    }

    /// Turns what a hard stop left unfinished in the spool into recordings to store
    /// (see `recover`). Call before the node serves: it renames `.part` files, which
    /// must not be ones this process is writing.
    pub fn recover_spool(&self) -> usize {
        let got = super::recover::recover_spool(&self.config.spool_dir);
        for job in &got.cut_short {
            self.metrics.recordings_recovered.inc();
            warn!(call_id = %job.call_id, uri = %job.uri(), seconds = job.seconds, "recording cut short by the node's last stop recovered; storing it");
        }
        for job in &got.finished {
            info!(call_id = %job.call_id, uri = %job.uri(), "finished recording without manifest recovered");
        }
        for part in &got.orphaned {
            warn!(part = %part.display(), "unfinished recording with no destination left in the spool");
        }
        self.metrics.spool_orphans.set(got.orphaned.len() as i64);
        got.cut_short.len() + got.finished.len()
    }

    /// Picks up every spooled recording (from before a restart too).
    pub fn scan_spool(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.config.spool_dir) else { return 0 };
        let mut found = 0;
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                self.schedule(p, Duration::ZERO);
                found += 1;
            }
        }
        found
    }

    /// Retries spooled recordings with exponential backoff (1 s up to 60 s) until each
    /// is stored, up to RETRY_PARALLEL at once: one slow upload does not hold back the
    /// rest. An attempt has no deadline of its own; each request to storage has
    /// (`s3_client`), so a large upload to slow storage is never cut and started over.
    pub async fn run_retries(self: Arc<Self>, shutdown: CancellationToken) {
        let found = self.scan_spool();
        if found > 0 {
            info!(found, "spooled recordings found; storing them");
        }
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.try_join_next().is_some() {}
            let due: Vec<PathBuf> = {
                let r = lock(&self.retries);
                let busy = lock(&self.busy);
                let now = Instant::now();
                r.iter().filter(|(k, v)| v.next <= now && !busy.contains(*k)).map(|(k, _)| k.clone()).collect()
            };
            for manifest in due.into_iter().take(RETRY_PARALLEL.saturating_sub(running.len())) {
                let Some(job) = RecordingJob::read(&manifest) else {
                    warn!(manifest = %manifest.display(), "unreadable recording manifest left in spool");
                    lock(&self.retries).remove(&manifest);
                    continue;
                };
                // Marked busy before the task runs, so the next round does not pick it again.
                if !lock(&self.busy).insert(manifest.clone()) {
                    continue;
                }
                let me = self.clone();
                running.spawn(async move {
                    let ok = me.store_marked(&job).await.is_ok();
                    if !ok {
                        let mut r = lock(&me.retries);
                        if let Some(entry) = r.get_mut(&manifest) {
                            entry.delay = (entry.delay * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
                            entry.next = Instant::now() + entry.delay;
                        }
                    }
                });
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}
