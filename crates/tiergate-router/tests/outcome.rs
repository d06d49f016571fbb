//! Naming the outcome after the executor ran (part of) a plan.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tiergate_router::{
    Decision, Forwarding, NodeView, OutcomeError, Reason, RouterConfig, Signals, StepResult, Tier,
    TierConstraint, UpstreamView, decide,
};

/// Edge node with regional and cloud up; `complexity_bias` pins the score (text weights 0).
fn decision(low_complexity: bool, regional_up: bool) -> Decision {
    let mut config = RouterConfig::default();
    config.complexity.weights = tiergate_router::complexity::TextWeights::from_array(
        [0.0; tiergate_router::complexity::TEXT_SIGNAL_COUNT],
    );
    config.complexity.bias = if low_complexity { -5.0 } else { 0.0 };
    config.local_max_complexity = 0.3;
    config.cloud_min_complexity = 0.9;
    decide(
        &config,
        &Signals::from_prompt("p"),
        &NodeView {
            local_tier: Tier::Edge,
            local_variant: None,
            local_cpu: None,
            upstreams: vec![
                UpstreamView {
                    tier: Tier::Regional,
                    available: regional_up,
                },
                UpstreamView {
                    tier: Tier::Cloud,
                    available: true,
                },
            ],
        },
        TierConstraint::None,
        &Forwarding::default(),
    )
}

#[test]
fn committed_local_answer_is_an_early_exit() {
    let d = decision(true, true);
    let o = d
        .outcome(&[StepResult::LocalCommitted { mean_top1: 0.9 }])
        .unwrap();
    assert_eq!(
        (o.tier, o.reason, o.degraded),
        (Tier::Edge, Reason::EarlyExit, false)
    );
    assert_eq!(o.local_confidence, Some(0.9));
    assert_eq!(o.tiers_tried, vec![Tier::Edge]);
}

#[test]
fn abandoned_local_then_regional_is_low_confidence() {
    let d = decision(true, true);
    let o = d
        .outcome(&[
            StepResult::LocalAbandoned { mean_top1: 0.2 },
            StepResult::UpstreamAnswered { degraded: false },
        ])
        .unwrap();
    assert_eq!(
        (o.tier, o.reason, o.degraded),
        (Tier::Regional, Reason::LowConfidence, false)
    );
    assert_eq!(o.local_confidence, Some(0.2));
}

#[test]
fn failed_upstream_then_next_is_upstream_failed() {
    let d = decision(false, true);
    let o = d
        .outcome(&[
            StepResult::UpstreamFailed,
            StepResult::UpstreamAnswered { degraded: false },
        ])
        .unwrap();
    assert_eq!(
        (o.tier, o.reason, o.degraded),
        (Tier::Cloud, Reason::UpstreamFailed, false)
    );
    assert_eq!(o.tiers_tried, vec![Tier::Regional, Tier::Cloud]);
    assert_eq!(o.local_confidence, None);
}

#[test]
fn first_upstream_answer_keeps_the_decision_reason_and_its_degraded_flag() {
    let d = decision(false, true);
    let o = d
        .outcome(&[StepResult::UpstreamAnswered { degraded: true }])
        .unwrap();
    assert_eq!(
        (o.tier, o.reason, o.degraded),
        (Tier::Regional, Reason::Complexity, true)
    );
}

#[test]
fn local_fallback_after_every_upstream_failed_is_degraded() {
    let d = decision(false, true);
    let o = d
        .outcome(&[
            StepResult::UpstreamFailed,
            StepResult::UpstreamFailed,
            StepResult::LocalAnswered,
        ])
        .unwrap();
    assert_eq!(
        (o.tier, o.reason, o.degraded),
        (Tier::Edge, Reason::UpstreamFailed, true)
    );
}

#[test]
fn degraded_decision_stays_degraded() {
    let mut d = decision(false, false);
    d.plan
        .retain(|s| matches!(s, tiergate_router::Step::Local { .. }));
    d.degraded = true;
    d.reason = Reason::UpstreamUnavailable;
    let o = d.outcome(&[StepResult::LocalAnswered]).unwrap();
    assert_eq!((o.reason, o.degraded), (Reason::UpstreamUnavailable, true));
}

#[test]
fn results_that_do_not_fit_the_plan_are_errors() {
    let d = decision(true, true);
    assert_eq!(d.outcome(&[]), Err(OutcomeError::Unanswered(0)));
    assert_eq!(
        d.outcome(&[
            StepResult::LocalAbandoned { mean_top1: 0.1 },
            StepResult::UpstreamFailed
        ]),
        Err(OutcomeError::Unanswered(2))
    );
    assert_eq!(
        d.outcome(&[StepResult::UpstreamFailed]),
        Err(OutcomeError::Mismatch { index: 0 })
    );
    assert_eq!(
        d.outcome(&[
            StepResult::LocalCommitted { mean_top1: 0.9 },
            StepResult::UpstreamFailed
        ]),
        Err(OutcomeError::AnsweredEarlier { index: 0 })
    );
    let too_many = [StepResult::UpstreamFailed; 9];
    assert!(matches!(
        d.outcome(&too_many),
        Err(OutcomeError::TooManyResults { .. })
    ));
}

#[test]
fn local_step_that_could_not_run_is_named_local_failed() {
    let d = decision(true, true);
    let o = d
        .outcome(&[
            StepResult::LocalFailed,
            StepResult::UpstreamAnswered { degraded: false },
        ])
        .unwrap();
    assert_eq!(
        (o.tier, o.reason, o.degraded),
        (Tier::Regional, Reason::LocalFailed, false)
    );
    assert_eq!(o.local_confidence, None, "no confidence was measured");
    assert_eq!(o.tiers_tried, vec![Tier::Edge, Tier::Regional]);
    // The ungated local step of last resort failing too leaves no answer.
    let all_failed = [
        StepResult::LocalFailed,
        StepResult::UpstreamFailed,
        StepResult::UpstreamFailed,
        StepResult::LocalFailed,
    ];
    assert_eq!(d.outcome(&all_failed), Err(OutcomeError::Unanswered(4)));
}
