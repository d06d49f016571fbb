//! The offline response cache: answers that came from an upstream tier, kept by an exact key
//! over the normalised request ([`key`]), in a memory-bounded LRU ([`lru`]) in front of a redb
//! file ([`store`]) so that a node restarted with no upstream still has them. When every
//! upstream is down, a stored upstream answer beats a degraded local one (`mode = "offline"`);
//! `mode = "always"` serves any hit. Hits, misses, stores, expiries and errors are counted in
//! `tiergate_cache_requests_total{result}`; a broken file never stops the node serving.

mod config;
mod entry;
mod key;
mod lru;
mod store;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounterVec, IntGauge};
use tiergate_router::tier::Tier;

pub use config::{CacheConfig, CacheMode};
pub use entry::CachedAnswer;
pub use key::{CacheKey, is_deterministic};

use crate::metrics::NodeMetrics;
use crate::node::{Answer, FinishReason, NodeRequest};
use lru::Lru;
use store::{DiskStore, StoreError};

/// The values of `tiergate_cache_requests_total`'s `result` label.
const RESULTS: [&str; 5] = ["hit", "miss", "stored", "expired", "error"];

/// Wall-clock time, injectable so that tests can move past the TTL.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The node's cache. Shared by every request behind an `Arc`.
pub struct ResponseCache {
    config: CacheConfig,
    memory: Mutex<Lru>,
    disk: Option<DiskStore>,
    requests: IntCounterVec,
    entries: IntGauge,
    clock: Clock,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("config", &self.config)
            .field("disk", &self.disk.is_some())
            .finish_non_exhaustive()
    }
}

impl ResponseCache {
    /// The cache `config` asks for, or `None` when it is disabled. Never fails: a file that
    /// cannot be opened is moved aside (or, if locked by another process, left alone) and the
    /// node starts with an empty cache.
    pub fn open(config: &CacheConfig, metrics: &NodeMetrics) -> Option<Arc<ResponseCache>> {
        config.enabled.then(|| {
            Arc::new(Self::open_with_clock(
                config,
                metrics,
                Arc::new(SystemTime::now),
            ))
        })
    }

    pub fn open_with_clock(
        config: &CacheConfig,
        metrics: &NodeMetrics,
        clock: Clock,
    ) -> ResponseCache {
        let mut cache = ResponseCache {
            config: config.clone(),
            memory: Mutex::new(Lru::new(config.max_entries, config.max_bytes)),
            disk: None,
            requests: metrics.cache_requests.clone(),
            entries: metrics.cache_entries.clone(),
            clock,
        };
        // Every result exported from the start at 0, so that rates and alerts need no absent().
        for result in RESULTS {
            cache.requests.with_label_values(&[result]);
        }
        if let Some(path) = &config.path {
            cache.disk = cache.open_disk(path);
        }
        cache.update_entries();
        cache
    }

    fn open_disk(&self, path: &Path) -> Option<DiskStore> {
        let opened = DiskStore::open(path).or_else(|err| {
            self.count("error");
            if err.is_locked() {
                return Err(err);
            }
            let aside = aside_path(path);
            tracing::error!(path = %path.display(), moved_to = %aside.display(), error = %err,
                "the response cache file cannot be read; starting with an empty cache");
            if let Err(err) = std::fs::rename(path, &aside) {
                tracing::warn!(error = %err, "cannot move the unreadable cache file aside");
                let _ = std::fs::remove_file(path);
            }
            DiskStore::open(path)
        });
        match opened {
            Ok((disk, _)) => {
                // Expired answers can never be served: drop them rather than carry them.
                if let Err(err) = disk.purge_stored_before(self.cutoff()) {
                    self.error(&err);
                }
                Some(disk)
            }
            Err(err) => {
                tracing::error!(path = %path.display(), error = %err,
                    "the response cache file cannot be opened; keeping the cache in memory only");
                None
            }
        }
    }

    pub fn mode(&self) -> CacheMode {
        self.config.mode
    }

    /// The request's key, or `None` when its answer must not be cached (sampled). Each tenant
    /// has its own keyspace (its name is in the key): one tenant never gets another's answer.
    pub fn key(&self, request: &NodeRequest) -> Option<CacheKey> {
        if self.config.deterministic_only && !is_deterministic(request) {
            return None;
        }
        let tenant = request.tenant.as_ref().map_or("", |tenant| tenant.name());
        Some(CacheKey::of(tenant, request))
    }

