//! One case per rule of `decide`, table-driven. Complexity is pinned by the config's bias
//! (all text weights 0), so each case states the score it routes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tiergate_router::complexity::{ComplexityConfig, TEXT_SIGNAL_COUNT, TextWeights};
use tiergate_router::policy::SkipCause;
use tiergate_router::{
    ConversationContext, Forwarding, NodeView, Reason, RouterConfig, Signals, Step, Tier,
    TierConstraint, UpstreamView, decide,
};

use Step::{Local, Upstream};
use Tier::{Cloud, Edge, Regional};

const LOW: f64 = 0.2;
const MID: f64 = 0.6;
const HIGH: f64 = 0.9;

/// Local-first below 0.5, cloud-first from 0.8, hop limit 3.
fn config(complexity: f64) -> RouterConfig {
    let logit = (complexity / (1.0 - complexity)).ln();
    RouterConfig {
        complexity: ComplexityConfig {
            bias: logit,
            weights: TextWeights::from_array([0.0; TEXT_SIGNAL_COUNT]),
        },
        local_max_complexity: 0.5,
        cloud_min_complexity: 0.8,
        max_hops: 3,
        ..RouterConfig::default()
    }
}

fn up(tier: Tier, available: bool) -> UpstreamView {
    UpstreamView { tier, available }
}

struct Case {
    name: &'static str,
    complexity: f64,
    local: Tier,
    upstreams: Vec<UpstreamView>,
    constraint: TierConstraint,
    hops: u32,
    tried: Vec<Tier>,
    plan: Vec<Step>,
    reason: Reason,
    degraded: bool,
}

fn case(name: &'static str, complexity: f64, local: Tier, upstreams: Vec<UpstreamView>) -> Case {
    Case {
        name,
        complexity,
        local,
        upstreams,
        constraint: TierConstraint::None,
        hops: 0,
        tried: Vec::new(),
        plan: Vec::new(),
        reason: Reason::NoUpstream,
        degraded: false,
    }
}

impl Case {
    fn constraint(mut self, c: TierConstraint) -> Case {
        self.constraint = c;
        self
    }
    fn forwarded(mut self, hops: u32, tried: Vec<Tier>) -> Case {
        self.hops = hops;
        self.tried = tried;
        self
    }
    fn expect(mut self, plan: Vec<Step>, reason: Reason, degraded: bool) -> Case {
        self.plan = plan;
        self.reason = reason;
        self.degraded = degraded;
        self
    }
}

const GATED: Step = Local { gated: true };
const LOCAL: Step = Local { gated: false };

fn both() -> Vec<UpstreamView> {
    vec![up(Regional, true), up(Cloud, true)]
}

