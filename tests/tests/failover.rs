//! Slow and broken upstreams, against real `tiergate serve` processes: a cloud that accepts and
//! never answers, one that stalls mid-stream, one that answers 503 at once, one that flaps, a
//! regional peer that accepts TCP but never speaks HTTP/2, and a regional node whose engine is
//! stuck. Each is judged from the client's side
//! (the answer, its timing, never an empty success) and in the edge's /metrics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use tiergate_bench::fake_upstream::Fault;
use tiergate_e2e::faults::Blackhole;
use tiergate_e2e::scenario::{
    EdgeLinks, FIRST_TOKEN_TIMEOUT, FakeCloud, edge_toml, grpc_stream, regional_node, sse_chat,
    start_edge, unary_chat,
};
use tiergate_e2e::thread_stop::{ENGINE_THREADS, StoppedThreads};
use tiergate_e2e::{Gate, NodeProcess, metric, metrics_text};
use tiergate_proto::v1 as pb;

const PROMPT: &str = "what is the capital of france";
/// Generous bound on what a healthy loopback regional node takes to answer 16 tokens.
const REGIONAL_TIME: Duration = Duration::from_secs(3);

/// A fake cloud meeting `fault`, and an edge node that asks it first (`extra` TOML appended),
/// with the local model as its answer of last resort.
async fn edge_over_a_faulty_cloud(fault: Fault, extra: &str) -> (FakeCloud, NodeProcess) {
    let cloud = FakeCloud::start().await.unwrap();
    cloud.faults.set(fault);
    let links = EdgeLinks {
        cloud: Some(cloud.url.clone()),
        failures_to_open: 5,
        extra: extra.to_owned(),
        ..EdgeLinks::default()
    };
    let edge = start_edge(&links, Gate::CloudFirst).await.unwrap();
    (cloud, edge)
}

