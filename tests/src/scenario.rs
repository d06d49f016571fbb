//! Building blocks of the resilience scenarios: an edge node whose upstreams carry short,
//! test-sized timeouts, a regional node that answers with its own model, a fake cloud that
//! fails on demand, and readers of what a client gets back.

use std::time::{Duration, Instant};

use futures::StreamExt;
use tiergate_bench::fake_upstream::{self, Faults};
use tiergate_proto::v1 as pb;
use tokio::task::JoinHandle;

use crate::{Gate, HttpReply, Launch, NodeProcess, node_toml, post_json};

/// The timeouts every scenario gives the edge's upstream links: short, so that a stall costs
/// the test a fraction of a second, yet far above what a healthy loopback peer needs.
pub const FIRST_TOKEN_TIMEOUT: Duration = Duration::from_millis(300);

/// A fake OpenAI-compatible cloud on 127.0.0.1, failing as its [`Faults`] say.
#[derive(Debug)]
pub struct FakeCloud {
    pub url: String,
    pub faults: Faults,
    task: JoinHandle<std::io::Result<()>>,
}

impl Drop for FakeCloud {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeCloud {
    pub async fn start() -> anyhow::Result<FakeCloud> {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST.into()).await
    }

    /// [`FakeCloud::start`] on `ip` (e.g. the host's end of a test's network namespace).
    pub async fn start_on(ip: std::net::IpAddr) -> anyhow::Result<FakeCloud> {
        let (listener, addr) = fake_upstream::bind(std::net::SocketAddr::new(ip, 0)).await?;
        let faults = Faults::default();
        let task = tokio::spawn(fake_upstream::serve_with_faults(listener, faults.clone()));
        Ok(FakeCloud {
            url: format!("http://{addr}/v1"),
            faults,
            task,
        })
    }
}

/// A regional node whose own model answers every request (no upstream of its own).
pub async fn regional_node() -> anyhow::Result<NodeProcess> {
    regional_node_launched(&Launch::default()).await
}

/// [`regional_node`], launched as `launch` says (e.g. in a network namespace).
pub async fn regional_node_launched(launch: &Launch) -> anyhow::Result<NodeProcess> {
    NodeProcess::launch(
        "regional",
        &node_toml(
            "regional-1",
            "regional",
            "regional",
            None,
            None,
            Gate::Commit,
        ),
        launch,
    )
    .await
}

/// `EdgeLinks::failures_to_open` for links whose breaker never opens (streak and error-rate
/// triggers off), for tests that count what every call does.
pub const NEVER_OPEN: u32 = u32::MAX;

/// Upstream links of an edge node under test.
#[derive(Debug, Clone, Default)]
pub struct EdgeLinks {
    /// gRPC URL of the regional tier.
    pub regional: Option<String>,
    /// Base URL (ending in /v1) of the cloud tier.
    pub cloud: Option<String>,
    /// Consecutive failures that open a breaker.
    pub failures_to_open: u32,
    /// Extra TOML appended as is (e.g. a `[budget]` or `[limits]` section).
    pub extra: String,
    /// The cloud link's first-token timeout; [`FIRST_TOKEN_TIMEOUT`] when unset.
    pub cloud_first_token: Option<Duration>,
}

/// An edge node on the toy model with no tier above it, `extra` TOML appended (its `[server]`
/// settings, say).
pub async fn lone_edge(extra: String) -> anyhow::Result<NodeProcess> {
    let links = EdgeLinks {
        extra,
        ..EdgeLinks::default()
    };
    start_edge(&links, Gate::Default).await
}

/// A regional node from `regional_config` and an edge that asks it first, both logging at
/// `info` (their logs are what request-id and trace tests read).
pub async fn logged_edge_over_regional(
    regional_config: &str,
) -> anyhow::Result<(NodeProcess, NodeProcess)> {
    let regional = NodeProcess::start_logged("regional", regional_config, "info").await?;
    let links = EdgeLinks {
        regional: Some(regional.grpc_url()),
        failures_to_open: 5,
        ..EdgeLinks::default()
    };
    let edge = NodeProcess::start_logged(
        "edge",
        &edge_toml(&links, Gate::RegionalFirst, Duration::from_secs(2)),
        "info",
    )
    .await?;
    Ok((edge, regional))
}

/// An edge node with `links` and `gate`, its regional link at the 2 s first-token timeout a
/// healthy regional node needs ([`edge_toml`]).
pub async fn start_edge(links: &EdgeLinks, gate: Gate) -> anyhow::Result<NodeProcess> {
    NodeProcess::start("edge", &edge_toml(links, gate, Duration::from_secs(2))).await
}

