//! Bounded in-memory cache of measurements by URL: fresh within the TTL, then revalidated.
//!
//! Within `cache_ttl_secs` the URL alone is the key and no request is made. After it, an
//! entry whose server gave an `ETag` (else `Last-Modified`) is kept as a validator: the next
//! probe sends it (`If-None-Match` / `If-Modified-Since`) and a 304 reuses the measurement.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Measured;

/// What identifies one version of a file on its server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Validator {
    ETag(String),
    LastModified(String),
}

#[derive(Debug, Clone)]
struct Entry {
    measured: Measured,
    validator: Option<Validator>,
    stored_at: Instant,
}

/// What the cache knows about a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    Fresh(Measured),
    /// Older than the TTL; the server may confirm it with a 304.
    Stale(Validator),
    Miss,
}

#[derive(Debug)]
pub(crate) struct ProbeCache {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<String, Entry>>,
}

impl ProbeCache {
    /// A TTL of zero disables the cache.
    pub(crate) fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic elsewhere while holding the lock leaves a consistent map (every update
        // is a single insert or remove), so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn lookup(&self, key: &str, now: Instant) -> Lookup {
        if self.ttl.is_zero() {
            return Lookup::Miss;
        }
        let mut entries = self.entries();
        let Some(entry) = entries.get(key) else {
            return Lookup::Miss;
        };
        if now.saturating_duration_since(entry.stored_at) < self.ttl {
            return Lookup::Fresh(entry.measured.clone());
        }
        match entry.validator.clone() {
            Some(validator) => Lookup::Stale(validator),
            None => {
                entries.remove(key);
                Lookup::Miss
            }
        }
    }

    pub(crate) fn store(&self, key: &str, measured: Measured, validator: Option<Validator>, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries();
        if entries.len() >= self.capacity && !entries.contains_key(key) {
            let ttl = self.ttl;
            entries.retain(|_, e| now.saturating_duration_since(e.stored_at) < ttl);
            if entries.len() >= self.capacity {
                let oldest = entries.iter().min_by_key(|(_, e)| e.stored_at).map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    entries.remove(&oldest);
                }
            }
        }
        entries.insert(
            key.to_string(),
            Entry {
                measured,
                validator,
                stored_at: now,
            },
        );
    }

    /// The server answered 304: the entry is fresh again.
    pub(crate) fn refresh(&self, key: &str, now: Instant) -> Option<Measured> {
        let mut entries = self.entries();
        let entry = entries.get_mut(key)?;
        entry.stored_at = now;
        Some(entry.measured.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Container;
    use crate::probe::boxes::Movie;

    fn measured(ms: u64) -> Measured {
        Measured {
            movie: Movie {
                container: Container::Mp4,
                duration_ms: ms,
                has_audio: false,
                has_video: true,
            },
            size: Some(1000),
        }
    }

    #[test]
    fn entries_are_fresh_within_the_ttl_then_stale_with_a_validator_or_gone() {
        let cache = ProbeCache::new(Duration::from_secs(60), 10);
        let t0 = Instant::now();
        let etag = Validator::ETag("\"v1\"".into());
        cache.store("a", measured(2000), Some(etag.clone()), t0);
        cache.store("b", measured(3000), None, t0);
        assert_eq!(cache.lookup("a", t0), Lookup::Fresh(measured(2000)));
        let later = t0 + Duration::from_secs(61);
        assert_eq!(cache.lookup("a", later), Lookup::Stale(etag));
        assert_eq!(cache.lookup("b", later), Lookup::Miss);
        assert_eq!(cache.refresh("a", later), Some(measured(2000)));
        assert_eq!(cache.lookup("a", later), Lookup::Fresh(measured(2000)));
        assert_eq!(cache.lookup("c", t0), Lookup::Miss);
    }

    #[test]
    fn the_cache_never_grows_past_its_capacity() {
        let cache = ProbeCache::new(Duration::from_secs(60), 3);
        let t0 = Instant::now();
        for i in 0..10_u64 {
            cache.store(&format!("u{i}"), measured(i), None, t0 + Duration::from_millis(i));
        }
        assert_eq!(cache.entries().len(), 3);
        // The newest survive.
        assert_eq!(
            cache.lookup("u9", t0 + Duration::from_secs(1)),
            Lookup::Fresh(measured(9))
        );
        assert_eq!(cache.lookup("u0", t0), Lookup::Miss);
    }

    #[test]
    fn a_zero_ttl_disables_the_cache() {
        let cache = ProbeCache::new(Duration::ZERO, 3);
        let t0 = Instant::now();
        cache.store("a", measured(2000), None, t0);
        assert_eq!(cache.lookup("a", t0), Lookup::Miss);
    }
}
