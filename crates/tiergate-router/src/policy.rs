//! The policy: signals + what the node can reach -> a [`Decision`] (an ordered plan of steps,
//! the reason, whether the answer will be degraded) that explains itself as JSON.
//!
//! Rules, in order (see docs/routing.md):
//! 1. `EdgeOnly`: local only, ungated (`tier_constraint`).
//! 2. `hop_count >= max_hops`: local only, ungated (`hop_limit`); empty under `AtLeastCloud`.
//! 3. `AtLeastCloud` (below the cloud tier): the cloud only, no local fallback; an empty plan
//!    when it is unavailable (the executor answers "unavailable").
//! 4. Upstreams considered are above the local tier, not already tried, allowed by the
//!    constraint; unavailable ones are skipped. If none is configured: local, ungated. If all
//!    are unavailable: local, ungated, degraded (`upstream_unavailable`).
//! 5. `complexity < local_max_complexity`: local first with early exit, then the upstreams.
//! 6. Otherwise the upstreams first (`complexity`): regional then cloud, or cloud first when
//!    `complexity >= cloud_min_complexity`.
//!
//! Plans from rules 4-6 end with an ungated local step: the answer of last resort when every
//! upstream call fails at run time (degraded).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::complexity::{self, ComplexityConfig, ComplexityScore, InvalidConfig};
use crate::confidence::ConfidenceConfig;
use crate::features::PromptFeatures;
use crate::tier::{Tier, TierConstraint};

/// The router's configuration (`[router]` in the node's TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    pub complexity: ComplexityConfig,
    /// The early-exit gate, for a local graph `confidence_by_variant` does not name.
    pub confidence: ConfidenceConfig,
    /// Gates calibrated on particular local model graphs, by `engine.variant` name (e.g.
    /// `int4-fast`, whose int8 activations make it confident on other answers than the exact
    /// graphs). Each is a whole gate: a field it leaves out takes the built-in default, not
    /// `confidence`'s value.
    pub confidence_by_variant: BTreeMap<String, ConfidenceConfig>,
    /// Gates calibrated on a graph's answers on one kind of CPU, by the CPU's int8 kernel family
    /// (`x86-64-avx512-vnni`, `x86-64-avx2`, ...) then the variant: int4-fast's answers differ
    /// between families. Wins over `confidence_by_variant`; also a whole gate.
    pub confidence_by_cpu: BTreeMap<String, BTreeMap<String, ConfidenceConfig>>,
    /// Below this complexity the local model is tried first, with early exit.
    pub local_max_complexity: f64,
    /// At or above this complexity the cloud is tried before the regional tier.
    pub cloud_min_complexity: f64,
    /// A request that has been forwarded this many times is answered where it is.
    pub max_hops: u32,
}

impl Default for RouterConfig {
    /// Both thresholds from `tiergate_eval::routing::calibrate` on shared/routing-eval with the default weights:
    /// 0.567 sends about half of those prompts up first, 0.633 sends a fifth straight to the
    /// cloud. The score is text-only, so these shares hold for any local model.
    fn default() -> Self {
        RouterConfig {
            complexity: ComplexityConfig::default(),
            confidence: ConfidenceConfig::default(),
            confidence_by_variant: BTreeMap::new(),
            confidence_by_cpu: BTreeMap::new(),
            local_max_complexity: 0.567,
            cloud_min_complexity: 0.633,
            max_hops: 3,
        }
    }
}

