//! Model trust: who published the model a node serves, and whether its files still are what
//! was loaded.
//!
//! - `keys`: ed25519 key files (`tiergate model keygen`).
//! - `signature`: the detached `manifest.json.sig` (`tiergate model sign` / `verify`).
//! - `integrity`: the periodic re-hash of the loaded files, exported as a gauge.
//! - `reload`: SIGHUP re-verifies the folder and swaps in a changed model that passes.
//!
//! A node with `[model_trust] trusted_keys` refuses, at start, a model whose manifest is not
//! signed by one of those keys (the engine then checks every file against the signed manifest).

mod integrity;
pub mod keys;
mod reload;
pub mod signature;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tiergate_engine::{Engine, EngineConfig, EngineError, Manifest};

pub use integrity::{CurrentModel, IntegrityMetrics, LoadedModel, spawn_integrity_check};
pub use keys::TrustedKeys;
pub use reload::{ModelReloadOutcome, ModelReloader, ReloaderParts};
pub use signature::{SIGNATURE_FILE, Verified, sign_model, verify_model, verify_signature};

use crate::metrics::NodeMetrics;
use crate::node::{EngineSlot, Node};

/// `[model_trust]`: model signatures and the periodic integrity check.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelTrustConfig {
    /// Public key files (`tiergate model keygen` writes them). When set, a model whose
    /// `manifest.json.sig` is missing, invalid or made by another key is refused at start.
    pub trusted_keys: Vec<PathBuf>,
    /// How often the loaded model's files are re-hashed against the manifest that was loaded
    /// ("10m"; "off" never). A mismatch logs an error and sets `tiergate_model_integrity_ok` 0.
    #[serde(deserialize_with = "interval_or_off")]
    pub integrity_check_interval: Option<Duration>,
}

impl Default for ModelTrustConfig {
    fn default() -> Self {
        ModelTrustConfig {
            trusted_keys: Vec::new(),
            integrity_check_interval: Some(Duration::from_secs(600)),
        }
    }
}

impl ModelTrustConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.integrity_check_interval.is_some_and(|d| d.is_zero()) {
            return Err("integrity_check_interval must be positive (or \"off\")".to_owned());
        }
        if self.trusted_keys.iter().any(|p| p.as_os_str().is_empty()) {
            return Err("trusted_keys has an empty path".to_owned());
        }
        Ok(())
    }
}

fn interval_or_off<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim() == "off" {
        return Ok(None);
    }
    crate::config::duration::parse(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("{e} (or \"off\")")))
}

/// Why a model was refused or a trust operation failed. Each message names the model folder or
/// file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(
        "model {} is not signed (no {SIGNATURE_FILE}) but a signature by a trusted key is \
         required: sign it with `tiergate model sign --key KEY {}`",
        dir.display(), dir.display()
    )]
    Unsigned { dir: PathBuf },
    #[error("signature file {} is malformed: {reason}", path.display())]
    SignatureMalformed { path: PathBuf, reason: String },
    #[error(
        "model {} is signed by key {key_id}, which is not trusted (trusted: {})",
        dir.display(),
        if trusted.is_empty() { "none".to_owned() } else { trusted.join(", ") }
    )]
    UntrustedKey {
        dir: PathBuf,
        key_id: String,
        trusted: Vec<String>,
    },
    #[error(
        "model {}: bad signature: manifest.json does not match the signature of key {key_id} \
         (the manifest was changed after signing)",
        dir.display()
    )]
    BadSignature { dir: PathBuf, key_id: String },
    #[error("model {}: manifest.json changed while it was being checked; retry", dir.display())]
    ManifestChanged { dir: PathBuf },
    #[error("key file {}: {reason}", path.display())]
    KeyFile { path: PathBuf, reason: String },
    #[error("cannot read {}: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error(transparent)]
    Model(EngineError),
}

