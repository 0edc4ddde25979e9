//! A call's events in the two shapes they leave the node in: the StreamCallEvents
//! message (proto) and the broker's `call.media.*` JSON. One place names them both, so
//! the stream and the broker never disagree on what happened.

use std::time::{Duration, SystemTime};

use media_proto::pb::{self, call_event::Event as E};
use serde_json::json;

use super::timestamp;
use crate::core::analysis::{samples_to_ms, Signal};

/// Something that happened in a call, at a timeline position (8 kHz samples).
#[derive(Debug, Clone, PartialEq)]
pub enum Happened {
    Signal(Signal),
    PlaybackStarted { uri: String, pos: u64 },
    PlaybackFinished { uri: String, pos: u64, played_ms: u64, reason: &'static str },
    Turn { pos: u64, agent_ms: u64, media_ms: u64 },
    Quality { pos: u64, loss_percent: f64, jitter_ms: f64, r_factor: f64, mos: f64, caller_dbfs: f64, bot_dbfs: f64 },
}

impl Happened {
    pub fn pos(&self) -> u64 {
        match self {
            Happened::Signal(s) => s.pos(),
            Happened::PlaybackStarted { pos, .. }
            | Happened::PlaybackFinished { pos, .. }
            | Happened::Turn { pos, .. }
            | Happened::Quality { pos, .. } => *pos,
        }
    }

    /// The `kind` label of `media_call_events_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Happened::Signal(Signal::SpeechStarted { .. }) => "speech_started",
            Happened::Signal(Signal::SpeechStopped { .. }) => "speech_stopped",
            Happened::Signal(Signal::Dtmf { .. }) => "dtmf",
            Happened::Signal(Signal::MediaTimeout { .. }) => "media_timeout",
            Happened::Signal(Signal::MediaResumed { .. }) => "media_resumed",
            Happened::PlaybackStarted { .. } => "playback_started",
            Happened::PlaybackFinished { .. } => "playback_finished",
            Happened::Turn { .. } => "turn_latency",
            Happened::Quality { .. } => "quality",
        }
    }
}

/// Where a call's timeline sits on the wall clock.
#[derive(Debug, Clone, Copy)]
pub struct CallClock {
    pub port: u16,
    pub started: SystemTime,
}

pub fn to_proto(clock: CallClock, call_id: &str, h: &Happened) -> pb::CallEvent {
    let media_time_ms = samples_to_ms(h.pos());
    let event = match h {
        Happened::Signal(Signal::SpeechStarted { residual_echo, .. }) => {
            E::SpeechStarted(pb::SpeechStarted { residual_echo: *residual_echo })
        }
        Happened::Signal(Signal::SpeechStopped { duration_ms, .. }) => E::SpeechStopped(pb::SpeechStopped { duration_ms: *duration_ms }),
        Happened::Signal(Signal::Dtmf { digit, duration_ms, end, source, .. }) => {
            E::Dtmf(pb::Dtmf { digit: digit.to_string(), end: *end, duration_ms: *duration_ms, source: source.label().into() })
        }
        Happened::Signal(Signal::MediaTimeout { silent_ms, .. }) => E::MediaTimeout(pb::MediaTimeout { silent_ms: *silent_ms }),
        Happened::Signal(Signal::MediaResumed { silent_ms, .. }) => E::MediaResumed(pb::MediaResumed { silent_ms: *silent_ms }),
        Happened::PlaybackStarted { uri, .. } => E::PlaybackStarted(pb::PlaybackStarted { audio_uri: uri.clone() }),
        Happened::PlaybackFinished { uri, played_ms, reason, .. } => {
            E::PlaybackFinished(pb::PlaybackFinished { audio_uri: uri.clone(), played_ms: *played_ms, reason: reason.to_string() })
        }
        Happened::Turn { agent_ms, media_ms, .. } => {
            E::TurnLatency(pb::TurnLatency { agent_ms: *agent_ms, media_ms: *media_ms, total_ms: agent_ms + media_ms })
        }
        Happened::Quality { loss_percent, jitter_ms, r_factor, mos, caller_dbfs, bot_dbfs, .. } => E::Quality(pb::Quality {
            loss_percent: *loss_percent as f32,
            jitter_ms: *jitter_ms as f32,
            r_factor: *r_factor as f32,
            mos: *mos as f32,
            caller_level_dbfs: *caller_dbfs as f32,
            bot_level_dbfs: *bot_dbfs as f32,
        }),
    };
    pb::CallEvent {
        server_rtp_port: clock.port as u32,
        call_id: call_id.to_string(),
        media_time_ms,
        wall_time: Some(timestamp(clock.started + Duration::from_millis(media_time_ms))),
        event: Some(event),
    }
}

