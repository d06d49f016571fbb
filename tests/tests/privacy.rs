//! The privacy guard, from the provider's side: with `[privacy]` detectors on, a prompt holding a
//! card number (Luhn-valid) never reaches the cloud, on either API, however the router would
//! have sent it; a number that fails the checksum does. With `action = "redact"` the request
//! goes up with the e-mail address replaced, and the provider never sees it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use tiergate_e2e::scenario::{EdgeLinks, FakeCloud, edge_toml, request};
use tiergate_e2e::{Gate, NodeProcess, metric, metrics_text, post_json};
use tiergate_proto::v1 as pb;

const CARD: &str = "my card is 4111 1111 1111 1111, how do I read its expiry date?";
const NOT_A_CARD: &str = "my order is 4111 1111 1111 1112, how do I track it?";

async fn edge(cloud: &FakeCloud, action: &str) -> NodeProcess {
    let links = EdgeLinks {
        cloud: Some(cloud.url.clone()),
        extra: format!(
            "[privacy]\ndetectors = [\"email\", \"phone\", \"card\", \"iban\"]\naction = \"{action}\"\n"
        ),
        ..EdgeLinks::default()
    };
    // Every prompt would go to the cloud first.
    let toml = edge_toml(&links, Gate::CloudFirst, std::time::Duration::from_secs(2));
    NodeProcess::start("edge", &toml).await.unwrap()
}

async fn chat(
    edge: &NodeProcess,
    prompt: &str,
    constraint: Option<&str>,
) -> tiergate_e2e::HttpReply {
    let mut body = json!({
        "model": "tiergate", "max_tokens": 8,
        "messages": [{"role": "user", "content": prompt}],
    });
    if let Some(constraint) = constraint {
        body["tiergate"] = json!({"tier_constraint": constraint});
    }
    post_json(&format!("{}/v1/chat/completions", edge.http_url()), &body)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_card_number_never_leaves_the_edge() {
    let cloud = FakeCloud::start().await.unwrap();
    let edge = edge(&cloud, "pin").await;

    let reply = chat(&edge, CARD, None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-tiergate-tier"), Some("edge"));
    let mut client = edge.grpc_client().await.unwrap();
    let answer = client.generate(request(CARD)).await.unwrap().into_inner();
    assert_eq!(answer.routing.unwrap().tier, pb::Tier::Edge as i32);
    assert_eq!(cloud.faults.calls(), 0, "the provider saw a card number");

    // A request that insists on the cloud is refused, not sent.
    let reply = chat(&edge, CARD, Some("at_least_cloud")).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(
        reply.text().contains("personal data (card)"),
        "{}",
        reply.text()
    );
    assert_eq!(cloud.faults.calls(), 0);

    // A number that fails the card checksum is not personal data: routed as usual.
    let reply = chat(&edge, NOT_A_CARD, None).await;
    assert_eq!(
        reply.header("x-tiergate-tier"),
        Some("cloud"),
        "{}",
        reply.text()
    );
    assert_eq!(cloud.faults.calls(), 1);

    let text = metrics_text(&edge).await.unwrap();
    assert_eq!(
        metric(
            &text,
            "tiergate_privacy_detections_total",
            &[("detector", "card"), ("action", "pin")]
        ),
        Some(3.0),
        "{text}"
    );
}

#[tokio::test]
async fn redaction_sends_a_placeholder_upstream() {
    let cloud = FakeCloud::start().await.unwrap();
    let edge = edge(&cloud, "redact").await;
    let reply = chat(
        &edge,
        "write a reminder to jane.doe@example.com about the invoice",
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-tiergate-tier"), Some("cloud"));
    let sent = cloud.faults.last_body().expect("the cloud was called");
    assert!(!sent.contains("jane.doe"), "{sent}");
    assert!(
        sent.contains("write a reminder to [email] about the invoice"),
        "{sent}"
    );
}
