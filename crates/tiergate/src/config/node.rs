//! The node's TOML configuration. Every field has a default that serves the demo's edge node;
//! `docs/configuration.md` documents each one.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use tiergate_engine::EngineConfig;
use tiergate_router::tier::Tier;
use tiergate_router::{BudgetConfig, RetryBudgetConfig, RouterConfig};
use tiergate_upstream::{CloudConfig, RegionalConfig};

use super::{ConfigError, from_value, load_with, process_env};
use crate::auth::TenantConfig;
use crate::cache::CacheConfig;
use crate::device::{DeviceSection, apply_to_table};
use crate::model_trust::ModelTrustConfig;
use crate::node::{HedgeConfig, Limits};
use crate::privacy::PrivacyConfig;
use crate::shell::CorsConfig;
use crate::telemetry::TelemetryConfig;
use crate::tls::ServerTls;

/// The whole configuration of one node.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeSection,
    pub server: ServerSection,
    pub limits: Limits,
    pub engine: EngineConfig,
    pub router: RouterConfig,
    /// How a request's deadline is split across the steps of its routing plan.
    pub budget: BudgetConfig,
    /// How much extra upstream load failovers may add.
    pub retry: RetryBudgetConfig,
    /// When an upstream step slow to its first token is hedged by the next one.
    pub hedge: HedgeConfig,
    pub upstreams: UpstreamsSection,
    /// The offline response cache.
    pub cache: CacheConfig,
    /// The privacy guard: personal data keeps a request on the node, or is redacted upstream.
    pub privacy: PrivacyConfig,
    /// Model signatures and the periodic integrity check.
    pub model_trust: ModelTrustConfig,
    /// API keys and what each tenant may do; empty: no authentication.
    pub tenants: Vec<TenantConfig>,
    /// The device profile: budgets (monitored) and engine settings (defaults).
    pub device: DeviceSection,
    /// Trace export over OTLP (off by default).
    pub telemetry: TelemetryConfig,
}

/// Who this node is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// Shown in every answer's routing and in metrics' `node` label.
    pub name: String,
    /// The tier the node's local model serves as: "edge", "regional" or "cloud".
    pub tier: Tier,
    /// The model id clients ask for to let the router choose the tier.
    pub routed_model: String,
    /// A file holding the deployment's peer key: a forwarded gRPC request's forwarding
    /// information (hop count, tiers tried) is trusted only when it carries this key or comes
    /// over mTLS with a verified client certificate; otherwise it is ignored.
    pub peer_key_file: Option<std::path::PathBuf>,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            name: "edge-1".to_owned(),
            tier: Tier::Edge,
            routed_model: "tiergate".to_owned(),
            peer_key_file: None,
        }
    }
}