impl RouterConfig {
    /// Checks every threshold; the error names the field.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        self.complexity.validate()?;
        self.confidence.validate()?;
        let by_cpu = self.confidence_by_cpu.iter().flat_map(|(cpu, gates)| {
            gates
                .iter()
                .map(move |(variant, gate)| (format!("confidence_by_cpu.{cpu}.{variant}"), gate))
        });
        let by_variant = self
            .confidence_by_variant
            .iter()
            .map(|(variant, gate)| (format!("confidence_by_variant.{variant}"), gate));
        for (name, gate) in by_variant.chain(by_cpu) {
            gate.validate().map_err(|err| {
                // `confidence.min_mean_top1` -> `<name>.min_mean_top1`.
                let field = err.field.strip_prefix("confidence.").unwrap_or(&err.field);
                InvalidConfig::new(format!("{name}.{field}"), err.problem)
            })?;
        }
        for (field, value) in [
            ("local_max_complexity", self.local_max_complexity),
            ("cloud_min_complexity", self.cloud_min_complexity),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(InvalidConfig::new(
                    field,
                    format!("must be in [0, 1], got {value}"),
                ));
            }
        }
        Ok(())
    }

    /// The early-exit gate for the local model graph `variant` running on a CPU of kind `cpu`
    /// (`None`: not known): the gate calibrated on both, else on the graph, else `confidence`.
    pub fn confidence_for(&self, variant: Option<&str>, cpu: Option<&str>) -> ConfidenceConfig {
        let Some(variant) = variant else {
            return self.confidence;
        };
        cpu.and_then(|cpu| self.confidence_by_cpu.get(cpu))
            .and_then(|gates| gates.get(variant))
            .or_else(|| self.confidence_by_variant.get(variant))
            .copied()
            .unwrap_or(self.confidence)
    }
}

/// What the router knows about the prompt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Signals {
    /// Features of the request itself: the conversation's last user turn (or a completion's
    /// prompt). The complexity score reads only these, so a system prompt or a long history
    /// does not make "turn on the kitchen lights" complex.
    pub features: PromptFeatures,
    /// The conversation around that turn: reported in explanations, not scored (the routing
    /// data the weights are fitted on has single-turn prompts only; see docs/routing.md).
    pub context: ConversationContext,
}

/// The part of a conversation before (and around) its last user turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ConversationContext {
    /// User and assistant turns before the last user turn.
    pub earlier_turns: u32,
    /// Words in those turns.
    pub earlier_words: u32,
    /// Words in system messages.
    pub system_words: u32,
}

impl Signals {
    /// A single prompt with no conversation around it.
    pub fn from_prompt(text: &str) -> Signals {
        Signals {
            features: PromptFeatures::extract(text),
            context: ConversationContext::default(),
        }
    }
}

/// One upstream as link health sees it right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UpstreamView {
    pub tier: Tier,
    /// Whether a call may be made now (link healthy or breaker half-open with probe room).
    pub available: bool,
}

/// The node's own tier and its upstreams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    pub local_tier: Tier,
    /// The local model graph's `engine.variant` name, which picks its early-exit gate.
    pub local_variant: Option<&'static str>,
    /// The node's CPU kind (its int8 kernel family), which picks the gate with the graph.
    pub local_cpu: Option<&'static str>,
    pub upstreams: Vec<UpstreamView>,
}

/// Where the request has been before it reached this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Forwarding {
    pub hop_count: u32,
    pub tiers_tried: Vec<Tier>,
}

/// One step of a plan; the executor runs them in order until one answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Generate with the local model. `gated`: the early-exit check applies, and an
    /// abandoned attempt moves on to the next step.
    Local { gated: bool },
    /// Call the upstream of this tier.
    Upstream(Tier),
}

