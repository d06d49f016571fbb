//! Three real `tiergate serve` processes (edge, regional, cloud stand-in) on 127.0.0.1: where
//! requests land, what happens when tiers go away, and that every API tells the same story.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::StreamExt;
use tiergate_e2e::{Cluster, Gate, metric, metrics_text, peer_key, post_json};
use tiergate_proto::v1 as pb;

fn request(prompt: &str) -> pb::GenerateRequest {
    pb::GenerateRequest {
        prompt: prompt.to_owned(),
        params: Some(pb::GenerationParams {
            max_new_tokens: 24,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn tier(routing: &pb::RoutingInfo) -> pb::Tier {
    pb::Tier::try_from(routing.tier).unwrap()
}

async fn generate(cluster: &Cluster, prompt: &str) -> pb::GenerateResponse {
    let mut client = cluster.edge.grpc_client().await.unwrap();
    let mut req = tonic::Request::new(request(prompt));
    req.set_timeout(Duration::from_secs(30));
    client.generate(req).await.unwrap().into_inner()
}

#[tokio::test]
async fn confident_in_domain_answer_exits_at_the_edge() {
    let cluster = Cluster::start(Gate::Commit, Gate::Default).await.unwrap();
    let answer = generate(&cluster, "turn on the kitchen lights").await;
    let routing = answer.routing.unwrap();
    assert_eq!(tier(&routing), pb::Tier::Edge);
    assert_eq!(routing.reason, "early_exit");
    assert!(routing.local_confidence.is_some());
    assert!(!routing.degraded);
    assert!(!answer.text.is_empty());
    assert_eq!(routing.node, "edge-1");
}

#[tokio::test]
async fn low_confidence_escalates_to_regional_then_the_cloud_when_regional_is_stopped() {
    let mut cluster = Cluster::start(Gate::Abandon, Gate::Commit).await.unwrap();
    let answer = generate(&cluster, "what is 12 plus 7").await;
    let routing = answer.routing.unwrap();
    assert_eq!(tier(&routing), pb::Tier::Regional, "{routing:?}");
    assert_eq!(routing.reason, "low_confidence");
    assert_eq!(routing.tiers_tried, vec![pb::Tier::Edge as i32]);
    assert_eq!(routing.node, "regional-1");
    assert!(!routing.degraded);

    // Regional goes away: the same request now reaches the cloud.
    cluster.regional.take().unwrap().stop().await.unwrap();
    let answer = generate(&cluster, "what is 12 plus 7").await;
    let routing = answer.routing.unwrap();
    assert_eq!(tier(&routing), pb::Tier::Cloud, "{routing:?}");
    assert!(
        !routing.degraded,
        "the cloud is a better tier, not a degraded one"
    );
    assert!(!answer.text.is_empty());

    // The cloud goes too: the edge answers itself and says the answer is degraded.
    cluster.cloud.take().unwrap().stop().await.unwrap();
    let answer = generate(&cluster, "what is 12 plus 7").await;
    let routing = answer.routing.unwrap();
    assert_eq!(tier(&routing), pb::Tier::Edge, "{routing:?}");
    assert!(routing.degraded);
    assert!(
        ["upstream_failed", "upstream_unavailable"].contains(&routing.reason.as_str()),
        "{routing:?}"
    );
    assert!(!answer.text.is_empty());
}

#[tokio::test]
async fn complex_prompts_go_to_the_cloud_and_explain_agrees() {
    let cluster = Cluster::start(Gate::CloudFirst, Gate::Default)
        .await
        .unwrap();
    let prompt = "Prove that there are infinitely many primes, step by step.";
    let answer = generate(&cluster, prompt).await;
    let routing = answer.routing.unwrap();
    assert_eq!(tier(&routing), pb::Tier::Cloud, "{routing:?}");
    assert_eq!(routing.reason, "complexity");

    let mut client = cluster.edge.grpc_client().await.unwrap();
    let explained = client.explain(request(prompt)).await.unwrap().into_inner();
    let explained_routing = explained.routing.unwrap();
    assert_eq!(explained_routing.tier, routing.tier);
    assert_eq!(explained_routing.reason, routing.reason);
    assert!((explained_routing.complexity - routing.complexity).abs() < 1e-9);
    let decision: serde_json::Value = serde_json::from_str(&explained.decision_json).unwrap();
    assert_eq!(decision["tier"], "cloud");
    assert_eq!(decision["reason"], "complexity");
    assert!(decision["complexity"]["components"].is_array());
}

/// Real clients always send a system prompt: the complexity score reads the last user turn, so
/// the system prompt and earlier turns change neither the score nor the plan (they are reported
/// as context in the decision).
#[tokio::test]
async fn a_system_prompt_and_history_do_not_change_where_a_request_goes() {
    let cluster = Cluster::start(Gate::Default, Gate::Default).await.unwrap();
    let mut client = cluster.edge.grpc_client().await.unwrap();
    let message = |role: &str, content: &str| pb::ChatMessage {
        role: role.to_owned(),
        content: content.to_owned(),
    };
    let plain = pb::GenerateRequest {
        messages: vec![message("user", "turn on the kitchen lights")],
        ..request("")
    };
    let with_context = pb::GenerateRequest {
        messages: vec![
            message("system", "You are a home assistant."),
            message("user", "What can you do? Explain in detail, step by step."),
            message(
                "assistant",
                "I can control devices, tell the time and convert units.",
            ),
            message("user", "turn on the kitchen lights"),
        ],
        ..request("")
    };
    let plain = client.explain(plain).await.unwrap().into_inner();
    let with_context = client.explain(with_context).await.unwrap().into_inner();
    let (a, b) = (plain.routing.unwrap(), with_context.routing.unwrap());
    assert_eq!(a.complexity, b.complexity);
    assert_eq!((a.tier, &a.reason), (b.tier, &b.reason));
    assert_eq!(tier(&a), pb::Tier::Edge, "{a:?}");
    let decision: serde_json::Value = serde_json::from_str(&with_context.decision_json).unwrap();
    assert_eq!(
        decision["signals"]["context"],
        serde_json::json!({"earlier_turns": 2, "earlier_words": 20, "system_words": 5})
    );
}

/// The prompt NLL check runs on the gated local step's own prefill: an edge whose bound no
/// prompt meets abandons before any token and escalates, and /metrics names the cause.
#[tokio::test]
async fn a_prompt_the_local_model_finds_too_surprising_escalates_before_any_token() {
    let cluster = Cluster::start(Gate::SurprisedByEveryPrompt, Gate::Commit)
        .await
        .unwrap();
    let answer = generate(&cluster, "turn on the kitchen lights").await;
    let routing = answer.routing.unwrap();
    assert_eq!(tier(&routing), pb::Tier::Regional, "{routing:?}");
    assert_eq!(routing.reason, "low_confidence");
    assert!(!answer.text.is_empty());
    let metrics = tiergate_e2e::get(&format!("{}/metrics", cluster.edge.http_url()))
        .await
        .unwrap()
        .text();
    assert!(
        metrics.contains(r#"tiergate_local_abandons_total{cause="prompt_nll",node="edge-1"} 1"#),
        "{metrics}"
    );
    // Abandoned before the first token: nothing was generated and thrown away.
    assert!(
        metrics.contains(r#"tiergate_generated_tokens_total{kept="false",node="edge-1"} 0"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn privacy_pinned_requests_never_leave_the_edge() {
    let cluster = Cluster::start(Gate::CloudFirst, Gate::Default)
        .await
        .unwrap();
    let mut client = cluster.edge.grpc_client().await.unwrap();
    let mut req = request("summarise my medical history, step by step, in detail");
    req.tier_constraint = pb::TierConstraint::EdgeOnly as i32;
    let answer = client.generate(req).await.unwrap().into_inner();
    let routing = answer.routing.unwrap();
    assert_eq!(tier(&routing), pb::Tier::Edge);
    assert_eq!(routing.reason, "tier_constraint");
    assert!(routing.tiers_tried.is_empty());
}

#[tokio::test]
async fn streaming_and_unary_agree_on_grpc_and_http() {
    for gate in [Gate::Commit, Gate::Abandon] {
        let cluster = Cluster::start(gate, Gate::Commit).await.unwrap();
        let prompt = "turn off the bedroom fan";
        let unary = generate(&cluster, prompt).await;

        let mut client = cluster.edge.grpc_client().await.unwrap();
        let mut stream = client
            .generate_stream(request(prompt))
            .await
            .unwrap()
            .into_inner();
        let mut events = Vec::new();
        while let Some(message) = stream.next().await {
            events.push(message.unwrap().event.unwrap());
        }
        use pb::generate_stream_response::Event;
        let Some(Event::Routed(routed)) = events.first() else {
            panic!("stream must open with its routing: {events:?}");
        };
        let text: String = events
            .iter()
            .filter_map(|e| match e {
                Event::Delta(d) => Some(d.text.as_str()),
                _ => None,
            })
            .collect();
        let Some(Event::Done(done)) = events.last() else {
            panic!("stream must end with done: {events:?}");
        };
        let unary_routing = unary.routing.clone().unwrap();
        assert_eq!(text, unary.text, "gate {gate:?}");
        assert_eq!(routed.tier, unary_routing.tier);
        assert_eq!(done.routing.as_ref().unwrap().tier, unary_routing.tier);
        assert_eq!(done.routing.as_ref().unwrap().reason, unary_routing.reason);
        assert_eq!(done.usage, unary.usage);

        // HTTP, unary and SSE, tell the same story in headers and the `tiergate` field.
        let url = format!("{}/v1/chat/completions", cluster.edge.http_url());
        let body = serde_json::json!({
            "model": "tiergate",
            "max_tokens": 24,
            "messages": [{"role": "user", "content": prompt}],
        });
        let reply = post_json(&url, &body).await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        let json = reply.json().unwrap();
        assert_eq!(json["choices"][0]["message"]["content"], unary.text);
        let tier_name = match tier(&unary_routing) {
            pb::Tier::Edge => "edge",
            pb::Tier::Regional => "regional",
            pb::Tier::Cloud => "cloud",
            pb::Tier::Unspecified => "?",
        };
        assert_eq!(reply.header("x-tiergate-tier"), Some(tier_name));
        assert_eq!(json["tiergate"]["tier"], tier_name);
        assert_eq!(json["tiergate"]["reason"], unary_routing.reason);

        let mut streamed = body.clone();
        streamed["stream"] = serde_json::json!(true);
        let reply = post_json(&url, &streamed).await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("text/event-stream"));
        assert_eq!(reply.header("x-tiergate-tier"), Some(tier_name));
        let sse = reply.text();
        assert!(sse.trim_end().ends_with("data: [DONE]"), "{sse}");
        let mut sse_text = String::new();
        for line in sse.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if line == "[DONE]" {
                break;
            }
            let chunk: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
                sse_text.push_str(piece);
            }
        }
        assert_eq!(sse_text, unary.text, "gate {gate:?}");
    }
}

#[tokio::test]
async fn forwarded_requests_never_go_back_down_or_around_a_loop() {
    let cluster = Cluster::start(Gate::CloudFirst, Gate::CloudFirst)
        .await
        .unwrap();

    // At the hop limit the edge answers itself instead of forwarding again.
    let mut edge = cluster.edge.grpc_client().await.unwrap();
    let at_hop_limit = || {
        let mut req = request("Prove that there are infinitely many primes, step by step.");
        req.forwarding = Some(pb::ForwardingInfo {
            hop_count: 3,
            ..Default::default()
        });
        req
    };
    let routing = edge
        .generate(from_peer(at_hop_limit()))
        .await
        .unwrap()
        .into_inner()
        .routing
        .unwrap();
    assert_eq!(tier(&routing), pb::Tier::Edge, "{routing:?}");
    assert_eq!(routing.reason, "hop_limit");

    // The same forwarding information from a client that is not a peer is ignored: it cannot
    // keep its request at the edge (or away from a tier) by forging it.
    let routing = edge
        .generate(at_hop_limit())
        .await
        .unwrap()
        .into_inner()
        .routing
        .unwrap();
    assert_eq!(tier(&routing), pb::Tier::Cloud, "{routing:?}");
    assert_ne!(routing.reason, "hop_limit");
    let mut forged_key = tonic::Request::new(at_hop_limit());
    forged_key.metadata_mut().insert(
        "x-tiergate-peer-key",
        "not-the-key-0123456789".parse().unwrap(),
    );
    let routing = edge
        .generate(forged_key)
        .await
        .unwrap()
        .into_inner()
        .routing
        .unwrap();
    assert_eq!(
        tier(&routing),
        pb::Tier::Cloud,
        "a wrong key is no key: {routing:?}"
    );

    // A request that already went to the cloud is not sent there again by the regional node.
    let mut regional = cluster
        .regional
        .as_ref()
        .unwrap()
        .grpc_client()
        .await
        .unwrap();
    let mut req = request("Prove that there are infinitely many primes, step by step.");
    req.forwarding = Some(pb::ForwardingInfo {
        hop_count: 1,
        tiers_tried: vec![pb::Tier::Edge as i32, pb::Tier::Cloud as i32],
        via: vec!["edge-1".into()],
    });
    let routing = regional
        .generate(from_peer(req))
        .await
        .unwrap()
        .into_inner()
        .routing
        .unwrap();
    assert_eq!(tier(&routing), pb::Tier::Regional, "{routing:?}");
    assert!(
        routing.degraded,
        "the cloud was wanted but already tried: {routing:?}"
    );
}

/// `request` as a peer node sends it: with the deployment's peer key.
fn from_peer(request: pb::GenerateRequest) -> tonic::Request<pb::GenerateRequest> {
    let mut request = tonic::Request::new(request);
    request
        .metadata_mut()
        .insert("x-tiergate-peer-key", peer_key().parse().unwrap());
    request
}

/// The edge presents the peer key when it forwards, so the regional node trusts what it says
/// was tried: with the cloud gone, the edge's failed cloud call is not repeated by the regional
/// node, which answers itself (degraded) without calling the cloud.
#[tokio::test]
async fn the_regional_node_trusts_what_the_edge_says_it_tried() {
    let mut cluster = Cluster::start(Gate::CloudFirst, Gate::CloudFirst)
        .await
        .unwrap();
    cluster.cloud.take().unwrap().stop().await.unwrap();
    let answer = generate(&cluster, "Prove that there are infinitely many primes.").await;
    let routing = answer.routing.unwrap();
    assert_eq!(tier(&routing), pb::Tier::Regional, "{routing:?}");
    assert!(routing.degraded, "{routing:?}");
    let regional = cluster.regional.as_ref().unwrap();
    let text = metrics_text(regional).await.unwrap();
    assert_eq!(
        metric(
            &text,
            "tiergate_upstream_requests_total",
            &[("upstream", "cloud")]
        ),
        None,
        "the regional node called the cloud the edge had tried: {text}"
    );
}
