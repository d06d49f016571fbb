//! The regional tier's config.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tiergate_router::health::{LinkHealthConfig, duration_text};

/// How to reach the regional tier.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegionalConfig {
    /// gRPC endpoints of regional nodes: `http://host:port`, or `https://host:port` with `tls`.
    pub endpoints: Vec<String>,
    /// Upper bound of one connect: TCP and TLS (the HTTP/2 handshake is under the first-token
    /// timeout).
    #[serde(default = "default_connect_timeout", with = "duration_text")]
    pub connect_timeout: Duration,
    /// The first token of a streamed answer (and so the connection and the response headers)
    /// must arrive within this; past it the call fails and counts against the endpoint.
    #[serde(default = "default_first_token_timeout", with = "duration_text")]
    pub first_token_timeout: Duration,
    /// Longest silence between two messages of a streamed answer once it started.
    #[serde(default = "default_stall_timeout", with = "duration_text")]
    pub stall_timeout: Duration,
    /// Upper bound of one whole call when the caller's deadline is later or absent.
    #[serde(default = "default_request_timeout", with = "duration_text")]
    pub request_timeout: Duration,
    /// Ask for a stream (`GenerateStream`) even when the client wants the whole answer at
    /// once, and gather it here: the first-token and stall timeouts then bound whole answers
    /// too (a regional node that stalls is left after `stall_timeout`, not at the end of the
    /// step's share of the deadline). Off: one unary `Generate` call.
    #[serde(default = "default_true")]
    pub stream_whole_answers: bool,
    /// An endpoint's connection quiet this long gets an HTTP/2 PING (idle or not). It finds a
    /// peer that hung while TCP lives on, or a path that died, before a request is sent into
    /// it; it also keeps a NAT's mapping of the connection alive.
    #[serde(default = "default_keepalive_interval", with = "duration_text")]
    pub keepalive_interval: Duration,
    /// A connection whose PING goes unanswered this long is closed; the next call connects
    /// afresh.
    #[serde(default = "default_keepalive_timeout", with = "duration_text")]
    pub keepalive_timeout: Duration,
    /// Wait before re-opening a broken health watch; doubles per failure up to 16 times this.
    #[serde(default = "default_health_check_interval", with = "duration_text")]
    pub health_check_interval: Duration,
    /// Watch grpc.health.v1 on every endpoint. Off: passive observation alone.
    #[serde(default = "default_true")]
    pub active_health_check: bool,
    /// TLS (mutual when a client certificate is given) towards the regional nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RegionalTlsConfig>,
    /// Circuit breaker and latency tracking, per endpoint.
    #[serde(default)]
    pub health: LinkHealthConfig,
    /// The deployment's peer key (a file holding it), presented with every forwarded request
    /// so that the regional node trusts its forwarding information (`peer_key.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_key_file: Option<PathBuf>,
}

/// TLS towards the regional nodes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegionalTlsConfig {
    /// PEM bundle of the CA that signed the regional nodes' certificates.
    pub ca_file: PathBuf,
    /// This node's client certificate (PEM), for mutual TLS; needs `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The name to verify in the server certificate, when it differs from the endpoint host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

/// A regional node holds its first token back while its own model's commit window fills (or
/// while it asks the cloud): seconds, not milliseconds.
fn default_first_token_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_stall_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_keepalive_interval() -> Duration {
    Duration::from_secs(20)
}

fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_health_check_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_true() -> bool {
    true
}

impl RegionalConfig {
    /// Checks the timeouts and the link-health tuning; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        crate::call::check_timeouts(&[
            ("connect_timeout", self.connect_timeout),
            ("first_token_timeout", self.first_token_timeout),
            ("stall_timeout", self.stall_timeout),
            ("request_timeout", self.request_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("keepalive_timeout", self.keepalive_timeout),
        ])?;
        self.health.validate().map_err(|e| format!("health.{e}"))
    }

    /// A config with every optional field at its default.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            connect_timeout: default_connect_timeout(),
            first_token_timeout: default_first_token_timeout(),
            stall_timeout: default_stall_timeout(),
            request_timeout: default_request_timeout(),
            stream_whole_answers: true,
            keepalive_interval: default_keepalive_interval(),
            keepalive_timeout: default_keepalive_timeout(),
            health_check_interval: default_health_check_interval(),
            active_health_check: true,
            tls: None,
            health: LinkHealthConfig::default(),
            peer_key_file: None,
        }
    }
}
