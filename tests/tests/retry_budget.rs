//! The retry budget bounds the extra load of failovers: with a cloud failing every call, the
//! regional tier after it in the plan is tried for at most `ratio` of the requests; the rest
//! are answered by the edge's own model (degraded, and saying so), never lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use tiergate_bench::fake_upstream::Fault;
use tiergate_e2e::scenario::{
    EdgeLinks, FakeCloud, NEVER_OPEN, regional_node, sse_chat, start_edge,
};
use tiergate_e2e::{Gate, metric, metrics_text};

const REQUESTS: usize = 20;

#[tokio::test]
async fn failovers_stay_within_the_retry_budget_and_the_rest_are_answered_locally() {
    let cloud = FakeCloud::start().await.unwrap();
    cloud.faults.set(Fault::Status(503));
    let regional = regional_node().await.unwrap();
    let links = EdgeLinks {
        regional: Some(regional.grpc_url()),
        cloud: Some(cloud.url.clone()),
        // The cloud's breaker never opens here, so every request tries it first and fails.
        failures_to_open: NEVER_OPEN,
        // One failover per two requests, no reserve; a minute-long window holds the test.
        extra: "[retry]\nratio = 0.5\nmin_per_second = 0.0\nwindow = \"60s\"\n".into(),
        ..EdgeLinks::default()
    };
    let edge = start_edge(&links, Gate::CloudFirst).await.unwrap();

    let (mut by_regional, mut by_edge) = (0, 0);
    for _ in 0..REQUESTS {
        let sse = sse_chat(&edge, "what is the capital of france")
            .await
            .unwrap();
        assert_eq!(sse.reply.status, 200, "{}", sse.reply.text());
        assert!(
            !sse.text.is_empty() && sse.error.is_none(),
            "{}",
            sse.reply.text()
        );
        match sse.reply.header("x-tiergate-tier") {
            Some("regional") => by_regional += 1,
            Some("edge") => {
                assert_eq!(sse.reply.header("x-tiergate-degraded"), Some("true"));
                by_edge += 1;
            }
            other => panic!("answered by {other:?}"),
        }
    }
    eprintln!(
        "{REQUESTS} requests, cloud failing: {by_regional} failed over to regional, {by_edge} answered at the edge"
    );
    assert_eq!(
        cloud.faults.calls(),
        REQUESTS,
        "every request tried the cloud first"
    );
    assert_eq!(
        by_regional,
        REQUESTS / 2,
        "the budget grants one failover per two requests"
    );
    assert_eq!(by_edge, REQUESTS / 2);

    let text = metrics_text(&edge).await.unwrap();
    let retries = |outcome| {
        metric(
            &text,
            "tiergate_upstream_retries_total",
            &[("upstream", "regional"), ("outcome", outcome)],
        )
    };
    assert_eq!(retries("sent"), Some((REQUESTS / 2) as f64), "{text}");
    assert_eq!(retries("budget_exhausted"), Some((REQUESTS / 2) as f64));
    // Skipped for the budget is not a failure of the regional link.
    assert_eq!(
        metric(
            &text,
            "tiergate_upstream_available",
            &[("upstream", "regional")]
        ),
        Some(1.0)
    );
}
