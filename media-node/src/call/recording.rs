//! A call's recording control: at most one recording at a time, its segments numbered
//! in order, written on the core's flush schedule as the call goes, finished on
//! StopRecording or by the call's end. The timeline rules themselves are in
//! `core::recording`; the spool file in `recording::writer`.

use std::path::PathBuf;
use std::sync::Arc;

use tracing::{error, info};

use crate::core::recording::FlushSchedule;
use crate::core::session::Outputs;
use crate::metrics::Metrics;
use crate::recording::{RecordingError, RecordingJob, RecordingSpec, RecordingWriter};

pub(crate) struct CallRecorder {
    writer: Option<RecordingWriter>,
    /// Segments started on this call so far (the next one is numbered one more).
    segments: u32,
    schedule: FlushSchedule,
    spool: PathBuf,
    metrics: Arc<Metrics>,
}

impl CallRecorder {
    pub(crate) fn new(spool: PathBuf, metrics: Arc<Metrics>) -> CallRecorder {
        CallRecorder { writer: None, segments: 0, schedule: FlushSchedule::default(), spool, metrics }
    }

    /// Starts a recording at timeline position `now` (the segment number is the call's).
    pub(crate) fn start(&mut self, mut spec: RecordingSpec, now: u64) -> Result<(), RecordingError> {
        if self.writer.is_some() {
            return Err(RecordingError::AlreadyRunning);
        }
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
        let w = self.writer.take().ok_or(RecordingError::NotRunning)?;
        self.metrics.recordings_in_flight.dec();
        match w.finish(now) {
            Ok(job) => {
                info!(uri = %job.uri(), seconds = job.seconds, "recording finished");
                Ok(job)
            }
            Err(e) => {
                self.metrics.recording_errors.inc();
                error!(error = %e, "recording could not be finalised");
                Err(RecordingError::Finalise(e))
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
            w.add_caller(h.wall_pos, &h.pcm);
        }
        for p in &out.played {
            w.add_bot(p.pos, &p.pcm);
        }
        let Some(upto) = self.schedule.due(now, w.flushed_until()) else { return };
        if let Err(e) = w.flush_until(upto) {
            self.metrics.recording_errors.inc();
            error!(error = %e, "writing the recording to the spool failed");
        }
    }
}
