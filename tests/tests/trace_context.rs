//! W3C trace context across the tiers: a client's `traceparent` sent to the edge reaches the
//! cloud provider (through the regional node) with the same trace id, every node answering with
//! its own span; the regional node logs the trace id; the answer carries `traceparent` back.
//! An invalid `traceparent` is replaced by a new trace, which still travels the whole path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use tiergate_e2e::scenario::{FakeCloud, logged_edge_over_regional, request};
use tiergate_e2e::{Gate, NodeProcess, http_send, node_toml};

const PROMPT: &str = "what is the capital of france";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// The fields of a `traceparent`: version, trace id, parent id, flags.
fn fields(traceparent: &str) -> (String, String, String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1].len(), 32, "{traceparent}");
    assert_eq!(parts[2].len(), 16, "{traceparent}");
    (
        parts[0].to_owned(),
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

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

/// edge -> regional -> fake cloud, every prompt sent up to the cloud.
async fn fleet() -> (NodeProcess, NodeProcess, FakeCloud) {
    let cloud = FakeCloud::start().await.unwrap();
    let mut regional_config = node_toml(
        "regional-1",
        "regional",
        "regional",
        None,
        None,
        Gate::CloudFirst,
    );
    regional_config.push_str(&format!(
        "[upstreams.cloud]\nbase_url = \"{}\"\nmodel = \"tiergate\"\n",
        cloud.url
    ));
    let (edge, regional) = logged_edge_over_regional(&regional_config).await.unwrap();
    (edge, regional, cloud)
}

#[tokio::test]
async fn the_trace_travels_edge_regional_cloud_and_comes_back() {
    let (edge, regional, cloud) = fleet().await;

    // HTTP: the client's trace, its vendor state and its request id.
    let body = serde_json::json!({
        "model": "tiergate",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": PROMPT}],
    });
    let client_parent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    let reply = http_send(
        http::Method::POST,
        &format!("{}/v1/chat/completions", edge.http_url()),
        &[
            ("content-type", "application/json"),
            ("traceparent", client_parent.as_str()),
            ("tracestate", "vendor=abc"),
            ("x-request-id", "rid-trace-3e1"),
        ],
        serde_json::to_vec(&body).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-tiergate-tier"), Some("cloud"));

    // The answer names the client's trace, with the edge's own span as parent.
    let (version, trace, edge_span, flags) = fields(reply.header("traceparent").unwrap());
    assert_eq!((version.as_str(), trace.as_str()), ("00", TRACE_ID));
    assert_ne!(edge_span, CLIENT_SPAN);
    assert_eq!(flags, "01");

    // The provider got the same trace, from a third span (the regional node's), the vendor
    // state and the request id.
    assert_eq!(cloud.faults.calls(), 1);
    let (_, cloud_trace, regional_span, _) =
        fields(&cloud.faults.last_header("traceparent").unwrap());
    assert_eq!(cloud_trace, TRACE_ID);
    assert_ne!(regional_span, CLIENT_SPAN);
    assert_ne!(regional_span, edge_span);
    assert_eq!(
        cloud.faults.last_header("tracestate").as_deref(),
        Some("vendor=abc")
    );
    assert_eq!(
        cloud.faults.last_header("x-request-id").as_deref(),
        Some("rid-trace-3e1")
    );

    // Both nodes logged the request under the trace id.
    assert!(
        logged(&regional, TRACE_ID).await,
        "regional logs lack the trace id"
    );
    assert!(logged(&edge, TRACE_ID).await, "edge logs lack the trace id");

    // gRPC: the trace in metadata; it comes back in the initial metadata.
    let grpc_trace = "0af7651916cd43dd8448eb211c80319c";
    let mut client = edge.grpc_client().await.unwrap();
    let mut call = tonic::Request::new(request(PROMPT));
    call.metadata_mut().insert(
        "traceparent",
        format!("00-{grpc_trace}-b7ad6b7169203331-00")
            .parse()
            .unwrap(),
    );
    let response = client.generate(call).await.unwrap();
    let returned = response
        .metadata()
        .get("traceparent")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(fields(returned).1, grpc_trace);
    let (_, cloud_trace, _, _) = fields(&cloud.faults.last_header("traceparent").unwrap());
    assert_eq!(cloud_trace, grpc_trace);
    assert!(
        logged(&regional, grpc_trace).await,
        "regional logs lack the gRPC trace id"
    );

    // An invalid traceparent (all-zero trace id) is replaced by a new trace, which travels too.
    let zero = format!("00-{}-{CLIENT_SPAN}-01", "0".repeat(32));
    let reply = http_send(
        http::Method::POST,
        &format!("{}/v1/chat/completions", edge.http_url()),
        &[
            ("content-type", "application/json"),
            ("traceparent", zero.as_str()),
            ("tracestate", "vendor=dropped"),
        ],
        serde_json::to_vec(&body).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let (_, fresh, _, _) = fields(reply.header("traceparent").unwrap());
    assert_ne!(fresh, "0".repeat(32));
    assert!(fresh.bytes().all(|b| b.is_ascii_hexdigit()), "{fresh}");
    let (_, cloud_trace, _, _) = fields(&cloud.faults.last_header("traceparent").unwrap());
    assert_eq!(cloud_trace, fresh);
    // Trace state belongs to the trace it came with.
    assert_eq!(cloud.faults.last_header("tracestate"), None);
    // A request id was made for it and forwarded as well.
    assert!(cloud.faults.last_header("x-request-id").is_some());
}