/// Where the node listens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// gRPC (Inference, Health, reflection). Port 0 picks a free port.
    pub grpc_listen: SocketAddr,
    /// HTTP (OpenAI API, /metrics, /healthz, /readyz). Port 0 picks a free port.
    pub http_listen: SocketAddr,
    /// TLS on both listeners; absent: plaintext (loopback and trusted networks only).
    pub tls: Option<ServerTls>,
    /// On SIGTERM/SIGINT the node reports NOT_SERVING (gRPC health, `/readyz`) and keeps
    /// serving this long, so that watchers (edge nodes, load balancers, Kubernetes) move their
    /// traffic before it refuses any. At least one health-check interval of its watchers.
    #[serde(with = "crate::config::duration")]
    pub drain_delay: Duration,
    /// Then new requests get a retryable 503 / UNAVAILABLE and in-flight ones have this long
    /// to finish before the node exits anyway.
    #[serde(with = "crate::config::duration")]
    pub drain_timeout: Duration,
    /// Inference requests in flight at once, HTTP and gRPC together (streams count until their
    /// last chunk). One more is refused at once with 503 / UNAVAILABLE and `Retry-After`.
    pub max_concurrent_requests: usize,
    /// The `Retry-After` a refused request is given (whole seconds, at least 1).
    #[serde(with = "crate::config::duration")]
    pub retry_after: Duration,
    /// An HTTP/1 client must send a request's whole header within this time, or the connection
    /// is closed (slow-header clients hold no connection for long).
    #[serde(with = "crate::config::duration")]
    pub header_read_timeout: Duration,
    /// An inference request's body must arrive whole within this of its head (HTTP 408, gRPC
    /// DEADLINE_EXCEEDED otherwise): a client that trickles its body, or goes silent after its
    /// headers, holds its admission slot no longer.
    #[serde(with = "crate::config::duration")]
    pub body_read_timeout: Duration,
    /// A new connection must finish its TLS handshake (or, in plaintext, send its first bytes)
    /// within this, or it is closed: a peer that connects and never speaks holds nothing.
    #[serde(with = "crate::config::duration")]
    pub handshake_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection (gRPC and HTTP/2 clients).
    pub max_concurrent_streams: u32,
    /// A client that vanished without closing its connection (a half-open connection: power
    /// loss, a dropped route) is found by probes: an HTTP/2 PING after this long without a
    /// frame from it (gRPC and HTTP/2), TCP keepalive probes after this long idle (HTTP/1 too).
    /// Its requests are then cancelled like those of a client that left.
    #[serde(with = "crate::config::duration")]
    pub keepalive_interval: Duration,
    /// An HTTP/2 PING not acknowledged within this closes the connection.
    #[serde(with = "crate::config::duration")]
    pub keepalive_timeout: Duration,
    /// Data for a client may stay unsent (its TCP window closed: it stopped reading but keeps
    /// the connection) or unacknowledged this long before the connection is reset, ending the
    /// answer and freeing its admission slot (TCP_USER_TIMEOUT; Linux).
    #[serde(with = "crate::config::duration")]
    pub send_timeout: Duration,
    /// CORS on the HTTP listener; absent: no CORS headers (browsers refuse cross-origin calls).
    pub cors: Option<CorsConfig>,
    /// The node reports itself not ready (`/readyz`, gRPC health, `tiergate_ready`) while its
    /// engine has had work this long without moving (`Engine::stalled_for`): a worker stuck in
    /// a forward pass, so that watchers send their traffic elsewhere until it moves again.
    #[serde(with = "crate::config::duration")]
    pub engine_stall_timeout: Duration,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: None,
            drain_delay: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            max_concurrent_requests: 256,
            retry_after: Duration::from_secs(1),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_concurrent_streams: 128,
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(60),
            cors: None,
            engine_stall_timeout: Duration::from_secs(30),
        }
    }
}

/// The tiers above this node; either may be absent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamsSection {
    pub regional: Option<RegionalConfig>,
    pub cloud: Option<CloudConfig>,
}

/// Fills the engine and limit settings that `[engine]` / `[limits]` leave unset from the device
/// profile (precedence in `crate::device`'s profile docs).
fn apply_device_profile(table: &mut toml::Table) -> Result<(), ConfigError> {
    let Some(device) = table.get("device").cloned() else {
        return Ok(());
    };
    let device: DeviceSection = from_value(device, "device.")?;
    device.validate().map_err(|message| ConfigError::Invalid {
        path: "device".to_owned(),
        message,
    })?;
    apply_to_table(table, &device);
    Ok(())
}

