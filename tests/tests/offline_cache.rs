//! The offline response cache, against real `tiergate serve` processes: an edge node restarted
//! with every upstream down still answers a request it saw before the restart with the stored
//! upstream answer (labelled as a hit), and anything else with its own degraded answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::Path;
use std::time::{Duration, Instant};

use tiergate_e2e::faults::{FaultProxy, ProxyMode};
use tiergate_e2e::scenario::{EdgeLinks, edge_toml, regional_node, request, sse_chat, unary_chat};
use tiergate_e2e::{Gate, NodeProcess, metric, metrics_text};

const SEEN: &str = "what is the capital of france";
const UNSEEN: &str = "name a large river in europe";
const SEEN_GRPC: &str = "list three primary colours";

fn edge_config(regional: &str, cache: &Path) -> String {
    edge_config_in_mode(regional, cache, "offline")
}

fn edge_config_in_mode(regional: &str, cache: &Path, mode: &str) -> String {
    let links = EdgeLinks {
        regional: Some(regional.to_owned()),
        failures_to_open: 1,
        extra: format!(
            "[cache]\nenabled = true\npath = \"{}\"\nttl = \"1h\"\nmode = \"{mode}\"\n",
            cache.display()
        ),
        ..EdgeLinks::default()
    };
    edge_toml(&links, Gate::RegionalFirst, Duration::from_secs(2))
}

