//! SIGTERM to a regional node that an edge node watches, under steady load through the edge:
//! the regional node turns NOT_SERVING at once, the edge stops planning it within the drain
//! delay (before the regional node refuses anything), no client request fails or even pays for
//! a failed upstream attempt, and the regional process exits inside its drain timeout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tiergate_e2e::scenario::{EdgeLinks, edge_toml, request};
use tiergate_e2e::{Gate, NodeProcess, get, metric, metrics_text, node_toml, post_json};
use tiergate_proto::v1 as pb;
use tokio::sync::Mutex;

const DRAIN_DELAY: Duration = Duration::from_secs(2);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const PROMPT: &str = "what is the capital of france";

/// One client request's outcome, as the client saw it.
#[derive(Debug, Clone)]
struct Outcome {
    at: Instant,
    ok: bool,
    tier: String,
    reason: String,
    detail: String,
}

fn regional_toml() -> String {
    let mut toml = node_toml(
        "regional-1",
        "regional",
        "regional",
        None,
        None,
        Gate::Commit,
    );
    toml.push_str(&format!(
        "[server]\ndrain_delay = \"{}ms\"\ndrain_timeout = \"{}ms\"\n",
        DRAIN_DELAY.as_millis(),
        DRAIN_TIMEOUT.as_millis()
    ));
    toml
}

async fn http_once(edge_url: &str) -> Outcome {
    let body = serde_json::json!({
        "model": "tiergate",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": PROMPT}],
    });
    let at = Instant::now();
    match post_json(&format!("{edge_url}/v1/chat/completions"), &body).await {
        Ok(reply) => Outcome {
            at,
            ok: reply.status == 200,
            tier: reply.header("x-tiergate-tier").unwrap_or("").to_owned(),
            reason: reply.header("x-tiergate-reason").unwrap_or("").to_owned(),
            detail: format!("http {}: {}", reply.status, reply.text()),
        },
        Err(err) => Outcome {
            at,
            ok: false,
            tier: String::new(),
            reason: String::new(),
            detail: format!("http error: {err:#}"),
        },
    }
}

async fn grpc_once(
    client: &mut pb::inference_client::InferenceClient<tonic::transport::Channel>,
) -> Outcome {
    let at = Instant::now();
    let mut req = request(PROMPT);
    if let Some(params) = req.params.as_mut() {
        params.max_new_tokens = 8;
    }
    match client.generate(req).await {
        Ok(response) => {
            let routing = response.into_inner().routing.unwrap_or_default();
            let tier = match pb::Tier::try_from(routing.tier) {
                Ok(pb::Tier::Edge) => "edge",
                Ok(pb::Tier::Regional) => "regional",
                Ok(pb::Tier::Cloud) => "cloud",
                _ => "",
            }
            .to_owned();
            Outcome {
                at,
                ok: true,
                tier,
                reason: routing.reason,
                detail: "grpc ok".to_owned(),
            }
        }
        Err(status) => Outcome {
            at,
            ok: false,
            tier: String::new(),
            reason: String::new(),
            detail: format!("grpc {status:?}"),
        },
    }
}