impl Config {
    /// Defaults, then `file`, then `TIERGATE__…` variables from the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let config: Config = load_with(file, process_env()?, apply_device_profile)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks that hold across fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |path: &str, message: &str| ConfigError::Invalid {
            path: path.to_owned(),
            message: message.to_owned(),
        };
        if self.node.name.trim().is_empty() {
            return Err(invalid("node.name", "must not be empty"));
        }
        if self.node.routed_model.trim().is_empty() {
            return Err(invalid("node.routed_model", "must not be empty"));
        }
        if let Err((path, message)) = self.telemetry.validate() {
            return Err(invalid(path, &message));
        }
        if self.server.max_concurrent_requests == 0 {
            return Err(invalid(
                "server.max_concurrent_requests",
                "must be at least 1",
            ));
        }
        if self.server.max_concurrent_streams == 0 {
            return Err(invalid(
                "server.max_concurrent_streams",
                "must be at least 1",
            ));
        }
        for (name, value) in [
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.body_read_timeout", self.server.body_read_timeout),
            ("server.send_timeout", self.server.send_timeout),
            ("server.handshake_timeout", self.server.handshake_timeout),
            ("server.keepalive_interval", self.server.keepalive_interval),
            (
                "server.tls.reload_interval",
                self.server
                    .tls
                    .as_ref()
                    .map_or(Duration::MAX, |tls| tls.reload_interval),
            ),
            ("server.keepalive_timeout", self.server.keepalive_timeout),
            (
                "server.engine_stall_timeout",
                self.server.engine_stall_timeout,
            ),
        ] {
            if value.is_zero() {
                return Err(invalid(name, "must be above 0"));
            }
        }
        if self.limits.default_max_new_tokens > self.limits.max_new_tokens {
            return Err(invalid(
                "limits.default_max_new_tokens",
                "is larger than limits.max_new_tokens",
            ));
        }
        self.router.validate().map_err(|err| ConfigError::Invalid {
            path: format!("router.{}", err.field),
            message: err.problem,
        })?;
        // A misspelt graph name or CPU kind would leave its gate unused without a word
        // (`tiergate model cpu` prints this machine's kind).
        let graph = |path: String, name: &str| {
            name.parse::<tiergate_engine::ModelVariant>()
                .map(drop)
                .map_err(|message| invalid(&path, &message))
        };
        for variant in self.router.confidence_by_variant.keys() {
            graph(format!("router.confidence_by_variant.{variant}"), variant)?;
        }
        for (cpu, gates) in &self.router.confidence_by_cpu {
            cpu.parse::<tiergate_engine::Int8Kernels>()
                .map_err(|message| invalid(&format!("router.confidence_by_cpu.{cpu}"), &message))?;
            for variant in gates.keys() {
                graph(format!("router.confidence_by_cpu.{cpu}.{variant}"), variant)?;
            }
        }
        self.budget
            .validate()
            .map_err(|message| invalid("budget", &message))?;
        self.hedge
            .validate()
            .map_err(|message| invalid("hedge", &message))?;
        self.retry
            .validate()
            .map_err(|message| invalid("retry", &message))?;
        self.cache
            .validate()
            .map_err(|message| invalid("cache", &message))?;
        self.model_trust
            .validate()
            .map_err(|message| invalid("model_trust", &message))?;
        crate::auth::validate(&self.tenants, self.node.tier)
            .map_err(|(path, message)| ConfigError::Invalid { path, message })?;
        if let Some(cors) = &self.server.cors {
            cors.validate()
                .map_err(|message| invalid("server.cors.allowed_origins", &message))?;
        }
        self.device
            .validate()
            .map_err(|message| invalid("device", &message))?;
        if let Some(regional) = &self.upstreams.regional {
            regional
                .validate()
                .map_err(|message| invalid("upstreams.regional", &message))?;
        }
        if let Some(cloud) = &self.upstreams.cloud {
            cloud
                .validate()
                .map_err(|message| invalid("upstreams.cloud", &message))?;
        }
        if self
            .upstreams
            .regional
            .as_ref()
            .is_some_and(|r| r.endpoints.is_empty())
        {
            return Err(invalid(
                "upstreams.regional.endpoints",
                "must list at least one endpoint",
            ));
        }
        if self.upstreams.regional.is_some() && self.node.tier >= Tier::Regional {
            return Err(invalid(
                "upstreams.regional",
                "a regional or cloud node cannot forward to the regional tier (never down)",
            ));
        }
        if self.upstreams.cloud.is_some() && self.node.tier >= Tier::Cloud {
            return Err(invalid(
                "upstreams.cloud",
                "a cloud node has no tier above it",
            ));
        }
        Ok(())
    }
}
