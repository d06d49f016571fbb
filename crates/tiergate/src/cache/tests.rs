#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tiergate_router::tier::TierConstraint;

use super::*;
use crate::node::{Forwarding, Input, Sampling};

fn request(text: &str) -> NodeRequest {
    NodeRequest {
        input: Input::Text(text.into()),
        sampling: Sampling {
            max_new_tokens: 16,
            ..Sampling::default()
        },
        constraint: TierConstraint::None,
        forwarding: Forwarding::default(),
        deadline: Instant::now() + Duration::from_secs(5),
        arrived: Instant::now(),
        request_id: "r".into(),
        tenant: None,
        trace: tiergate_upstream::TraceContext::fresh(),
    }
}

fn answer(text: &str, stored_at: u64) -> CachedAnswer {
    CachedAnswer {
        text: text.into(),
        tier: Tier::Regional,
        model: "regional-model".into(),
        finish_reason: "stop".into(),
        prompt_tokens: 3,
        completion_tokens: 2,
        stored_at,
    }
}

/// A clock the test moves by hand, in seconds since the epoch.
fn manual_clock(start: u64) -> (Arc<AtomicU64>, Clock) {
    let now = Arc::new(AtomicU64::new(start));
    let reader = Arc::clone(&now);
    let clock: Clock =
        Arc::new(move || UNIX_EPOCH + Duration::from_secs(reader.load(Ordering::SeqCst)));
    (now, clock)
}

fn config(path: Option<PathBuf>) -> CacheConfig {
    CacheConfig {
        enabled: true,
        path,
        ttl: Duration::from_secs(60),
        ..CacheConfig::default()
    }
}

fn counted(metrics: &NodeMetrics, result: &str) -> u64 {
    metrics.cache_requests.with_label_values(&[result]).get()
}

#[test]
fn a_stored_answer_is_found_until_its_ttl_passes() {
    let metrics = NodeMetrics::new("t").unwrap();
    let (now, clock) = manual_clock(1_000);
    let cache = ResponseCache::open_with_clock(&config(None), &metrics, clock);
    let key = cache.key(&request("hello")).unwrap();
    assert!(cache.lookup(&key).is_none());
    cache.insert(key, answer("hi", 1_000));
    assert_eq!(cache.lookup(&key).unwrap().text, "hi");
    now.store(1_060, Ordering::SeqCst);
    assert!(
        cache.lookup(&key).is_some(),
        "exactly at the TTL: still fresh"
    );
    now.store(1_061, Ordering::SeqCst);
    assert!(cache.lookup(&key).is_none());
    assert_eq!(counted(&metrics, "hit"), 2);
    assert_eq!(counted(&metrics, "miss"), 1);
    assert_eq!(counted(&metrics, "expired"), 1);
    assert_eq!(counted(&metrics, "stored"), 1);
    // An expired entry is gone, not met again.
    assert!(cache.lookup(&key).is_none());
    assert_eq!(counted(&metrics, "miss"), 2);
    assert_eq!(metrics.cache_entries.get(), 0);
}

#[test]
fn sampled_requests_have_no_key_unless_configured() {
    let metrics = NodeMetrics::new("t").unwrap();
    let mut sampled = request("hello");
    sampled.sampling.temperature = Some(0.7);
    let cache = ResponseCache::open_with_clock(&config(None), &metrics, Arc::new(SystemTime::now));
    assert!(cache.key(&sampled).is_none());
    sampled.sampling.seed = Some(3);
    assert!(cache.key(&sampled).is_some());
    sampled.sampling.seed = None;
    let any = CacheConfig {
        deterministic_only: false,
        ..config(None)
    };
    let cache = ResponseCache::open_with_clock(&any, &metrics, Arc::new(SystemTime::now));
    assert!(cache.key(&sampled).is_some());
}

#[test]
fn answers_survive_a_reopen_of_the_file_and_expired_ones_are_purged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.redb");
    let (now, clock) = manual_clock(5_000);
    let key_a = CacheKey::of("", &request("a"));
    let key_b = CacheKey::of("", &request("b"));
    {
        let metrics = NodeMetrics::new("t").unwrap();
        let cache = ResponseCache::open_with_clock(
            &config(Some(path.clone())),
            &metrics,
            Arc::clone(&clock),
        );
        cache.insert(key_a, answer("answer a", 5_000));
        cache.insert(key_b, answer("answer b", 4_950));
        assert_eq!(metrics.cache_entries.get(), 2);
    }
    now.store(5_020, Ordering::SeqCst);
    let metrics = NodeMetrics::new("t").unwrap();
    let cache = ResponseCache::open_with_clock(&config(Some(path)), &metrics, clock);
    // b was stored 70 s ago with a 60 s TTL: dropped when the file was opened.
    assert_eq!(metrics.cache_entries.get(), 1);
    assert_eq!(cache.lookup(&key_a).unwrap(), answer("answer a", 5_000));
    assert!(cache.lookup(&key_b).is_none());
    assert_eq!(counted(&metrics, "error"), 0);
}

#[test]
fn an_unreadable_file_is_moved_aside_and_the_cache_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.redb");
    std::fs::write(&path, vec![0x5a_u8; 8192]).unwrap();
    let metrics = NodeMetrics::new("t").unwrap();
    let (_, clock) = manual_clock(100);
    let cache = ResponseCache::open_with_clock(&config(Some(path.clone())), &metrics, clock);
    assert_eq!(counted(&metrics, "error"), 1);
    assert!(dir.path().join("cache.redb.unreadable").exists());
    // The new file works: stored, then found after a reopen.
    let key = CacheKey::of("", &request("a"));
    cache.insert(key, answer("fresh", 100));
    drop(cache);
    let (_, clock) = manual_clock(100);
    let cache = ResponseCache::open_with_clock(&config(Some(path)), &metrics, clock);
    assert_eq!(cache.lookup(&key).unwrap().text, "fresh");
}

#[test]
fn a_file_held_by_another_node_leaves_the_cache_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.redb");
    let metrics = NodeMetrics::new("t").unwrap();
    let first = ResponseCache::open_with_clock(
        &config(Some(path.clone())),
        &metrics,
        Arc::new(SystemTime::now),
    );
    assert!(first.disk.is_some());
    let second = ResponseCache::open_with_clock(
        &config(Some(path.clone())),
        &metrics,
        Arc::new(SystemTime::now),
    );
    assert!(second.disk.is_none());
    assert!(
        !dir.path().join("cache.redb.unreadable").exists(),
        "a locked file is not corrupt"
    );
    let key = CacheKey::of("", &request("a"));
    second.insert(key, answer("in memory", second.now_secs()));
    assert!(second.lookup(&key).is_some());
}
