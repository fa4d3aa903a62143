//! The remembered object states: an LRU bounded in bytes whose evictions depend only on the
//! order of the calls, never on time or threads.
//!
//! A diff needs the object's previous state. If whether that state is still remembered
//! depended on background housekeeping (moka evicts on a wall-clock schedule), the same
//! input would give different span events on a fast and a slow run. Here every insert
//! evicts at once, least recently used first, until the bytes fit: same calls, same states.

use std::sync::{Arc, Mutex, PoisonError};

use lru::LruCache;

/// An LRU map from key to `Arc<V>`, bounded by the sum of a weight per entry.
pub(crate) struct ByteLru<V> {
    inner: Mutex<Inner<V>>,
    capacity: usize,
    weigh: fn(&str, &V) -> usize,
}

struct Inner<V> {
    map: LruCache<String, (Arc<V>, usize)>,
    bytes: usize,
}

impl<V> ByteLru<V> {
    /// An empty cache holding at most `capacity` bytes as counted by `weigh`.
    pub(crate) fn new(capacity: usize, weigh: fn(&str, &V) -> usize) -> Self {
        ByteLru {
            inner: Mutex::new(Inner {
                map: LruCache::unbounded(),
                bytes: 0,
            }),
            capacity,
            weigh,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<V>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entry, marked most recently used.
    pub(crate) fn get(&self, k: &str) -> Option<Arc<V>> {
        self.lock().map.get(k).map(|(v, _)| v.clone())
    }

    /// Inserts (or replaces) an entry, then evicts least recently used entries until the
    /// bytes fit. An entry larger than the whole capacity is not kept (and its key
    /// forgotten: its old state is stale).
    pub(crate) fn insert(&self, k: String, v: V) {
        let w = (self.weigh)(&k, &v);
        let mut inner = self.lock();
        if let Some((_, old)) = inner.map.pop(&k) {
            inner.bytes -= old;
        }
        if w > self.capacity {
            return;
        }
        inner.map.put(k, (Arc::new(v), w));
        inner.bytes += w;
        while inner.bytes > self.capacity {
            match inner.map.pop_lru() {
                Some((_, (_, old))) => inner.bytes -= old,
                None => break,
            }
        }
    }

    /// Forgets an entry.
    pub(crate) fn remove(&self, k: &str) {
        let mut inner = self.lock();
        if let Some((_, old)) = inner.map.pop(k) {
            inner.bytes -= old;
        }
    }

    /// Bytes and entries held.
    pub(crate) fn size(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.bytes as u64, inner.map.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_until_the_bytes_fit() {
        let c: ByteLru<String> = ByteLru::new(10, |k, v| k.len() + v.len());
        c.insert("a".into(), "1234".into()); // 5
        c.insert("b".into(), "1234".into()); // 10
        assert!(c.get("a").is_some()); // a is now the most recent
        c.insert("c".into(), "12".into()); // 13 > 10: b goes
        assert!(c.get("b").is_none());
        assert_eq!(c.size(), (8, 2));
        c.insert("a".into(), "123456789".into()); // replaces a (10): c goes
        assert_eq!(c.size(), (10, 1));
        c.insert("huge".into(), "12345678901".into());
        assert!(
            c.get("huge").is_none(),
            "larger than the capacity: not kept"
        );
        c.insert("a".into(), "x".repeat(20));
        assert!(c.get("a").is_none(), "a stale state is not kept either");
        c.remove("nothing");
        assert_eq!(c.size(), (0, 0));
    }
}
