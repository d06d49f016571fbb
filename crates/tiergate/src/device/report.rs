//! The report a node gives of itself (`GET /v1/report`): its device profile and budgets, the
//! constraints of the model it serves, live performance and whether each budget is met.

use std::sync::Arc;

use serde::Serialize;
use tiergate_router::tier::Tier;

use super::monitor::{BudgetMonitor, Compliance};
use super::performance::PerformanceSnapshot;
use super::profile::EffectiveProfile;
use crate::metrics::NodeMetrics;
use crate::node::Limits;

/// The report, as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub node: String,
    pub tier: Tier,
    /// The profile in effect (named profile under `[device]` overrides).
    pub profile: EffectiveProfile,
    /// The node's local model and what a request may ask of it.
    pub models: Vec<ModelConstraints>,
    pub performance: Live,
    /// One entry per budget the profile sets (none without budgets).
    pub compliance: Vec<Compliance>,
}

/// A local model's constraints.
#[derive(Debug, Clone, Serialize)]
pub struct ModelConstraints {
    pub id: String,
    pub variant: String,
    /// Tokens of prompt + answer (the manifest's, capped by `engine.context_length`).
    pub context_length: usize,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens: u32,
    /// `max_tokens` when a request does not say.
    pub default_max_tokens: u32,
}

/// Live performance.
#[derive(Debug, Clone, Serialize)]
pub struct Live {
    #[serde(flatten)]
    pub window: PerformanceSnapshot,
    /// Resident memory now (`VmRSS`), bytes.
    pub rss_bytes: Option<u64>,
    /// Requests waiting for an engine worker now.
    pub engine_queue_depth: usize,
}

/// What the report is made from.
#[derive(Debug)]
pub struct DeviceReporter {
    pub node: String,
    pub tier: Tier,
    pub profile: EffectiveProfile,
    pub engine: crate::node::EngineSlot,
    pub limits: Limits,
    pub metrics: NodeMetrics,
    pub monitor: Arc<BudgetMonitor>,
}

impl DeviceReporter {
    /// The report now. Compliance is the monitor's last check (every `device.check_interval`).
    pub fn report(&self) -> Report {
        let engine = self.engine.current();
        let model = engine.model();
        Report {
            node: self.node.clone(),
            tier: self.tier,
            profile: self.profile,
            models: vec![ModelConstraints {
                id: model.name.clone(),
                variant: model.variant.to_string(),
                context_length: model.context_length,
                max_tokens: self.limits.max_new_tokens,
                default_max_tokens: self.limits.default_max_new_tokens,
            }],
            performance: Live {
                window: self.metrics.performance.snapshot(),
                rss_bytes: super::resident_bytes(),
                engine_queue_depth: engine.queue_depth(),
            },
            compliance: self.monitor.compliance(),
        }
    }
}
