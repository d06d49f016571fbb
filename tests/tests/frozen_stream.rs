//! A client that stops reading one HTTP/2 stream while its connection stays healthy (its
//! library still answers PINGs): the stream's flow-control window fills before any socket
//! buffer does, so TCP has nothing unsent and TCP_USER_TIMEOUT never fires. Only the node's
//! send watch (`server.send_timeout`) ends such an answer: its admission slot frees, its
//! generation stops, and the client, if it reads again, gets an error (gRPC DEADLINE_EXCEEDED,
//! an HTTP/2 stream reset), never a clean, short end. On gRPC and on the OpenAI API over HTTP/2.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tiergate_e2e::scenario::{
    LONG_ANSWER_LIMITS, LONG_MAX_TOKENS, LONG_PROMPT, chat_body, long_request, real_edge_toml,
    shed_until_served,
};
use tiergate_e2e::{NodeProcess, metric, metrics_text, real_model_dir};
use tiergate_proto::v1::inference_client::InferenceClient;

/// The flow-control window the frozen clients grant each stream: a few messages' worth.
const TINY_WINDOW: u32 = 64;
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Others are shed while the frozen stream holds the one slot, and served once the send
/// timeout ended it.
async fn held_then_freed(edge: &NodeProcess, asked: Instant, what: &str) {
    let (shed, served_after) = shed_until_served(edge, asked, Duration::from_secs(20))
        .await
        .unwrap();
    eprintln!("{what} not read: {shed} requests shed, the next served after {served_after:?}");
    assert!(shed > 0, "the frozen stream never held the slot");
    assert!(served_after >= SEND_TIMEOUT, "{served_after:?}");
}

#[tokio::test]
async fn a_client_that_stops_reading_one_http2_stream_is_cut_at_the_send_timeout_on_both_apis() {
    // The real model answers LONG_PROMPT token by token for seconds: the answer outgrows the
    // window one message at a time, so the stream freezes whatever the machine's speed.
    let Some(model) = real_model_dir() else {
        eprintln!("skipped: the real model is not imported (scripts/import-real-model.sh)");
        return;
    };
    let server = format!(
        "[server]\nsend_timeout = \"{}ms\"\nmax_concurrent_requests = 1\n{LONG_ANSWER_LIMITS}",
        SEND_TIMEOUT.as_millis()
    );
    let edge = NodeProcess::start("edge-1", &real_edge_toml(&model, &server))
        .await
        .unwrap();

    // gRPC: a server stream nobody reads.
    let channel = tonic::transport::Endpoint::from_shared(edge.grpc_url())
        .unwrap()
        .initial_stream_window_size(Some(TINY_WINDOW))
        .connect()
        .await
        .unwrap();
    let mut client = InferenceClient::new(channel);
    let asked = Instant::now();
    let mut frozen = tokio::time::timeout(
        Duration::from_secs(30),
        client.generate_stream(long_request()),
    )
    .await
    .expect("the stream's head came")
    .unwrap()
    .into_inner();
    held_then_freed(&edge, asked, "gRPC stream").await;
    // Reading again: what was sent, then the error, never the answer's end.
    let ending = tokio::time::timeout(Duration::from_secs(10), async {
        let mut messages = 0;
        loop {
            match frozen.message().await {
                Ok(Some(_)) => messages += 1,
                Ok(None) => return Err(format!("a clean end after {messages} messages")),
                Err(status) => return Ok((messages, status)),
            }
        }
    })
    .await
    .expect("the frozen stream ended");
    let (messages, status) = ending.unwrap();
    eprintln!("the frozen gRPC stream, read again: {messages} messages, then {status:?}");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("send_timeout"), "{status:?}");

    // The OpenAI API over HTTP/2 (prior knowledge, as h2c clients and TLS ALPN speak it): an
    // SSE stream nobody reads.
    let h2: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .http2_initial_stream_window_size(TINY_WINDOW)
        .build_http();
    let mut body = chat_body(LONG_PROMPT, LONG_MAX_TOKENS, true);
    body["logprobs"] = true.into();
    let request = http::Request::post(format!("{}/v1/chat/completions", edge.http_url()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let asked = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(30), h2.request(request))
        .await
        .expect("the stream's head came")
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    held_then_freed(&edge, asked, "HTTP/2 SSE").await;
    let mut frozen = response.into_body();
    let ending = tokio::time::timeout(Duration::from_secs(10), async {
        let mut bytes = 0;
        loop {
            match frozen.frame().await {
                Some(Ok(frame)) => bytes += frame.data_ref().map_or(0, Bytes::len),
                None => return Err(format!("a clean end after {bytes} bytes")),
                Some(Err(err)) => return Ok((bytes, err)),
            }
        }
    })
    .await
    .expect("the frozen stream ended");
    let (bytes, err) = ending.unwrap();
    eprintln!("the frozen SSE stream, read again: {bytes} bytes, then {err}");

    // Both answers were ended by the watch, and nothing is left running behind them.
    let metrics = metrics_text(&edge).await.unwrap();
    for api in ["grpc", "http"] {
        let cut = metric(&metrics, "tiergate_send_timeouts_total", &[("api", api)]);
        assert_eq!(cut, Some(1.0), "{api}");
    }
    assert_eq!(
        metric(&metrics, "tiergate_in_flight_requests", &[]),
        Some(0.0)
    );
}
