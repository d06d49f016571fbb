//! The executor alone: a fake tier seam (`fake.rs`) plays scripted attempts (refused at start,
//! streamed, failing before or after the first token, stalling, dropped), and table tests walk
//! plans over them, checking what the client receives, which tier answered and why, and what
//! each tier saw.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod fake;

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tiergate_router::tier::{Tier, TierConstraint};
use tiergate_router::{
    BudgetConfig, ConfidenceConfig, Decision, Forwarding as RouterForwarding, NodeView,
    RetryBudget, RetryBudgetConfig, RouterConfig, Signals, Step, UpstreamView, decide,
};
use tokio::sync::mpsc;

use self::fake::{FakeTiers, Script, answers, delta, done, local_answers, unavailable};
use super::executor::Walk;
use super::hedge::{HedgeConfig, HedgeDelay, Hedging};
use super::{FinishReason, Forwarding, Input, NodeError, NodeRequest, Sampling, StreamEvent};
use crate::metrics::NodeMetrics;

// ---- plans --------------------------------------------------------------------------------

/// The router's confidence gate over a window of two tokens at a mean of 0.8.
fn router(local_max_complexity: f64, cloud_min_complexity: f64) -> RouterConfig {
    RouterConfig {
        local_max_complexity,
        cloud_min_complexity,
        confidence: ConfidenceConfig {
            commit_window: 2,
            min_mean_top1: 0.8,
            min_token_top1: 0.0,
            ..ConfidenceConfig::default()
        },
        ..RouterConfig::default()
    }
}

/// The decision for an edge with both upstreams available under `config`.
fn decision(config: &RouterConfig) -> Decision {
    let view = NodeView {
        local_tier: Tier::Edge,
        local_variant: None,
        local_cpu: None,
        upstreams: [Tier::Regional, Tier::Cloud]
            .map(|tier| UpstreamView {
                tier,
                available: true,
            })
            .to_vec(),
    };
    decide(
        config,
        &Signals::from_prompt("what is the capital of france"),
        &view,
        TierConstraint::None,
        &RouterForwarding::default(),
    )
}

/// Cloud, regional, then the local answer of last resort.
fn cloud_first() -> Decision {
    let decision = decision(&router(0.0, 0.0));
    assert_eq!(
        decision.plan,
        [
            Step::Upstream(Tier::Cloud),
            Step::Upstream(Tier::Regional),
            Step::Local { gated: false }
        ]
    );
    decision
}

/// The gated local attempt, then the upstreams.
fn local_first() -> Decision {
    let decision = decision(&router(1.0, 1.0));
    assert_eq!(decision.plan[0], Step::Local { gated: true });
    assert!(decision.plan.len() > 1);
    decision
}

// ---- running a walk -----------------------------------------------------------------------

/// What the client got.
#[derive(Debug, Default)]
struct Received {
    text: String,
    tier: Option<Tier>,
    reason: Option<String>,
    degraded: bool,
    error: Option<NodeError>,
    done: bool,
}

struct Setup {
    deadline: Duration,
    retry: RetryBudgetConfig,
    hedge: HedgeConfig,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            deadline: Duration::from_secs(2),
            retry: RetryBudgetConfig::default(),
            hedge: HedgeConfig::default(),
        }
    }
}

async fn walk(decision: &Decision, tiers: &FakeTiers, setup: Setup) -> Received {
    let metrics = NodeMetrics::new("test").unwrap();
    let budget = BudgetConfig {
        local_reserve: Duration::from_millis(100),
        upstream_reserve: Duration::from_millis(100),
        ..BudgetConfig::default()
    };
    let retry_budget = Mutex::new(RetryBudget::new(setup.retry, Instant::now()));
    let hedging = Hedging::new(setup.hedge);
    let request = NodeRequest {
        input: Input::Text("what is the capital of france".to_owned()),
        sampling: Sampling {
            max_new_tokens: 16,
            ..Sampling::default()
        },
        constraint: TierConstraint::None,
        forwarding: Forwarding::default(),
        deadline: Instant::now() + setup.deadline,
        arrived: Instant::now(),
        request_id: "test".to_owned(),
        tenant: None,
        trace: tiergate_upstream::TraceContext::fresh(),
    };
    let walk = Walk {
        node_name: "edge-test",
        request,
        decision,
        metrics: &metrics,
        budget: &budget,
        retry_budget: &retry_budget,
        hedging: &hedging,
        forwarded_input: None,
        started: Instant::now(),
        whole_answer: false,
        cache: None,
    };
    let (tx, mut rx) = mpsc::channel(64);
    let run = walk.run(tiers, tx);
    let collect = async {
        let mut received = Received::default();
        while let Some(event) = rx.recv().await {
            match event {
                Ok(StreamEvent::Routed(routing)) => {
                    received.tier = Some(routing.tier);
                    received.reason = Some(routing.reason);
                    received.degraded = routing.degraded;
                }
                Ok(StreamEvent::Delta { text, .. }) => received.text.push_str(&text),
                Ok(StreamEvent::Done(answer)) => {
                    assert_eq!(answer.text, received.text, "Done carries the whole text");
                    received.done = true;
                }
                Err(err) => received.error = Some(err),
            }
        }
        received
    };
    let ((), received) = tokio::join!(run, collect);
    received
}

