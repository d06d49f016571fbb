//! A slow, lossy link to the regional tier, made in the kernel: the regional node runs in a
//! network namespace of the test's own, behind a veth pair shaped with `tc` (netem delay and
//! loss where the kernel has it; else a token bucket of a few kbit/s that delays by seconds and
//! drops). The edge's router moves the traffic to the cloud without losing a request, and
//! back to the regional tier once the link heals. Without CAP_NET_ADMIN the test says why and
//! skips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use tiergate_e2e::netns::Netns;
use tiergate_e2e::scenario::{EdgeLinks, FakeCloud, edge_toml, regional_node_launched, sse_chat};
use tiergate_e2e::{Gate, Launch, NodeProcess};

const PROMPT: &str = "what is the capital of france";

/// What a run of requests met.
#[derive(Debug, Default)]
struct Run {
    sent: usize,
    /// Answers cut by a stall after their first tokens: partial text, then an error event.
    cut_visibly: usize,
}

/// Sends requests until `want` answers in a row come whole from `tier`, or fails past `limit`.
/// Every reply is a whole answer or ends with a visible error: never an empty success.
async fn until_answered_by(edge: &NodeProcess, tier: &str, want: usize, limit: Duration) -> Run {
    let started = Instant::now();
    let (mut run, mut in_a_row) = (Run::default(), 0);
    while in_a_row < want {
        assert!(
            started.elapsed() < limit,
            "{run:?} in {limit:?}, and the last {in_a_row} answered by {tier}"
        );
        let sse = sse_chat(edge, PROMPT).await.unwrap();
        run.sent += 1;
        assert_eq!(sse.reply.status, 200, "{}", sse.reply.text());
        if sse.error.is_some() {
            // The stream had committed to a tier when the link stalled: the client sees it.
            run.cut_visibly += 1;
            in_a_row = 0;
            continue;
        }
        assert!(
            !sse.text.is_empty() && sse.finish_reason.is_some(),
            "an empty success: {}",
            sse.reply.text()
        );
        if sse.reply.header("x-tiergate-tier") == Some(tier) {
            in_a_row += 1;
        } else {
            in_a_row = 0;
        }
    }
    run
}

#[tokio::test]
async fn a_slow_lossy_regional_link_moves_traffic_to_the_cloud_and_back_when_it_heals() {
    let Some(netns) = Netns::for_test() else {
        return;
    };
    let launch = Launch {
        wrapper: netns.wrapper(),
        listen_ip: netns.ns_ip.into(),
        ..Launch::default()
    };
    let regional = regional_node_launched(&launch).await.unwrap();
    let cloud = FakeCloud::start().await.unwrap();
    let links = EdgeLinks {
        regional: Some(regional.grpc_url()),
        cloud: Some(cloud.url.clone()),
        failures_to_open: 2,
        ..EdgeLinks::default()
    };
    let edge = NodeProcess::start(
        "edge",
        &edge_toml(&links, Gate::RegionalFirst, Duration::from_millis(800)),
    )
    .await
    .unwrap();

    // A clean link: the regional tier answers.
    until_answered_by(&edge, "regional", 3, Duration::from_secs(20)).await;

    let impairment = netns.impair().unwrap();
    eprintln!("regional link impaired: {impairment:?}");
    let started = Instant::now();
    let run = until_answered_by(&edge, "cloud", 5, Duration::from_secs(30)).await;
    eprintln!(
        "traffic moved to the cloud: {run:?} (the last 5 by the cloud), {:?}",
        started.elapsed()
    );
    // Only streams already committed to the regional tier before its breaker opened are cut.
    assert!(run.cut_visibly <= 3, "{run:?}");

    netns.heal().unwrap();
    let started = Instant::now();
    let run = until_answered_by(&edge, "regional", 3, Duration::from_secs(30)).await;
    eprintln!(
        "link healed: {run:?} until the regional tier answered 3 in a row, {:?}",
        started.elapsed()
    );
}
