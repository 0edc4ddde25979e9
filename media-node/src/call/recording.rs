//! A call's recording control: at most one recording at a time, its segments numbered
//! in order, written on the core's flush schedule as the call goes, finished on
//! StopRecording or by the call's end. The timeline rules themselves are in
//! `core::recording`; the spool file in `recording::writer`.
//!
//! A recording whose spool file cannot be written (a full disk, a file-size limit)
//! fails loudly and alone: the call goes on, the error is logged once, counted, and
//! published as `call.media.recording.failed`; what reached the disk is salvaged at
//! once as a recording flagged cut short and stored as usual; StopRecording then
//! answers DATA_LOSS saying so.

use std::path::PathBuf;
use std::sync::Arc;

use tracing::{error, info, warn};

use crate::core::recording::FlushSchedule;
use crate::core::session::Outputs;
use crate::events::EventPublisher;
use crate::metrics::Metrics;
use crate::recording::{recover, RecordingError, RecordingJob, RecordingSpec, RecordingWriter};

pub(crate) struct CallRecorder {
    writer: Option<RecordingWriter>,
    /// Segments started on this call so far (the next one is numbered one more).
    segments: u32,
    schedule: FlushSchedule,
    spool: PathBuf,
    metrics: Arc<Metrics>,
    events: Arc<EventPublisher>,
    /// The running recording failed: StopRecording answers with this.
    failed: Option<RecordingError>,
    /// What failed recordings kept, to be stored (`take_salvaged`).
    salvaged: Vec<RecordingJob>,
}

impl CallRecorder {
    pub(crate) fn new(spool: PathBuf, metrics: Arc<Metrics>, events: Arc<EventPublisher>) -> CallRecorder {
        CallRecorder {
            writer: None,
            segments: 0,
            schedule: FlushSchedule::default(),
            spool,
            metrics,
            events,
            failed: None,
            salvaged: Vec::new(),
        }
    }

    /// Recordings that failed while being written, salvaged cut short: the caller
    /// stores them like finished ones.
    pub(crate) fn take_salvaged(&mut self) -> Vec<RecordingJob> {
        std::mem::take(&mut self.salvaged)
    }

    /// Starts a recording at timeline position `now` (the segment number is the call's).
    pub(crate) fn start(&mut self, mut spec: RecordingSpec, now: u64) -> Result<(), RecordingError> {
        if self.writer.is_some() {
            return Err(RecordingError::AlreadyRunning);
        }
        // A new recording after a failed one: the failure was the previous one's.
        self.failed = None;
        self.segments += 1;
        spec.segment = self.segments;
        let w = RecordingWriter::create(spec, &self.spool, now).map_err(RecordingError::Spool)?;
        info!(format = ?w.spec().channels, rate = w.spec().rate, "recording started");
        self.metrics.recordings_in_flight.inc();
        self.writer = Some(w);
        Ok(())
    }

    /// Finishes the running recording at `now`; the job is in the spool, to be stored.
    pub(crate) fn stop(&mut self, now: u64) -> Result<RecordingJob, RecordingError> {
        let Some(w) = self.writer.take() else {
            return Err(self.failed.take().unwrap_or(RecordingError::NotRunning));
        };
        self.metrics.recordings_in_flight.dec();
        let (call_id, trace_id, uri) = (w.spec().call_id.clone(), w.spec().trace_id.clone(), w.uri());
        match w.finish(now) {
            Ok(job) => {
                info!(uri = %job.uri(), seconds = job.seconds, "recording finished");
                Ok(job)
            }
            Err((e, part)) => {
                let reason = format!("finalising: {e}");
                let seconds = self.failed_at(&call_id, &trace_id, &uri, &reason, part);
                Err(RecordingError::Failed { seconds, reason })
            }
        }
    }

    /// The call's end finishes a running recording by itself.
    pub(crate) fn finish(&mut self, now: u64) -> Option<RecordingJob> {
        self.writer.as_ref()?;
        self.stop(now).ok()
    }

    /// Adds what the session heard and played since the last call, and writes out what
    /// the schedule says is due at `now`.
    pub(crate) fn record(&mut self, out: &Outputs, now: u64) {
        let Some(w) = self.writer.as_mut() else { return };
        for h in &out.heard {
            // What the caller really sent, also when echo cancellation or noise
            // suppression changed what listeners hear.
            match &h.as_sent {
                Some(a) => w.add_caller(h.wall_pos, &a.pcm, &a.wide),
                None => w.add_caller(h.wall_pos, &h.pcm, &h.wide),
            }
        }
        for p in &out.played {
            w.add_bot(p.pos, &p.pcm, &p.wide);
        }
        let Some(upto) = self.schedule.due(now, w.flushed_until()) else { return };
        if let Err(e) = w.flush_until(upto) {
            let Some(w) = self.writer.take() else { return };
            self.metrics.recordings_in_flight.dec();
            let (call_id, trace_id, uri) = (w.spec().call_id.clone(), w.spec().trace_id.clone(), w.uri());
            let reason = e.to_string();
            let part = w.abandon();
            let seconds = self.failed_at(&call_id, &trace_id, &uri, &reason, part);
            self.failed = Some(RecordingError::Failed { seconds, reason });
        }
    }

    /// A recording could not be written: what reached the disk is salvaged to be
    /// stored cut short, and the failure said once (log, metrics, event) with the
    /// seconds really kept. Returns those seconds.
    fn failed_at(&mut self, call_id: &str, trace_id: &str, uri: &str, reason: &str, part: PathBuf) -> f64 {
        self.metrics.recording_errors.inc();
        self.metrics.recordings_failed.inc();
        let kept = match recover::salvage(&part) {
            Ok(Some(job)) => {
                let seconds = job.seconds;
                self.salvaged.push(job);
                seconds
            }
            // Left for the recovery at the next start (counted there if it cannot be).
            Ok(None) => {
                warn!(part = %part.display(), "failed recording has no destination beside it; left in the spool");
                0.0
            }
            Err(e) => {
                warn!(part = %part.display(), error = %e, "failed recording left in the spool; recovered at the next start");
                0.0
            }
        };
        error!(%uri, seconds_kept = kept, error = %reason, "recording failed: the spool cannot be written; the call goes on, what was written is stored flagged cut short");
        self.events.recording_failed(call_id, trace_id, uri, reason, kept);
        kept
    }
}