async fn cache_count(edge: &NodeProcess, result: &str) -> f64 {
    let text = metrics_text(edge).await.unwrap();
    metric(
        &text,
        "tiergate_cache_requests_total",
        &[("result", result)],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn an_edge_restarted_offline_serves_what_it_saw_before_from_its_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("edge-cache.redb");
    let regional = regional_node().await.unwrap();
    let proxy = FaultProxy::start(regional.grpc, ProxyMode::Pass)
        .await
        .unwrap();

    // Online: the regional tier answers, and the edge keeps its answers.
    let edge = NodeProcess::start("edge", &edge_config(&proxy.url(), &cache))
        .await
        .unwrap();
    let (reply, _) = unary_chat(&edge, SEEN).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-tiergate-tier"), Some("regional"));
    assert_eq!(reply.header("x-tiergate-cache"), None);
    let online = reply.json().unwrap();
    let online_text = online["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!online_text.is_empty());
    let mut grpc = edge.grpc_client().await.unwrap();
    let online_grpc = grpc.generate(request(SEEN_GRPC)).await.unwrap();
    assert!(online_grpc.metadata().get("x-tiergate-cache").is_none());
    let online_grpc_text = online_grpc.into_inner().text;
    // Stores go to disk off the request path: wait until both are committed.
    let waited = Instant::now();
    while cache_count(&edge, "stored").await < 2.0 {
        assert!(waited.elapsed() < Duration::from_secs(5), "never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    edge.stop().await.unwrap();

    // Every upstream gone; the edge restarts with the same cache file.
    proxy.set(ProxyMode::Refuse);
    regional.stop().await.unwrap();
    let edge = NodeProcess::start("edge", &edge_config(&proxy.url(), &cache))
        .await
        .unwrap();

    // The request seen before: the stored regional answer, labelled, whole and streamed.
    let started = Instant::now();
    let (reply, elapsed) = unary_chat(&edge, SEEN).await.unwrap();
    eprintln!("cache hit (unary) after a restart offline: {elapsed:?}");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-tiergate-cache"), Some("hit"));
    assert_eq!(reply.header("x-tiergate-tier"), Some("regional"));
    assert_eq!(reply.header("x-tiergate-reason"), Some("cache_hit"));
    assert_eq!(reply.header("x-tiergate-degraded"), Some("true"));
    let body = reply.json().unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        online_text.as_str()
    );
    assert_eq!(body["tiergate"]["cache"], "hit");
    assert_eq!(body["tiergate"]["tier"], "regional");
    let streamed = sse_chat(&edge, SEEN).await.unwrap();
    assert_eq!(streamed.reply.header("x-tiergate-cache"), Some("hit"));
    assert_eq!(streamed.text, online_text);
    assert_eq!(streamed.finish_reason.as_deref(), Some("stop"));
    let hit = grpc_hit(&edge).await;
    assert_eq!(hit, online_grpc_text);
    assert!(started.elapsed() < Duration::from_secs(10));

    // A request never seen: the edge's own answer, degraded, no cache label.
    let (reply, _) = unary_chat(&edge, UNSEEN).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-tiergate-tier"), Some("edge"));
    assert_eq!(reply.header("x-tiergate-degraded"), Some("true"));
    assert_eq!(reply.header("x-tiergate-cache"), None);
    assert!(reply.json().unwrap()["tiergate"].get("cache").is_none());

    let text = metrics_text(&edge).await.unwrap();
    let count = |result| {
        metric(
            &text,
            "tiergate_cache_requests_total",
            &[("result", result)],
        )
    };
    assert_eq!(count("hit"), Some(3.0), "{text}");
    assert_eq!(count("miss"), Some(1.0), "{text}");
    assert_eq!(count("error"), Some(0.0), "{text}");
    assert_eq!(metric(&text, "tiergate_cache_entries", &[]), Some(2.0));
    assert_eq!(
        metric(
            &text,
            "tiergate_requests_total",
            &[
                ("tier", "regional"),
                ("reason", "cache_hit"),
                ("outcome", "ok")
            ]
        ),
        Some(3.0)
    );
}

/// The gRPC answer for [`SEEN_GRPC`], which must be a labelled cache hit.
async fn grpc_hit(edge: &NodeProcess) -> String {
    let mut client = edge.grpc_client().await.unwrap();
    let mut req = tonic::Request::new(request(SEEN_GRPC));
    req.set_timeout(Duration::from_secs(5));
    let response = client.generate(req).await.unwrap();
    assert_eq!(
        response
            .metadata()
            .get("x-tiergate-cache")
            .map(|v| v.to_str().unwrap()),
        Some("hit")
    );
    let answer = response.into_inner();
    let routing = answer.routing.clone().unwrap();
    assert_eq!(routing.reason, "cache_hit");
    assert!(routing.degraded);
    answer.text
}

/// `mode = "always"`: a request seen before is answered from the cache while the regional tier
/// is up, without calling it, and the answer is not degraded. Sampled requests are never
/// stored.
#[tokio::test]
async fn in_always_mode_a_hit_saves_the_upstream_call() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("edge-cache.redb");
    let regional = regional_node().await.unwrap();
    let edge = NodeProcess::start(
        "edge",
        &edge_config_in_mode(&regional.grpc_url(), &cache, "always"),
    )
    .await
    .unwrap();
    let (first, _) = unary_chat(&edge, SEEN).await.unwrap();
    assert_eq!(first.header("x-tiergate-tier"), Some("regional"));
    let waited = Instant::now();
    while cache_count(&edge, "stored").await < 1.0 {
        assert!(waited.elapsed() < Duration::from_secs(5), "never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (second, _) = unary_chat(&edge, SEEN).await.unwrap();
    assert_eq!(second.header("x-tiergate-cache"), Some("hit"));
    assert_eq!(second.header("x-tiergate-tier"), Some("regional"));
    assert_eq!(second.header("x-tiergate-degraded"), Some("false"));
    assert_eq!(
        second.json().unwrap()["choices"][0]["message"]["content"],
        first.json().unwrap()["choices"][0]["message"]["content"]
    );

    // A sampled request goes upstream every time and is never stored.
    let url = format!("{}/v1/chat/completions", edge.http_url());
    let sampled = serde_json::json!({
        "model": "tiergate",
        "max_tokens": 16,
        "temperature": 0.8,
        "messages": [{"role": "user", "content": SEEN}],
    });
    for _ in 0..2 {
        let reply = tiergate_e2e::post_json(&url, &sampled).await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header("x-tiergate-cache"), None);
    }
    // Asking for logprobs (greedy, the stored prompt): the cache has text only, so the request
    // neither reads nor writes it, and the answer carries them.
    let with_logprobs = serde_json::json!({
        "model": "tiergate",
        "max_tokens": 16,
        "logprobs": true,
        "messages": [{"role": "user", "content": SEEN}],
    });
    for _ in 0..2 {
        let reply = tiergate_e2e::post_json(&url, &with_logprobs).await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header("x-tiergate-cache"), None);
        let content = &reply.json().unwrap()["choices"][0]["logprobs"]["content"];
        assert!(
            content.as_array().is_some_and(|c| !c.is_empty()),
            "{content}"
        );
    }
    let text = metrics_text(&edge).await.unwrap();
    assert_eq!(
        metric(
            &text,
            "tiergate_upstream_requests_total",
            &[("upstream", "regional"), ("outcome", "ok")]
        ),
        Some(5.0),
        "the hit made no upstream call: {text}"
    );
    assert_eq!(
        metric(
            &text,
            "tiergate_cache_requests_total",
            &[("result", "stored")]
        ),
        Some(1.0)
    );
}

/// A cache file that is not a cache (disk trouble, a wrong path) never stops the node serving:
/// it starts, counts the error, moves the file aside and stores into a fresh one.
#[tokio::test]
async fn an_unreadable_cache_file_does_not_stop_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("edge-cache.redb");
    std::fs::write(&cache, b"not a redb file, just bytes".repeat(100)).unwrap();
    let regional = regional_node().await.unwrap();
    let edge = NodeProcess::start("edge", &edge_config(&regional.grpc_url(), &cache))
        .await
        .unwrap();
    let (reply, _) = unary_chat(&edge, SEEN).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-tiergate-tier"), Some("regional"));
    let waited = Instant::now();
    while cache_count(&edge, "stored").await < 1.0 {
        assert!(waited.elapsed() < Duration::from_secs(5), "never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cache_count(&edge, "error").await, 1.0);
    assert!(dir.path().join("edge-cache.redb.unreadable").exists());
}
