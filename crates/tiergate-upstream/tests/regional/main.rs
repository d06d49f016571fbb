//! The regional client against in-test tonic servers on 127.0.0.1 that implement
//! `tiergate.v1.Inference` (an echo) and `grpc.health.v1` (tonic-health).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

#[path = "../common/mod.rs"]
mod common;
mod node;

use std::time::{Duration, Instant};

use common::{TestPki, eventually};
use futures::StreamExt;
use node::Node;
use tiergate_api::{Input, NodeRequest, Sampling};
use tiergate_proto::v1::GenerateResponse;
use tiergate_proto::v1::generate_stream_response::Event;
use tiergate_router::health::{HealthCheckStatus, LinkHealthConfig, LinkState};
use tiergate_upstream::{CallLimits, ErrorKind, RegionalClient, RegionalConfig, RegionalTlsConfig};

const WAIT: Duration = Duration::from_secs(20);

fn config(nodes: &[&Node]) -> RegionalConfig {
    RegionalConfig {
        health_check_interval: Duration::from_millis(100),
        ..RegionalConfig::new(nodes.iter().map(|n| n.uri()).collect())
    }
}

fn request(prompt: &str) -> NodeRequest {
    NodeRequest::new(
        Input::Text(prompt.to_owned()),
        Sampling::default(),
        Instant::now() + WAIT,
    )
}

fn soon() -> Option<Instant> {
    Some(Instant::now() + WAIT)
}

/// Sends `count` concurrent requests that each take `ms` at the server; returns their results.
async fn burst(
    client: &RegionalClient,
    count: usize,
    ms: u64,
) -> Vec<Result<GenerateResponse, tiergate_upstream::UpstreamError>> {
    let requests: Vec<_> = (0..count)
        .map(|i| request(&format!("sleep:{ms} n{i}")))
        .collect();
    let calls = requests.iter().map(|r| client.generate(r, soon()));
    futures::future::join_all(calls).await
}

async fn wait_for_health(client: &RegionalClient, index: usize, status: HealthCheckStatus) {
    eventually(WAIT, &format!("endpoint {index} health {status:?}"), || {
        client.snapshots(Instant::now())[index].link.health_check == status
    })
    .await;
}

#[tokio::test]
async fn balancing_spreads_concurrent_calls_over_both_endpoints() {
    let a = Node::start("a").await;
    let b = Node::start("b").await;
    let client = RegionalClient::new(&config(&[&a, &b])).unwrap();
    wait_for_health(&client, 0, HealthCheckStatus::Serving).await;
    wait_for_health(&client, 1, HealthCheckStatus::Serving).await;

    let results = burst(&client, 40, 100).await;
    for (i, result) in results.iter().enumerate() {
        let response = result.as_ref().unwrap();
        let node = &response.routing.as_ref().unwrap().node;
        assert_eq!(response.text, format!("{node}: sleep:100 n{i}"));
    }
    let (on_a, on_b) = (a.calls(), b.calls());
    assert_eq!(on_a + on_b, 40);
    assert!(on_a >= 10 && on_b >= 10, "a: {on_a}, b: {on_b}");

    let snapshots = client.snapshots(Instant::now());
    assert_eq!(snapshots[0].endpoint, a.uri());
    for snapshot in &snapshots {
        assert_eq!(snapshot.in_flight, 0);
        assert_eq!(snapshot.link.state, LinkState::Closed);
        assert!(
            snapshot.link.latency_ewma_ms.unwrap() >= 100.0,
            "{snapshot:?}"
        );
    }
    let json = serde_json::to_value(&snapshots).unwrap();
    assert_eq!(json[1]["endpoint"], b.uri());
    assert_eq!(json[1]["health_check"], "serving");
}

#[tokio::test]
async fn a_not_serving_endpoint_gets_no_traffic_until_it_serves_again() {
    let a = Node::start("a").await;
    let b = Node::start("b").await;
    let client = RegionalClient::new(&config(&[&a, &b])).unwrap();
    wait_for_health(&client, 1, HealthCheckStatus::Serving).await;

    b.set_serving(false).await;
    wait_for_health(&client, 1, HealthCheckStatus::NotServing).await;
    assert!(!client.snapshots(Instant::now())[1].link.available);
    assert!(client.is_available(Instant::now()));
    let b_before = b.calls();
    for result in burst(&client, 20, 20).await {
        assert_eq!(result.unwrap().routing.unwrap().node, "a");
    }
    assert_eq!(
        b.calls(),
        b_before,
        "no call reached the not-serving endpoint"
    );

    b.set_serving(true).await;
    wait_for_health(&client, 1, HealthCheckStatus::Serving).await;
    for result in burst(&client, 20, 50).await {
        result.unwrap();
    }
    assert!(b.calls() > b_before, "traffic came back to b");
}

