//! A device profile's budget breach, seen the way an operator sees it: a node whose memory
//! budget (1 MiB) no process can meet shows `tiergate_device_budget_breached{budget="memory"} 1`
//! on /metrics and `breached: true` in `GET /v1/report`, and warns exactly once however many
//! checks find the breach. The profile's engine settings are in force where the config left
//! them unset, and an explicit setting wins. (Config mistakes in `[device]`:
//! `crates/tiergate/tests/config_validate.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use tiergate_bench::fake_upstream::Fault;
use tiergate_e2e::scenario::{EdgeLinks, FakeCloud, edge_toml};
use tiergate_e2e::{Gate, NodeProcess, get, metric, metrics_text, node_toml};

const BREACH_WARNING: &str = "device budget breached";

#[tokio::test]
async fn a_tiny_memory_budget_is_breached_once_and_shows_everywhere() {
    let mut config = node_toml("edge-1", "edge", "edge", None, None, Gate::Commit);
    // `mobile_device` asks for int4, which the toy model lacks: the device field overrides it;
    // `max_tokens` stays the profile's (96); `[limits] default_max_new_tokens` is set
    // explicitly and wins over what the profile would derive.
    config.push_str(
        "[device]\nprofile = \"mobile_device\"\nvariant = \"fp32\"\nmemory_budget_mb = 1\n\
         check_interval = \"50ms\"\n[limits]\ndefault_max_new_tokens = 20\n",
    );
    let node = NodeProcess::start_logged("edge", &config, "info")
        .await
        .unwrap();

    // The monitor's first check comes at once; wait for the gauge.
    let until = Instant::now() + Duration::from_secs(10);
    let mut text = metrics_text(&node).await.unwrap();
    while metric(
        &text,
        "tiergate_device_budget_breached",
        &[("budget", "memory")],
    ) != Some(1.0)
        && Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = metrics_text(&node).await.unwrap();
    }
    assert_eq!(
        metric(
            &text,
            "tiergate_device_budget_breached",
            &[("budget", "memory")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "tiergate_device_budget", &[("budget", "memory")]),
        Some(1024.0 * 1024.0)
    );
    // The profile's latency budget (5 s) is set and, with no request yet, met.
    assert_eq!(
        metric(&text, "tiergate_device_budget", &[("budget", "latency")]),
        Some(5.0)
    );
    assert_eq!(
        metric(
            &text,
            "tiergate_device_budget_breached",
            &[("budget", "latency")]
        ),
        Some(0.0)
    );
    let rss = metric(&text, "tiergate_device_rss_bytes", &[]).unwrap();
    assert!(rss > 1024.0 * 1024.0, "{rss}");
    assert_eq!(metric(&text, "tiergate_engine_queue_depth", &[]), Some(0.0));

    // Many more checks (every 50 ms) while the breach lasts: still one warning.
    let checks_later = Instant::now() + Duration::from_millis(800);
    while Instant::now() < checks_later {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = node.logs();
    assert_eq!(
        logs.matches(BREACH_WARNING).count(),
        1,
        "expected one breach warning:\n{logs}"
    );
    assert!(
        logs.contains("device profile"),
        "the profile is logged at start"
    );

    // The report says the same, with the profile and the model's constraints in force.
    let reply = get(&format!("{}/v1/report", node.http_url()))
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let report = reply.json().unwrap();
    assert_eq!(report["node"], "edge-1");
    assert_eq!(report["profile"]["profile"], "mobile_device");
    assert_eq!(report["profile"]["memory_budget_mb"], 1);
    assert_eq!(report["profile"]["latency_budget_ms"], 5000);
    let model = &report["models"][0];
    assert_eq!(model["variant"], "fp32");
    assert_eq!(model["max_tokens"], 96);
    assert_eq!(model["default_max_tokens"], 20);
    assert!(model["context_length"].as_u64().unwrap() <= 512, "{model}");
    let compliance = report["compliance"].as_array().unwrap();
    let memory = compliance.iter().find(|c| c["budget"] == "memory").unwrap();
    assert_eq!(memory["breached"], true, "{report}");
    assert!(memory["measured"].as_f64().unwrap() > 1024.0 * 1024.0);
    let latency = compliance
        .iter()
        .find(|c| c["budget"] == "latency")
        .unwrap();
    assert_eq!(latency["breached"], false, "{report}");
    assert!(report["performance"]["rss_bytes"].as_u64().unwrap() > 0);

    // A request over the profile's max_tokens is refused, as any over the limit is.
    let reply = tiergate_e2e::post_json(
        &format!("{}/v1/chat/completions", node.http_url()),
        &serde_json::json!({
            "model": "tiergate",
            "max_tokens": 97,
            "messages": [{"role": "user", "content": "hello"}],
        }),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 400, "{}", reply.text());
}

/// Local generation stops at `stop_at_budget_share` of the latency budget and says so. On the
/// real model (tens of tokens per second here), a long answer cannot finish in 3 s while the
/// prompt's prefill takes a fraction of that; the toy model is too fast to tell. Skips without
/// `TIERGATE_REAL_MODEL` unless `TIERGATE_REQUIRE_REAL_MODEL=1`.
#[tokio::test]
async fn generation_stops_at_the_latency_budget_and_says_so() {
    let Some(model) = tiergate_e2e::real_model_dir() else {
        return;
    };
    let mut config = format!(
        "[node]\nname = \"edge-1\"\ntier = \"edge\"\n[engine]\nmodel_dir = \"{}\"\n\
         [limits]\nmax_new_tokens = 400\n\
         [device]\nprofile = \"raspberry_pi\"\nlatency_budget_ms = 3000\nstop_at_budget_share = 1.0\n",
        model.display()
    );
    config.push_str(Gate::Commit.router_toml());
    let node = NodeProcess::start("edge", &config).await.unwrap();
    let reply = tiergate_e2e::post_json(
        &format!("{}/v1/chat/completions", node.http_url()),
        &serde_json::json!({
            "model": "tiergate",
            "max_tokens": 400,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Write a long, detailed story about a dragon who learns to bake bread."}],
        }),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-tiergate-budget-stop"), Some("latency"));
    let body = reply.json().unwrap();
    assert_eq!(body["choices"][0]["finish_reason"], "length", "{body}");
    assert_eq!(
        body["tiergate"]["finish_reason"], "latency_budget",
        "{body}"
    );
    assert_eq!(body["tiergate"]["budget_stop"], "latency", "{body}");
    let tokens = body["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(tokens > 0 && tokens < 400, "{tokens}");
}

/// The latency budget counts from the request's arrival at the node, not from the start of the
/// local step: when the cloud step first stalls until its first-token timeout (1.5 s) and the
/// node falls back to its own model, local generation gets only what is left of the 4 s budget,
/// so the whole answer comes within about 4 s (counted from the local step, it took 5.5 s).
/// Streamed, since a streamed upstream step is the one cut at its first-token timeout. Real
/// model only, as above.
#[tokio::test]
async fn the_latency_budget_counts_from_arrival_not_from_the_local_step() {
    let Some(model) = tiergate_e2e::real_model_dir() else {
        return;
    };
    let cloud = FakeCloud::start().await.unwrap();
    cloud.faults.set(Fault::StallBeforeHeaders);
    let links = EdgeLinks {
        cloud: Some(cloud.url.clone()),
        cloud_first_token: Some(Duration::from_millis(1500)),
        extra: "[limits]\nmax_new_tokens = 400\n\
                [device]\nprofile = \"raspberry_pi\"\nlatency_budget_ms = 4000\nstop_at_budget_share = 1.0\n"
            .to_owned(),
        ..EdgeLinks::default()
    };
    let config = edge_toml(&links, Gate::CloudFirst, Duration::from_secs(2)).replace(
        "model_dir = \"models/edge\"",
        &format!("model_dir = \"{}\"", model.display()),
    );
    let node = NodeProcess::start("edge", &config).await.unwrap();
    let started = Instant::now();
    let reply = tiergate_e2e::post_json(
        &format!("{}/v1/chat/completions", node.http_url()),
        &serde_json::json!({
            "model": "tiergate",
            "max_tokens": 400,
            "temperature": 0,
            "stream": true,
            "messages": [{"role": "user", "content": "Write a long, detailed story about a dragon who learns to bake bread."}],
        }),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert_eq!(reply.status, 200, "after {took:?}: {}", reply.text());
    assert_eq!(cloud.faults.calls(), 1, "the cloud step was tried first");
    let chunks: Vec<serde_json::Value> = reply
        .text()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|l| *l != "[DONE]")
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!text.is_empty(), "after {took:?}: {}", reply.text());
    let last = chunks.iter().rev().find(|c| c.get("tiergate").is_some());
    let tiergate = &last.unwrap()["tiergate"];
    assert_eq!(tiergate["tier"], "edge", "{tiergate}");
    assert_eq!(tiergate["budget_stop"], "latency", "{tiergate}");
    // 4 s of budget plus the answer's own overhead; the local step's full 4 s after the 1.5 s
    // stall would be 5.5 s.
    assert!(took < Duration::from_millis(4800), "took {took:?}");
}
