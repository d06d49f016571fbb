//! The cloud tier's config, and reading its API key.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tiergate_router::health::{LinkHealthConfig, duration_text};

use crate::error::SetupError;

/// How to reach the cloud tier.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    /// Base URL of the OpenAI-compatible API, e.g. `https://api.openai.com/v1` or
    /// `http://127.0.0.1:8080/v1`; `/chat/completions` is appended.
    pub base_url: String,
    /// The provider's model name sent with every request.
    pub model: String,
    /// Environment variable that holds the API key (sent as `Authorization: Bearer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// File that holds the API key (a mounted secret); surrounding whitespace is trimmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// Extra PEM CA bundle to trust besides the public roots (private providers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Upper bound of one call, streamed answers included. Named as the regional tier's twin;
    /// `timeout`, its name before, is still read (both at once is an error).
    #[serde(
        default = "default_request_timeout",
        alias = "timeout",
        with = "duration_text"
    )]
    pub request_timeout: Duration,
    /// Upper bound of one connect: TCP and TLS.
    #[serde(default = "default_connect_timeout", with = "duration_text")]
    pub connect_timeout: Duration,
    /// The response headers and the first token of a streamed answer must arrive within this;
    /// past it the call fails and counts against the link.
    #[serde(default = "default_first_token_timeout", with = "duration_text")]
    pub first_token_timeout: Duration,
    /// Longest silence between two chunks of a streamed answer once it started.
    #[serde(default = "default_stall_timeout", with = "duration_text")]
    pub stall_timeout: Duration,
    /// Ask the provider to stream even when the client wants the whole answer at once, and
    /// gather it here: the first-token and stall timeouts then bound whole answers too (a
    /// provider that stalls is left after `stall_timeout`, not at the end of the request's
    /// share of the deadline). Off for a provider that cannot stream.
    #[serde(default = "default_stream_whole_answers")]
    pub stream_whole_answers: bool,
    /// A pooled connection quiet this long is probed: TCP keepalive probes, and HTTP/2 PINGs on
    /// an HTTP/2 connection. The probes keep a NAT's mapping of the connection alive, and find
    /// one whose path died silently before a request is sent into it.
    #[serde(default = "default_keepalive_interval", with = "duration_text")]
    pub keepalive_interval: Duration,
    /// A connection whose probes go unanswered this long is closed and leaves the pool.
    #[serde(default = "default_keepalive_timeout", with = "duration_text")]
    pub keepalive_timeout: Duration,
    /// Circuit breaker and latency tracking of the link.
    #[serde(default)]
    pub health: LinkHealthConfig,
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Hosted models answer their first token in well under a second, reasoning models in
/// seconds; 15 s is long past either.
fn default_first_token_timeout() -> Duration {
    Duration::from_secs(15)
}

fn default_stall_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_stream_whole_answers() -> bool {
    true
}

/// The node's own listeners probe their clients on the same schedule (`server.keepalive_*`).
fn default_keepalive_interval() -> Duration {
    Duration::from_secs(20)
}

fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(10)
}

impl CloudConfig {
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
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key_env: None,
            api_key_file: None,
            ca_file: None,
            request_timeout: default_request_timeout(),
            connect_timeout: default_connect_timeout(),
            first_token_timeout: default_first_token_timeout(),
            stall_timeout: default_stall_timeout(),
            stream_whole_answers: default_stream_whole_answers(),
            keepalive_interval: default_keepalive_interval(),
            keepalive_timeout: default_keepalive_timeout(),
            health: LinkHealthConfig::default(),
        }
    }
}

pub(super) fn read_api_key(config: &CloudConfig) -> Result<Option<String>, SetupError> {
    match (&config.api_key_env, &config.api_key_file) {
        (Some(_), Some(_)) => Err(SetupError::Config(
            "set cloud.api_key_env or cloud.api_key_file, not both".into(),
        )),
        (Some(var), None) => std::env::var(var)
            .ok()
            .map(|key| key.trim().to_owned())
            .filter(|key| !key.is_empty())
            .map(Some)
            .ok_or_else(|| SetupError::MissingApiKeyEnv(var.clone())),
        (None, Some(path)) => {
            let key = std::fs::read_to_string(path).map_err(|source| SetupError::ReadFile {
                what: "API key file",
                path: path.clone(),
                source,
            })?;
            let key = key.trim();
            if key.is_empty() {
                return Err(SetupError::Config(format!(
                    "API key file `{}` is empty",
                    path.display()
                )));
            }
            Ok(Some(key.to_owned()))
        }
        (None, None) => Ok(None),
    }
}

