//! A client's request id comes back in the response and appears in the logs of every node on
//! the request's path (edge and regional), on both APIs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use tiergate_e2e::scenario::{logged_edge_over_regional, request};
use tiergate_e2e::{Gate, NodeProcess, http_send, node_toml};
use tiergate_proto::v1 as pb;

const PROMPT: &str = "what is the capital of france";

/// Waits (logs are written asynchronously) until `node` logged `needle`.
async fn logged(node: &NodeProcess, needle: &str) -> bool {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if node.logs().contains(needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn response_id<T>(response: &tonic::Response<T>) -> Option<String> {
    response
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[tokio::test]
async fn the_request_id_is_echoed_and_logged_by_every_node_on_the_path() {
    let regional_config = node_toml(
        "regional-1",
        "regional",
        "regional",
        None,
        None,
        Gate::Commit,
    );
    let (edge, regional) = logged_edge_over_regional(&regional_config).await.unwrap();

    // HTTP, the id in `x-request-id`.
    let body = serde_json::json!({
        "model": "tiergate",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": PROMPT}],
    });
    let reply = http_send(
        http::Method::POST,
        &format!("{}/v1/chat/completions", edge.http_url()),
        &[
            ("content-type", "application/json"),
            ("x-request-id", "rid-http-7f3a"),
        ],
        serde_json::to_vec(&body).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-tiergate-tier"), Some("regional"));
    assert_eq!(reply.header("x-request-id"), Some("rid-http-7f3a"));
    assert!(
        logged(&edge, "rid-http-7f3a").await,
        "edge logs lack the id"
    );
    assert!(
        logged(&regional, "rid-http-7f3a").await,
        "regional logs lack the id"
    );

    // gRPC, the id in the proto's `request_id`.
    let mut client = edge.grpc_client().await.unwrap();
    let mut message = request(PROMPT);
    message.request_id = "rid-grpc-51c2".to_owned();
    let response = client.generate(message).await.unwrap();
    assert_eq!(response_id(&response).as_deref(), Some("rid-grpc-51c2"));
    let routing = response.into_inner().routing.unwrap();
    assert_eq!(
        pb::Tier::try_from(routing.tier).unwrap(),
        pb::Tier::Regional
    );
    assert!(
        logged(&edge, "rid-grpc-51c2").await,
        "edge logs lack the id"
    );
    assert!(
        logged(&regional, "rid-grpc-51c2").await,
        "regional logs lack the id"
    );

    // gRPC, the id in `x-request-id` metadata only.
    let mut call = tonic::Request::new(request(PROMPT));
    call.metadata_mut()
        .insert("x-request-id", "rid-meta-09bd".parse().unwrap());
    let response = client.generate(call).await.unwrap();
    assert_eq!(response_id(&response).as_deref(), Some("rid-meta-09bd"));
    assert!(
        logged(&regional, "rid-meta-09bd").await,
        "regional logs lack the id"
    );

    // An unfit id (spaces, too long) is replaced by a fresh one, which still comes back.
    let reply = http_send(
        http::Method::GET,
        &format!("{}/v1/models", edge.http_url()),
        &[("x-request-id", "not a fit id")],
        bytes::Bytes::new(),
    )
    .await
    .unwrap();
    let fresh = reply.header("x-request-id").unwrap();
    assert_eq!(fresh.len(), 16, "{fresh}");
    assert!(fresh.bytes().all(|b| b.is_ascii_hexdigit()), "{fresh}");
}