#[test]
fn each_rule_of_decide() {
    use TierConstraint::{AtLeastCloud, AtMostRegional, EdgeOnly};
    let cases = vec![
        case(
            "low complexity: local first, gated, then up, local last",
            LOW,
            Edge,
            both(),
        )
        .expect(
            vec![GATED, Upstream(Regional), Upstream(Cloud), LOCAL],
            Reason::EarlyExit,
            false,
        ),
        case("mid complexity: regional then cloud", MID, Edge, both()).expect(
            vec![Upstream(Regional), Upstream(Cloud), LOCAL],
            Reason::Complexity,
            false,
        ),
        case("high complexity: cloud first", HIGH, Edge, both()).expect(
            vec![Upstream(Cloud), Upstream(Regional), LOCAL],
            Reason::Complexity,
            false,
        ),
        case("exactly local_max goes up", 0.5, Edge, both()).expect(
            vec![Upstream(Regional), Upstream(Cloud), LOCAL],
            Reason::Complexity,
            false,
        ),
        case("exactly cloud_min prefers the cloud", 0.8, Edge, both()).expect(
            vec![Upstream(Cloud), Upstream(Regional), LOCAL],
            Reason::Complexity,
            false,
        ),
        case(
            "unavailable upstream is skipped",
            MID,
            Edge,
            vec![up(Regional, false), up(Cloud, true)],
        )
        .expect(vec![Upstream(Cloud), LOCAL], Reason::Complexity, false),
        case(
            "one of two regional endpoints up is enough",
            MID,
            Edge,
            vec![up(Regional, false), up(Regional, true)],
        )
        .expect(vec![Upstream(Regional), LOCAL], Reason::Complexity, false),
        case(
            "all upstreams down: degraded local",
            HIGH,
            Edge,
            vec![up(Regional, false), up(Cloud, false)],
        )
        .expect(vec![LOCAL], Reason::UpstreamUnavailable, true),
        case(
            "all upstreams down, low complexity: still degraded",
            LOW,
            Edge,
            vec![up(Regional, false)],
        )
        .expect(vec![LOCAL], Reason::UpstreamUnavailable, true),
        case(
            "no upstream configured: top of the hierarchy",
            HIGH,
            Regional,
            vec![],
        )
        .expect(vec![LOCAL], Reason::NoUpstream, false),
        case(
            "never down or sideways",
            HIGH,
            Regional,
            vec![up(Edge, true), up(Regional, true), up(Cloud, true)],
        )
        .expect(vec![Upstream(Cloud), LOCAL], Reason::Complexity, false),
        case(
            "only lower tiers configured",
            HIGH,
            Regional,
            vec![up(Edge, true)],
        )
        .expect(vec![LOCAL], Reason::NoUpstream, false),
        case(
            "never to a tier already tried: degraded",
            HIGH,
            Regional,
            vec![up(Cloud, true)],
        )
        .forwarded(1, vec![Edge, Cloud])
        .expect(vec![LOCAL], Reason::UpstreamUnavailable, true),
        case("tried tier skipped, the other used", MID, Edge, both())
            .forwarded(0, vec![Regional])
            .expect(vec![Upstream(Cloud), LOCAL], Reason::Complexity, false),
        case("hop limit: local only", HIGH, Regional, both())
            .forwarded(3, vec![Edge])
            .expect(vec![LOCAL], Reason::HopLimit, false),
        case(
            "one hop below the limit still forwards",
            HIGH,
            Regional,
            both(),
        )
        .forwarded(2, vec![Edge])
        .expect(vec![Upstream(Cloud), LOCAL], Reason::Complexity, false),
        case(
            "edge_only: local, ungated, not degraded",
            HIGH,
            Edge,
            both(),
        )
        .constraint(EdgeOnly)
        .expect(vec![LOCAL], Reason::TierConstraint, false),
        case(
            "edge_only even when upstreams are down",
            HIGH,
            Edge,
            vec![up(Regional, false)],
        )
        .constraint(EdgeOnly)
        .expect(vec![LOCAL], Reason::TierConstraint, false),
        case("at_most_regional drops the cloud", HIGH, Edge, both())
            .constraint(AtMostRegional)
            .expect(vec![Upstream(Regional), LOCAL], Reason::Complexity, false),
        case(
            "at_most_regional with only the cloud above: local on purpose",
            HIGH,
            Regional,
            vec![up(Cloud, true)],
        )
        .constraint(AtMostRegional)
        .expect(vec![LOCAL], Reason::TierConstraint, false),
        case("at_least_cloud: cloud only, no local", LOW, Edge, both())
            .constraint(AtLeastCloud)
            .expect(vec![Upstream(Cloud)], Reason::TierConstraint, false),
        case(
            "at_least_cloud, cloud down: empty plan",
            LOW,
            Edge,
            vec![up(Regional, true), up(Cloud, false)],
        )
        .constraint(AtLeastCloud)
        .expect(vec![], Reason::UpstreamUnavailable, false),
        case(
            "at_least_cloud, no cloud configured: empty plan",
            LOW,
            Edge,
            vec![up(Regional, true)],
        )
        .constraint(AtLeastCloud)
        .expect(vec![], Reason::TierConstraint, false),
        case(
            "at_least_cloud at the hop limit: empty plan",
            LOW,
            Regional,
            both(),
        )
        .constraint(AtLeastCloud)
        .forwarded(3, vec![Edge])
        .expect(vec![], Reason::HopLimit, false),
        case(
            "at_least_cloud on a cloud-tier node: local",
            LOW,
            Cloud,
            vec![],
        )
        .constraint(AtLeastCloud)
        .expect(vec![LOCAL], Reason::NoUpstream, false),
    ];
    for c in cases {
        let decision = decide(
            &config(c.complexity),
            &Signals::from_prompt("a prompt"),
            &NodeView {
                local_tier: c.local,
                local_variant: None,
                local_cpu: None,
                upstreams: c.upstreams.clone(),
            },
            c.constraint,
            &Forwarding {
                hop_count: c.hops,
                tiers_tried: c.tried.clone(),
            },
        );
        assert!(
            (decision.complexity.score - c.complexity).abs() < 1e-9,
            "{}",
            c.name
        );
        assert_eq!(decision.plan, c.plan, "{}", c.name);
        assert_eq!(decision.reason, c.reason, "{}", c.name);
        assert_eq!(decision.degraded, c.degraded, "{}", c.name);
        let first = c.plan.first().map(|s| match s {
            Local { .. } => c.local,
            Upstream(t) => *t,
        });
        assert_eq!(decision.tier, first, "{}", c.name);
    }
}

