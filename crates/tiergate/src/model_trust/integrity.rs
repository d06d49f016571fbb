//! The periodic integrity check: re-hash the files the engine loaded against the manifest it
//! loaded (not the one on disk now, which an attacker could have rewritten together with the
//! files), and say so in a gauge.
//!
//! A mismatch changes nothing in what the node serves: ONNX Runtime and the tokenizer hold the
//! model in memory since load, so the node keeps answering with the model it verified. The
//! gauge and the error log are for the operator (something wrote into the model folder).
//! After a model reload the check compares against the newly loaded model.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tiergate_engine::{EngineError, Manifest, ModelVariant};

use super::signature::read_manifest_bytes;
use crate::node::Node;

/// What the engine loaded, as the integrity check compares it.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    pub dir: PathBuf,
    pub variant: ModelVariant,
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    /// The key id whose signature was verified at load (None: no trusted keys configured).
    pub signed_by: Option<String>,
}

/// The model the node serves now, shared by the integrity check and the reload.
#[derive(Debug, Clone)]
pub struct CurrentModel(Arc<RwLock<Arc<LoadedModel>>>);

impl CurrentModel {
    pub fn new(model: LoadedModel) -> Self {
        CurrentModel(Arc::new(RwLock::new(Arc::new(model))))
    }

    pub fn get(&self) -> Arc<LoadedModel> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn set(&self, model: LoadedModel) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(model);
    }
}

/// Why a check failed; `as_str` is the metric's `result` label.
#[derive(Debug)]
pub enum Mismatch {
    ManifestChanged,
    File(EngineError),
}

impl Mismatch {
    fn as_str(&self) -> &'static str {
        match self {
            Self::ManifestChanged => "manifest_changed",
            Self::File(EngineError::ModelFileMissing { .. }) => "file_missing",
            Self::File(_) => "file_changed",
        }
    }
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ManifestChanged => {
                f.write_str("manifest.json changed since the model was loaded")
            }
            Self::File(error) => write!(f, "{error}"),
        }
    }
}

/// Compares the folder with what was loaded: the manifest's bytes, then every file the loaded
/// variant uses (size, then sha256). Blocking: hashes up to the model's size.
pub fn check(model: &LoadedModel) -> Result<(), Mismatch> {
    let now = read_manifest_bytes(&model.dir).map_err(|_| Mismatch::ManifestChanged)?;
    if now != model.manifest_bytes {
        return Err(Mismatch::ManifestChanged);
    }
    model
        .manifest
        .verify_variant(&model.dir, model.variant)
        .map_err(Mismatch::File)
}

/// `tiergate_model_integrity_ok`, `tiergate_model_integrity_checks_total` and
/// `tiergate_model_signature_verified`, labelled by the model's manifest name.
#[derive(Debug, Clone)]
pub struct IntegrityMetrics {
    ok: IntGaugeVec,
    checks: IntCounterVec,
    signed: IntGaugeVec,
}

impl IntegrityMetrics {
    pub fn register(registry: &Registry, node: &str) -> Result<Self, prometheus::Error> {
        let ok = IntGaugeVec::new(
            Opts::new(
                "model_integrity_ok",
                "1 while the loaded model's files on disk match what was loaded, 0 after a check found a change (the node keeps serving the loaded model).",
            )
            .const_label("node", node),
            &["model"],
        )?;
        let checks = IntCounterVec::new(
            Opts::new(
                "model_integrity_checks_total",
                "Integrity checks of the loaded model, by result (ok, file_changed, file_missing, manifest_changed).",
            )
            .const_label("node", node),
            &["model", "result"],
        )?;
        let signed = IntGaugeVec::new(
            Opts::new(
                "model_signature_verified",
                "1 when the loaded model's manifest signature was verified against the trusted keys at load, 0 when no trusted keys are configured.",
            )
            .const_label("node", node),
            &["model"],
        )?;
        registry.register(Box::new(ok.clone()))?;
        registry.register(Box::new(checks.clone()))?;
        registry.register(Box::new(signed.clone()))?;
        Ok(IntegrityMetrics { ok, checks, signed })
    }

    /// The state right after load: verified by the engine, so intact.
    pub fn loaded(&self, model: &LoadedModel) {
        let name = model.manifest.name.as_str();
        self.ok.with_label_values(&[name]).set(1);
        self.signed
            .with_label_values(&[name])
            .set(i64::from(model.signed_by.is_some()));
    }

    /// A model no longer served: its series go (the next one has its own label).
    pub fn unloaded(&self, model: &LoadedModel) {
        let name = model.manifest.name.as_str();
        let _ = self.ok.remove_label_values(&[name]);
        let _ = self.signed.remove_label_values(&[name]);
    }

    fn record(&self, model: &str, result: &Result<(), Mismatch>) {
        let label = match result {
            Ok(()) => "ok",
            Err(mismatch) => mismatch.as_str(),
        };
        self.checks.with_label_values(&[model, label]).inc();
        self.ok
            .with_label_values(&[model])
            .set(i64::from(result.is_ok()));
    }
}

/// Checks every `interval` until the node is dropped. The first check runs one interval after
/// load (the engine has just verified every file).
pub fn spawn_integrity_check(
    current: CurrentModel,
    metrics: IntegrityMetrics,
    interval: Duration,
    node: Weak<Node>,
) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            if node.strong_count() == 0 {
                return;
            }
            let model = current.get();
            let target = Arc::clone(&model);
            let Ok(result) = tokio::task::spawn_blocking(move || check(&target)).await else {
                // The runtime is shutting down.
                return;
            };
            match &result {
                Ok(()) => tracing::debug!(model = %model.manifest.name, "model integrity ok"),
                Err(mismatch) => tracing::error!(
                    model = %model.manifest.name,
                    dir = %model.dir.display(),
                    problem = %mismatch,
                    "model integrity check failed: the files on disk are not the model this node \
                     loaded; it keeps serving the loaded model from memory. Verify the folder \
                     (`tiergate model verify`) before any restart"
                ),
            }
            metrics.record(&model.manifest.name, &result);
        }
    });
}
