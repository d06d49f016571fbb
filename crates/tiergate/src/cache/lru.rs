//! The in-memory front of the cache: least recently used entries go first once either bound
//! (entries or bytes) is reached. A miss here falls back to the disk store.

use std::collections::{BTreeMap, HashMap};

use super::entry::CachedAnswer;
use super::key::CacheKey;

#[derive(Debug)]
pub struct Lru {
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
    tick: u64,
    entries: HashMap<CacheKey, (CachedAnswer, u64)>,
    /// Last use -> key, oldest first.
    order: BTreeMap<u64, CacheKey>,
}

impl Lru {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Lru {
            max_entries,
            max_bytes,
            bytes: 0,
            tick: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The entry, marked as just used.
    pub fn get(&mut self, key: &CacheKey) -> Option<CachedAnswer> {
        self.tick += 1;
        let tick = self.tick;
        let (answer, used) = self.entries.get_mut(key)?;
        self.order.remove(used);
        *used = tick;
        self.order.insert(tick, *key);
        Some(answer.clone())
    }

    pub fn insert(&mut self, key: CacheKey, answer: CachedAnswer) {
        self.remove(&key);
        let size = answer.size();
        // An entry larger than the whole bound would only evict everything else.
        if size > self.max_bytes || self.max_entries == 0 {
            return;
        }
        while self.entries.len() >= self.max_entries || self.bytes + size > self.max_bytes {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((evicted, _)) = self.entries.remove(&oldest) {
                self.bytes -= evicted.size();
            }
        }
        self.tick += 1;
        self.bytes += size;
        self.order.insert(self.tick, key);
        self.entries.insert(key, (answer, self.tick));
    }

    pub fn remove(&mut self, key: &CacheKey) {
        if let Some((answer, used)) = self.entries.remove(key) {
            self.order.remove(&used);
            self.bytes -= answer.size();
        }
    }
}

#[cfg(test)]
mod tests {
    use tiergate_router::tier::Tier;

    use super::*;

    fn key(n: u8) -> CacheKey {
        CacheKey([n; 32])
    }

    fn answer(text: &str) -> CachedAnswer {
        CachedAnswer {
            text: text.into(),
            tier: Tier::Cloud,
            model: "m".into(),
            finish_reason: "stop".into(),
            prompt_tokens: 1,
            completion_tokens: 1,
            stored_at: 0,
        }
    }

    #[test]
    fn the_least_recently_used_entry_goes_first() {
        let mut lru = Lru::new(2, usize::MAX);
        lru.insert(key(1), answer("one"));
        lru.insert(key(2), answer("two"));
        assert!(lru.get(&key(1)).is_some());
        lru.insert(key(3), answer("three"));
        assert_eq!(lru.len(), 2);
        assert!(lru.get(&key(2)).is_none(), "2 was the least recently used");
        assert!(lru.get(&key(1)).is_some());
        assert!(lru.get(&key(3)).is_some());
    }

    #[test]
    fn the_byte_bound_holds() {
        let one = answer(&"x".repeat(1000));
        let max_bytes = one.size() * 3;
        let mut lru = Lru::new(100, max_bytes);
        for n in 0..10 {
            lru.insert(key(n), one.clone());
            assert!(lru.bytes() <= max_bytes);
        }
        assert_eq!(lru.len(), 3);
        // Too big for the bound at all: not kept, and nothing else evicted for it.
        lru.insert(key(99), answer(&"y".repeat(max_bytes)));
        assert_eq!(lru.len(), 3);
        assert!(lru.get(&key(99)).is_none());
        // Replacing an entry does not count it twice.
        lru.insert(key(9), one.clone());
        assert_eq!(lru.bytes(), one.size() * 3);
    }
}