/// The TOML of an edge node with `links` and `gate`. The regional link gets a first-token
/// timeout of 2 s, since a real regional node holds its first token back for its own commit
/// window; a test that stalls the regional tier sets `regional_first_token`.
pub fn edge_toml(links: &EdgeLinks, gate: Gate, regional_first_token: Duration) -> String {
    let failures = if links.failures_to_open == NEVER_OPEN {
        "0\nerror_rate_threshold = 0.0".to_owned()
    } else {
        links.failures_to_open.max(1).to_string()
    };
    let mut toml =
        "[node]\nname = \"edge-1\"\ntier = \"edge\"\n[engine]\nmodel_dir = \"models/edge\"\n"
            .to_owned();
    if let Some(regional) = &links.regional {
        toml.push_str(&format!(
            "[upstreams.regional]\nendpoints = [\"{regional}\"]\nhealth_check_interval = \"100ms\"\n\
             connect_timeout = \"300ms\"\nfirst_token_timeout = \"{}ms\"\nstall_timeout = \"300ms\"\n\
             [upstreams.regional.health]\nconsecutive_failures = {failures}\nopen_duration = \"500ms\"\n",
            regional_first_token.as_millis()
        ));
    }
    if let Some(cloud) = &links.cloud {
        toml.push_str(&format!(
            "[upstreams.cloud]\nbase_url = \"{cloud}\"\nmodel = \"tiergate\"\n\
             connect_timeout = \"300ms\"\nfirst_token_timeout = \"{}ms\"\nstall_timeout = \"300ms\"\n\
             [upstreams.cloud.health]\nconsecutive_failures = {failures}\nopen_duration = \"500ms\"\n",
            links
                .cloud_first_token
                .unwrap_or(FIRST_TOKEN_TIMEOUT)
                .as_millis()
        ));
    }
    toml.push_str(gate.router_toml());
    toml.push_str(&links.extra);
    toml
}

/// A prompt the real model answers at length: greedy, it counts on for hundreds of tokens, so
/// one answer keeps its engine busy for seconds, long enough to leave it or stop the node
/// under it.
pub const LONG_PROMPT: &str =
    "Count from 1 to 1000, one number after another, separated by commas.";
/// Room for [`LONG_PROMPT`]'s answer: 13 s of the int4 graph at 2 threads here.
pub const LONG_MAX_TOKENS: u32 = 1500;
/// A node's `[limits]` that admit [`LONG_MAX_TOKENS`] (the default stops at 512) and give a
/// request a minute.
pub const LONG_ANSWER_LIMITS: &str = "[limits]\ndefault_timeout = \"60s\"\nmax_new_tokens = 1500\n";

/// The config of an edge node answering from the real model's int4 graph alone (no tier above
/// it), with `extra` TOML after it.
pub fn real_edge_toml(model: &std::path::Path, extra: &str) -> String {
    format!(
        "[node]\nname = \"edge-1\"\ntier = \"edge\"\n[engine]\nmodel_dir = \"{}\"\n\
         variant = \"int4\"\n{extra}",
        model.display()
    )
}

/// A greedy gRPC request for [`LONG_PROMPT`]'s long answer.
pub fn long_request() -> pb::GenerateRequest {
    let mut long = request(LONG_PROMPT);
    long.params = Some(pb::GenerationParams {
        max_new_tokens: LONG_MAX_TOKENS,
        temperature: Some(0.0),
        ..Default::default()
    });
    long
}

/// A greedy chat completion request's body for `prompt`.
pub fn chat_body(prompt: &str, max_tokens: u32, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "tiergate",
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        "messages": [{"role": "user", "content": prompt}],
    })
}