// ---- the table ----------------------------------------------------------------------------

struct Case {
    name: &'static str,
    plan: fn() -> Decision,
    scripts: Vec<(Tier, Script)>,
    /// The tier that answered and its reason; `None`: the client got an error.
    answered: Option<(Tier, &'static str)>,
    text: &'static str,
    degraded: bool,
    tiers_called: Vec<Tier>,
}

fn cases() -> Vec<Case> {
    use Tier::{Cloud, Edge, Regional};
    vec![
        Case {
            name: "the first upstream answers",
            plan: cloud_first,
            scripts: vec![(Cloud, answers("Paris."))],
            answered: Some((Cloud, "complexity")),
            text: "Paris.",
            degraded: false,
            tiers_called: vec![Cloud],
        },
        Case {
            name: "refused at start: the next upstream answers",
            plan: cloud_first,
            scripts: vec![
                (Cloud, Script::Refuse(unavailable())),
                (Regional, answers("Paris.")),
            ],
            answered: Some((Regional, "upstream_failed")),
            text: "Paris.",
            degraded: false,
            tiers_called: vec![Cloud, Regional],
        },
        Case {
            name: "an error before the first token moves on",
            plan: cloud_first,
            scripts: vec![
                (Cloud, Script::Events(vec![Err(unavailable())])),
                (Regional, answers("Paris.")),
            ],
            answered: Some((Regional, "upstream_failed")),
            text: "Paris.",
            degraded: false,
            tiers_called: vec![Cloud, Regional],
        },
        Case {
            name: "an empty answer cut short is a failure, not an answer",
            plan: cloud_first,
            scripts: vec![
                (Cloud, Script::Events(vec![done(FinishReason::Length)])),
                (Regional, answers("Paris.")),
            ],
            answered: Some((Regional, "upstream_failed")),
            text: "Paris.",
            degraded: false,
            tiers_called: vec![Cloud, Regional],
        },
        Case {
            name: "an empty answer that really stopped is an answer",
            plan: cloud_first,
            scripts: vec![(Cloud, Script::Events(vec![done(FinishReason::Stop)]))],
            answered: Some((Cloud, "complexity")),
            text: "",
            degraded: false,
            tiers_called: vec![Cloud],
        },
        Case {
            name: "a stream that closes without an end moves on",
            plan: cloud_first,
            scripts: vec![
                (Cloud, Script::Events(vec![])),
                (Regional, answers("Paris.")),
            ],
            answered: Some((Regional, "upstream_failed")),
            text: "Paris.",
            degraded: false,
            tiers_called: vec![Cloud, Regional],
        },
        Case {
            name: "every upstream fails: the local answer of last resort, degraded",
            plan: cloud_first,
            scripts: vec![
                (Cloud, Script::Refuse(unavailable())),
                (Regional, Script::Events(vec![Err(unavailable())])),
                (Edge, local_answers("Paris. ", 0.3)),
            ],
            answered: Some((Edge, "upstream_failed")),
            text: "Paris. ",
            degraded: true,
            tiers_called: vec![Cloud, Regional, Edge],
        },
        Case {
            name: "every step fails: an error, no text",
            plan: cloud_first,
            scripts: vec![
                (Cloud, Script::Refuse(unavailable())),
                (Regional, Script::Refuse(unavailable())),
                (
                    Edge,
                    Script::Refuse(NodeError::Internal("engine gone".into())),
                ),
            ],
            answered: None,
            text: "",
            degraded: false,
            tiers_called: vec![Cloud, Regional, Edge],
        },
        Case {
            name: "a confident local answer ends the request at the edge",
            plan: local_first,
            scripts: vec![(Edge, local_answers("Paris is the capital. ", 0.95))],
            answered: Some((Edge, "early_exit")),
            text: "Paris is the capital. ",
            degraded: false,
            tiers_called: vec![Edge],
        },
        Case {
            name: "an unsure local answer is abandoned unseen and escalated",
            plan: local_first,
            scripts: vec![
                (Edge, local_answers("Maybe Lyon or so. ", 0.4)),
                (Regional, answers("Paris.")),
            ],
            answered: Some((Regional, "low_confidence")),
            text: "Paris.",
            degraded: false,
            tiers_called: vec![Edge, Regional],
        },
        Case {
            name: "a local refusal (queue full) escalates",
            plan: local_first,
            scripts: vec![
                (
                    Edge,
                    Script::Refuse(NodeError::Overloaded("queue full".into())),
                ),
                (Regional, answers("Paris.")),
            ],
            answered: Some((Regional, "local_failed")),
            text: "Paris.",
            degraded: false,
            tiers_called: vec![Edge, Regional],
        },
    ]
}

#[tokio::test]
async fn plans_times_step_results() {
    for case in cases() {
        let tiers = FakeTiers::with(&case.scripts);
        let decision = (case.plan)();
        let got = walk(&decision, &tiers, Setup::default()).await;
        let name = case.name;
        match case.answered {
            Some((tier, reason)) => {
                assert_eq!(got.error.as_ref().map(ToString::to_string), None, "{name}");
                assert_eq!(got.tier, Some(tier), "{name}");
                assert_eq!(got.reason.as_deref(), Some(reason), "{name}");
                assert!(got.done, "{name}: the answer ends with Done");
            }
            None => {
                assert!(got.error.is_some(), "{name}: {got:?}");
                assert!(!got.done, "{name}");
            }
        }
        assert_eq!(got.text, case.text, "{name}");
        assert_eq!(got.degraded, case.degraded, "{name}");
        assert_eq!(tiers.tiers_called(), case.tiers_called, "{name}");
    }
}

#[tokio::test]
async fn a_failure_after_the_first_token_ends_the_stream_with_an_error_not_a_failover() {
    let tiers = FakeTiers::with(&[(
        Tier::Cloud,
        Script::Events(vec![delta("Par"), Err(NodeError::Upstream("reset".into()))]),
    )]);
    let got = walk(&cloud_first(), &tiers, Setup::default()).await;
    assert_eq!(got.text, "Par");
    assert!(matches!(got.error, Some(NodeError::Upstream(_))), "{got:?}");
    assert!(!got.done);
    assert_eq!(tiers.tiers_called(), [Tier::Cloud]);
}

#[tokio::test]
async fn a_stall_before_the_first_token_costs_the_steps_share_then_moves_on() {
    let tiers = FakeTiers::with(&[
        (Tier::Cloud, Script::ThenStall(vec![])),
        (Tier::Regional, answers("Paris.")),
    ]);
    let started = Instant::now();
    let got = walk(&cloud_first(), &tiers, Setup::default()).await;
    assert_eq!(got.tier, Some(Tier::Regional), "{got:?}");
    assert_eq!(got.text, "Paris.");
    assert!(
        tiers.dropped_early.load(Ordering::SeqCst),
        "the stalled call was dropped"
    );
    // The cloud's share of a 2 s deadline with 0.2 s reserved: half of 1.8 s.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(850), "{took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    // Forwarded requests say where they have been: the regional call knows the cloud failed.
    let calls = tiers.calls.lock().unwrap();
    assert_eq!(calls[1].1.tiers_tried, [Tier::Cloud, Tier::Edge]);
    assert_eq!(calls[1].1.hop_count, 1);
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_drops_the_attempt() {
    let tiers = FakeTiers::with(&[(Tier::Cloud, Script::ThenStall(vec![delta("Par")]))]);
    let decision = cloud_first();
    let metrics = NodeMetrics::new("test").unwrap();
    let budget = BudgetConfig::default();
    let retry_budget = Mutex::new(RetryBudget::new(
        RetryBudgetConfig::default(),
        Instant::now(),
    ));
    let hedging = Hedging::new(HedgeConfig::default());
    let walk = Walk {
        node_name: "edge-test",
        request: NodeRequest {
            input: Input::Text("hello".to_owned()),
            sampling: Sampling::default(),
            constraint: TierConstraint::None,
            forwarding: Forwarding::default(),
            deadline: Instant::now() + Duration::from_secs(30),
            arrived: Instant::now(),
            request_id: "test".to_owned(),
            tenant: None,
            trace: tiergate_upstream::TraceContext::fresh(),
        },
        decision: &decision,
        metrics: &metrics,
        budget: &budget,
        retry_budget: &retry_budget,
        hedging: &hedging,
        forwarded_input: None,
        started: Instant::now(),
        whole_answer: false,
        cache: None,
    };
    let (tx, mut rx) = mpsc::channel::<Result<StreamEvent, NodeError>>(64);
    let client = async move {
        // Routed, then the first delta; then the client goes away.
        for _ in 0..2 {
            rx.recv().await.unwrap().unwrap();
        }
        drop(rx);
    };
    let ((), ()) = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::join!(walk.run(&tiers, tx), client)
    })
    .await
    .expect("the walk ended when the client left");
    assert!(tiers.dropped_early.load(Ordering::SeqCst));
}

