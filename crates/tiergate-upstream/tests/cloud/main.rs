//! The cloud client against an in-test provider that speaks the real OpenAI wire format
//! (JSON and SSE) over real TLS (a private CA made by rcgen, trusted through `ca_file`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;
mod logprobs;
mod provider;

use std::time::{Duration, Instant};

use common::{TestPki, eventually};
use futures::StreamExt;
use http::StatusCode;
use provider::{API_KEY, Mode, Provider, answer_for};
use serde_json::json;
use tiergate_api::{Input, Message, NodeRequest, Role, Sampling, Usage};
use tiergate_router::health::{LinkHealthConfig, LinkState};
use tiergate_upstream::{CloudClient, CloudConfig, CloudEvent, ErrorKind, UpstreamError};

const WAIT: Duration = Duration::from_secs(20);

fn request(prompt: &str) -> NodeRequest {
    let sampling = Sampling {
        max_new_tokens: 64,
        temperature: Some(0.0),
        ..Default::default()
    };
    NodeRequest::new(
        Input::Text(prompt.to_owned()),
        sampling,
        Instant::now() + WAIT,
    )
}

fn soon() -> Option<Instant> {
    Some(Instant::now() + WAIT)
}

/// A whole answer is asked for as a stream and gathered (the default), or in one JSON response
/// (`stream_whole_answers = false`): the same answer either way.
#[tokio::test]
async fn whole_answers_over_tls_with_the_api_key_streamed_or_in_one_response() {
    let pki = TestPki::new();
    let provider = Provider::start(Some(&pki)).await;
    let streamed = CloudClient::new(&provider.https_config(&pki)).unwrap();
    let done = streamed
        .generate(&request("turn on the lights"), soon())
        .await
        .unwrap();
    let sent = provider.last_body();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let config = CloudConfig {
        stream_whole_answers: false,
        ..provider.https_config(&pki)
    };
    let client = CloudClient::new(&config).unwrap();
    let whole = client
        .generate(&request("turn on the lights"), soon())
        .await
        .unwrap();
    assert_eq!(whole, done);

    assert_eq!(done.text, answer_for("turn on the lights"));
    assert_eq!(done.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        done.usage,
        Some(Usage {
            prompt_tokens: 4,
            completion_tokens: 7
        })
    );
    assert_eq!(done.model, "fake-gpt-0613");

    // TLS with ALPN: the client speaks HTTP/2 when the provider offers it.
    assert_eq!(provider.last_version(), Some(http::Version::HTTP_2));
    let sent = provider.last_body();
    assert_eq!(sent["model"], "fake-gpt");
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": "turn on the lights"}])
    );
    assert_eq!(sent["max_tokens"], 64);
    assert_eq!(sent["stream"], false);

    let snapshot = client.snapshot(Instant::now());
    assert_eq!(snapshot.state, LinkState::Closed);
    assert!(snapshot.latency_ewma_ms.unwrap() > 0.0);
    assert_eq!(snapshot.window_calls, 1);
}

#[tokio::test]
async fn chat_messages_are_sent_as_they_are() {
    let pki = TestPki::new();
    let provider = Provider::start(Some(&pki)).await;
    let client = CloudClient::new(&provider.https_config(&pki)).unwrap();
    let message = |role, content: &str| Message {
        role,
        content: content.to_owned(),
    };
    let chat = NodeRequest::new(
        Input::Chat(vec![
            message(Role::System, "be brief"),
            message(Role::User, "hi"),
        ]),
        Sampling::default(),
        Instant::now() + WAIT,
    );
    let done = client.generate(&chat, soon()).await.unwrap();
    assert_eq!(done.text, answer_for("hi"));
    assert_eq!(
        provider.last_body()["messages"],
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    );
}

