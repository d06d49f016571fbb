//! `tiergate demo`: three nodes on loopback in one process (edge, regional, and a cloud
//! stand-in serving the OpenAI-compatible API), a mixed workload sent to the edge over gRPC,
//! and a table of where each prompt went and why.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tiergate_proto::v1 as pb;
use tiergate_proto::v1::inference_client::InferenceClient;
use tiergate_router::tier::Tier;
use tiergate_upstream::{CloudConfig, RegionalConfig};

use crate::config::Config;
use crate::serve::{RunningNode, StartError, start_node};

/// One prompt of the demo workload.
#[derive(Debug, Clone, Copy)]
pub struct DemoPrompt {
    pub kind: &'static str,
    pub prompt: &'static str,
    pub constraint: pb::TierConstraint,
}

/// The mixed workload: in-domain, harder, open-ended and privacy-pinned prompts.
pub const WORKLOAD: &[DemoPrompt] = &[
    DemoPrompt {
        kind: "in-domain",
        prompt: "turn on the kitchen lights",
        constraint: pb::TierConstraint::Unspecified,
    },
    DemoPrompt {
        kind: "in-domain",
        prompt: "what is 12 plus 7",
        constraint: pb::TierConstraint::Unspecified,
    },
    DemoPrompt {
        kind: "in-domain",
        prompt: "convert 5 kilometers to meters",
        constraint: pb::TierConstraint::Unspecified,
    },
    DemoPrompt {
        kind: "in-domain",
        prompt: "hello",
        constraint: pb::TierConstraint::Unspecified,
    },
    DemoPrompt {
        kind: "harder",
        prompt: "which one is heavier, a mouse or a horse",
        constraint: pb::TierConstraint::Unspecified,
    },
    DemoPrompt {
        kind: "harder",
        prompt: "Rosa had 18 apples and found 4 more. how many apples does Rosa have now",
        constraint: pb::TierConstraint::Unspecified,
    },
    DemoPrompt {
        kind: "harder",
        prompt: "what is 17 times 23 minus 45",
        constraint: pb::TierConstraint::Unspecified,
    },
    DemoPrompt {
        kind: "harder",
        prompt: "tell me what a volcano is",
        constraint: pb::TierConstraint::Unspecified,
    },
    DemoPrompt {
        kind: "open-ended",
        prompt: "Write a detailed essay comparing the economic policies of the Roman Republic and the early Roman Empire, step by step, with examples.",
        constraint: pb::TierConstraint::Unspecified,
    },
    DemoPrompt {
        kind: "open-ended",
        prompt: "Prove that there are infinitely many prime numbers, then explain how the proof generalises.",
        constraint: pb::TierConstraint::Unspecified,
    },
    DemoPrompt {
        kind: "privacy",
        prompt: "unlock the front door",
        constraint: pb::TierConstraint::EdgeOnly,
    },
    DemoPrompt {
        kind: "privacy",
        prompt: "summarise my medical history for the doctor",
        constraint: pb::TierConstraint::EdgeOnly,
    },
];

/// Where the demo finds its models.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub models_dir: PathBuf,
    pub ort_library: Option<PathBuf>,
    /// Fixed ports for a demo that keeps serving (so the printed commands work); 0 picks free ones.
    pub base_port: u16,
}

/// The three running nodes.
#[derive(Debug)]
pub struct DemoNodes {
    pub edge: RunningNode,
    pub regional: RunningNode,
    pub cloud: RunningNode,
}

impl DemoNodes {
    pub async fn shutdown(self) {
        self.edge.shutdown().await;
        self.regional.shutdown().await;
        self.cloud.shutdown().await;
    }
}

fn port(base: u16, offset: u16) -> u16 {
    if base == 0 { 0 } else { base + offset }
}

fn node_config(options: &DemoOptions, name: &str, tier: Tier, model: &str, offset: u16) -> Config {
    let mut config = Config::default();
    config.node.name = name.to_owned();
    config.node.tier = tier;
    config.engine.model_dir = options.models_dir.join(model);
    config.engine.ort_library.clone_from(&options.ort_library);
    config.server.grpc_listen = ([127, 0, 0, 1], port(options.base_port, offset)).into();
    config.server.http_listen = ([127, 0, 0, 1], port(options.base_port, offset + 1)).into();
    config
}

/// Starts cloud, then regional (forwarding to cloud), then edge (forwarding to regional, with
/// the cloud as its fallback).
pub async fn start_demo_nodes(options: &DemoOptions) -> Result<DemoNodes, StartError> {
    let cloud = start_node(node_config(
        options,
        "cloud-standin",
        Tier::Cloud,
        "regional",
        20,
    ))
    .await?;
    let cloud_url = format!("http://{}/v1", cloud.http_addr);

    let mut regional_config = node_config(options, "regional-1", Tier::Regional, "regional", 10);
    regional_config.upstreams.cloud = Some(CloudConfig::new(cloud_url.clone(), "tiergate"));
    let regional = start_node(regional_config).await?;

    let mut edge_config = node_config(options, "edge-1", Tier::Edge, "edge", 0);
    edge_config.upstreams.regional = Some(RegionalConfig::new(vec![format!(
        "http://{}",
        regional.grpc_addr
    )]));
    edge_config.upstreams.cloud = Some(CloudConfig::new(cloud_url, "tiergate"));
    let edge = start_node(edge_config).await?;
    Ok(DemoNodes {
        edge,
        regional,
        cloud,
    })
}