/// A generation request for `prompt`.
pub fn request(prompt: &str) -> pb::GenerateRequest {
    pb::GenerateRequest {
        prompt: prompt.to_owned(),
        params: Some(pb::GenerationParams {
            max_new_tokens: 16,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What a streamed gRPC call gave the client.
#[derive(Debug, Default)]
pub struct GrpcStreamed {
    pub routed: Option<pb::RoutingInfo>,
    pub text: String,
    pub done: Option<pb::GenerateResponse>,
    pub status: Option<tonic::Status>,
    pub elapsed: Duration,
}

impl GrpcStreamed {
    /// The tier that answered, from the routing the stream opened with.
    pub fn tier(&self) -> Option<pb::Tier> {
        self.routed
            .as_ref()
            .and_then(|r| pb::Tier::try_from(r.tier).ok())
    }
}

/// Streams `prompt` from `node` over gRPC with `timeout`, reading to the end.
pub async fn grpc_stream(
    node: &NodeProcess,
    prompt: &str,
    timeout: Duration,
) -> anyhow::Result<GrpcStreamed> {
    let started = Instant::now();
    let mut client = node.grpc_client().await?;
    let mut req = tonic::Request::new(request(prompt));
    req.set_timeout(timeout);
    let mut out = GrpcStreamed::default();
    let mut stream = match client.generate_stream(req).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            out.status = Some(status);
            out.elapsed = started.elapsed();
            return Ok(out);
        }
    };
    use pb::generate_stream_response::Event;
    while let Some(message) = stream.next().await {
        match message {
            Ok(message) => match message.event {
                Some(Event::Routed(routing)) => out.routed = Some(routing),
                Some(Event::Delta(delta)) => out.text.push_str(&delta.text),
                Some(Event::Done(done)) => out.done = Some(done),
                None => {}
            },
            Err(status) => {
                out.status = Some(status);
                break;
            }
        }
    }
    out.elapsed = started.elapsed();
    Ok(out)
}

/// What an SSE answer gave the client.
#[derive(Debug)]
pub struct SseAnswer {
    pub reply: HttpReply,
    pub text: String,
    /// The `finish_reason` of the last content chunk, when one came.
    pub finish_reason: Option<String>,
    /// The error event, when one came.
    pub error: Option<serde_json::Value>,
    pub elapsed: Duration,
}

/// Posts a streamed chat completion for `prompt` to `node` and reads the SSE body.
pub async fn sse_chat(node: &NodeProcess, prompt: &str) -> anyhow::Result<SseAnswer> {
    let started = Instant::now();
    let url = format!("{}/v1/chat/completions", node.http_url());
    let body = serde_json::json!({
        "model": "tiergate",
        "max_tokens": 16,
        "stream": true,
        "messages": [{"role": "user", "content": prompt}],
    });
    let reply = post_json(&url, &body).await?;
    let elapsed = started.elapsed();
    let SseEvents {
        text,
        finish_reason,
        error,
    } = sse_events(&reply.text())?;
    Ok(SseAnswer {
        reply,
        text,
        finish_reason,
        error,
        elapsed,
    })
}

/// What the `data:` events of an SSE chat completion say.
#[derive(Debug, Default)]
pub struct SseEvents {
    pub text: String,
    /// The `finish_reason` of the last content chunk, when one came.
    pub finish_reason: Option<String>,
    /// The error event, when one came.
    pub error: Option<serde_json::Value>,
}

/// Reads the events of an SSE chat completion's body (whole, or as far as it came).
pub fn sse_events(stream: &str) -> anyhow::Result<SseEvents> {
    let mut events = SseEvents::default();
    for line in stream.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            continue;
        }
        let chunk: serde_json::Value = serde_json::from_str(line)?;
        if chunk.get("error").is_some() {
            events.error = Some(chunk["error"].clone());
            continue;
        }
        if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
            events.text.push_str(piece);
        }
        if let Some(reason) = chunk["choices"][0]["finish_reason"].as_str() {
            events.finish_reason = Some(reason.to_owned());
        }
    }
    Ok(events)
}

/// Whether an SSE stream so far carries some answer text (not only the role chunk's empty
/// content).
pub fn sse_has_text(stream: &str) -> bool {
    let key = "\"content\":\"";
    stream
        .match_indices(key)
        .any(|(at, _)| !stream[at + key.len()..].starts_with('"'))
}

/// POSTs `body` as JSON and returns the response as soon as its head arrives, for the caller
/// to read the body as it streams.
pub async fn post_streamed(
    url: &str,
    body: &serde_json::Value,
) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))?;
    Ok(crate::http_client().request(request).await?)
}

/// Posts a whole (non-streamed) chat completion for `prompt` to `node`.
pub async fn unary_chat(node: &NodeProcess, prompt: &str) -> anyhow::Result<(HttpReply, Duration)> {
    let started = Instant::now();
    let url = format!("{}/v1/chat/completions", node.http_url());
    let body = serde_json::json!({
        "model": "tiergate",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": prompt}],
    });
    let reply = post_json(&url, &body).await?;
    Ok((reply, started.elapsed()))
}

/// Asks `node` for a short whole answer every 250 ms while a client that stopped reading holds
/// its only admission slot (`max_concurrent_requests = 1`): each ask is shed with 503 until the
/// node frees the slot. Returns how many were shed and when, after `since`, one was served; fails
/// if none is within `patience`.
pub async fn shed_until_served(
    node: &NodeProcess,
    since: Instant,
    patience: Duration,
) -> anyhow::Result<(u32, Duration)> {
    let mut shed = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (reply, _) = unary_chat(node, "what is the capital of france").await?;
        if reply.status == 200 {
            return Ok((shed, since.elapsed()));
        }
        anyhow::ensure!(reply.status == 503, "{}: {}", reply.status, reply.text());
        shed += 1;
        anyhow::ensure!(
            since.elapsed() < patience,
            "the client that stopped reading still held its slot after {patience:?}"
        );
    }
}