#[tokio::test]
async fn streamed_answer_split_mid_event_arrives_whole() {
    let pki = TestPki::new();
    let provider = Provider::start(Some(&pki)).await;
    let client = CloudClient::new(&provider.https_config(&pki)).unwrap();

    let prompt = "what is the capital of France";
    let mut stream = client
        .generate_stream(&request(prompt), soon())
        .await
        .unwrap();
    let mut deltas = Vec::new();
    let mut done = None;
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            CloudEvent::Delta { text, .. } => {
                assert!(done.is_none(), "delta after done");
                deltas.push(text);
            }
            CloudEvent::Done(completion) => done = Some(completion),
        }
    }
    let done = done.expect("the stream ends with Done");
    let expected = answer_for(prompt);
    assert_eq!(deltas.len(), expected.split(' ').count(), "{deltas:?}");
    assert_eq!(deltas.concat(), expected);
    assert_eq!(done.text, expected);
    assert_eq!(done.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        done.usage,
        Some(Usage {
            prompt_tokens: 6,
            completion_tokens: 9
        })
    );

    let sent = provider.last_body();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    assert_eq!(client.snapshot(Instant::now()).window_calls, 1);
}

#[tokio::test]
async fn plain_http_works_for_local_endpoints() {
    let provider = Provider::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, API_KEY).unwrap();
    let config = CloudConfig {
        api_key_file: Some(key_file),
        ..CloudConfig::new(format!("http://127.0.0.1:{}/v1", provider.addr.port()), "m")
    };
    let client = CloudClient::new(&config).unwrap();
    let done = client.generate(&request("local"), soon()).await.unwrap();
    assert_eq!(done.text, answer_for("local"));
    assert_eq!(provider.last_version(), Some(http::Version::HTTP_11));
    let mut stream = client
        .generate_stream(&request("local"), soon())
        .await
        .unwrap();
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        if let CloudEvent::Delta { text: delta, .. } = event.unwrap() {
            text.push_str(&delta);
        }
    }
    assert_eq!(text, answer_for("local"));
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_connect_error() {
    let pki = TestPki::new();
    let provider = Provider::start(Some(&pki)).await;
    let config = CloudConfig {
        ca_file: None,
        ..provider.https_config(&pki)
    };
    let client = CloudClient::new(&config).unwrap();
    let err = client.generate(&request("x"), soon()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    assert!(err.is_retryable());
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    assert_eq!(provider.calls(), 0, "no request got through");
}

#[tokio::test]
async fn a_missing_or_wrong_api_key_is_rejected_with_the_providers_message() {
    let pki = TestPki::new();
    let provider = Provider::start(Some(&pki)).await;

    let no_key = CloudConfig {
        api_key_file: None,
        ..provider.https_config(&pki)
    };
    let wrong_key_file = pki.dir().join("wrong-key");
    std::fs::write(&wrong_key_file, "sk-wrong\n").unwrap();
    let wrong_key = CloudConfig {
        api_key_file: Some(wrong_key_file),
        ..provider.https_config(&pki)
    };
    for config in [no_key, wrong_key] {
        let client = CloudClient::new(&config).unwrap();
        for _ in 0..6 {
            let err = client.generate(&request("x"), soon()).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
            assert_eq!(err.http_status(), Some(401));
            assert!(
                err.message().contains("Incorrect API key provided"),
                "{err}"
            );
            assert!(!err.is_retryable());
            assert_eq!(err.as_label(), "rejected");
        }
        // A rejected request says nothing bad about the link: the breaker stays closed.
        assert_eq!(client.snapshot(Instant::now()).state, LinkState::Closed);
        let err = match client.generate_stream(&request("x"), soon()).await {
            Ok(_) => panic!("a stream was opened without the key"),
            Err(err) => err,
        };
        assert_eq!(err.http_status(), Some(401));
    }
}

#[tokio::test]
async fn server_errors_open_the_breaker_after_the_threshold_and_probes_close_it() {
    let pki = TestPki::new();
    let provider = Provider::start(Some(&pki)).await;
    let config = CloudConfig {
        health: LinkHealthConfig {
            consecutive_failures: 3,
            error_rate_threshold: 0.0,
            // Long enough for the checks below to run while open, even on a loaded machine.
            open_duration: Duration::from_secs(3),
            ..LinkHealthConfig::default()
        },
        ..provider.https_config(&pki)
    };
    let client = CloudClient::new(&config).unwrap();
    provider.set_mode(Mode::Status(500));
    for i in 0..3 {
        assert!(
            client.is_available(Instant::now()),
            "closed before failure {i}"
        );
        let err = client.generate(&request("x"), soon()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ServerError, "{err}");
        assert_eq!(err.http_status(), Some(500));
        assert!(err.message().contains("The server had an error"), "{err}");
        assert!(err.is_retryable());
    }
    assert_eq!(provider.calls(), 3);
    assert!(!client.is_available(Instant::now()));
    let snapshot = client.snapshot(Instant::now());
    assert_eq!(snapshot.state, LinkState::Open);
    assert_eq!(snapshot.consecutive_failures, 3);

    // Open: refused at once, the provider is not called.
    let err = client.generate(&request("x"), soon()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());
    assert_eq!(provider.calls(), 3);

    // After the open duration one probe goes through; its success closes the breaker.
    provider.set_mode(Mode::Normal);
    eventually(WAIT, "breaker half-open", || {
        client.is_available(Instant::now())
    })
    .await;
    let done = client.generate(&request("back"), soon()).await.unwrap();
    assert_eq!(done.text, answer_for("back"));
    assert_eq!(client.snapshot(Instant::now()).state, LinkState::Closed);
}

#[tokio::test]
async fn rate_limits_are_typed_with_retry_after_and_hold_the_link_off_without_counting() {
    let pki = TestPki::new();
    let provider = Provider::start(Some(&pki)).await;
    let config = CloudConfig {
        health: LinkHealthConfig {
            consecutive_failures: 1,
            error_rate_threshold: 0.0,
            open_duration: Duration::from_secs(60),
            // The provider says `Retry-After: 7`; cut to 100 ms so the test can wait it out.
            rate_limit_hold_off: Duration::from_millis(50),
            max_hold_off: Duration::from_millis(100),
            ..LinkHealthConfig::default()
        },
        ..provider.https_config(&pki)
    };
    let client = CloudClient::new(&config).unwrap();
    provider.set_mode(Mode::Status(429));
    let err = client.generate(&request("x"), soon()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited, "{err}");
    assert_eq!(err.as_label(), "rate_limited");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert!(err.message().contains("Rate limit reached"), "{err}");
    assert!(err.is_retryable());
    // Back-pressure, not failure: the breaker (one failure opens it) stays closed, but the
    // link is left alone for the (capped) Retry-After; calls meanwhile do not reach it.
    let snapshot = client.snapshot(Instant::now());
    assert_eq!(snapshot.state, LinkState::Closed);
    assert_eq!(snapshot.consecutive_failures, 0);
    assert!(snapshot.hold_off_ms.is_some());
    assert!(!client.is_available(Instant::now()));
    let err = client.generate(&request("x"), soon()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert_eq!(provider.calls(), 1);

    // After the hold-off a 429 on the streaming path is the same error.
    eventually(WAIT, "hold-off over", || {
        client.is_available(Instant::now())
    })
    .await;
    let err = match client.generate_stream(&request("x"), soon()).await {
        Ok(_) => panic!("stream opened on a 429"),
        Err(err) => err,
    };
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert_eq!(provider.calls(), 2);
    assert_eq!(client.snapshot(Instant::now()).state, LinkState::Closed);

    provider.set_mode(Mode::Normal);
    eventually(WAIT, "hold-off over", || {
        client.is_available(Instant::now())
    })
    .await;
    client.generate(&request("back"), soon()).await.unwrap();
}

#[tokio::test]
async fn a_stalled_server_fails_at_the_deadline_without_hanging() {
    let pki = TestPki::new();
    let provider = Provider::start(Some(&pki)).await;
    let client = CloudClient::new(&provider.https_config(&pki)).unwrap();
    provider.set_mode(Mode::Stall);

    let start = Instant::now();
    let deadline = Some(start + Duration::from_millis(300));
    let err = client.generate(&request("x"), deadline).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.is_retryable());
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(
        start.elapsed() < WAIT,
        "the call hung: {:?}",
        start.elapsed()
    );

    let err = match client
        .generate_stream(
            &request("x"),
            Some(Instant::now() + Duration::from_millis(300)),
        )
        .await
    {
        Ok(_) => panic!("a stalled server opened a stream"),
        Err(err) => err,
    };
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");

    // A deadline already passed fails without a call.
    let calls = provider.calls();
    let err = client
        .generate(&request("x"), Some(Instant::now()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(provider.calls(), calls);
}

#[tokio::test]
async fn the_configured_timeout_caps_a_call_without_a_deadline() {
    let pki = TestPki::new();
    let provider = Provider::start(Some(&pki)).await;
    let config = CloudConfig {
        request_timeout: Duration::from_millis(300),
        ..provider.https_config(&pki)
    };
    let client = CloudClient::new(&config).unwrap();
    provider.set_mode(Mode::Stall);
    let start = Instant::now();
    let err = client.generate(&request("x"), None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(start.elapsed() < WAIT);
}

/// A provider that streams its first delta and then nothing, and a client whose stall timeout
/// is 300 ms.
async fn stalling_mid_stream(pki: &TestPki) -> (Provider, CloudClient) {
    let provider = Provider::start(Some(pki)).await;
    let config = CloudConfig {
        stall_timeout: Duration::from_millis(300),
        ..provider.https_config(pki)
    };
    let client = CloudClient::new(&config).unwrap();
    provider.set_mode(Mode::StallMidStream);
    (provider, client)
}

/// The call that `stalling_mid_stream`'s client began at `start` (with a 5 s deadline) ended at
/// the 300 ms stall timeout, which counted against the link.
fn assert_left_at_the_stall_timeout(err: &UpstreamError, start: Instant, client: &CloudClient) {
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.message().contains("stalled"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "the stall timeout, not the deadline, ended it: {:?}",
        start.elapsed()
    );
    assert_eq!(client.snapshot(Instant::now()).consecutive_failures, 1);
}

#[tokio::test]
async fn a_stream_that_stalls_midway_ends_with_a_timeout() {
    let pki = TestPki::new();
    let (provider, client) = stalling_mid_stream(&pki).await;
    let start = Instant::now();
    let deadline = Some(start + Duration::from_secs(5));
    let mut stream = client
        .generate_stream(&request("hello there"), deadline)
        .await
        .unwrap();
    let mut text = String::new();
    let err = loop {
        match stream.next().await.unwrap() {
            Ok(CloudEvent::Delta { text: delta, .. }) => text.push_str(&delta),
            Ok(CloudEvent::Done(_)) => panic!("a stalled stream completed"),
            Err(err) => break err,
        }
    };
    assert!(!text.is_empty(), "the deltas before the stall arrive");
    assert!(answer_for("hello there").starts_with(&text), "{text}");
    assert!(stream.next().await.is_none(), "nothing after the error");
    assert_left_at_the_stall_timeout(&err, start, &client);

    // The client's own deadline passing mid-stream says nothing about the link.
    let client = CloudClient::new(&provider.https_config(&pki)).unwrap();
    let mut stream = client
        .generate_stream(
            &request("hello there"),
            Some(Instant::now() + Duration::from_millis(400)),
        )
        .await
        .unwrap();
    let mut last = None;
    while let Some(event) = stream.next().await {
        last = Some(event);
    }
    let err = last.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.is_caller_timeout());
    let snapshot = client.snapshot(Instant::now());
    assert_eq!(snapshot.consecutive_failures, 0);
    assert_eq!(snapshot.window_calls, 0);
}

/// A whole answer asked for as a stream gets the stream's bounds: a provider that stalls after
/// its first delta is left at the stall timeout, not at the request's deadline, and counts
/// against the link; one that streams but not by the caller's commit point is left there.
#[tokio::test]
async fn a_whole_answer_whose_stream_stalls_fails_at_the_stall_timeout_or_the_commit_point() {
    let pki = TestPki::new();
    let (provider, client) = stalling_mid_stream(&pki).await;
    let start = Instant::now();
    let deadline = Some(start + Duration::from_secs(5));
    let err = client
        .generate(&request("hello there"), deadline)
        .await
        .unwrap_err();
    assert_left_at_the_stall_timeout(&err, start, &client);

    // The default stall timeout (10 s) is past the caller's commit point: the whole answer must
    // have come by then, as in one response; the caller's limit says nothing about the link.
    let client = CloudClient::new(&provider.https_config(&pki)).unwrap();
    let start = Instant::now();
    let limits = tiergate_upstream::CallLimits {
        deadline: Some(start + Duration::from_secs(5)),
        commit_by: Some(start + Duration::from_millis(400)),
    };
    let err = client
        .generate(&request("hello there"), limits)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.message().contains("rest of the cloud answer"), "{err}");
    assert!(err.is_caller_timeout(), "{err}");
    assert!(start.elapsed() >= Duration::from_millis(400));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(client.snapshot(Instant::now()).consecutive_failures, 0);
}

/// A provider that streams without end (one that ignores `max_tokens`) is cut when the answer
/// passes 16 MiB, with an error, whole or streamed: never a node that gathers text until it
/// runs out of memory, nor a silently truncated answer.
#[tokio::test]
async fn an_answer_streamed_without_end_is_cut_at_16_mib_with_an_error() {
    let pki = TestPki::new();
    let provider = Provider::start(Some(&pki)).await;
    let client = CloudClient::new(&provider.https_config(&pki)).unwrap();
    provider.set_mode(Mode::Endless);
    let start = Instant::now();
    let err = client
        .generate(&request("go on"), Some(start + WAIT))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.message().contains("16 MiB"), "{err}");
    assert!(start.elapsed() < WAIT / 2, "{:?}", start.elapsed());

    let mut stream = client
        .generate_stream(&request("go on"), Some(Instant::now() + WAIT))
        .await
        .unwrap();
    let mut streamed = 0;
    let err = loop {
        match stream.next().await.unwrap() {
            Ok(CloudEvent::Delta { text, .. }) => streamed += text.len(),
            Ok(CloudEvent::Done(_)) => panic!("an endless stream completed"),
            Err(err) => break err,
        }
    };
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(streamed <= 16 << 20, "{streamed}");
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn a_truncated_stream_is_a_protocol_error_not_a_short_answer() {
    let pki = TestPki::new();
    let provider = Provider::start(Some(&pki)).await;
    let client = CloudClient::new(&provider.https_config(&pki)).unwrap();
    provider.set_mode(Mode::TruncateStream);
    let mut stream = client
        .generate_stream(&request("cut me off"), soon())
        .await
        .unwrap();
    let mut last = None;
    while let Some(event) = stream.next().await {
        last = Some(event);
    }
    let err = last.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.message().contains("[DONE]"), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_body_that_is_not_json_is_a_protocol_error() {
    let pki = TestPki::new();
    let provider = Provider::start(Some(&pki)).await;
    let client = CloudClient::new(&provider.https_config(&pki)).unwrap();
    provider.set_mode(Mode::BadJson);
    let err = client.generate(&request("x"), soon()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert_eq!(err.as_label(), "protocol");
    // A JSON answer where a stream was asked for is refused too.
    let err = match client.generate_stream(&request("x"), soon()).await {
        Ok(_) => panic!("JSON accepted as a stream"),
        Err(err) => err,
    };
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let client = CloudClient::new(&CloudConfig::new(
        format!("http://127.0.0.1:{port}/v1"),
        "m",
    ))
    .unwrap();
    let err = client.generate(&request("x"), soon()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    assert_eq!(err.as_label(), "connect");
    assert!(err.is_retryable());
    assert_eq!(client.snapshot(Instant::now()).consecutive_failures, 1);
}

#[tokio::test]
async fn status_code_is_ok_for_the_fixture_itself() {
    // Guards the fixture: a wrong path answers 404 in the OpenAI error shape.
    let provider = Provider::start(None).await;
    let client = CloudClient::new(&CloudConfig::new(
        format!("http://127.0.0.1:{}/nope", provider.addr.port()),
        "m",
    ))
    .unwrap();
    let err = client.generate(&request("x"), soon()).await.unwrap_err();
    assert_eq!(err.http_status(), Some(StatusCode::NOT_FOUND.as_u16()));
    assert!(err.message().contains("no such route"));
}
