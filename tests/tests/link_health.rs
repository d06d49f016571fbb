//! Link health learns from every outcome exactly once, against real `tiergate serve`
//! processes: streamed successes close a breaker again, and a client's own short deadlines
//! say nothing about the link.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use tiergate_e2e::faults::{FaultProxy, ProxyMode};
use tiergate_e2e::scenario::{EdgeLinks, grpc_stream, regional_node, request, start_edge};
use tiergate_e2e::{Gate, NodeProcess, metric, metrics_text, metrics_text_once};
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
    let edge = start_edge(&links, Gate::RegionalFirst).await.unwrap();
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
/// the regional breaker: the next call is routed exactly as before. The regional link adds
/// 40 ms, so every regional attempt outlasts the call's deadline however fast the machine is
/// (the toy regional model alone answers inside 15 ms on an idle machine: then the calls
/// never ran out of time and the test proved nothing).
#[tokio::test]
async fn short_client_deadlines_do_not_change_the_routing_of_the_next_call() {
    let regional = regional_node().await.unwrap();
    let slow_link = FaultProxy::start(regional.grpc, ProxyMode::Delay(Duration::from_millis(40)))
        .await
        .unwrap();
    let links = EdgeLinks {
        regional: Some(slow_link.url()),
        failures_to_open: 5,
        ..EdgeLinks::default()
    };
    let edge = start_edge(&links, Gate::RegionalFirst).await.unwrap();
    let mut client = edge.grpc_client().await.unwrap();

    let before = client.generate(request(PROMPT)).await.unwrap().into_inner();
    let before = before.routing.unwrap();
    assert_eq!(before.tier, pb::Tier::Regional as i32);

    // No call can come back from the regional tier inside 15 ms through the slow link: each
    // one runs out of time (an error) or the edge answers once the regional step's share of
    // the deadline is gone.
    let (mut failed, mut from_edge) = (0, 0);
    for i in 0..20 {
        let short = Duration::from_millis(15);
        // (error, serving tier, text, finish reason) as the client saw them.
        let (status, tier, text, finish) = if i % 2 == 0 {
            let mut req = tonic::Request::new(request(PROMPT));
            req.set_timeout(short);
            match client.generate(req).await {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    let tier = answer.routing.map(|r| r.tier);
                    (None, tier, answer.text, answer.finish_reason)
                }
                Err(status) => (Some(status), None, String::new(), String::new()),
            }
        } else {
            let answer = grpc_stream(&edge, PROMPT, short).await.unwrap();
            let tier = answer.tier().map(|t| t as i32);
            let finish = answer.done.map(|d| d.finish_reason).unwrap_or_default();
            (answer.status, tier, answer.text, finish)
        };
        match status {
            Some(status) => {
                assert!(
                    matches!(
                        status.code(),
                        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                    ),
                    "{status:?}"
                );
                failed += 1;
            }
            None => {
                // Never an empty success: the edge's answer has text, and one cut short by the
                // deadline says so (seen: "deadline" with a partial sentence, or "length").
                assert_eq!(tier, Some(pb::Tier::Edge as i32), "call {i}");
                assert!(!text.is_empty(), "call {i}: an empty answer ({finish:?})");
                assert!(
                    ["deadline", "length", "stop", "eos"].contains(&finish.as_str()),
                    "call {i}: finish reason {finish:?}"
                );
                from_edge += 1;
            }
        }
    }
    eprintln!(
        "of 20 calls with a 15 ms deadline: {failed} ran out of time, {from_edge} answered by the edge"
    );
    // Each regional attempt that the edge saw to its end ran out of its share of the deadline
    // and was counted so, never as the link's failure. An attempt whose caller left first (the
    // client's own timer beat the edge's, seen once in CI under load) is dropped uncounted. The
    // counter is read until it settles: the edge may count the last attempt just after the
    // caller's own timer fired.
    let regional = |text: &str, outcome: Option<&str>| {
        let mut labels = vec![("upstream", "regional")];
        labels.extend(outcome.map(|outcome| ("outcome", outcome)));
        metric(text, "tiergate_upstream_requests_total", &labels).unwrap_or(0.0)
    };
    let text = metrics_text_once(&edge, Duration::from_secs(2), |text| {
        regional(text, None) == 21.0
    })
    .await
    .unwrap();
    let exceeded = regional(&text, Some("deadline_exceeded"));
    eprintln!("the edge counted {exceeded} regional attempts out of time");
    assert_eq!(regional(&text, Some("ok")), 1.0);
    assert_eq!(regional(&text, None), 1.0 + exceeded, "{text}");
    // Every call the edge answered itself first saw its regional attempt run out; and at least
    // twice the breaker's threshold ran out, so counting them as failures would have opened it.
    assert!(exceeded >= from_edge as f64, "{exceeded} < {from_edge}");
    assert!(
        (2.0 * f64::from(links.failures_to_open)..=20.0).contains(&exceeded),
        "{exceeded} regional attempts ran out of time"
    );

    let after = client.generate(request(PROMPT)).await.unwrap().into_inner();
    let after = after.routing.unwrap();
    assert_eq!(after.tier, before.tier, "{after:?}");
    assert_eq!(after.reason, before.reason);
    assert!(!after.degraded);
    assert_eq!(available(&edge, "regional").await, Some(1.0));
}
