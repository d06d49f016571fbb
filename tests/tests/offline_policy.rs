//! While every upstream is down, a request that policy forbids answering locally (the client's
//! `at_least_cloud` constraint) gets 503 / UNAVAILABLE with a `Retry-After` that link health
//! computed (when the open breaker probes again), not a degraded local answer and not a guess;
//! a request without the constraint is still answered locally and says it is degraded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use tiergate_bench::fake_upstream::Fault;
use tiergate_e2e::scenario::{FakeCloud, request};
use tiergate_e2e::{NodeProcess, http_send};
use tiergate_proto::v1 as pb;

/// How long the cloud's breaker stays open: far from the 5 s default wait, so the test tells
/// a computed Retry-After from a fixed one.
const OPEN_SECONDS: u64 = 40;

fn chat_body() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": "tiergate",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "what is the capital of france"}],
    }))
    .unwrap()
}

async fn post_chat(edge: &NodeProcess, constraint: Option<&str>) -> tiergate_e2e::HttpReply {
    let url = format!("{}/v1/chat/completions", edge.http_url());
    let mut headers = vec![("content-type", "application/json")];
    if let Some(constraint) = constraint {
        headers.push(("x-tiergate-tier-constraint", constraint));
    }
    http_send(http::Method::POST, &url, &headers, chat_body())
        .await
        .unwrap()
}

fn retry_after(reply: &tiergate_e2e::HttpReply) -> u64 {
    reply
        .header("retry-after")
        .expect("a 503 says when to come back")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn cloud_only_requests_get_503_with_the_breakers_retry_after_while_offline() {
    let cloud = FakeCloud::start().await.unwrap();
    cloud.faults.set(Fault::Status(503));
    let toml = format!(
        "[node]\nname = \"edge-1\"\ntier = \"edge\"\n[engine]\nmodel_dir = \"models/edge\"\n\
         [upstreams.cloud]\nbase_url = \"{}\"\nmodel = \"tiergate\"\n\
         [upstreams.cloud.health]\nconsecutive_failures = 1\nopen_duration = \"{OPEN_SECONDS}s\"\n",
        cloud.url
    );
    let edge = NodeProcess::start("edge", &toml).await.unwrap();

    // The first call meets the 503 and opens the breaker; the client hears when it probes again.
    let reply = post_chat(&edge, Some("at_least_cloud")).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    let wait = retry_after(&reply);
    assert!(
        (OPEN_SECONDS - 10..=OPEN_SECONDS).contains(&wait),
        "Retry-After {wait}"
    );
    assert_eq!(cloud.faults.calls(), 1);

    // With the breaker open, the next is refused at once, without a call, and told the same.
    let reply = post_chat(&edge, Some("at_least_cloud")).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!((OPEN_SECONDS - 10..=OPEN_SECONDS).contains(&retry_after(&reply)));
    assert_eq!(cloud.faults.calls(), 1, "an open breaker sends nothing");
    let error = reply.json().unwrap();
    assert_eq!(error["error"]["type"], "unavailable", "{error}");

    // gRPC: UNAVAILABLE with the wait in `retry-after` metadata.
    let mut client = edge.grpc_client().await.unwrap();
    let mut cloud_only = request("what is the capital of france");
    cloud_only.tier_constraint = pb::TierConstraint::AtLeastCloud as i32;
    let status = client.generate(cloud_only).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let wait: u64 = status
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((OPEN_SECONDS - 10..=OPEN_SECONDS).contains(&wait), "{wait}");

    // Without the constraint the edge answers itself, and says it is degraded.
    let reply = post_chat(&edge, None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-tiergate-degraded"), Some("true"));
    assert_eq!(cloud.faults.calls(), 1);
}