/// The broker's routing key and JSON payload; None for what the broker already gets
/// in its own shape (`call.media.playback.finished` is published where PlayAudio
/// answers, as before).
pub fn to_broker(call_id: &str, h: &Happened) -> Option<(&'static str, serde_json::Value)> {
    let ms = samples_to_ms(h.pos());
    Some(match h {
        Happened::Signal(Signal::SpeechStarted { .. }) => (super::SPEECH_STARTED, json!({"callId": call_id, "mediaTimeMs": ms})),
        Happened::Signal(Signal::SpeechStopped { duration_ms, .. }) => {
            (super::SPEECH_STOPPED, json!({"callId": call_id, "mediaTimeMs": ms, "durationMs": duration_ms}))
        }
        // Digits go to the broker once, when they end: a service that wants key-down
        // times reads the stream.
        Happened::Signal(Signal::Dtmf { end: false, .. }) => return None,
        Happened::Signal(Signal::Dtmf { digit, duration_ms, source, .. }) => (
            super::DTMF,
            json!({"callId": call_id, "mediaTimeMs": ms, "digit": digit.to_string(), "durationMs": duration_ms, "source": source.label()}),
        ),
        Happened::Signal(Signal::MediaTimeout { silent_ms, .. }) => {
            (super::MEDIA_TIMEOUT, json!({"callId": call_id, "mediaTimeMs": ms, "silentMs": silent_ms}))
        }
        Happened::Signal(Signal::MediaResumed { silent_ms, .. }) => {
            (super::MEDIA_RESUMED, json!({"callId": call_id, "mediaTimeMs": ms, "silentMs": silent_ms}))
        }
        Happened::PlaybackStarted { uri, .. } => (super::PLAYBACK_STARTED, json!({"callId": call_id, "mediaTimeMs": ms, "uri": uri})),
        Happened::Quality { loss_percent, jitter_ms, r_factor, mos, caller_dbfs, bot_dbfs, .. } => (
            super::QUALITY,
            json!({"callId": call_id, "mediaTimeMs": ms, "lossPercent": loss_percent, "jitterMs": jitter_ms, "rFactor": r_factor,
                   "mos": mos, "callerLevelDbfs": caller_dbfs, "botLevelDbfs": bot_dbfs}),
        ),
        // The turn's latency is for the stream and the histogram metric.
        Happened::PlaybackFinished { .. } | Happened::Turn { .. } => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::analysis::DtmfSource;

    #[test]
    fn one_event_in_both_shapes() {
        let clock = CallClock { port: 20000, started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000) };
        let h = Happened::Signal(Signal::Dtmf { digit: '#', pos: 12_000, duration_ms: 120, end: true, source: DtmfSource::InBand });
        let p = to_proto(clock, "call-1", &h);
        assert_eq!((p.server_rtp_port, p.media_time_ms), (20000, 1500));
        assert_eq!(p.wall_time, Some(prost_types::Timestamp { seconds: 1001, nanos: 500_000_000 }));
        assert_eq!(p.event, Some(E::Dtmf(pb::Dtmf { digit: "#".into(), end: true, duration_ms: 120, source: "inband".into() })));
        let (key, json) = to_broker("call-1", &h).unwrap();
        assert_eq!(key, "call.media.dtmf");
        assert_eq!(json["digit"], "#");
        assert_eq!(json["mediaTimeMs"], 1500);
        let down = Happened::Signal(Signal::Dtmf { digit: '#', pos: 12_000, duration_ms: 0, end: false, source: DtmfSource::InBand });
        assert!(to_broker("call-1", &down).is_none(), "key-down is for the stream only");
        assert_eq!(h.kind(), "dtmf");
    }
}