#[tokio::test]
async fn a_stopped_endpoint_opens_its_breaker_and_traffic_moves_to_the_other() {
    let a = Node::start("a").await;
    let mut b = Node::start("b").await;
    let config = RegionalConfig {
        active_health_check: false,
        health: LinkHealthConfig {
            consecutive_failures: 2,
            error_rate_threshold: 0.0,
            open_duration: Duration::from_secs(120),
            ..LinkHealthConfig::default()
        },
        ..config(&[&a, &b])
    };
    let client = RegionalClient::new(&config).unwrap();
    for result in burst(&client, 10, 20).await {
        result.unwrap();
    }
    assert!(b.calls() > 0);

    b.stop();
    // Passive detection only: keep sending until b's breaker opens. Calls that could not
    // connect to b are retried on a; others may fail, but only with retryable errors.
    let mut rounds = 0;
    while client.snapshots(Instant::now())[1].link.state != LinkState::Open {
        rounds += 1;
        assert!(rounds <= 50, "b's breaker never opened");
        for result in burst(&client, 6, 10).await {
            if let Err(err) = result {
                assert!(err.is_retryable(), "{err}");
            }
        }
    }
    let snapshot = &client.snapshots(Instant::now())[1];
    assert!(!snapshot.link.available);
    assert!(snapshot.link.consecutive_failures >= 2);
    assert!(client.is_available(Instant::now()));

    let a_before = a.calls();
    for result in burst(&client, 20, 10).await {
        assert_eq!(result.unwrap().routing.unwrap().node, "a");
    }
    assert_eq!(a.calls(), a_before + 20);
}

#[tokio::test]
async fn a_stopped_endpoint_is_seen_by_the_health_watch() {
    let a = Node::start("a").await;
    let mut b = Node::start("b").await;
    let client = RegionalClient::new(&config(&[&a, &b])).unwrap();
    wait_for_health(&client, 1, HealthCheckStatus::Serving).await;
    b.stop();
    wait_for_health(&client, 1, HealthCheckStatus::NotServing).await;
    for result in burst(&client, 10, 10).await {
        assert_eq!(result.unwrap().routing.unwrap().node, "a");
    }
}

