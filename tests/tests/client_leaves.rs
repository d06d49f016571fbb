//! A client that leaves mid-request cancels the work behind it: the edge closes its call to the
//! cloud at once (seen from the provider's side: its connection closes), for streamed and whole
//! answers on both APIs, and the link is not blamed for it; a local answer stops being generated
//! (the engine falls idle and the next client is served at once, not after the abandoned one).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use tiergate_bench::fake_upstream::Fault;
use tiergate_e2e::scenario::{
    FakeCloud, LONG_ANSWER_LIMITS, LONG_MAX_TOKENS, LONG_PROMPT, chat_body, long_request,
    real_edge_toml, request, unary_chat,
};
use tiergate_e2e::{Gate, NodeProcess, metric, metrics_text, real_model_dir};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How long the client waits before it gives up; the cloud would hold it for a minute.
const CLIENT_PATIENCE: Duration = Duration::from_millis(700);
/// The bound on how long the provider's connection may outlive the client. The issue asks for
/// 100 ms; this leaves room for a loaded CI machine and still fails against the old behaviour
/// (the call stayed open until the provider answered or the edge's own timeout, 60 s here).
const CLOSE_BOUND: Duration = Duration::from_millis(500);

/// An edge whose only upstream is a cloud that accepts and never answers, with timeouts far
/// longer than the test: only the client leaving can end the call.
async fn edge_with_silent_cloud() -> (FakeCloud, NodeProcess) {
    let cloud = FakeCloud::start().await.unwrap();
    cloud.faults.set(Fault::StallBeforeHeaders);
    let toml = format!(
        "[node]\nname = \"edge-1\"\ntier = \"edge\"\n[engine]\nmodel_dir = \"models/edge\"\n\
         [upstreams.cloud]\nbase_url = \"{}\"\nmodel = \"tiergate\"\n\
         first_token_timeout = \"60s\"\ntimeout = \"60s\"\n\
         [limits]\ndefault_timeout = \"60s\"\n[budget]\nupstream_share = 1.0\n{}",
        cloud.url,
        Gate::CloudFirst.router_toml()
    );
    let edge = NodeProcess::start("edge", &toml).await.unwrap();
    (cloud, edge)
}