    /// The stored answer for `key`, if one is still fresh; counts hit, miss or expired (the
    /// caller serves a hit, so it is counted as one).
    pub fn lookup(&self, key: &CacheKey) -> Option<CachedAnswer> {
        let mut found = self.lock().get(key);
        if found.is_none()
            && let Some(disk) = &self.disk
        {
            match disk.get(key) {
                Ok(answer) => found = answer,
                Err(err) => self.error(&err),
            }
            if let Some(answer) = &found {
                self.lock().insert(*key, answer.clone());
            }
        }
        let Some(answer) = found else {
            self.count("miss");
            return None;
        };
        if answer.stored_at < self.cutoff() {
            self.count("expired");
            self.remove(key);
            return None;
        }
        self.count("hit");
        Some(answer)
    }

    /// Keeps `answer` (memory at once, then the file, which may wait for the disk).
    pub fn insert(&self, key: CacheKey, answer: CachedAnswer) {
        self.lock().insert(key, answer.clone());
        if let Some(disk) = &self.disk
            && let Err(err) = disk.put(&key, &answer)
        {
            self.error(&err);
        }
        self.count("stored");
        self.update_entries();
    }

    fn remove(&self, key: &CacheKey) {
        self.lock().remove(key);
        if let Some(disk) = &self.disk
            && let Err(err) = disk.remove(key)
        {
            self.error(&err);
        }
        self.update_entries();
    }

    /// Entries that can be served: the file's when there is one, else memory's.
    fn update_entries(&self) {
        let entries = match &self.disk {
            Some(disk) => disk.len().unwrap_or(0),
            None => self.lock().len() as u64,
        };
        self.entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    pub fn now_secs(&self) -> u64 {
        (self.clock)()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs()
    }

    /// Answers stored before this are expired.
    fn cutoff(&self) -> u64 {
        self.now_secs().saturating_sub(self.config.ttl.as_secs())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // The LRU has no invariant a panic elsewhere could break halfway.
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count(&self, result: &str) {
        self.requests.with_label_values(&[result]).inc();
    }

    fn error(&self, err: &StoreError) {
        tracing::warn!(error = %err, "response cache file error");
        self.count("error");
    }
}

fn aside_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".unreadable");
    PathBuf::from(name)
}

/// One request's view of the cache, for the walk: where a hit may be served and what is kept.
#[derive(Debug)]
pub struct RequestCache {
    pub cache: Arc<ResponseCache>,
    pub key: CacheKey,
    /// The node's own tier: its answers are not stored (only upstream ones are).
    pub local_tier: Tier,
}

impl RequestCache {
    pub fn new(
        cache: &Arc<ResponseCache>,
        request: &NodeRequest,
        local_tier: Tier,
    ) -> Option<Self> {
        Some(RequestCache {
            key: cache.key(request)?,
            cache: Arc::clone(cache),
            local_tier,
        })
    }

    /// A stored answer to serve now, and whether it is served because the node is offline
    /// (degraded). `local_would_be_degraded`: the next step is a local answer the router would
    /// call degraded; `first_step`: nothing was tried yet.
    pub fn hit(
        &self,
        local_would_be_degraded: bool,
        first_step: bool,
    ) -> Option<(CachedAnswer, bool)> {
        if local_would_be_degraded {
            return self.cache.lookup(&self.key).map(|hit| (hit, true));
        }
        if first_step && self.cache.mode() == CacheMode::Always {
            return self.cache.lookup(&self.key).map(|hit| (hit, false));
        }
        None
    }

    /// Keeps a finished answer if it is worth serving again: from an upstream tier, not
    /// degraded, not itself a hit, ended by the model (or its token budget), not by a deadline.
    /// The file write runs off the async workers.
    pub fn answered(&self, answer: &Answer) {
        let routing = &answer.routing;
        let complete = matches!(
            answer.finish_reason,
            FinishReason::Stop | FinishReason::Length
        );
        if routing.tier == self.local_tier
            || routing.degraded
            || routing.cache.is_some()
            || !complete
            || answer.text.is_empty()
        {
            return;
        }
        let entry = CachedAnswer {
            text: answer.text.clone(),
            tier: routing.tier,
            model: answer.model.clone(),
            finish_reason: answer.finish_reason.as_str().to_owned(),
            prompt_tokens: answer.usage.prompt_tokens,
            completion_tokens: answer.usage.completion_tokens,
            stored_at: self.cache.now_secs(),
        };
        let cache = Arc::clone(&self.cache);
        let key = self.key;
        tokio::task::spawn_blocking(move || cache.insert(key, entry));
    }
}

#[cfg(test)]
mod tests;