/// An address with nothing listening.
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn all_endpoints_down_makes_the_tier_unavailable_and_calls_fail_fast() {
    let config = RegionalConfig {
        health_check_interval: Duration::from_millis(100),
        ..RegionalConfig::new(vec![dead_endpoint(), dead_endpoint()])
    };
    // Start-up does not wait for the endpoints.
    let client = RegionalClient::new(&config).unwrap();
    eventually(WAIT, "tier unavailable", || {
        !client.is_available(Instant::now())
    })
    .await;

    let start = Instant::now();
    let err = client.generate(&request("x"), soon()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.message().contains("no regional endpoint"), "{err}");
    let err = match client.generate_stream(&request("x"), soon()).await {
        Ok(_) => panic!("a stream opened with every endpoint down"),
        Err(err) => err,
    };
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn without_health_checks_connect_failures_try_every_endpoint_then_open_the_breakers() {
    let config = RegionalConfig {
        active_health_check: false,
        health: LinkHealthConfig {
            consecutive_failures: 1,
            open_duration: Duration::from_secs(120),
            ..LinkHealthConfig::default()
        },
        ..RegionalConfig::new(vec![dead_endpoint(), dead_endpoint()])
    };
    let client = RegionalClient::new(&config).unwrap();
    assert!(client.is_available(Instant::now()));
    let err = client.generate(&request("x"), soon()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    assert!(err.is_retryable());
    // Both endpoints were tried, and both breakers opened.
    for snapshot in client.snapshots(Instant::now()) {
        assert_eq!(snapshot.link.state, LinkState::Open, "{snapshot:?}");
    }
    assert!(!client.is_available(Instant::now()));
    let err = client.generate(&request("x"), soon()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
}

#[tokio::test]
async fn streaming_passes_routed_deltas_and_done_in_order() {
    let a = Node::start("a").await;
    let client = RegionalClient::new(&config(&[&a])).unwrap();
    let mut stream = client
        .generate_stream(&request("the quick brown fox"), soon())
        .await
        .unwrap();
    let mut events = Vec::new();
    while let Some(message) = stream.next().await {
        events.push(message.unwrap().event.unwrap());
    }
    assert!(
        matches!(&events[0], Event::Routed(r) if r.node == "a"),
        "{events:?}"
    );
    let Some(Event::Done(done)) = events.last() else {
        panic!("no done: {events:?}");
    };
    assert_eq!(done.finish_reason, "stop");
    let text: String = events[1..events.len() - 1]
        .iter()
        .map(|e| match e {
            Event::Delta(d) => d.text.clone(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(text, "a: the quick brown fox");
    let snapshot = &client.snapshots(Instant::now())[0];
    assert_eq!(snapshot.link.window_calls, 1);
    assert_eq!(snapshot.in_flight, 0);
}

/// A whole answer is asked for as a stream and gathered: the text, usage, finish reason and
/// routing a unary call gives. With `stream_whole_answers = false` it is one unary call.
#[tokio::test]
async fn a_whole_answer_is_gathered_from_a_stream_unless_configured_off() {
    let a = Node::start("a").await;
    let prompt = "the quick brown fox";
    let gathered = RegionalClient::new(&config(&[&a]))
        .unwrap()
        .generate(&request(prompt), soon())
        .await
        .unwrap();
    assert_eq!((a.calls(), a.streams()), (1, 1));
    let unary = RegionalClient::new(&RegionalConfig {
        stream_whole_answers: false,
        ..config(&[&a])
    })
    .unwrap();
    let whole = unary.generate(&request(prompt), soon()).await.unwrap();
    assert_eq!((a.calls(), a.streams()), (2, 1));
    assert_eq!(gathered.text, "a: the quick brown fox");
    assert_eq!(gathered, whole);
}

/// A regional node that goes quiet under a client that wants the whole answer is left at the
/// timer that applies: the first-token timeout before any text, the stall timeout after some,
/// the caller's commit point when that comes first. Each counts against the link but the
/// caller's (which gave the link less than its first-token timeout).
#[tokio::test]
async fn a_whole_answer_from_a_node_that_goes_quiet_fails_at_its_first_token_or_stall_timeout() {
    let a = Node::start("a").await;
    let timeout = Duration::from_millis(300);
    let client = RegionalClient::new(&RegionalConfig {
        first_token_timeout: timeout,
        stall_timeout: timeout,
        ..config(&[&a])
    })
    .unwrap();
    let far = Duration::from_secs(10);
    let cases = [
        (
            "stall:0 silent",
            far,
            "waiting for the first regional token",
            true,
        ),
        (
            "stall:2 cut short",
            far,
            "waiting for the next regional token",
            true,
        ),
        (
            "stall:2 cut short",
            Duration::from_millis(150),
            "waiting for the rest of the regional answer",
            false,
        ),
    ];
    for (prompt, commit_in, says, counts) in cases {
        let before = client.snapshots(Instant::now())[0]
            .link
            .consecutive_failures;
        let started = Instant::now();
        let limits = CallLimits {
            deadline: Some(started + far),
            commit_by: Some(started + commit_in),
        };
        let err = client.generate(&request(prompt), limits).await.unwrap_err();
        let elapsed = started.elapsed();
        eprintln!("{prompt} (commit in {commit_in:?}): {err} after {elapsed:?}");
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(err.message().contains(says), "{err}");
        assert!(elapsed >= timeout.min(commit_in), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        let after = client.snapshots(Instant::now())[0]
            .link
            .consecutive_failures;
        assert_eq!(after, before + u32::from(counts), "{prompt}");
    }
    assert_eq!(client.snapshots(Instant::now())[0].in_flight, 0);
}

/// A peer that streams without end is cut when the answer passes 16 MiB, whole or streamed:
/// a protocol error, never a client that gathers until it runs out of memory.
#[tokio::test]
async fn an_answer_streamed_without_end_is_cut_at_16_mib_with_an_error() {
    let a = Node::start("a").await;
    let client = RegionalClient::new(&config(&[&a])).unwrap();
    // Without the cap the calls would run until the deadline (`soon`): bounded well before.
    let bound = Duration::from_secs(10);
    let err = tokio::time::timeout(bound, client.generate(&request("endless"), soon()))
        .await
        .expect("gathered without end")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.message().contains("16 MiB"), "{err}");

    let mut stream = client
        .generate_stream(&request("endless"), soon())
        .await
        .unwrap();
    let mut received = 0;
    let read = async {
        loop {
            match stream
                .next()
                .await
                .expect("the stream ended without an error")
            {
                Ok(message) => {
                    if let Some(Event::Delta(delta)) = message.event {
                        received += delta.text.len();
                    }
                }
                Err(err) => break err,
            }
        }
    };
    let err = tokio::time::timeout(bound, read)
        .await
        .expect("streamed without end");
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert_eq!(
        received,
        16 * 1024 * 1024,
        "what was passed on before the cut"
    );
    assert!(stream.next().await.is_none());
}

/// Parses a grpc-timeout header value ("4999999u", "5S", ...).
fn parse_grpc_timeout(value: &str) -> Duration {
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().unwrap();
    match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        other => panic!("unit {other}"),
    }
}

#[tokio::test]
async fn the_deadline_travels_as_grpc_timeout_and_ends_slow_calls() {
    let a = Node::start("a").await;
    let client = RegionalClient::new(&config(&[&a])).unwrap();
    client
        .generate(
            &request("hi"),
            Some(Instant::now() + Duration::from_secs(5)),
        )
        .await
        .unwrap();
    let seen = a
        .echo
        .seen_timeout
        .lock()
        .unwrap()
        .clone()
        .expect("grpc-timeout sent");
    let timeout = parse_grpc_timeout(&seen);
    assert!(
        timeout <= Duration::from_secs(5) && timeout > Duration::from_secs(2),
        "{seen}"
    );

    // Without a deadline the configured request timeout is sent.
    client.generate(&request("hi"), None).await.unwrap();
    let seen = a.echo.seen_timeout.lock().unwrap().clone().unwrap();
    assert!(
        parse_grpc_timeout(&seen) > Duration::from_secs(20),
        "{seen}"
    );

    let start = Instant::now();
    let err = client
        .generate(
            &request("sleep:30000 slow"),
            Some(start + Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.is_retryable());
    assert!(start.elapsed() < WAIT);

    let start = Instant::now();
    let err = match client
        .generate_stream(
            &request("sleep:30000 slow"),
            Some(start + Duration::from_millis(300)),
        )
        .await
    {
        Ok(_) => panic!("a slow stream opened"),
        Err(err) => err,
    };
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(start.elapsed() < WAIT);
}

#[tokio::test]
async fn invalid_argument_is_not_retryable_and_does_not_trip_the_breaker() {
    let a = Node::start("a").await;
    let config = RegionalConfig {
        health: LinkHealthConfig {
            consecutive_failures: 2,
            ..LinkHealthConfig::default()
        },
        ..config(&[&a])
    };
    let client = RegionalClient::new(&config).unwrap();
    for _ in 0..5 {
        let err = client.generate(&request(""), soon()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
        assert_eq!(err.grpc_code(), Some(tonic::Code::InvalidArgument));
        assert!(err.message().contains("prompt is empty"), "{err}");
        assert!(!err.is_retryable());
    }
    assert_eq!(a.calls(), 5, "a rejected call is not retried elsewhere");
    assert_eq!(
        client.snapshots(Instant::now())[0].link.state,
        LinkState::Closed
    );
}

#[tokio::test]
async fn mutual_tls_admits_a_client_with_a_certificate_and_refuses_one_without() {
    let pki = TestPki::new();
    let a = Node::start_with("a", Some(&pki)).await;
    let tls = RegionalTlsConfig {
        ca_file: pki.ca_file.clone(),
        cert_file: Some(pki.client_cert_file.clone()),
        key_file: Some(pki.client_key_file.clone()),
        domain: None,
    };
    let with_cert = RegionalClient::new(&RegionalConfig {
        tls: Some(tls.clone()),
        ..config(&[&a])
    })
    .unwrap();
    let response = with_cert
        .generate(&request("secure"), soon())
        .await
        .unwrap();
    assert_eq!(response.text, "a: secure");
    wait_for_health(&with_cert, 0, HealthCheckStatus::Serving).await;

    let without_cert = RegionalClient::new(&RegionalConfig {
        tls: Some(RegionalTlsConfig {
            cert_file: None,
            key_file: None,
            ..tls.clone()
        }),
        active_health_check: false,
        ..config(&[&a])
    })
    .unwrap();
    let err = without_cert
        .generate(&request("let me in"), soon())
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(
        a.calls(),
        1,
        "the call without a certificate never reached the service"
    );

    // Plain http towards a TLS config, or half an identity, is refused at start-up.
    let err = RegionalClient::new(&RegionalConfig {
        tls: Some(tls.clone()),
        ..RegionalConfig::new(vec!["http://127.0.0.1:1".into()])
    })
    .unwrap_err();
    assert!(err.to_string().contains("https://"), "{err}");
    let err = RegionalClient::new(&RegionalConfig {
        tls: Some(RegionalTlsConfig {
            key_file: None,
            ..tls
        }),
        ..config(&[&a])
    })
    .unwrap_err();
    assert!(err.to_string().contains("cert_file and key_file"), "{err}");
}

#[tokio::test]
async fn config_parses_with_defaults_and_rejects_unknown_fields() {
    let config: RegionalConfig = serde_json::from_str(
        r#"{"endpoints": ["http://10.0.0.1:50051"], "request_timeout": "2s", "health": {"open_duration": "1s"}}"#,
    )
    .unwrap();
    assert_eq!(config.request_timeout, Duration::from_secs(2));
    assert_eq!(config.health.open_duration, Duration::from_secs(1));
    assert!(config.active_health_check);
    let err = serde_json::from_str::<RegionalConfig>(r#"{"endpoints": [], "timeout": "1s"}"#)
        .unwrap_err();
    assert!(err.to_string().contains("timeout"), "{err}");
    let err = RegionalClient::new(&RegionalConfig::new(vec![])).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
}