/// Waits until the cloud has taken `calls` requests and holds a connection.
async fn until_the_cloud_holds_the_call(cloud: &FakeCloud, calls: usize) {
    let waited = Instant::now();
    while cloud.faults.calls() < calls || cloud.faults.open_connections() == 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "the call never reached the cloud"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How long after `left` the provider's last connection closed; fails past a few seconds.
async fn until_the_cloud_is_hung_up_on(cloud: &FakeCloud, left: Instant) -> Duration {
    while cloud.faults.open_connections() > 0 {
        assert!(
            left.elapsed() < Duration::from_secs(5),
            "the cloud call outlived the client by 5 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    left.elapsed()
}

/// An HTTP/1.1 client that sends a chat request, waits, and closes its socket.
async fn http_client_leaves(edge: std::net::SocketAddr, body: serde_json::Value) -> Instant {
    let body = body.to_string();
    let mut socket = TcpStream::connect(edge).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        edge,
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(body.as_bytes()).await.unwrap();
    tokio::time::sleep(CLIENT_PATIENCE).await;
    drop(socket);
    Instant::now()
}

#[tokio::test]
async fn a_client_that_leaves_closes_the_upstream_call_on_both_apis() {
    let (cloud, edge) = edge_with_silent_cloud().await;
    let mut calls = 0;

    for stream in [false, true] {
        calls += 1;
        let body = chat_body("tell me about the sea", 16, stream);
        let client = tokio::spawn(http_client_leaves(edge.http, body));
        until_the_cloud_holds_the_call(&cloud, calls).await;
        let left = client.await.unwrap();
        let after = until_the_cloud_is_hung_up_on(&cloud, left).await;
        eprintln!("HTTP stream={stream}: the cloud call closed {after:?} after the client left");
        assert!(after < CLOSE_BOUND, "HTTP stream={stream}: {after:?}");
    }

    for stream in [false, true] {
        calls += 1;
        let mut client = edge.grpc_client().await.unwrap();
        let call = async move {
            if stream {
                client
                    .generate_stream(request("tell me about the sea"))
                    .await
                    .map(|_| ())
            } else {
                client
                    .generate(request("tell me about the sea"))
                    .await
                    .map(|_| ())
            }
        };
        // The call is dropped when the client's patience ends: tonic resets the HTTP/2 stream.
        let outcome = tokio::time::timeout(CLIENT_PATIENCE, call).await;
        assert!(outcome.is_err(), "the silent cloud answered: {outcome:?}");
        let left = Instant::now();
        assert_eq!(cloud.faults.calls(), calls, "the call reached the cloud");
        let after = until_the_cloud_is_hung_up_on(&cloud, left).await;
        eprintln!("gRPC stream={stream}: the cloud call closed {after:?} after the client left");
        assert!(after < CLOSE_BOUND, "gRPC stream={stream}: {after:?}");
    }

    // Clients that leave say nothing of the link: the cloud is still planned and available.
    let text = metrics_text(&edge).await.unwrap();
    assert_eq!(
        metric(
            &text,
            "tiergate_upstream_available",
            &[("upstream", "cloud")]
        ),
        Some(1.0),
        "{text}"
    );
}

/// The CPU time the node process has used, from its own `/metrics`.
async fn node_cpu_seconds(node: &NodeProcess) -> f64 {
    let text = metrics_text(node).await.unwrap();
    metric(&text, "tiergate_process_cpu_seconds_total", &[])
        .expect("tiergate_process_cpu_seconds_total")
}

/// CPU seconds the node burns per second of wall time over the next `window`.
async fn node_cpu_rate(node: &NodeProcess, window: Duration) -> f64 {
    let before = node_cpu_seconds(node).await;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    (node_cpu_seconds(node).await - before) / started.elapsed().as_secs_f64()
}

/// A long local answer whose client leaves: the engine stops generating it. An edge node with
/// one engine worker decoding one request at a time (the shipped default) would otherwise keep
/// generating for nobody, and the next client would wait behind it. Checked from outside: the
/// node's CPU (a generation in progress burns more than a core; an idle node next to nothing)
/// and the next request's wait. Real model: the toy models finish any answer before a client
/// could leave. Skips without it unless `TIERGATE_REQUIRE_REAL_MODEL=1`.
#[tokio::test]
async fn a_client_that_leaves_a_local_answer_stops_its_generation_on_both_apis() {
    let Some(model) = real_model_dir() else {
        eprintln!("skipped: the real model is not imported (scripts/import-real-model.sh)");
        return;
    };
    let toml = real_edge_toml(&model, LONG_ANSWER_LIMITS);
    let edge = NodeProcess::start("edge-1", &toml).await.unwrap();
    let window = Duration::from_secs(1);

    // The measure can fail: a client that stays keeps the engine busy.
    let staying = tokio::spawn({
        let mut client = edge.grpc_client().await.unwrap();
        async move { client.generate(long_request()).await.map(|_| ()) }
    });
    tokio::time::sleep(CLIENT_PATIENCE).await;
    // Up to five windows: on a loaded machine the generation may start late (a CI run beside
    // two builds once saw 0.00 in the first); the answer runs for 13 s or more.
    let mut busy = 0.0;
    for _ in 0..5 {
        busy = node_cpu_rate(&edge, window).await;
        if busy > 0.5 {
            break;
        }
    }
    eprintln!("a client that stays: the node burns {busy:.2} CPU seconds per second");
    assert!(busy > 0.5, "no generation was seen running: {busy:.2}");
    assert!(
        !staying.is_finished(),
        "the long answer ended: {:?}",
        staying.await
    );
    staying.abort();

    for api in ["HTTP whole", "HTTP SSE", "gRPC unary", "gRPC stream"] {
        // The previous client's generation must be gone before this one starts.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let left = match api {
            "HTTP whole" | "HTTP SSE" => {
                let body = chat_body(LONG_PROMPT, LONG_MAX_TOKENS, api == "HTTP SSE");
                http_client_leaves(edge.http, body).await
            }
            _ => {
                let mut client = edge.grpc_client().await.unwrap();
                let long = long_request();
                let call = async move {
                    if api == "gRPC stream" {
                        use futures::StreamExt;
                        let mut answer = client.generate_stream(long).await?.into_inner();
                        while answer.next().await.transpose()?.is_some() {}
                        Ok::<(), tonic::Status>(())
                    } else {
                        client.generate(long).await.map(|_| ())
                    }
                };
                let outcome = tokio::time::timeout(CLIENT_PATIENCE, call).await;
                assert!(
                    outcome.is_err(),
                    "{api}: the long answer ended early: {outcome:?}"
                );
                Instant::now()
            }
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rate = node_cpu_rate(&edge, window).await;
        let (reply, waited) = unary_chat(&edge, "what is the capital of france")
            .await
            .unwrap();
        eprintln!(
            "{api}: {rate:.2} CPU seconds per second from 0.3 s after the client left; the next \
             request answered in {waited:?}, {:?} after the client left",
            left.elapsed()
        );
        assert_eq!(reply.status, 200, "{api}: {}", reply.text());
        assert!(
            rate < 0.25,
            "{api}: the engine kept generating for nobody: {rate:.2}"
        );
        assert!(
            waited < Duration::from_secs(5),
            "{api}: the next request waited {waited:?}"
        );
    }
}
