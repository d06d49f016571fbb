//! Tenants and API keys, through the real listeners of `tiergate serve` processes: keys made
//! and hashed by the `tiergate keys` CLI, a bad or missing key refused on both APIs, one
//! tenant's rate limit leaving another untouched (counted on the fake provider's side), an
//! edge-pinned tenant that never reaches the upstream, models a tenant may not use, separate
//! cache keyspaces, and CORS only when configured.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use tiergate_e2e::scenario::{EdgeLinks, FakeCloud, edge_toml, request};
use tiergate_e2e::{
    Gate, HttpReply, NodeProcess, get, http_send, metric, metrics_text, metrics_text_once,
    tiergate_bin,
};
use tiergate_proto::v1 as pb;

const KEY_A: &str = "tg_tenant-a-key-0123456789abcdef";
const KEY_B: &str = "tg_tenant-b-key-0123456789abcdef";
const KEY_C: &str = "tg_tenant-c-key-0123456789abcdef";
const PROMPT: &str = "write a detailed essay on the economics of the late roman empire";

/// `tiergate keys hash` of `key`, as an operator would run it.
fn hash_line(key: &str) -> String {
    let mut child = Command::new(tiergate_bin())
        .args(["keys", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{key}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.starts_with("key_sha256 = [\""), "{line}");
    assert!(!line.contains(key));
    line.trim().to_owned()
}

/// A `[[tenants]]` entry for `name` with `key` (hashed by the CLI) and `policy` lines.
fn tenant(name: &str, key: &str, policy: &str) -> String {
    format!(
        "[[tenants]]\nname = \"{name}\"\n{}\n{policy}",
        hash_line(key)
    )
}

/// An edge node that would send every prompt to the (fake) cloud, with `extra` TOML.
async fn edge(cloud: &FakeCloud, extra: String) -> NodeProcess {
    let links = EdgeLinks {
        cloud: Some(cloud.url.clone()),
        extra,
        ..EdgeLinks::default()
    };
    let toml = edge_toml(&links, Gate::CloudFirst, std::time::Duration::from_secs(2));
    NodeProcess::start("edge", &toml).await.unwrap()
}

fn chat_body(model: &str) -> Value {
    json!({
        "model": model, "max_tokens": 8,
        "messages": [{"role": "user", "content": PROMPT}],
    })
}

async fn chat_as(node: &NodeProcess, key: Option<&str>, body: &Value) -> HttpReply {
    let bearer = key.map(|key| format!("Bearer {key}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("authorization", bearer.as_str()));
    }
    http_send(
        http::Method::POST,
        &format!("{}/v1/chat/completions", node.http_url()),
        &headers,
        serde_json::to_vec(body).unwrap(),
    )
    .await
    .unwrap()
}

async fn grpc_as(
    node: &NodeProcess,
    header: Option<(&'static str, String)>,
    message: pb::GenerateRequest,
) -> Result<tonic::Response<pb::GenerateResponse>, tonic::Status> {
    let mut client = node.grpc_client().await.unwrap();
    let mut call = tonic::Request::new(message);
    if let Some((name, value)) = header {
        call.metadata_mut().insert(name, value.parse().unwrap());
    }
    client.generate(call).await
}

fn bearer(key: &str) -> Option<(&'static str, String)> {
    Some(("authorization", format!("Bearer {key}")))
}

#[tokio::test]
async fn a_bad_or_missing_key_is_refused_on_both_apis_and_a_good_one_served() {
    let cloud = FakeCloud::start().await.unwrap();
    // One key from `tiergate keys new`, as an operator would make it.
    let out = Command::new(tiergate_bin())
        .args(["keys", "new", "--tenant", "fresh", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    let fresh_key = made["key"].as_str().unwrap().to_owned();
    let fresh = format!(
        "[[tenants]]\nname = \"fresh\"\nkey_sha256 = [\"{}\"]\n",
        made["key_sha256"].as_str().unwrap()
    );
    let node = edge(&cloud, tenant("a", KEY_A, "") + &fresh).await;
    let body = chat_body("tiergate");

    for (key, why) in [
        (None, "missing"),
        (Some("tg_not-a-key-0123456789"), "wrong"),
    ] {
        let reply = chat_as(&node, key, &body).await;
        assert_eq!(reply.status, 401, "{why}: {}", reply.text());
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        let error = &reply.json().unwrap()["error"];
        assert_eq!(error["type"], "authentication_error");
        assert!(!reply.text().contains("not-a-key"), "the key was echoed");
    }
    let reply = http_send(
        http::Method::GET,
        &format!("{}/v1/models", node.http_url()),
        &[("authorization", "Basic dXNlcjpwYXNz")],
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert_eq!(cloud.faults.calls(), 0);

    let reply = chat_as(&node, Some(KEY_A), &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = chat_as(&node, Some(&fresh_key), &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(cloud.faults.calls(), 2);
    // Probes and metrics need no key.
    assert_eq!(
        get(&format!("{}/healthz", node.http_url()))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        get(&format!("{}/readyz", node.http_url()))
            .await
            .unwrap()
            .status,
        200
    );

    for header in [
        None,
        bearer("tg_not-a-key-0123456789"),
        Some(("authorization", KEY_A.to_owned())),
    ] {
        let status = grpc_as(&node, header.clone(), request(PROMPT))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{header:?}");
        assert!(!status.message().contains("not-a-key"));
    }
    let answer = grpc_as(&node, bearer(KEY_A), request(PROMPT))
        .await
        .unwrap();
    assert!(!answer.into_inner().text.is_empty());
    grpc_as(
        &node,
        Some(("x-api-key", fresh_key.clone())),
        request(PROMPT),
    )
    .await
    .unwrap();

    let text = metrics_text(&node).await.unwrap();
    let failures = |reason| {
        metric(&text, "tiergate_auth_failures_total", &[("reason", reason)]).unwrap_or(0.0)
    };
    assert_eq!(failures("missing"), 2.0, "{text}");
    assert_eq!(failures("unknown_key"), 2.0, "{text}");
    assert_eq!(failures("malformed"), 2.0, "{text}");
}

#[tokio::test]
async fn a_tenant_at_its_rate_limit_gets_429_while_another_is_served_in_full() {
    let cloud = FakeCloud::start().await.unwrap();
    let tenants = tenant("a", KEY_A, "requests_per_second = 1.0\nburst = 2\n")
        + &tenant("b", KEY_B, "requests_per_second = 100.0\nburst = 10\n")
        // One request a hundred seconds: its second call is refused however slow the test.
        + &tenant("c", KEY_C, "requests_per_second = 0.01\nburst = 1\n");
    let node = edge(&cloud, tenants).await;
    let body = chat_body("tiergate");

    // Tenant A and tenant B, six requests each, all at once.
    let sends = (0..12).map(|i| {
        let key = if i % 2 == 0 { KEY_A } else { KEY_B };
        let (node, body) = (&node, &body);
        async move { (key, chat_as(node, Some(key), body).await) }
    });
    let replies = futures::future::join_all(sends).await;
    let count = |key: &str, status: u16| {
        replies
            .iter()
            .filter(|(k, reply)| *k == key && reply.status == status)
            .count()
    };
    assert_eq!(count(KEY_A, 200), 2, "exactly tenant A's burst is served");
    assert_eq!(count(KEY_A, 429), 4);
    assert_eq!(count(KEY_B, 200), 6, "tenant B is not held back by A");
    for (_, reply) in replies.iter().filter(|(_, r)| r.status == 429) {
        let wait: u64 = reply.header("retry-after").unwrap().parse().unwrap();
        assert!(wait >= 1, "{wait}");
        let error = &reply.json().unwrap()["error"];
        assert_eq!(error["type"], "rate_limited");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("requests_per_second")
        );
    }
    assert_eq!(
        cloud.faults.calls(),
        8,
        "only served requests reach the provider"
    );

    // gRPC: tenant C's one request goes, the next is RESOURCE_EXHAUSTED with retry-after.
    grpc_as(&node, bearer(KEY_C), request(PROMPT))
        .await
        .unwrap();
    let status = grpc_as(&node, bearer(KEY_C), request(PROMPT))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let wait: u64 = status
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=100).contains(&wait), "{wait}");
    grpc_as(&node, bearer(KEY_B), request(PROMPT))
        .await
        .unwrap();

    let text = metrics_text(&node).await.unwrap();
    let outcome = |tenant, outcome| {
        metric(
            &text,
            "tiergate_tenant_requests_total",
            &[("tenant", tenant), ("outcome", outcome)],
        )
    };
    assert_eq!(outcome("a", "rate_limited"), Some(4.0), "{text}");
    assert_eq!(outcome("a", "accepted"), Some(2.0), "{text}");
    assert_eq!(outcome("b", "accepted"), Some(7.0), "{text}");
    assert_eq!(outcome("b", "rate_limited"), Some(0.0), "{text}");
    assert_eq!(outcome("c", "rate_limited"), Some(1.0), "{text}");
}

#[tokio::test]
async fn an_edge_pinned_tenant_never_reaches_the_upstream_and_keeps_to_its_models() {
    let cloud = FakeCloud::start().await.unwrap();
    let tenants = tenant(
        "pinned",
        KEY_A,
        "allowed_tiers = [\"edge\"]\nallowed_models = [\"tiergate\"]\n",
    ) + &tenant("open", KEY_B, "");
    let node = edge(&cloud, tenants).await;
    let body = chat_body("tiergate");

    let reply = chat_as(&node, Some(KEY_A), &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-tiergate-tier"), Some("edge"));
    assert_eq!(reply.header("x-tiergate-reason"), Some("tier_constraint"));
    let answer = grpc_as(&node, bearer(KEY_A), request(PROMPT))
        .await
        .unwrap();
    assert_eq!(
        answer.into_inner().routing.unwrap().tier,
        pb::Tier::Edge as i32
    );
    // Asking for the cloud outright is refused, not sent.
    let mut to_cloud = chat_body("tiergate");
    to_cloud["tiergate"] = json!({"tier_constraint": "at_least_cloud"});
    let reply = chat_as(&node, Some(KEY_A), &to_cloud).await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(reply.text().contains("tenant `pinned`"), "{}", reply.text());
    assert_eq!(
        cloud.faults.calls(),
        0,
        "the pinned tenant's prompt reached the provider"
    );

    // The same prompt from a tenant without the pin goes to the cloud.
    let reply = chat_as(&node, Some(KEY_B), &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-tiergate-tier"), Some("cloud"));
    assert_eq!(cloud.faults.calls(), 1);

    // A model outside allowed_models: 403 / PERMISSION_DENIED; the list shows only its own.
    let reply = chat_as(&node, Some(KEY_A), &chat_body("tiergate-edge")).await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(reply.json().unwrap()["error"]["type"], "permission_denied");
    let mut local = request(PROMPT);
    local.model = "tiergate-edge".to_owned();
    let status = grpc_as(&node, bearer(KEY_A), local.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let answer = grpc_as(&node, bearer(KEY_B), local).await.unwrap();
    assert_eq!(
        answer.into_inner().routing.unwrap().tier,
        pb::Tier::Edge as i32
    );
    let models = http_send(
        http::Method::GET,
        &format!("{}/v1/models", node.http_url()),
        &[("authorization", format!("Bearer {KEY_A}").as_str())],
        Vec::new(),
    )
    .await
    .unwrap()
    .json()
    .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["tiergate"]);
    assert_eq!(cloud.faults.calls(), 1);
}

#[tokio::test]
async fn a_tenants_cached_answer_is_never_served_to_another_tenant() {
    let cloud = FakeCloud::start().await.unwrap();
    let extra = tenant("a", KEY_A, "")
        + &tenant("b", KEY_B, "")
        + "[cache]\nenabled = true\nmode = \"always\"\nttl = \"1h\"\n";
    let node = edge(&cloud, extra).await;
    let body = chat_body("tiergate");

    let reply = chat_as(&node, Some(KEY_A), &body).await;
    assert_eq!(
        reply.header("x-tiergate-tier"),
        Some("cloud"),
        "{}",
        reply.text()
    );
    assert_eq!(cloud.faults.calls(), 1);
    // The store happens off the request path.
    let stored = |text: &str| {
        metric(
            text,
            "tiergate_cache_requests_total",
            &[("result", "stored")],
        )
    };
    let text = metrics_text_once(&node, std::time::Duration::from_secs(5), |text| {
        stored(text) >= Some(1.0)
    })
    .await
    .unwrap();
    assert!(stored(&text) >= Some(1.0), "never stored");
    // Tenant A asks again: its own cached answer.
    let reply = chat_as(&node, Some(KEY_A), &body).await;
    assert_eq!(
        reply.header("x-tiergate-cache"),
        Some("hit"),
        "{}",
        reply.text()
    );
    assert_eq!(cloud.faults.calls(), 1);
    // Tenant B asks the same: not A's answer, a call of its own.
    let reply = chat_as(&node, Some(KEY_B), &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-tiergate-cache"), None);
    assert_eq!(cloud.faults.calls(), 2);
}

async fn preflight(node: &NodeProcess, origin: &str) -> HttpReply {
    http_send(
        http::Method::OPTIONS,
        &format!("{}/v1/chat/completions", node.http_url()),
        &[
            ("origin", origin),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization, content-type",
            ),
        ],
        Vec::new(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn cors_answers_preflights_only_when_configured() {
    const ORIGIN: &str = "https://app.example.com";
    let cloud = FakeCloud::start().await.unwrap();
    let cors = format!("[server.cors]\nallowed_origins = [\"{ORIGIN}\"]\n");
    let with_cors = edge(&cloud, cors + &tenant("a", KEY_A, "")).await;
    let without = edge(&cloud, tenant("a", KEY_A, "")).await;

    // Configured: the preflight is answered (no key needed), a cross-origin answer is readable.
    let reply = preflight(&with_cors, ORIGIN).await;
    assert!(reply.status.is_success(), "{}", reply.status);
    assert_eq!(reply.header("access-control-allow-origin"), Some(ORIGIN));
    let allowed = reply
        .header("access-control-allow-headers")
        .unwrap()
        .to_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );
    let reply = http_send(
        http::Method::POST,
        &format!("{}/v1/chat/completions", with_cors.http_url()),
        &[
            ("content-type", "application/json"),
            ("authorization", format!("Bearer {KEY_A}").as_str()),
            ("origin", ORIGIN),
        ],
        serde_json::to_vec(&chat_body("tiergate")).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("access-control-allow-origin"), Some(ORIGIN));
    let exposed = reply
        .header("access-control-expose-headers")
        .unwrap_or_default();
    assert!(exposed.contains("x-tiergate-tier"), "{exposed}");
    // Another origin gets nothing to go on.
    let reply = preflight(&with_cors, "https://evil.example").await;
    assert_eq!(reply.header("access-control-allow-origin"), None);

    // Not configured: no CORS headers at all, preflight or not.
    let reply = preflight(&without, ORIGIN).await;
    assert!(!reply.status.is_success(), "{}", reply.status);
    assert!(
        reply
            .headers
            .keys()
            .all(|name| !name.as_str().starts_with("access-control-")),
        "{:?}",
        reply.headers
    );
    let reply = http_send(
        http::Method::GET,
        &format!("{}/healthz", without.http_url()),
        &[("origin", ORIGIN)],
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn a_peer_node_forwards_without_a_tenant_key_while_clients_need_one() {
    use tiergate_e2e::node_toml;
    // The regional node has tenants; the edge (none) forwards with the deployment's peer key.
    let regional_toml = node_toml(
        "regional-1",
        "regional",
        "regional",
        None,
        None,
        Gate::Commit,
    ) + &tenant("a", KEY_A, "");
    let regional = NodeProcess::start("regional", &regional_toml)
        .await
        .unwrap();
    let edge_toml = node_toml(
        "edge-1",
        "edge",
        "edge",
        Some(&regional),
        None,
        Gate::RegionalFirst,
    );
    let edge = NodeProcess::start("edge", &edge_toml).await.unwrap();

    let answer = grpc_as(&edge, None, request(PROMPT))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.routing.unwrap().tier, pb::Tier::Regional as i32);
    // A client calling the regional node itself needs a key.
    let status = grpc_as(&regional, None, request(PROMPT)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    grpc_as(&regional, bearer(KEY_A), request(PROMPT))
        .await
        .unwrap();
}