/// Why a request went where it went. Few values: used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The local answer committed (planned: local first with early exit).
    EarlyExit,
    /// The local attempt was abandoned for low confidence and the request escalated.
    LowConfidence,
    /// Sent up because of the prompt's complexity.
    Complexity,
    /// The client's tier constraint decided the tier.
    TierConstraint,
    /// The request reached `max_hops` and was answered where it was.
    HopLimit,
    /// A higher tier was wanted but none was reachable: answered locally, degraded.
    UpstreamUnavailable,
    /// An upstream call failed at run time and the next step answered.
    UpstreamFailed,
    /// The local model could not run (overloaded, prompt too long, engine error) and the next
    /// step answered.
    LocalFailed,
    /// Nothing above this node is configured: answered locally (the top of the hierarchy).
    NoUpstream,
    /// Served from the node's response cache (never chosen by the router: the node reports
    /// it when a stored upstream answer replaced the plan, or its degraded end).
    CacheHit,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::EarlyExit,
        Reason::LowConfidence,
        Reason::Complexity,
        Reason::TierConstraint,
        Reason::HopLimit,
        Reason::UpstreamUnavailable,
        Reason::UpstreamFailed,
        Reason::LocalFailed,
        Reason::NoUpstream,
        Reason::CacheHit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::EarlyExit => "early_exit",
            Reason::LowConfidence => "low_confidence",
            Reason::Complexity => "complexity",
            Reason::TierConstraint => "tier_constraint",
            Reason::HopLimit => "hop_limit",
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::UpstreamFailed => "upstream_failed",
            Reason::LocalFailed => "local_failed",
            Reason::NoUpstream => "no_upstream",
            Reason::CacheHit => "cache_hit",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an upstream is not in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipCause {
    /// Not above the node's own tier: a request never goes down or sideways.
    NotAboveLocal,
    /// The request has already been to that tier.
    AlreadyTried,
    /// The client's tier constraint rules it out.
    Constraint,
    /// The request has been forwarded `max_hops` times already.
    HopLimit,
    /// Link health says it cannot be called now.
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SkippedUpstream {
    pub tier: Tier,
    pub cause: SkipCause,
}

/// The thresholds the decision was made with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    pub local_max_complexity: f64,
    pub cloud_min_complexity: f64,
    pub max_hops: u32,
    pub confidence: ConfidenceConfig,
}

/// A routing decision, explained: its JSON is what `route explain --json` and the Explain RPC
/// return.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// The tier of the first step; `None` when the plan is empty (no tier may serve).
    pub tier: Option<Tier>,
    pub reason: Reason,
    /// True when a higher tier was wanted but cannot be reached.
    pub degraded: bool,
    pub plan: Vec<Step>,
    pub complexity: ComplexityScore,
    pub signals: Signals,
    pub thresholds: Thresholds,
    pub constraint: TierConstraint,
    pub local_tier: Tier,
    /// The local graph whose early-exit gate `thresholds.confidence` is.
    pub local_variant: Option<&'static str>,
    /// The CPU kind that gate was chosen for.
    pub local_cpu: Option<&'static str>,
    pub forwarding: Forwarding,
    pub skipped: Vec<SkippedUpstream>,
}

impl Decision {
    /// The tier a step runs at on this node.
    pub fn step_tier(&self, step: Step) -> Tier {
        match step {
            Step::Local { .. } => self.local_tier,
            Step::Upstream(tier) => tier,
        }
    }
}

/// Decides where a request goes. Pure: the same inputs give the same decision.
pub fn decide(
    config: &RouterConfig,
    signals: &Signals,
    node: &NodeView,
    constraint: TierConstraint,
    forwarding: &Forwarding,
) -> Decision {
    let complexity = complexity::score(&signals.features, &config.complexity);
    let candidates = classify_upstreams(node, constraint, forwarding);
    let inputs = PlanInputs {
        config,
        complexity: complexity.score,
        node,
        constraint,
        forwarding,
    };
    let (plan, reason, degraded) = choose_plan(&inputs, &candidates);
    let mut skipped = candidates.skipped;
    if reason == Reason::HopLimit {
        skipped.extend(candidates.available.iter().map(|&tier| SkippedUpstream {
            tier,
            cause: SkipCause::HopLimit,
        }));
    }
    let tier = plan.first().map(|&step| match step {
        Step::Local { .. } => node.local_tier,
        Step::Upstream(tier) => tier,
    });
    Decision {
        tier,
        reason,
        degraded,
        plan,
        complexity,
        signals: signals.clone(),
        thresholds: Thresholds {
            local_max_complexity: config.local_max_complexity,
            cloud_min_complexity: config.cloud_min_complexity,
            max_hops: config.max_hops,
            confidence: config.confidence_for(node.local_variant, node.local_cpu),
        },
        constraint,
        local_tier: node.local_tier,
        local_variant: node.local_variant,
        local_cpu: node.local_cpu,
        forwarding: forwarding.clone(),
        skipped,
    }
}

/// The node's upstream tiers sorted into usable now, and skipped with the cause.
struct Candidates {
    /// Eligible and available, ascending by tier, each tier once.
    available: Vec<Tier>,
    /// Eligible (above, untried, allowed) but unavailable.
    unavailable: usize,
    skipped: Vec<SkippedUpstream>,
}