pub(super) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::cloud::CloudClient;

    #[test]
    fn config_parses_with_defaults_and_rejects_unknown_fields() {
        let config: CloudConfig = serde_json::from_value(serde_json::json!({
            "base_url": "https://api.example.invalid/v1",
            "model": "gpt-x",
            "timeout": "30s",
            "health": {"consecutive_failures": 2}
        }))
        .unwrap();
        assert_eq!(config.request_timeout, Duration::from_secs(30));
        assert_eq!(config.connect_timeout, default_connect_timeout());
        let renamed: CloudConfig = serde_json::from_value(serde_json::json!({
            "base_url": "x", "model": "m", "request_timeout": "20s"
        }))
        .unwrap();
        assert_eq!(renamed.request_timeout, Duration::from_secs(20));
        let both = serde_json::from_value::<CloudConfig>(serde_json::json!({
            "base_url": "x", "model": "m", "request_timeout": "20s", "timeout": "30s"
        }))
        .unwrap_err();
        assert!(both.to_string().contains("duplicate"), "{both}");
        assert_eq!(config.health.consecutive_failures, 2);
        let err = serde_json::from_value::<CloudConfig>(serde_json::json!({
            "base_url": "x", "model": "m", "api_key": "sk-oops"
        }))
        .unwrap_err();
        assert!(err.to_string().contains("api_key"), "{err}");
    }

    #[test]
    fn bad_configs_fail_at_construction() {
        let cases = [
            (
                CloudConfig::new("ftp://host/v1", "m"),
                "http:// or https://",
            ),
            (CloudConfig::new("api.example/v1", "m"), "cloud.base_url"),
            (CloudConfig::new("https://h/v1", " "), "model"),
            (
                CloudConfig {
                    api_key_env: Some("A".into()),
                    api_key_file: Some("/nonexistent".into()),
                    ..CloudConfig::new("https://h/v1", "m")
                },
                "not both",
            ),
            (
                CloudConfig {
                    api_key_env: Some("TIERGATE_TEST_SURELY_UNSET_VARIABLE".into()),
                    ..CloudConfig::new("https://h/v1", "m")
                },
                "TIERGATE_TEST_SURELY_UNSET_VARIABLE",
            ),
            (
                CloudConfig {
                    api_key_file: Some("/nonexistent/key".into()),
                    ..CloudConfig::new("https://h/v1", "m")
                },
                "/nonexistent/key",
            ),
            (
                CloudConfig {
                    ca_file: Some("/nonexistent/ca.pem".into()),
                    ..CloudConfig::new("https://h/v1", "m")
                },
                "/nonexistent/ca.pem",
            ),
        ];
        for (config, needle) in cases {
            let err = CloudClient::new(&config).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn api_key_file_is_trimmed_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "sk-secret-123\n").unwrap();
        let config = CloudConfig {
            api_key_file: Some(path.clone()),
            ..CloudConfig::new("http://127.0.0.1:9/v1/", "m")
        };
        assert_eq!(
            read_api_key(&config).unwrap().as_deref(),
            Some("sk-secret-123")
        );
        let client = CloudClient::new(&config).unwrap();
        assert_eq!(client.base_url(), "http://127.0.0.1:9/v1");
        let shown = format!("{client:?}");
        assert!(!shown.contains("sk-secret"), "{shown}");

        std::fs::write(&path, "\n").unwrap();
        let err = CloudClient::new(&config).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let config = CloudConfig {
            ca_file: Some(path),
            ..CloudConfig::new("https://h/v1", "m")
        };
        let err = CloudClient::new(&config).unwrap_err().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        assert!(is_loopback("localhost"));
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("[::1]"));
        assert!(!is_loopback("api.openai.com"));
        assert!(!is_loopback("10.0.0.1"));
    }
}