#[tokio::test]
async fn sigterm_drains_a_watched_regional_node_without_a_failed_request() {
    let mut regional = NodeProcess::start("regional", &regional_toml())
        .await
        .unwrap();
    let links = EdgeLinks {
        regional: Some(regional.grpc_url()),
        failures_to_open: 3,
        ..EdgeLinks::default()
    };
    let edge = NodeProcess::start(
        "edge",
        &edge_toml(&links, Gate::RegionalFirst, Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let edge_url = edge.http_url();

    // The edge plans the regional tier before the test starts.
    let warm_until = Instant::now() + Duration::from_secs(30);
    loop {
        let outcome = http_once(&edge_url).await;
        if outcome.ok && outcome.tier == "regional" {
            break;
        }
        assert!(
            Instant::now() < warm_until,
            "regional never answered: {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Steady load: three HTTP clients and one gRPC client, back to back.
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let running = Arc::new(AtomicBool::new(true));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (outcomes, running, url) = (outcomes.clone(), running.clone(), edge_url.clone());
        clients.push(tokio::spawn(async move {
            while running.load(Ordering::SeqCst) {
                let outcome = http_once(&url).await;
                outcomes.lock().await.push(outcome);
            }
        }));
    }
    {
        let (outcomes, running) = (outcomes.clone(), running.clone());
        let mut client = edge.grpc_client().await.unwrap();
        clients.push(tokio::spawn(async move {
            while running.load(Ordering::SeqCst) {
                let outcome = grpc_once(&mut client).await;
                outcomes.lock().await.push(outcome);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let sigterm = Instant::now();
    regional.terminate().unwrap();

    // The regional node says NOT_SERVING on /readyz while it still answers.
    let readyz = format!("{}/readyz", regional.http_url());
    let mut saw_not_ready = false;
    while sigterm.elapsed() < DRAIN_DELAY {
        if let Ok(reply) = get(&readyz).await
            && reply.status == 503
        {
            saw_not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let not_ready_after = sigterm.elapsed();

    // The edge stops planning it: its link to the regional tier reads unavailable.
    let mut unplanned_after = None;
    while sigterm.elapsed() < DRAIN_DELAY + DRAIN_TIMEOUT {
        let text = metrics_text(&edge).await.unwrap();
        if metric(
            &text,
            "tiergate_upstream_available",
            &[("upstream", "regional")],
        ) == Some(0.0)
        {
            unplanned_after = Some(sigterm.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let status = regional
        .wait_exit(DRAIN_DELAY + DRAIN_TIMEOUT + Duration::from_secs(5))
        .await
        .unwrap();
    let exited_after = sigterm.elapsed();

    // A little more load on the edge alone, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.store(false, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    let outcomes = outcomes.lock().await.clone();
    let before = outcomes.iter().filter(|o| o.at < sigterm).count();
    let by_regional_before = outcomes
        .iter()
        .filter(|o| o.at < sigterm && o.tier == "regional")
        .count();
    let by_edge_after_exit = outcomes
        .iter()
        .filter(|o| o.at > sigterm + exited_after && o.tier == "edge")
        .count();
    eprintln!(
        "drain: {} requests ({before} before SIGTERM, {by_regional_before} of them by regional; \
         {by_edge_after_exit} by the edge after the exit); /readyz 503 after {not_ready_after:?}, \
         edge unplanned regional after {unplanned_after:?}, process exited after {exited_after:?}",
        outcomes.len()
    );

    assert!(
        saw_not_ready,
        "/readyz never said 503 during the drain delay"
    );
    let unplanned_after = unplanned_after.expect("the edge kept planning the regional tier");
    assert!(
        unplanned_after < DRAIN_DELAY,
        "the edge took {unplanned_after:?} to stop planning the regional tier"
    );
    let status = status.expect("the regional process outlived its drain timeout");
    assert!(status.success(), "regional exited with {status}");
    assert!(
        exited_after >= DRAIN_DELAY,
        "exited after {exited_after:?}, before its drain delay"
    );
    assert!(
        exited_after < DRAIN_DELAY + DRAIN_TIMEOUT,
        "{exited_after:?}"
    );

    let failed: Vec<_> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.detail.as_str())
        .collect();
    assert!(failed.is_empty(), "failed client requests: {failed:#?}");
    // Not even a hidden failure: the edge never sent a request the regional node refused.
    let retried: Vec<_> = outcomes
        .iter()
        .filter(|o| o.reason == "upstream_failed")
        .collect();
    assert!(retried.is_empty(), "upstream attempts failed: {retried:#?}");
    assert!(by_regional_before > 0, "{outcomes:#?}");
    assert!(by_edge_after_exit > 0, "{outcomes:#?}");
}