/// Loads the engine as `[engine]` says, after checking the model's signature when
/// `[model_trust] trusted_keys` is set, and returns what the integrity check compares against.
///
/// The manifest is read before and after the engine loads it; the two must be the same bytes
/// (and, with trusted keys, the signed bytes), so the manifest the engine used is the one that
/// was verified.
pub async fn load_engine(
    engine: &EngineConfig,
    trust: &ModelTrustConfig,
) -> Result<(Engine, LoadedModel), LoadError> {
    let dir = engine.model_dir.clone();
    let verified = if trust.trusted_keys.is_empty() {
        None
    } else {
        let trusted = TrustedKeys::load(&trust.trusted_keys)?;
        let dir = dir.clone();
        Some(tokio::task::spawn_blocking(move || verify_signature(&dir, &trusted)).await??)
    };
    if verified.is_some() && engine.optimized_model_cache.is_some() {
        // Without signatures the cache is as trusted as the model folder; with them it is the
        // one graph the node may run that no signature covers.
        tracing::warn!(
            "engine.optimized_model_cache is set: the optimised graph read from it is not covered \
             by the model's signature; keep that folder writable by the node only"
        );
    }
    let before = signature::read_manifest_bytes(&dir).ok();
    let config = engine.clone();
    let loaded = tokio::task::spawn_blocking(move || Engine::load(&config)).await??;
    let after = signature::read_manifest_bytes(&dir)?;
    let expected = verified
        .as_ref()
        .map(|v| &v.manifest_bytes)
        .or(before.as_ref());
    if expected.is_some_and(|bytes| *bytes != after) {
        return Err(TrustError::ManifestChanged { dir }.into());
    }
    // The engine parsed and validated these same bytes.
    let manifest: Manifest =
        serde_json::from_slice(&after).map_err(|e| TrustError::SignatureMalformed {
            path: dir.join(signature::MANIFEST_FILE),
            reason: e.to_string(),
        })?;
    if let Some(verified) = &verified {
        tracing::info!(model = %manifest.name, key_id = %verified.key_id, "model signature verified");
    }
    let model = LoadedModel {
        dir,
        variant: loaded.model().variant,
        manifest,
        manifest_bytes: after,
        signed_by: verified.map(|v| v.key_id),
    };
    Ok((loaded, model))
}

/// What stops [`load_engine`].
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("model refused")]
    Trust(#[from] TrustError),
    #[error("cannot load the local model")]
    Engine(#[from] EngineError),
    #[error("the engine loader thread failed")]
    Join(#[from] tokio::task::JoinError),
}

/// What [`watch`] needs.
#[derive(Debug)]
pub struct Watched<'a> {
    pub node_name: &'a str,
    pub engine: &'a EngineConfig,
    pub trust: &'a ModelTrustConfig,
    pub model: LoadedModel,
    pub slot: EngineSlot,
}

/// Registers the trust metrics on the node's registry, starts the periodic integrity check when
/// an interval is set (it ends when the node is dropped), and returns the model reloader.
pub fn watch(
    watched: Watched<'_>,
    node: &Arc<Node>,
    metrics: &NodeMetrics,
) -> Result<ModelReloader, prometheus::Error> {
    let gauges = IntegrityMetrics::register(metrics.registry(), watched.node_name)?;
    gauges.loaded(&watched.model);
    let current = CurrentModel::new(watched.model);
    if let Some(interval) = watched.trust.integrity_check_interval {
        spawn_integrity_check(
            current.clone(),
            gauges.clone(),
            interval,
            Arc::downgrade(node),
        );
    }
    let parts = ReloaderParts {
        engine: watched.engine.clone(),
        trust: watched.trust.clone(),
        slot: watched.slot,
        current,
        gauges,
    };
    ModelReloader::new(parts, metrics.registry(), watched.node_name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn parse(text: &str) -> Result<ModelTrustConfig, String> {
        let config: ModelTrustConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn interval_defaults_to_ten_minutes_and_off_disables_it() {
        assert_eq!(
            parse("").unwrap().integrity_check_interval,
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            parse("integrity_check_interval = \"off\"")
                .unwrap()
                .integrity_check_interval,
            None
        );
        assert_eq!(
            parse("integrity_check_interval = \"250ms\"")
                .unwrap()
                .integrity_check_interval,
            Some(Duration::from_millis(250))
        );
        let zero = parse("integrity_check_interval = \"0s\"").unwrap_err();
        assert!(zero.contains("positive"), "{zero}");
        let typo = parse("integrity_check_interval = \"never\"").unwrap_err();
        assert!(typo.contains("off"), "{typo}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = parse("trusted_key = [\"a.pub\"]").unwrap_err();
        assert!(err.contains("trusted_key"), "{err}");
    }
}
