//! `tiergate demo`: three nodes on loopback in one process (edge, regional, and a cloud
//! stand-in serving the OpenAI-compatible API), a mixed workload sent to the edge over gRPC,
//! and a table of where each prompt went and why.

mod table;
mod workload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tiergate_engine::{ModelVariant, VariantChoice};
use tiergate_proto::v1 as pb;
use tiergate_proto::v1::inference_client::InferenceClient;
use tiergate_router::tier::Tier;
use tiergate_upstream::{CloudConfig, RegionalConfig};

pub use table::{print_table, print_usage};
pub use workload::{DemoPrompt, REAL_WORKLOAD, TOY_WORKLOAD};

use crate::config::{Config, ConfigError};
use crate::serve::{RunningNode, StartError, start_node};

/// Where the demo finds its models.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The toy models' folder (`edge`, `regional`): the fast test fixtures.
    pub models_dir: PathBuf,
    /// The real model folder (SmolLM2-135M-Instruct): when set, the edge runs the graph `auto`
    /// picks for this CPU (`auto`: int4-fast on x86-64 without AVX-512, and with AVX-512 where
    /// `edge_config` has a gate for this CPU kind; int4 elsewhere) with the gates of
    /// `edge_config`, and the regional tier and the cloud stand-in its fp32 graph.
    pub real_model: Option<PathBuf>,
    /// The edge node's config file for the real model (its calibrated `[router]`), e.g.
    /// deploy/edge.toml; node name, ports, model and upstreams are set by the demo.
    pub edge_config: Option<PathBuf>,
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

/// Which model and graph a demo node runs.
struct NodeModel {
    dir: PathBuf,
    variant: VariantChoice,
}

impl DemoOptions {
    fn model_for(&self, tier: Tier) -> NodeModel {
        match (&self.real_model, tier) {
            (Some(dir), Tier::Edge) => NodeModel {
                dir: dir.clone(),
                variant: VariantChoice::Auto,
            },
            (Some(dir), _) => NodeModel {
                dir: dir.clone(),
                variant: ModelVariant::Fp32.into(),
            },
            (None, Tier::Edge) => NodeModel {
                dir: self.models_dir.join("edge"),
                variant: ModelVariant::Fp32.into(),
            },
            (None, _) => NodeModel {
                dir: self.models_dir.join("regional"),
                variant: ModelVariant::Fp32.into(),
            },
        }
    }

    /// The prompts that show what this set of models does.
    pub fn workload(&self) -> &'static [DemoPrompt] {
        if self.real_model.is_some() {
            REAL_WORKLOAD
        } else {
            TOY_WORKLOAD
        }
    }
}

fn node_config(
    options: &DemoOptions,
    name: &str,
    tier: Tier,
    offset: u16,
) -> Result<Config, ConfigError> {
    let mut config = match (&options.edge_config, &options.real_model, tier) {
        (Some(file), Some(_), Tier::Edge) => Config::load(Some(file))?,
        _ => Config::default(),
    };
    config.node.name = name.to_owned();
    config.node.tier = tier;
    let model = options.model_for(tier);
    config.engine.model_dir = model.dir;
    config.engine.variant = model.variant;
    config.engine.ort_library.clone_from(&options.ort_library);
    config.server.grpc_listen = ([127, 0, 0, 1], port(options.base_port, offset)).into();
    config.server.http_listen = ([127, 0, 0, 1], port(options.base_port, offset + 1)).into();
    // Nobody watches the demo's nodes from outside: no need to wait before closing.
    config.server.drain_delay = std::time::Duration::ZERO;
    config.upstreams = crate::config::UpstreamsSection::default();
    if options.real_model.is_some() && tier == Tier::Regional {
        // The demo has one real model: the regional tier runs its fp32 graph and answers what
        // reaches it (no gate of its own), where a real deployment would run a larger model.
        config.router.confidence.commit_window = 0;
    }
    Ok(config)
}

/// Starts cloud, then regional (forwarding to cloud), then edge (forwarding to regional, with
/// the cloud as its fallback).
pub async fn start_demo_nodes(options: &DemoOptions) -> Result<DemoNodes, StartError> {
    let cloud = start_node(node_config(options, "cloud-standin", Tier::Cloud, 20)?).await?;
    let cloud_url = format!("http://{}/v1", cloud.http_addr);

    let mut regional_config = node_config(options, "regional-1", Tier::Regional, 10)?;
    regional_config.upstreams.cloud = Some(CloudConfig::new(cloud_url.clone(), "tiergate"));
    let regional = start_node(regional_config).await?;

    let mut edge_config = node_config(options, "edge-1", Tier::Edge, 0)?;
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
pub async fn run_workload(
    edge_grpc: std::net::SocketAddr,
    workload: &[DemoPrompt],
) -> anyhow::Result<Vec<DemoRow>> {
    let mut client = InferenceClient::connect(format!("http://{edge_grpc}")).await?;
    let mut rows = Vec::new();
    for item in workload {
        let mut request = tonic::Request::new(pb::GenerateRequest {
            prompt: item.prompt.to_owned(),
            params: Some(pb::GenerationParams {
                max_new_tokens: 32,
                ..Default::default()
            }),
            tier_constraint: item.constraint as i32,
            ..Default::default()
        });
        request.set_timeout(Duration::from_secs(60));
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