/// One whole answer over each API (unary HTTP, then gRPC `Generate`), each of which must be the
/// edge's own answer of last resort: text, marked degraded. Returns how long each took.
async fn whole_answers_from_the_edge_itself(edge: &NodeProcess, label: &str) -> [Duration; 2] {
    let (reply, http) = unary_chat(edge, PROMPT).await.unwrap();
    eprintln!("{label}, unary HTTP: the edge answered after {http:?}");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json = reply.json().unwrap();
    assert_eq!(json["tiergate"]["tier"], "edge", "{json}");
    assert_eq!(reply.header("x-tiergate-degraded"), Some("true"));
    let content = json["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!content.is_empty(), "{json}");

    let started = Instant::now();
    let mut client = edge.grpc_client().await.unwrap();
    let answer = client
        .generate(pb::GenerateRequest {
            prompt: PROMPT.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let grpc = started.elapsed();
    eprintln!("{label}, unary gRPC: {grpc:?}");
    let routing = answer.routing.unwrap();
    assert_eq!(routing.tier(), pb::Tier::Edge);
    assert!(routing.degraded);
    assert!(!answer.text.is_empty());
    [http, grpc]
}

/// The edge's count of calls to `upstream` that ended at a timeout.
async fn upstream_timeouts(edge: &NodeProcess, upstream: &str) -> Option<f64> {
    let text = metrics_text(edge).await.unwrap();
    metric(
        &text,
        "tiergate_upstream_requests_total",
        &[("upstream", upstream), ("outcome", "deadline_exceeded")],
    )
}

/// The cloud accepts, reads the request and never answers; the regional tier after it in the
/// plan answers every API, within the cloud's first-token timeout plus its own time.
#[tokio::test]
async fn a_cloud_that_never_answers_costs_its_first_token_timeout_then_regional_answers() {
    let cloud = FakeCloud::start().await.unwrap();
    cloud.faults.set(Fault::StallBeforeHeaders);
    let regional = regional_node().await.unwrap();
    let links = EdgeLinks {
        regional: Some(regional.grpc_url()),
        cloud: Some(cloud.url.clone()),
        failures_to_open: 5,
        // The plan's share of the deadline would bound a whole answer asked for in one
        // response; asked for as a stream, the first-token timeout ends it sooner.
        extra: "[limits]\ndefault_timeout = \"4s\"\n[budget]\nupstream_share = 0.25\n".into(),
        ..EdgeLinks::default()
    };
    let edge = start_edge(&links, Gate::CloudFirst).await.unwrap();

    // SSE: the regional answer, with its text and a real finish.
    let sse = sse_chat(&edge, PROMPT).await.unwrap();
    eprintln!(
        "stalled cloud, SSE: regional answered after {:?}",
        sse.elapsed
    );
    assert_eq!(sse.reply.status, 200, "{}", sse.reply.text());
    assert_eq!(sse.reply.header("x-tiergate-tier"), Some("regional"));
    assert_eq!(
        sse.reply.header("x-tiergate-reason"),
        Some("upstream_failed")
    );
    assert!(
        !sse.text.is_empty() && sse.error.is_none(),
        "{}",
        sse.reply.text()
    );
    assert!(sse.finish_reason.is_some());
    assert!(sse.elapsed >= FIRST_TOKEN_TIMEOUT);
    assert!(
        sse.elapsed < FIRST_TOKEN_TIMEOUT + REGIONAL_TIME,
        "{:?}",
        sse.elapsed
    );

    // gRPC stream: the same.
    let streamed = grpc_stream(&edge, PROMPT, Duration::from_secs(10))
        .await
        .unwrap();
    eprintln!("stalled cloud, gRPC stream: {:?}", streamed.elapsed);
    assert!(streamed.status.is_none(), "{:?}", streamed.status);
    assert_eq!(streamed.tier(), Some(pb::Tier::Regional));
    assert!(!streamed.text.is_empty());
    assert!(streamed.elapsed < FIRST_TOKEN_TIMEOUT + REGIONAL_TIME);

    // A whole answer: the cloud is asked for a stream anyway, so its first-token timeout
    // (not its 0.5 s share of the 4 s deadline) ends the wait, then regional.
    let (reply, elapsed) = unary_chat(&edge, PROMPT).await.unwrap();
    eprintln!("stalled cloud, unary HTTP: {elapsed:?}");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json = reply.json().unwrap();
    assert_eq!(json["tiergate"]["tier"], "regional");
    assert!(
        !json["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    assert!(elapsed >= FIRST_TOKEN_TIMEOUT, "{elapsed:?}");
    assert!(elapsed < FIRST_TOKEN_TIMEOUT + REGIONAL_TIME, "{elapsed:?}");

    let text = metrics_text(&edge).await.unwrap();
    let cloud_timeouts = metric(
        &text,
        "tiergate_upstream_requests_total",
        &[("upstream", "cloud"), ("outcome", "deadline_exceeded")],
    );
    assert_eq!(cloud_timeouts, Some(3.0), "{text}");
    assert_eq!(
        metric(&text, "tiergate_requests_total", &[("tier", "cloud")]),
        None,
        "nothing was answered by the stalled cloud: {text}"
    );
    assert_eq!(
        metric(
            &text,
            "tiergate_requests_total",
            &[("tier", "regional"), ("outcome", "ok")]
        ),
        Some(3.0)
    );
}

/// The cloud streams a first delta and then nothing: the client sees the partial text and
/// then an error, never a 200 that ends as a success with what came before the stall.
#[tokio::test]
async fn a_stall_mid_stream_ends_with_a_visible_error_after_the_partial_text() {
    let (_cloud, edge) = edge_over_a_faulty_cloud(Fault::StallMidStream, "").await;

    let sse = sse_chat(&edge, PROMPT).await.unwrap();
    eprintln!("stall mid-stream, SSE: error after {:?}", sse.elapsed);
    assert_eq!(sse.reply.status, 200, "the stream had started");
    assert_eq!(sse.reply.header("x-tiergate-tier"), Some("cloud"));
    assert_eq!(sse.text, "Hello from", "the text before the stall");
    let error = sse
        .error
        .as_ref()
        .expect("an error event after the partial text");
    assert_eq!(error["type"], "deadline_exceeded", "{error}");
    assert_eq!(sse.finish_reason, None, "no chunk says the answer finished");
    assert!(sse.elapsed < Duration::from_secs(2), "{:?}", sse.elapsed);

    let streamed = grpc_stream(&edge, PROMPT, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(streamed.text, "Hello from");
    assert!(streamed.done.is_none());
    let status = streamed.status.expect("the stream ends with a status");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");

    let text = metrics_text(&edge).await.unwrap();
    assert_eq!(
        metric(
            &text,
            "tiergate_requests_total",
            &[("tier", "cloud"), ("outcome", "deadline_exceeded")]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "tiergate_requests_total",
            &[("tier", "cloud"), ("outcome", "ok")]
        ),
        None
    );
}

/// The same stall under a client that wants the whole answer at once (unary HTTP and gRPC):
/// the edge asks the cloud for a stream anyway and gathers it, so the stall is seen at the
/// cloud's stall timeout (300 ms here) and the plan moves on to the local answer of last
/// resort, which says it is degraded; without that, only the cloud's share of the 20 s deadline
/// would have ended the wait.
#[tokio::test]
async fn a_whole_answer_from_a_cloud_that_stalls_mid_stream_falls_back_at_the_stall_timeout() {
    let (cloud, edge) = edge_over_a_faulty_cloud(
        Fault::StallMidStream,
        "[limits]\ndefault_timeout = \"20s\"\n",
    )
    .await;

    for elapsed in whole_answers_from_the_edge_itself(&edge, "stall mid-stream").await {
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    }
    let sent: serde_json::Value = serde_json::from_str(&cloud.faults.last_body().unwrap()).unwrap();
    assert_eq!(sent["stream"], true, "{sent}");
    assert_eq!(upstream_timeouts(&edge, "cloud").await, Some(2.0));
}

/// A regional node whose engine is stuck (its threads stopped, as a stalled disk under its
/// weights would leave them) sends no token. A client that wants the whole answer does not wait
/// for the regional step's share of the 20 s deadline: the edge asks the regional node for a
/// stream and gathers it, so the regional first-token timeout (1 s here) ends the wait and the
/// plan moves on to the local answer of last resort, which says it is degraded.
#[tokio::test]
async fn a_whole_answer_from_a_stuck_regional_node_falls_back_at_its_first_token_timeout() {
    let regional = regional_node().await.unwrap();
    let first_token = Duration::from_secs(1);
    let links = EdgeLinks {
        regional: Some(regional.grpc_url()),
        failures_to_open: 5,
        extra: "[limits]\ndefault_timeout = \"20s\"\n".to_owned(),
        ..EdgeLinks::default()
    };
    let edge = NodeProcess::start("edge", &edge_toml(&links, Gate::RegionalFirst, first_token))
        .await
        .unwrap();
    let stopped = match StoppedThreads::stop(regional.pid().unwrap(), ENGINE_THREADS)
        .await
        .unwrap()
    {
        Ok(stopped) => stopped,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    for elapsed in whole_answers_from_the_edge_itself(&edge, "stuck regional").await {
        assert!(elapsed >= first_token, "{elapsed:?}");
        assert!(elapsed < first_token * 3, "{elapsed:?}");
    }
    assert_eq!(upstream_timeouts(&edge, "regional").await, Some(2.0));
    stopped.release().await.unwrap();
}

/// A provider that answers 200 with no text and `finish_reason: "length"` has failed: the
/// plan moves on to the local answer of last resort, which says it is degraded.
#[tokio::test]
async fn an_empty_answer_cut_short_is_a_failure_not_a_success() {
    let (cloud, edge) = edge_over_a_faulty_cloud(Fault::EmptyLength, "").await;
    let sse = sse_chat(&edge, PROMPT).await.unwrap();
    assert_eq!(sse.reply.status, 200, "{}", sse.reply.text());
    assert_eq!(sse.reply.header("x-tiergate-tier"), Some("edge"));
    assert_eq!(sse.reply.header("x-tiergate-degraded"), Some("true"));
    assert!(!sse.text.is_empty());
    let (reply, _) = unary_chat(&edge, PROMPT).await.unwrap();
    let json = reply.json().unwrap();
    assert_eq!(json["tiergate"]["tier"], "edge", "{json}");
    assert_eq!(cloud.faults.calls(), 2);
    let text = metrics_text(&edge).await.unwrap();
    assert_eq!(
        metric(
            &text,
            "tiergate_upstream_requests_total",
            &[("upstream", "cloud"), ("outcome", "upstream_error")]
        ),
        Some(2.0),
        "{text}"
    );
}

/// A regional peer that accepts TCP and never completes the HTTP/2 handshake costs each
/// request the regional first-token timeout until its breaker opens; then none at all.
#[tokio::test]
async fn a_regional_peer_that_never_speaks_http2_is_left_after_its_first_token_timeout() {
    let blackhole = Blackhole::start().await.unwrap();
    let cloud = FakeCloud::start().await.unwrap();
    let links = EdgeLinks {
        regional: Some(blackhole.url()),
        cloud: Some(cloud.url.clone()),
        failures_to_open: 3,
        ..EdgeLinks::default()
    };
    let edge = NodeProcess::start(
        "edge",
        &edge_toml(&links, Gate::RegionalFirst, FIRST_TOKEN_TIMEOUT),
    )
    .await
    .unwrap();

    let mut times = Vec::new();
    for _ in 0..3 {
        let sse = sse_chat(&edge, PROMPT).await.unwrap();
        assert_eq!(sse.reply.status, 200, "{}", sse.reply.text());
        assert_eq!(sse.reply.header("x-tiergate-tier"), Some("cloud"));
        assert!(!sse.text.is_empty());
        times.push(sse.elapsed);
    }
    eprintln!("regional without HTTP/2: failover took {times:?}");
    for elapsed in &times {
        assert!(*elapsed >= FIRST_TOKEN_TIMEOUT, "{elapsed:?}");
        assert!(
            *elapsed < FIRST_TOKEN_TIMEOUT + Duration::from_secs(1),
            "{elapsed:?}"
        );
    }
    // Three failures opened the breaker: the next request does not wait for the regional.
    let sse = sse_chat(&edge, PROMPT).await.unwrap();
    eprintln!("regional without HTTP/2, breaker open: {:?}", sse.elapsed);
    assert_eq!(sse.reply.header("x-tiergate-tier"), Some("cloud"));
    assert!(sse.elapsed < FIRST_TOKEN_TIMEOUT, "{:?}", sse.elapsed);

    let text = metrics_text(&edge).await.unwrap();
    assert_eq!(
        metric(
            &text,
            "tiergate_upstream_requests_total",
            &[("upstream", "regional"), ("outcome", "deadline_exceeded")]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "tiergate_upstream_available",
            &[("upstream", "regional")]
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &text,
            "tiergate_requests_total",
            &[("tier", "cloud"), ("outcome", "ok")]
        ),
        Some(4.0)
    );
}

/// A cloud that answers 503 at once costs almost nothing; one that flaps every second never
/// makes a client see an error or an empty answer.
#[tokio::test]
async fn an_upstream_failing_at_once_or_flapping_never_reaches_the_client() {
    let cloud = FakeCloud::start().await.unwrap();
    cloud.faults.set(Fault::Status(503));
    let regional = regional_node().await.unwrap();
    let links = EdgeLinks {
        regional: Some(regional.grpc_url()),
        cloud: Some(cloud.url.clone()),
        failures_to_open: 3,
        ..EdgeLinks::default()
    };
    let edge = start_edge(&links, Gate::CloudFirst).await.unwrap();

    // Warm the regional link, then time a failover from an instant 503.
    let warm = sse_chat(&edge, PROMPT).await.unwrap();
    assert_eq!(warm.reply.header("x-tiergate-tier"), Some("regional"));
    let sse = sse_chat(&edge, PROMPT).await.unwrap();
    eprintln!("cloud 503: regional answered after {:?}", sse.elapsed);
    assert_eq!(sse.reply.header("x-tiergate-tier"), Some("regional"));
    assert!(!sse.text.is_empty());
    assert!(sse.elapsed < REGIONAL_TIME);

    // Flapping: 503 for a second, answers for a second, and so on.
    cloud.faults.set(Fault::Flap {
        period: Duration::from_secs(1),
    });
    let started = Instant::now();
    let (mut by_cloud, mut by_regional, mut total) = (0, 0, 0);
    while started.elapsed() < Duration::from_millis(4500) {
        let sse = sse_chat(&edge, PROMPT).await.unwrap();
        assert_eq!(sse.reply.status, 200, "{}", sse.reply.text());
        assert!(
            sse.error.is_none() && !sse.text.is_empty(),
            "{}",
            sse.reply.text()
        );
        match sse.reply.header("x-tiergate-tier") {
            Some("cloud") => by_cloud += 1,
            Some("regional") => by_regional += 1,
            other => panic!("answered by {other:?}"),
        }
        total += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "flapping cloud: {total} requests, {by_cloud} by cloud, {by_regional} by regional, 0 lost"
    );
    assert!(
        by_cloud > 0 && by_regional > 0,
        "{by_cloud} / {by_regional}"
    );

    let text = metrics_text(&edge).await.unwrap();
    assert!(
        metric(
            &text,
            "tiergate_upstream_requests_total",
            &[("upstream", "cloud"), ("outcome", "upstream_error")]
        )
        .is_some_and(|n| n >= 2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "tiergate_requests_total", &[("outcome", "ok")]),
        Some(f64::from(total + 2))
    );
}
