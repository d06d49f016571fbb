//! Hedged upstream steps: a cloud slow to its first token is hedged by the regional tier after
//! the configured delay; the first good answer wins, the slow call is cancelled (its connection
//! closes, seen from the provider's side) and its link is not blamed. A fast cloud is not
//! hedged at all.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use tiergate_bench::fake_upstream::Fault;
use tiergate_e2e::scenario::{
    EdgeLinks, FakeCloud, NEVER_OPEN, regional_node, sse_chat, start_edge, unary_chat,
};
use tiergate_e2e::{Gate, metric, metrics_text};

const PROMPT: &str = "what is the capital of france";
/// How long the slow cloud takes to answer: far beyond the hedge delay.
const CLOUD_DELAY: Duration = Duration::from_secs(4);

/// Waits until the provider holds no connection; how long that took.
async fn until_the_cloud_is_hung_up_on(cloud: &FakeCloud) -> Duration {
    let started = Instant::now();
    while cloud.faults.open_connections() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the losing cloud call was left open"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn a_cloud_slow_to_its_first_token_is_hedged_by_the_regional_tier() {
    let cloud = FakeCloud::start().await.unwrap();
    cloud.faults.set(Fault::Slow(CLOUD_DELAY));
    let regional = regional_node().await.unwrap();
    let links = EdgeLinks {
        regional: Some(regional.grpc_url()),
        cloud: Some(cloud.url.clone()),
        failures_to_open: NEVER_OPEN,
        cloud_first_token: Some(Duration::from_secs(10)),
        extra: "[hedge]\ncloud = \"300ms\"\n[limits]\ndefault_timeout = \"20s\"\n".into(),
    };
    let edge = start_edge(&links, Gate::CloudFirst).await.unwrap();

    // Streamed: the regional hedge answers long before the cloud would.
    let sse = sse_chat(&edge, PROMPT).await.unwrap();
    eprintln!("slow cloud, SSE: answered after {:?}", sse.elapsed);
    assert_eq!(sse.reply.status, 200, "{}", sse.reply.text());
    assert_eq!(sse.reply.header("x-tiergate-tier"), Some("regional"));
    assert!(!sse.text.is_empty() && sse.error.is_none());
    assert!(
        sse.elapsed >= Duration::from_millis(300),
        "{:?}",
        sse.elapsed
    );
    assert!(sse.elapsed < CLOUD_DELAY, "{:?}", sse.elapsed);
    let closed = until_the_cloud_is_hung_up_on(&cloud).await;
    eprintln!("the losing cloud call closed {closed:?} after the answer");

    // A whole answer: the same.
    let (reply, elapsed) = unary_chat(&edge, PROMPT).await.unwrap();
    eprintln!("slow cloud, unary: answered after {elapsed:?}");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json().unwrap()["tiergate"]["tier"], "regional");
    assert!(elapsed < CLOUD_DELAY, "{elapsed:?}");
    until_the_cloud_is_hung_up_on(&cloud).await;
    assert_eq!(cloud.faults.calls(), 2);

    // A fast cloud answers before the hedge delay: no hedge.
    cloud.faults.set(Fault::None);
    let sse = sse_chat(&edge, PROMPT).await.unwrap();
    assert_eq!(sse.reply.header("x-tiergate-tier"), Some("cloud"));

    let text = metrics_text(&edge).await.unwrap();
    let hedges = |outcome| {
        metric(
            &text,
            "tiergate_upstream_hedges_total",
            &[("upstream", "regional"), ("outcome", outcome)],
        )
    };
    assert_eq!(hedges("sent"), Some(2.0), "{text}");
    assert_eq!(hedges("won"), Some(2.0));
    assert_eq!(hedges("lost"), None);
    // The cancelled cloud calls said nothing of the link.
    assert_eq!(
        metric(
            &text,
            "tiergate_upstream_available",
            &[("upstream", "cloud")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "tiergate_upstream_requests_total",
            &[("upstream", "cloud"), ("outcome", "ok")]
        ),
        Some(1.0),
        "only the fast call counts: {text}"
    );
}
