//! A client that leaves mid-request cancels the work behind it: the edge closes its call to the
//! cloud at once (seen from the provider's side: its connection closes), for streamed and whole
//! answers on both APIs, and the link is not blamed for it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use tiergate_bench::fake_upstream::Fault;
use tiergate_e2e::scenario::{FakeCloud, request};
use tiergate_e2e::{Gate, NodeProcess, metric, metrics_text};
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
async fn http_client_leaves(edge: std::net::SocketAddr, stream: bool) -> Instant {
    let body = serde_json::json!({
        "model": "tiergate",
        "max_tokens": 16,
        "stream": stream,
        "messages": [{"role": "user", "content": "tell me about the sea"}],
    })
    .to_string();
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
        let client = tokio::spawn(http_client_leaves(edge.http, stream));
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