#[test]
fn skipped_upstreams_say_why() {
    let decision = decide(
        &config(MID),
        &Signals::from_prompt("x"),
        &NodeView {
            local_tier: Regional,
            local_variant: None,
            local_cpu: None,
            upstreams: vec![up(Edge, true), up(Cloud, false)],
        },
        TierConstraint::None,
        &Forwarding::default(),
    );
    let causes: Vec<(Tier, SkipCause)> =
        decision.skipped.iter().map(|s| (s.tier, s.cause)).collect();
    assert_eq!(
        causes,
        vec![
            (Edge, SkipCause::NotAboveLocal),
            (Cloud, SkipCause::Unavailable)
        ]
    );

    let decision = decide(
        &config(MID),
        &Signals::from_prompt("x"),
        &NodeView {
            local_tier: Edge,
            local_variant: None,
            local_cpu: None,
            upstreams: both(),
        },
        TierConstraint::None,
        &Forwarding {
            hop_count: 9,
            tiers_tried: vec![],
        },
    );
    assert!(
        decision
            .skipped
            .iter()
            .all(|s| s.cause == SkipCause::HopLimit)
    );
    assert_eq!(decision.skipped.len(), 2);
}

#[test]
fn decision_json_carries_signals_thresholds_plan_and_reason() {
    let decision = decide(
        &RouterConfig::default(),
        &Signals::from_prompt("Explain step by step why 17 * 23 = 391."),
        &NodeView {
            local_tier: Edge,
            local_variant: None,
            local_cpu: None,
            upstreams: both(),
        },
        TierConstraint::AtMostRegional,
        &Forwarding::default(),
    );
    let json = serde_json::to_value(&decision).unwrap();
    assert_eq!(json["local_tier"], "edge");
    assert_eq!(json["constraint"], "at_most_regional");
    assert_eq!(json["reason"], decision.reason.as_str());
    assert_eq!(json["tier"], decision.tier.unwrap().as_str());
    assert_eq!(json["degraded"], false);
    assert_eq!(json["signals"]["features"]["numbers"], 3);
    assert_eq!(json["signals"]["context"]["earlier_turns"], 0);
    assert!(json["complexity"]["score"].as_f64().unwrap() > 0.0);
    assert_eq!(
        json["complexity"]["components"].as_array().unwrap().len(),
        TEXT_SIGNAL_COUNT
    );
    assert_eq!(json["thresholds"]["max_hops"], 3);
    assert_eq!(json["thresholds"]["confidence"]["commit_window"], 8);
    assert_eq!(json["skipped"][0]["tier"], "cloud");
    assert_eq!(json["skipped"][0]["cause"], "constraint");
    let plan = json["plan"].as_array().unwrap();
    assert!(
        plan.iter()
            .any(|s| s == &serde_json::json!({"upstream": "regional"})),
        "{plan:?}"
    );
    assert!(
        plan.iter()
            .all(|s| s != &serde_json::json!({"upstream": "cloud"}))
    );
}

