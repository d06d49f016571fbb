//! Properties of the policy and the score over arbitrary inputs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use tiergate_router::complexity::{self, ComplexityConfig, TEXT_SIGNAL_COUNT, TextWeights};
use tiergate_router::{
    CommitMonitor, ConfidenceConfig, Forwarding, NodeView, PromptFeatures, RouterConfig, Signals,
    Step, Tier, TierConstraint, UpstreamView, Verdict, decide,
};

fn tier() -> impl Strategy<Value = Tier> {
    prop::sample::select(Tier::ALL.to_vec())
}

fn constraint() -> impl Strategy<Value = TierConstraint> {
    prop::sample::select(TierConstraint::ALL.to_vec())
}

fn node() -> impl Strategy<Value = NodeView> {
    (tier(), prop::collection::vec((tier(), any::<bool>()), 0..5)).prop_map(|(local_tier, ups)| {
        NodeView {
            local_tier,
            local_variant: None,
            local_cpu: None,
            upstreams: ups
                .into_iter()
                .map(|(tier, available)| UpstreamView { tier, available })
                .collect(),
        }
    })
}

fn forwarding() -> impl Strategy<Value = Forwarding> {
    (0u32..6, prop::collection::vec(tier(), 0..3)).prop_map(|(hop_count, tiers_tried)| Forwarding {
        hop_count,
        tiers_tried,
    })
}

fn router_config() -> impl Strategy<Value = RouterConfig> {
    (0.0f64..=1.0, 0.0f64..=1.0, 0u32..5, -3.0f64..3.0).prop_map(|(a, b, max_hops, bias)| {
        RouterConfig {
            local_max_complexity: a,
            cloud_min_complexity: b,
            max_hops,
            complexity: ComplexityConfig {
                bias,
                ..ComplexityConfig::default()
            },
            ..RouterConfig::default()
        }
    })
}

proptest! {
    #[test]
    fn plans_only_go_up_to_untried_allowed_tiers(
        config in router_config(), prompt in ".{0,200}",
        node in node(), constraint in constraint(), fwd in forwarding(),
    ) {
        let d = decide(&config, &Signals::from_prompt(&prompt), &node, constraint, &fwd);
        prop_assert!((0.0..=1.0).contains(&d.complexity.score));
        let mut seen = Vec::new();
        for step in &d.plan {
            if let Step::Upstream(t) = *step {
                prop_assert!(t > node.local_tier, "forwarded down or sideways: {:?}", d.plan);
                prop_assert!(!fwd.tiers_tried.contains(&t), "to a tried tier: {:?}", d.plan);
                prop_assert!(constraint.allows_upstream(t), "against the constraint: {:?}", d.plan);
                prop_assert!(node.upstreams.iter().any(|u| u.tier == t && u.available), "unavailable: {:?}", d.plan);
                prop_assert!(!seen.contains(&t), "twice: {:?}", d.plan);
                prop_assert!(fwd.hop_count < config.max_hops, "past the hop limit: {:?}", d.plan);
                seen.push(t);
            }
        }
        if constraint == TierConstraint::EdgeOnly {
            prop_assert_eq!(&d.plan, &vec![Step::Local { gated: false }]);
            prop_assert!(!d.degraded);
        }
        if constraint == TierConstraint::AtLeastCloud && node.local_tier < Tier::Cloud {
            prop_assert!(d.plan.iter().all(|s| *s == Step::Upstream(Tier::Cloud)));
        }
        // A gated local step is always followed by somewhere to escalate to.
        if let Some(i) = d.plan.iter().position(|s| *s == Step::Local { gated: true }) {
            prop_assert!(matches!(d.plan.get(i + 1), Some(Step::Upstream(_))));
        }
        prop_assert_eq!(d.tier.is_none(), d.plan.is_empty());
    }

    #[test]
    fn score_is_in_range_for_any_weights(
        prompt in ".{0,300}",
        weights in prop::array::uniform16(-50.0f64..50.0), bias in -50.0f64..50.0,
    ) {
        let config = ComplexityConfig { bias, weights: TextWeights::from_array(weights) };
        let s = complexity::score(&PromptFeatures::extract(&prompt), &config);
        prop_assert!((0.0..=1.0).contains(&s.score));
        prop_assert_eq!(s.components.len(), TEXT_SIGNAL_COUNT);
    }

    #[test]
    fn more_of_a_positively_weighted_signal_never_lowers_the_score(prompt in "[a-z ]{0,80}", extra in 1usize..20) {
        // Only the length weight is set: appending words cannot lower the score.
        let mut w = [0.0; TEXT_SIGNAL_COUNT];
        w[0] = 2.0;
        let config = ComplexityConfig { bias: 0.0, weights: TextWeights::from_array(w) };
        let longer = format!("{prompt}{}", " word".repeat(extra));
        let s0 = complexity::score(&PromptFeatures::extract(&prompt), &config).score;
        let s1 = complexity::score(&PromptFeatures::extract(&longer), &config).score;
        prop_assert!(s1 >= s0);
    }

    #[test]
    fn raising_complexity_never_moves_local_earlier(
        node in node(), fwd in forwarding(), low in -3.0f64..3.0, delta in 0.0f64..3.0,
    ) {
        // A higher score may turn "local first" into "upstream first", never the reverse.
        let at = |bias: f64| {
            let mut c = RouterConfig::default();
            c.complexity.bias = bias;
            decide(&c, &Signals::from_prompt(""), &node, TierConstraint::None, &fwd)
        };
        let (a, b) = (at(low), at(low + delta));
        let local_first = |d: &tiergate_router::Decision| d.plan.first() == Some(&Step::Local { gated: true });
        prop_assert!(!local_first(&b) || local_first(&a));
    }

    #[test]
    fn monitor_verdicts_are_final_and_bounded(
        window in 0usize..12, mean in 0.0f32..=1.0, floor in 0.0f32..=1.0,
        tokens in prop::collection::vec((0.0f32..=1.0, 0.0f32..5.0), 0..20),
    ) {
        let config = ConfidenceConfig { commit_window: window, min_mean_top1: mean, min_token_top1: floor, max_mean_entropy: None, max_prompt_nll: None };
        let mut m = CommitMonitor::new(&config);
        let mut final_verdict: Option<Verdict> = None;
        for (i, (p, e)) in tokens.iter().enumerate() {
            let v = m.push(*p, *e);
            if let Some(f) = final_verdict {
                prop_assert_eq!(v, f);
            } else if v.is_final() {
                final_verdict = Some(v);
                if let Verdict::Abandon { at_token, .. } = v {
                    prop_assert_eq!(at_token, i);
                }
            } else {
                prop_assert!(i + 1 < window, "pending past the window");
            }
        }
        prop_assert!(m.tokens_judged() <= window);
        prop_assert!(m.finish().is_final());
    }
}
