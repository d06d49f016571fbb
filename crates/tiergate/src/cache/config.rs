//! `[cache]`: the offline response cache (docs/configuration.md).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// When a stored answer is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    /// Only instead of an answer that would be degraded: every upstream the plan wanted is
    /// unavailable or failed, and the local model would answer in its place.
    #[default]
    Offline,
    /// Any hit, before the plan is walked (saves the upstream call).
    Always,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Off by default: without `[[tenants]]` a cached answer is shared by every client of the
    /// node, which is the operator's call to make (and needs a writable path to be useful).
    /// With tenants, each tenant has its own keyspace.
    pub enabled: bool,
    /// The redb file; unset keeps the cache in memory only (lost at restart).
    pub path: Option<PathBuf>,
    /// How long an answer may be served after it was stored.
    #[serde(with = "crate::config::duration")]
    pub ttl: Duration,
    /// Bounds of the in-memory LRU front (the file is bounded by `ttl`: expired entries are
    /// dropped at start and when met).
    pub max_entries: usize,
    pub max_bytes: usize,
    pub mode: CacheMode,
    /// Store and serve only requests whose answer is reproducible (greedy, or seeded). Turning
    /// it off also serves one sampled answer again to sampled requests.
    pub deterministic_only: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: false,
            path: None,
            ttl: Duration::from_secs(24 * 3600),
            max_entries: 10_000,
            max_bytes: 64 * 1024 * 1024,
            mode: CacheMode::Offline,
            deterministic_only: true,
        }
    }
}

impl CacheConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.ttl.is_zero() {
            return Err("ttl must be above 0".to_owned());
        }
        if self.max_entries == 0 || self.max_bytes == 0 {
            return Err("max_entries and max_bytes must be above 0".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn parses_durations_and_modes_and_rejects_unknown_fields() {
        let config: CacheConfig =
            toml::from_str("enabled = true\npath = \"c.redb\"\nttl = \"90s\"\nmode = \"always\"\n")
                .unwrap();
        assert!(config.enabled);
        assert_eq!(config.ttl, Duration::from_secs(90));
        assert_eq!(config.mode, CacheMode::Always);
        assert!(config.deterministic_only);
        assert!(toml::from_str::<CacheConfig>("size = 3\n").is_err());
        assert!(toml::from_str::<CacheConfig>("mode = \"sometimes\"\n").is_err());
        let zero: CacheConfig = toml::from_str("ttl = \"0s\"\n").unwrap();
        assert!(zero.validate().is_err());
        assert!(CacheConfig::default().validate().is_ok());
    }
}
