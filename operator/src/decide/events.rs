//! Which events are one series. Kubernetes folds repeats of an event into a series (a
//! count and a last-seen time), so a controller that says the same thing on every
//! reconcile does not flood etcd. A repeat is the same thing said again about the same
//! object: same type, reason *and note*. (kube-rs's Recorder folds by reason alone and
//! keeps the first note, so a scale-down that followed a scale-up read "replicas
//! 1 -> 2" with its count bumped.)

use std::collections::HashMap;

use super::{SignedDuration, Timestamp};

/// A series not seen for this long starts over as a new event (kube-rs and client-go
/// use about the same).
pub const SERIES_TTL: SignedDuration = SignedDuration::from_mins(6);
/// Series remembered at most; the oldest is forgotten first. Bounds memory whatever
/// the notes say.
pub const MAX_SERIES: usize = 4096;
/// The API server refuses a note longer than 1 KB.
pub const MAX_NOTE: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventKey {
    pub namespace: String,
    /// The object the event is about.
    pub regarding: String,
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

impl EventKey {
    pub fn new(namespace: &str, regarding: &str, warning: bool, reason: &str, note: &str) -> EventKey {
        EventKey { namespace: namespace.into(), regarding: regarding.into(), warning, reason: reason.into(), note: clip_note(note) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emit {
    /// A new Event object with this name.
    Create { name: String },
    /// The same thing again: the Event `name` now has `count` occurrences.
    Repeat { name: String, count: i32 },
}

#[derive(Debug, Clone)]
struct Series {
    name: String,
    count: i32,
    last: Timestamp,
}

#[derive(Debug, Default)]
pub struct EventSeries {
    series: HashMap<EventKey, Series>,
}

impl EventSeries {
    /// What to write for `key` said at `now`; the series is taken as written (call
    /// `forget` when the write failed, so the next try creates it again).
    pub fn record(&mut self, key: &EventKey, now: Timestamp) -> Emit {
        self.series.retain(|_, s| s.last + SERIES_TTL > now);
        if let Some(s) = self.series.get_mut(key) {
            s.count += 1;
            s.last = now;
            return Emit::Repeat { name: s.name.clone(), count: s.count };
        }
        if self.series.len() >= MAX_SERIES {
            if let Some(oldest) = self.series.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| k.clone()) {
                self.series.remove(&oldest);
            }
        }
        // Unique per write: nanoseconds, as client-go names them, plus the count of
        // series held, so two events in the same nanosecond still differ.
        let name = format!("{}.{:x}{:x}", key.regarding, now.as_nanosecond(), self.series.len());
        self.series.insert(key.clone(), Series { name: name.clone(), count: 1, last: now });
        Emit::Create { name }
    }

    pub fn forget(&mut self, key: &EventKey) {
        self.series.remove(key);
    }
}

fn clip_note(note: &str) -> String {
    if note.len() <= MAX_NOTE {
        return note.to_string();
    }
    let mut end = MAX_NOTE - 3;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &note[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn key(note: &str) -> EventKey {
        EventKey::new("ns", "pool-a", false, "Autoscaled", note)
    }

    #[test]
    fn the_same_thing_said_again_is_one_series_and_a_new_thing_is_a_new_event() {
        let mut s = EventSeries::default();
        let up = key("replicas 1 -> 2 (25 calls held)");
        let down = key("replicas 2 -> 1 (0 calls held)");
        let Emit::Create { name: first } = s.record(&up, t(0)) else { panic!("first is created") };
        assert_eq!(s.record(&up, t(10)), Emit::Repeat { name: first.clone(), count: 2 });
        match s.record(&down, t(20)) {
            Emit::Create { name } => assert_ne!(name, first, "a scale-down is its own event"),
            other => panic!("a scale-down folded into the scale-up: {other:?}"),
        }
        assert_eq!(s.record(&up, t(30)), Emit::Repeat { name: first, count: 3 });
    }

    #[test]
    fn a_series_quiet_past_its_ttl_starts_over_and_a_failed_write_is_retried_as_new() {
        let mut s = EventSeries::default();
        let k = key("node a drains");
        assert!(matches!(s.record(&k, t(0)), Emit::Create { .. }));
        assert!(matches!(s.record(&k, t(0) + SERIES_TTL + SignedDuration::from_secs(1)), Emit::Create { .. }));
        s.forget(&k);
        assert!(matches!(s.record(&k, t(400)), Emit::Create { .. }));
    }

    #[test]
    fn memory_is_bounded_and_notes_fit_the_api_limit() {
        let mut s = EventSeries::default();
        for i in 0..(MAX_SERIES + 100) {
            s.record(&key(&format!("note {i}")), t(i as i64 / 100));
        }
        assert!(s.series.len() <= MAX_SERIES);
        let long = key(&"é".repeat(2000));
        assert!(long.note.len() <= MAX_NOTE, "{}", long.note.len());
    }
}
