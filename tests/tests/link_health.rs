//! Link health learns from every outcome exactly once, against real `tiergate serve`
//! processes: streamed successes close a breaker again, and a client's own short deadlines
//! say nothing about the link.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use tiergate_e2e::faults::{FaultProxy, ProxyMode};
use tiergate_e2e::scenario::{EdgeLinks, edge_toml, grpc_stream, regional_node, request};
use tiergate_e2e::{Gate, NodeProcess, metric, metrics_text};
use tiergate_proto::v1 as pb;

const PROMPT: &str = "what is the capital of france";
/// The breaker's open duration in [`edge_toml`].
const OPEN_DURATION: Duration = Duration::from_millis(500);
/// The health watch retries a broken watch after 100 ms, doubling up to 16 times that.
const HEALTH_BACKOFF_MAX: Duration = Duration::from_millis(1600);

async fn available(edge: &NodeProcess, upstream: &str) -> Option<f64> {
    let text = metrics_text(edge).await.unwrap();
    metric(
        &text,
        "tiergate_upstream_available",
        &[("upstream", upstream)],
    )
}

/// Streaming-only traffic: the regional node goes away (its breaker opens) and comes back;
/// it takes the traffic again within the open duration plus the health watch's backoff, and
/// keeps it (every streamed success is recorded, even though the edge drops the regional
/// stream right after its final message).
#[tokio::test]
async fn streamed_traffic_alone_closes_the_breaker_again() {
    let regional = regional_node().await.unwrap();
    let proxy = FaultProxy::start(regional.grpc, ProxyMode::Pass)
        .await
        .unwrap();
    let links = EdgeLinks {
        regional: Some(proxy.url()),
        failures_to_open: 2,
        ..EdgeLinks::default()
    };
    let edge = NodeProcess::start(
        "edge",
        &edge_toml(&links, Gate::RegionalFirst, Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let timeout = Duration::from_secs(10);

    let answer = grpc_stream(&edge, PROMPT, timeout).await.unwrap();
    assert_eq!(answer.tier(), Some(pb::Tier::Regional), "{answer:?}");

    // The regional node goes away: answers come from the edge, degraded, never an error.
    proxy.set(ProxyMode::Refuse);
    for _ in 0..3 {
        let answer = grpc_stream(&edge, PROMPT, timeout).await.unwrap();
        assert!(answer.status.is_none(), "{:?}", answer.status);
        assert_eq!(answer.tier(), Some(pb::Tier::Edge));
        assert!(answer.routed.as_ref().unwrap().degraded);
    }
    assert_eq!(available(&edge, "regional").await, Some(0.0));

    // It comes back: streamed requests find it again.
    proxy.set(ProxyMode::Pass);
    let back = Instant::now();
    let recovered = loop {
        let answer = grpc_stream(&edge, PROMPT, timeout).await.unwrap();
        assert!(answer.status.is_none(), "{:?}", answer.status);
        if answer.tier() == Some(pb::Tier::Regional) {
            break back.elapsed();
        }
        assert!(
            back.elapsed() < OPEN_DURATION + HEALTH_BACKOFF_MAX + Duration::from_secs(2),
            "the regional tier never took traffic again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("regional back: streamed traffic returned after {recovered:?}");
    assert!(recovered < OPEN_DURATION + HEALTH_BACKOFF_MAX + Duration::from_secs(1));

    // The breaker is closed, not half-open: every following stream goes to the regional tier.
    for _ in 0..5 {
        let answer = grpc_stream(&edge, PROMPT, timeout).await.unwrap();
        assert_eq!(answer.tier(), Some(pb::Tier::Regional));
    }
    assert_eq!(available(&edge, "regional").await, Some(1.0));
}

/// Twenty calls whose client deadline (15 ms) passes while the regional call runs do not move
/// the regional breaker: the next call is routed exactly as before.
#[tokio::test]
async fn short_client_deadlines_do_not_change_the_routing_of_the_next_call() {
    let regional = regional_node().await.unwrap();
    let links = EdgeLinks {
        regional: Some(regional.grpc_url()),
        failures_to_open: 5,
        ..EdgeLinks::default()
    };
    let edge = NodeProcess::start(
        "edge",
        &edge_toml(&links, Gate::RegionalFirst, Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let mut client = edge.grpc_client().await.unwrap();

    let before = client.generate(request(PROMPT)).await.unwrap().into_inner();
    let before = before.routing.unwrap();
    assert_eq!(before.tier, pb::Tier::Regional as i32);

    let mut failed = 0;
    for i in 0..20 {
        let short = Duration::from_millis(15);
        let result = if i % 2 == 0 {
            let mut req = tonic::Request::new(request(PROMPT));
            req.set_timeout(short);
            client.generate(req).await.err()
        } else {
            grpc_stream(&edge, PROMPT, short).await.unwrap().status
        };
        if let Some(status) = result {
            assert!(
                matches!(
                    status.code(),
                    tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                ),
                "{status:?}"
            );
            failed += 1;
        }
    }
    eprintln!("{failed} of 20 calls with a 15 ms deadline ran out of time");
    // The toy regional model answers some calls inside 15 ms on an idle machine (12 of 20 ran
    // out in one such run, 20 of 20 under load): enough of them must have hit their deadline for
    // the check below to mean something, without making the test depend on the machine's load.
    assert!(
        failed >= 5,
        "the deadlines were too short to matter: {failed}"
    );

    let after = client.generate(request(PROMPT)).await.unwrap().into_inner();
    let after = after.routing.unwrap();
    assert_eq!(after.tier, before.tier, "{after:?}");
    assert_eq!(after.reason, before.reason);
    assert!(!after.degraded);
    assert_eq!(available(&edge, "regional").await, Some(1.0));
}
