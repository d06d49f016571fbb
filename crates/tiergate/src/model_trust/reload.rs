//! The model reload (SIGHUP): the node re-verifies its model folder and, when it holds a
//! different model that passes, loads it and swaps it in for new requests. In-flight requests
//! finish on the engine they started with. A folder that fails (a signature missing or by an
//! untrusted key, files not matching the manifest, a model that does not load) is refused:
//! the loaded model keeps answering, the reason is logged, `tiergate_model_reloads_total`
//! counts `refused`.

use std::sync::Arc;

use prometheus::{IntCounterVec, Opts, Registry};
use tiergate_engine::EngineConfig;

use super::integrity::{self, CurrentModel, IntegrityMetrics};
use super::{ModelTrustConfig, load_engine, signature};
use crate::node::EngineSlot;

/// What one reload did; `as_str` is the metric's `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelReloadOutcome {
    /// The folder holds the loaded model, intact.
    Unchanged,
    /// New requests use the new model.
    Reloaded,
    /// The folder failed verification or loading; the loaded model keeps serving.
    Refused,
}

impl ModelReloadOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Unchanged => "unchanged",
            Self::Reloaded => "reloaded",
            Self::Refused => "refused",
        }
    }
}

/// Reloads `[engine] model_dir` under `[model_trust]`.
#[derive(Debug)]
pub struct ModelReloader {
    engine: EngineConfig,
    trust: ModelTrustConfig,
    slot: EngineSlot,
    current: CurrentModel,
    gauges: IntegrityMetrics,
    reloads: IntCounterVec,
    /// One reload at a time: two overlapping loads would hold three models in memory.
    running: tokio::sync::Mutex<()>,
}

/// How a [`ModelReloader`] is made.
#[derive(Debug)]
pub struct ReloaderParts {
    pub engine: EngineConfig,
    pub trust: ModelTrustConfig,
    pub slot: EngineSlot,
    pub current: CurrentModel,
    pub gauges: IntegrityMetrics,
}

impl ModelReloader {
    pub fn new(
        parts: ReloaderParts,
        registry: &Registry,
        node: &str,
    ) -> Result<Self, prometheus::Error> {
        let reloads = IntCounterVec::new(
            Opts::new(
                "model_reloads_total",
                "Model reloads (SIGHUP), by result (reloaded, unchanged, refused: the loaded model keeps serving).",
            )
            .const_label("node", node),
            &["result"],
        )?;
        registry.register(Box::new(reloads.clone()))?;
        Ok(ModelReloader {
            engine: parts.engine,
            trust: parts.trust,
            slot: parts.slot,
            current: parts.current,
            gauges: parts.gauges,
            reloads,
            running: tokio::sync::Mutex::new(()),
        })
    }

    /// Verifies the folder and swaps in the model it holds when that changed and passes.
    pub async fn reload(&self) -> ModelReloadOutcome {
        let _one = self.running.lock().await;
        let outcome = self.reload_once().await;
        self.reloads.with_label_values(&[outcome.as_str()]).inc();
        outcome
    }

    async fn reload_once(&self) -> ModelReloadOutcome {
        let loaded = self.current.get();
        let dir = self.engine.model_dir.clone();
        let on_disk = match signature::read_manifest_bytes(&dir) {
            Ok(bytes) => bytes,
            Err(err) => return refused(&loaded.manifest.name, &err),
        };
        if on_disk == loaded.manifest_bytes {
            // The same manifest (verified at load): the files must still be what it lists.
            let target = Arc::clone(&loaded);
            return match tokio::task::spawn_blocking(move || integrity::check(&target)).await {
                Ok(Ok(())) => ModelReloadOutcome::Unchanged,
                Ok(Err(mismatch)) => refused(&loaded.manifest.name, &mismatch),
                Err(err) => refused(&loaded.manifest.name, &err),
            };
        }
        // A different manifest: the full load checks the signature (with trusted keys) and
        // every file's hash before anything is swapped.
        match load_engine(&self.engine, &self.trust).await {
            Ok((engine, model)) => {
                let old = self.slot.replace(engine);
                self.gauges.unloaded(&loaded);
                self.gauges.loaded(&model);
                tracing::info!(
                    from = %loaded.manifest.name,
                    to = %model.manifest.name,
                    signed_by = model.signed_by.as_deref().unwrap_or("none"),
                    "model reloaded: new requests use it, in-flight ones finish on the old one"
                );
                self.current.set(model);
                // Its workers stop once the requests holding it are done.
                drop(old);
                ModelReloadOutcome::Reloaded
            }
            Err(err) => refused(&loaded.manifest.name, &crate::error_chain(&err)),
        }
    }
}

fn refused(serving: &str, reason: &dyn std::fmt::Display) -> ModelReloadOutcome {
    tracing::error!(
        serving,
        reason = %reason,
        "model reload refused: the loaded model keeps serving"
    );
    ModelReloadOutcome::Refused
}