/// One row of the demo table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoRow {
    pub kind: String,
    pub prompt: String,
    pub tier: String,
    pub reason: String,
    pub complexity: f64,
    pub local_confidence: Option<f64>,
    pub degraded: bool,
    pub latency_ms: f64,
    pub answer: String,
}

/// Sends the workload to the edge over gRPC and collects where each prompt went.
pub async fn run_workload(edge_grpc: std::net::SocketAddr) -> anyhow::Result<Vec<DemoRow>> {
    let mut client = InferenceClient::connect(format!("http://{edge_grpc}")).await?;
    let mut rows = Vec::new();
    for item in WORKLOAD {
        let mut request = tonic::Request::new(pb::GenerateRequest {
            prompt: item.prompt.to_owned(),
            params: Some(pb::GenerationParams {
                max_new_tokens: 32,
                ..Default::default()
            }),
            tier_constraint: item.constraint as i32,
            ..Default::default()
        });
        request.set_timeout(Duration::from_secs(30));
        let started = Instant::now();
        let response = client.generate(request).await?.into_inner();
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let routing = response.routing.unwrap_or_default();
        rows.push(DemoRow {
            kind: item.kind.to_owned(),
            prompt: item.prompt.to_owned(),
            tier: pb::Tier::try_from(routing.tier)
                .map_or("?", |t| match t {
                    pb::Tier::Edge => "edge",
                    pb::Tier::Regional => "regional",
                    pb::Tier::Cloud => "cloud",
                    pb::Tier::Unspecified => "?",
                })
                .to_owned(),
            reason: routing.reason,
            complexity: routing.complexity,
            local_confidence: routing.local_confidence,
            degraded: routing.degraded,
            latency_ms,
            answer: response.text,
        });
    }
    Ok(rows)
}

fn clip(text: &str, width: usize) -> String {
    let one_line = text.replace('\n', " ");
    if one_line.chars().count() <= width {
        one_line
    } else {
        let cut: String = one_line.chars().take(width.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// Prints the table of where each prompt went.
pub fn print_table(out: &mut impl Write, rows: &[DemoRow]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<10} {:<40} {:<9} {:<20} {:>6} {:>6} {:>5} {:>8}  answer",
        "kind", "prompt", "tier", "reason", "cmplx", "conf", "degr", "ms"
    )?;
    for row in rows {
        writeln!(
            out,
            "{:<10} {:<40} {:<9} {:<20} {:>6.3} {:>6} {:>5} {:>8.1}  {}",
            row.kind,
            clip(&row.prompt, 40),
            row.tier,
            row.reason,
            row.complexity,
            row.local_confidence
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.3}")),
            if row.degraded { "yes" } else { "no" },
            row.latency_ms,
            clip(&row.answer, 48),
        )?;
    }
    Ok(())
}

/// How to call the nodes while the demo keeps serving.
pub fn print_usage(out: &mut impl Write, nodes: &DemoNodes, repo: &Path) -> std::io::Result<()> {
    let http = nodes.edge.http_addr;
    let grpc = nodes.edge.grpc_addr;
    writeln!(out)?;
    writeln!(out, "The three nodes keep serving (Ctrl-C stops them):")?;
    writeln!(
        out,
        "  edge      gRPC {}  HTTP {}",
        nodes.edge.grpc_addr, nodes.edge.http_addr
    )?;
    writeln!(
        out,
        "  regional  gRPC {}  HTTP {}",
        nodes.regional.grpc_addr, nodes.regional.http_addr
    )?;
    writeln!(
        out,
        "  cloud     gRPC {}  HTTP {}  (stand-in for a real provider)",
        nodes.cloud.grpc_addr, nodes.cloud.http_addr
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "curl (OpenAI wire format; routing in x-tiergate-* headers and the `tiergate` field):"
    )?;
    writeln!(
        out,
        "  curl -si http://{http}/v1/chat/completions -H 'content-type: application/json' \\"
    )?;
    writeln!(
        out,
        "    -d '{{\"model\":\"tiergate\",\"messages\":[{{\"role\":\"user\",\"content\":\"turn on the kitchen lights\"}}]}}'"
    )?;
    writeln!(
        out,
        "  curl -s http://{http}/metrics | grep tiergate_requests_total"
    )?;
    writeln!(out)?;
    writeln!(out, "gRPC (grpcurl uses server reflection):")?;
    writeln!(
        out,
        "  grpcurl -plaintext -d '{{\"prompt\":\"what is 12 plus 7\"}}' {grpc} tiergate.v1.Inference/Generate"
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "OpenAI Python client (`pip install openai`, or .venv/test/bin/python after `make test`):"
    )?;
    writeln!(
        out,
        "  python3 -c 'from openai import OpenAI; c = OpenAI(base_url=\"http://{http}/v1\", api_key=\"unused\"); \\"
    )?;
    writeln!(
        out,
        "    print(c.chat.completions.create(model=\"tiergate\", messages=[{{\"role\":\"user\",\"content\":\"hello\"}}]).choices[0].message.content)'"
    )?;
    writeln!(out)?;
    writeln!(out, "The routing decision alone:")?;
    writeln!(
        out,
        "  {}/target/debug/tiergate route explain --json \"explain why the sky is blue\"",
        repo.display()
    )?;
    Ok(())
}