#[test]
fn reason_names_are_snake_case_and_stable() {
    let names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        names,
        [
            "early_exit",
            "low_confidence",
            "complexity",
            "tier_constraint",
            "hop_limit",
            "upstream_unavailable",
            "upstream_failed",
            "local_failed",
            "no_upstream",
            "cache_hit"
        ]
    );
    for r in Reason::ALL {
        assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        assert_eq!(r.to_string(), r.as_str());
    }
}

#[test]
fn router_config_from_toml_rejects_unknown_fields_and_validates() {
    let c: RouterConfig = toml::from_str(
        "local_max_complexity = 0.4\n[confidence]\ncommit_window = 4\nmax_prompt_nll = 3.5\n",
    )
    .unwrap();
    assert_eq!(c.local_max_complexity, 0.4);
    assert_eq!(c.confidence.commit_window, 4);
    assert_eq!(c.confidence.max_prompt_nll, Some(3.5));
    assert_eq!(
        c.cloud_min_complexity,
        RouterConfig::default().cloud_min_complexity
    );
    c.validate().unwrap();

    let err = toml::from_str::<RouterConfig>("max_hop = 2\n").unwrap_err();
    assert!(err.to_string().contains("max_hop"), "{err}");

    let c = RouterConfig {
        cloud_min_complexity: 1.5,
        ..RouterConfig::default()
    };
    assert_eq!(c.validate().unwrap_err().field, "cloud_min_complexity");
    RouterConfig::default().validate().unwrap();
}

/// The shipped defaults on the kind of prompts the demo sends: a short familiar command stays
/// local (gated); a long, multi-part prompt goes up first; the conversation around the last
/// user turn (a system prompt, earlier turns) does not change its score.
#[test]
fn default_config_routes_demo_like_prompts() {
    let node = NodeView {
        local_tier: Edge,
        local_variant: None,
        local_cpu: None,
        upstreams: both(),
    };
    let route = |signals: &Signals| {
        decide(
            &RouterConfig::default(),
            signals,
            &node,
            TierConstraint::None,
            &Forwarding::default(),
        )
    };
    let essay = "Compare the economic policies of the Roosevelt and Reagan administrations and \
                 explain why their approaches to taxation differed. Discuss at least three \
                 consequences of each.";
    let lights = Signals::from_prompt("turn on the kitchen lights");
    let d = route(&lights);
    assert_eq!(d.plan[0], GATED, "{}", d.complexity.score);
    assert_eq!(d.reason, Reason::EarlyExit);

    let with_context = Signals {
        context: ConversationContext {
            earlier_turns: 4,
            earlier_words: 300,
            system_words: 5,
        },
        ..lights.clone()
    };
    let d2 = route(&with_context);
    assert_eq!(d2.complexity, d.complexity);
    assert_eq!(d2.plan, d.plan);

    let d = route(&Signals::from_prompt(essay));
    assert!(matches!(d.plan[0], Upstream(_)), "{}", d.complexity.score);
    assert_eq!(d.reason, Reason::Complexity);
}

/// The decision for an easy prompt at an edge node running graph `variant` on CPU kind `cpu`.
fn easy_prompt_on(
    c: &RouterConfig,
    variant: Option<&'static str>,
    cpu: Option<&'static str>,
) -> tiergate_router::Decision {
    decide(
        c,
        &Signals::from_prompt("turn on the kitchen lights"),
        &NodeView {
            local_tier: Edge,
            local_variant: variant,
            local_cpu: cpu,
            upstreams: both(),
        },
        TierConstraint::None,
        &Forwarding::default(),
    )
}