#[tokio::test]
async fn a_spent_retry_budget_skips_the_next_upstream() {
    let tiers = FakeTiers::with(&[
        (Tier::Cloud, Script::Refuse(unavailable())),
        (Tier::Edge, local_answers("Paris. ", 0.3)),
    ]);
    let setup = Setup {
        retry: RetryBudgetConfig {
            ratio: 0.0,
            min_per_second: 0.0,
            ..RetryBudgetConfig::default()
        },
        ..Setup::default()
    };
    let got = walk(&cloud_first(), &tiers, setup).await;
    assert_eq!(got.tier, Some(Tier::Edge), "{got:?}");
    assert!(got.degraded);
    assert_eq!(
        tiers.tiers_called(),
        [Tier::Cloud, Tier::Edge],
        "regional skipped"
    );
}

#[tokio::test]
async fn a_hedge_that_answers_first_wins_and_the_slow_call_is_dropped() {
    let tiers = FakeTiers::with(&[
        (Tier::Cloud, Script::ThenStall(vec![])),
        (Tier::Regional, answers("Paris.")),
    ]);
    let setup = Setup {
        hedge: HedgeConfig {
            cloud: Some(HedgeDelay::Fixed(Duration::from_millis(50))),
            regional: None,
        },
        ..Setup::default()
    };
    let started = Instant::now();
    let got = walk(&cloud_first(), &tiers, setup).await;
    assert_eq!(got.tier, Some(Tier::Regional), "{got:?}");
    assert_eq!(got.reason.as_deref(), Some("upstream_failed"));
    assert_eq!(got.text, "Paris.");
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "not the cloud's share"
    );
    assert!(
        tiers.dropped_early.load(Ordering::SeqCst),
        "the cloud call was dropped"
    );
    assert_eq!(tiers.tiers_called(), [Tier::Cloud, Tier::Regional]);
}

#[tokio::test]
async fn when_both_hedged_calls_fail_the_hedge_is_not_run_again() {
    let tiers = FakeTiers::with(&[
        (Tier::Cloud, Script::ThenStall(vec![])),
        (Tier::Regional, Script::Events(vec![Err(unavailable())])),
        (Tier::Edge, local_answers("Paris. ", 0.3)),
    ]);
    let setup = Setup {
        deadline: Duration::from_millis(800),
        hedge: HedgeConfig {
            cloud: Some(HedgeDelay::Fixed(Duration::from_millis(20))),
            regional: None,
        },
        ..Setup::default()
    };
    let got = walk(&cloud_first(), &tiers, setup).await;
    assert_eq!(got.tier, Some(Tier::Edge), "{got:?}");
    assert!(got.degraded);
    assert_eq!(
        tiers.tiers_called(),
        [Tier::Cloud, Tier::Regional, Tier::Edge],
        "regional once"
    );
}