fn classify_upstreams(
    node: &NodeView,
    constraint: TierConstraint,
    forwarding: &Forwarding,
) -> Candidates {
    let mut candidates = Candidates {
        available: Vec::new(),
        unavailable: 0,
        skipped: Vec::new(),
    };
    for tier in Tier::ALL {
        let views = node.upstreams.iter().filter(|u| u.tier == tier);
        let (configured, any_available) =
            views.fold((false, false), |(_, a), u| (true, a || u.available));
        if !configured {
            continue;
        }
        let cause = if tier <= node.local_tier {
            Some(SkipCause::NotAboveLocal)
        } else if forwarding.tiers_tried.contains(&tier) {
            Some(SkipCause::AlreadyTried)
        } else if !constraint.allows_upstream(tier) {
            Some(SkipCause::Constraint)
        } else if !any_available {
            candidates.unavailable += 1;
            Some(SkipCause::Unavailable)
        } else {
            None
        };
        match cause {
            Some(cause) => candidates.skipped.push(SkippedUpstream { tier, cause }),
            None => candidates.available.push(tier),
        }
    }
    candidates
}

/// Everything the plan depends on besides the classified upstreams.
struct PlanInputs<'a> {
    config: &'a RouterConfig,
    complexity: f64,
    node: &'a NodeView,
    constraint: TierConstraint,
    forwarding: &'a Forwarding,
}

/// Applies the rules of the module documentation, in order: (plan, reason, degraded).
fn choose_plan(inputs: &PlanInputs<'_>, candidates: &Candidates) -> (Vec<Step>, Reason, bool) {
    let PlanInputs {
        config,
        complexity,
        node,
        constraint,
        forwarding,
    } = *inputs;
    const LOCAL: Step = Step::Local { gated: false };
    // The constraint applies to the local tier too (it matters for a cloud-tier node).
    let local_may_serve = match constraint {
        TierConstraint::AtLeastCloud => node.local_tier >= Tier::Cloud,
        TierConstraint::AtMostRegional => node.local_tier <= Tier::Regional,
        TierConstraint::None | TierConstraint::EdgeOnly => true,
    };
    if constraint == TierConstraint::EdgeOnly {
        return (vec![LOCAL], Reason::TierConstraint, false);
    }
    if forwarding.hop_count >= config.max_hops {
        let plan = if local_may_serve {
            vec![LOCAL]
        } else {
            Vec::new()
        };
        return (plan, Reason::HopLimit, false);
    }
    if !local_may_serve {
        // Only upstreams the constraint allows, no local fallback; empty means unavailable.
        let plan: Vec<Step> = candidates
            .available
            .iter()
            .map(|&t| Step::Upstream(t))
            .collect();
        let reason = if plan.is_empty() && candidates.unavailable > 0 {
            Reason::UpstreamUnavailable
        } else {
            Reason::TierConstraint
        };
        return (plan, reason, false);
    }
    if candidates.available.is_empty() {
        let wanted_but_gone = candidates.unavailable > 0
            || candidates
                .skipped
                .iter()
                .any(|s| s.cause == SkipCause::AlreadyTried);
        let constrained = candidates
            .skipped
            .iter()
            .any(|s| s.cause == SkipCause::Constraint);
        return if wanted_but_gone {
            (vec![LOCAL], Reason::UpstreamUnavailable, true)
        } else if constrained {
            (vec![LOCAL], Reason::TierConstraint, false)
        } else {
            (vec![LOCAL], Reason::NoUpstream, false)
        };
    }
    let mut upstreams: Vec<Step> = candidates
        .available
        .iter()
        .map(|&t| Step::Upstream(t))
        .collect();
    if complexity >= config.cloud_min_complexity {
        upstreams.reverse();
    }
    if complexity < config.local_max_complexity {
        let mut plan = vec![Step::Local { gated: true }];
        plan.extend(upstreams);
        plan.push(LOCAL);
        (plan, Reason::EarlyExit, false)
    } else {
        upstreams.push(LOCAL);
        (upstreams, Reason::Complexity, false)
    }
}