/// A gate calibrated on one local graph applies when the node runs that graph; any other graph
/// (or an unknown one) takes `[confidence]`. The decision says which graph and which gate.
#[test]
fn the_local_graph_picks_its_own_early_exit_gate() {
    let c: RouterConfig = toml::from_str(
        "[confidence]\nmin_mean_top1 = 0.875\nmin_token_top1 = 0.45\n\
         [confidence_by_variant.int4-fast]\nmin_mean_top1 = 0.5\nmin_token_top1 = 0.5\n",
    )
    .unwrap();
    c.validate().unwrap();
    let route = |variant: Option<&'static str>| easy_prompt_on(&c, variant, None);
    let fast = route(Some("int4-fast"));
    assert_eq!(fast.thresholds.confidence.min_mean_top1, 0.5);
    assert_eq!(fast.thresholds.confidence.min_token_top1, 0.5);
    // A whole gate: what it leaves out is the built-in default, not `[confidence]`'s.
    assert_eq!(fast.thresholds.confidence.commit_window, 8);
    let json = serde_json::to_value(&fast).unwrap();
    assert_eq!(json["local_variant"], "int4-fast");
    assert_eq!(json["thresholds"]["confidence"]["min_mean_top1"], 0.5);
    for other in [Some("int4"), Some("fp32"), None] {
        let d = route(other);
        assert_eq!(d.thresholds.confidence, c.confidence, "{other:?}");
    }

    // Each graph's gate is validated, and the error names it.
    let bad: RouterConfig =
        toml::from_str("[confidence_by_variant.int4-fast]\nmin_token_top1 = 1.5\n").unwrap();
    assert_eq!(
        bad.validate().unwrap_err().field,
        "confidence_by_variant.int4-fast.min_token_top1"
    );
}

/// A gate calibrated on a graph's answers on one kind of CPU wins on that kind only; elsewhere
/// the graph's own gate, then `[confidence]`. The decision says which CPU kind it chose for.
#[test]
fn the_cpu_kind_picks_the_gate_calibrated_on_its_answers() {
    let c: RouterConfig = toml::from_str(
        "[confidence]\nmin_mean_top1 = 0.875\nmin_token_top1 = 0.45\n\
         [confidence_by_variant.int4-fast]\nmin_mean_top1 = 0.8\nmin_token_top1 = 0.5\n\
         [confidence_by_cpu.x86-64-avx512-vnni.int4-fast]\nmin_mean_top1 = 0.9\nmin_token_top1 = 0.0\n",
    )
    .unwrap();
    c.validate().unwrap();
    let route = |variant, cpu| easy_prompt_on(&c, variant, cpu);
    let gate = |variant, cpu| {
        let d = route(variant, cpu);
        (
            d.thresholds.confidence.min_mean_top1,
            d.thresholds.confidence.min_token_top1,
        )
    };
    let avx512 = Some("x86-64-avx512-vnni");
    assert_eq!(gate(Some("int4-fast"), avx512), (0.9, 0.0));
    assert_eq!(gate(Some("int4-fast"), Some("x86-64-avx2")), (0.8, 0.5));
    assert_eq!(gate(Some("int4-fast"), None), (0.8, 0.5));
    // The exact graphs have no gate of their own on that CPU: `[confidence]`.
    assert_eq!(gate(Some("int4"), avx512), (0.875, 0.45));
    assert_eq!(gate(None, avx512), (0.875, 0.45));
    let json = serde_json::to_value(route(Some("int4-fast"), avx512)).unwrap();
    assert_eq!(json["local_cpu"], "x86-64-avx512-vnni");
    let mean = json["thresholds"]["confidence"]["min_mean_top1"]
        .as_f64()
        .unwrap();
    assert!((mean - 0.9).abs() < 1e-6, "{mean}");

    let bad: RouterConfig =
        toml::from_str("[confidence_by_cpu.x86-64-avx2.int4-fast]\nmin_mean_top1 = -1\n").unwrap();
    assert_eq!(
        bad.validate().unwrap_err().field,
        "confidence_by_cpu.x86-64-avx2.int4-fast.min_mean_top1"
    );
}
