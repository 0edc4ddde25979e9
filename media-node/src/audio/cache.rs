//! Decoded prompts kept in memory, bounded in bytes, least recently used out first.
//! An entry is keyed by path and the file's modification time and size, so an edited
//! prompt is picked up without a restart, and by the rate it was decoded at: a
//! wideband call's 16 kHz copy of a prompt is an entry of its own.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PromptKey {
    pub path: PathBuf,
    pub modified: Option<SystemTime>,
    pub len: u64,
    /// The rate the audio was decoded at.
    pub rate: u32,
}

struct Entry {
    pcm: Arc<[i16]>,
    last_used: u64,
}

pub struct PromptCache {
    max_bytes: usize,
    bytes: usize,
    clock: u64,
    entries: HashMap<PromptKey, Entry>,
}

impl PromptCache {
    pub fn new(max_bytes: usize) -> PromptCache {
        PromptCache { max_bytes, bytes: 0, clock: 0, entries: HashMap::new() }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn get(&mut self, key: &PromptKey) -> Option<Arc<[i16]>> {
        self.clock += 1;
        let e = self.entries.get_mut(key)?;
        e.last_used = self.clock;
        Some(e.pcm.clone())
    }

    /// Stores a prompt unless it alone is larger than the whole cache.
    pub fn insert(&mut self, key: PromptKey, pcm: Arc<[i16]>) {
        let size = pcm.len() * 2;
        if size > self.max_bytes {
            return;
        }
        self.clock += 1;
        if let Some(old) = self.entries.insert(key, Entry { pcm, last_used: self.clock }) {
            self.bytes -= old.pcm.len() * 2;
        }
        self.bytes += size;
        while self.bytes > self.max_bytes {
            let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.last_used).map(|(k, _)| k.clone()) else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= e.pcm.len() * 2;
            }
        }
    }
}

/// Prompts refused lately (undecodable, too long), with why: asked again within
/// `keep`, the same answer comes at once instead of another decode. Bounded in count;
/// an edited file is a new key (its time and size), so it is tried afresh.
pub struct RefusedPrompts {
    keep: Duration,
    cap: usize,
    entries: HashMap<PromptKey, (Instant, Arc<str>)>,
}

impl RefusedPrompts {
    pub fn new(keep: Duration, cap: usize) -> RefusedPrompts {
        RefusedPrompts { keep, cap, entries: HashMap::new() }
    }

    /// Why `key` was refused, if it was within `keep` of `now`.
    pub fn check(&mut self, key: &PromptKey, now: Instant) -> Option<Arc<str>> {
        match self.entries.get(key) {
            Some((at, why)) if now.saturating_duration_since(*at) < self.keep => Some(why.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn remember(&mut self, key: PromptKey, why: Arc<str>, now: Instant) {
        let keep = self.keep;
        self.entries.retain(|_, (at, _)| now.saturating_duration_since(*at) < keep);
        if self.entries.len() >= self.cap {
            if let Some(oldest) = self.entries.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| k.clone()) {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (now, why));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_prompt_is_remembered_for_a_while_and_the_list_stays_bounded() {
        let t0 = Instant::now();
        let mut r = RefusedPrompts::new(Duration::from_secs(60), 2);
        r.remember(key("bomb"), "too long".into(), t0);
        assert_eq!(r.check(&key("bomb"), t0 + Duration::from_secs(59)).as_deref(), Some("too long"));
        assert_eq!(r.check(&key("bomb"), t0 + Duration::from_secs(60)), None, "forgotten after a minute");
        let edited = PromptKey { len: 1, ..key("bomb") };
        r.remember(key("bomb"), "too long".into(), t0);
        assert_eq!(r.check(&edited, t0), None, "an edited file is tried afresh");
        r.remember(key("b"), "x".into(), t0 + Duration::from_secs(1));
        r.remember(key("c"), "x".into(), t0 + Duration::from_secs(2));
        assert_eq!(r.entries.len(), 2);
        assert_eq!(r.check(&key("bomb"), t0 + Duration::from_secs(2)), None, "the oldest made room");
    }

    fn key(name: &str) -> PromptKey {
        PromptKey { path: name.into(), modified: None, len: 0, rate: 8000 }
    }

    #[test]
    fn stays_within_its_byte_bound_evicting_least_recent() {
        let mut c = PromptCache::new(1000);
        c.insert(key("a"), vec![0i16; 200].into());
        c.insert(key("b"), vec![0i16; 200].into());
        assert!(c.get(&key("a")).is_some());
        c.insert(key("c"), vec![0i16; 200].into());
        assert!(c.bytes() <= 1000);
        assert!(c.get(&key("b")).is_none(), "b was least recently used");
        assert!(c.get(&key("a")).is_some());
        assert!(c.get(&key("c")).is_some());
        c.insert(key("huge"), vec![0i16; 600].into());
        assert!(c.get(&key("huge")).is_none(), "larger than the cache: not kept");
        assert_eq!(c.len(), 2);
    }
}
