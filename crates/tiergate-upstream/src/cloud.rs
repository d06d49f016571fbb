//! The cloud tier: any OpenAI-compatible `POST {base_url}/chat/completions` (OpenAI, vLLM,
//! llama.cpp server, Ollama, another tiergate) over hyper + rustls, whole or streamed as SSE.
//!
//! Every call feeds the link's [`LinkHealth`] (passive observation) and is refused at once
//! while the breaker is open. Calls end at the earlier of the caller's deadline and the
//! configured timeout, streams included.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tiergate_proto::v1::GenerateRequest;
use tiergate_router::health::{LinkHealth, LinkHealthConfig, LinkSnapshot, duration_text};

use crate::error::{ErrorKind, SetupError, UpstreamError};
use crate::openai::{self, ChatRequest, CloudCompletion};
use crate::sse::SseParser;

/// Largest non-streamed answer accepted; a bigger one is a protocol error, never truncated.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// How much of an error body is read for its message.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

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
    /// Upper bound of one call, streamed answers included.
    #[serde(default = "default_timeout", with = "duration_text")]
    pub timeout: Duration,
    /// Upper bound of the TCP connect.
    #[serde(default = "default_connect_timeout", with = "duration_text")]
    pub connect_timeout: Duration,
    /// Circuit breaker and latency tracking of the link.
    #[serde(default)]
    pub health: LinkHealthConfig,
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

impl CloudConfig {
    /// A config with every optional field at its default.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key_env: None,
            api_key_file: None,
            ca_file: None,
            timeout: default_timeout(),
            connect_timeout: default_connect_timeout(),
            health: LinkHealthConfig::default(),
        }
    }
}

/// One event of a streamed cloud answer: text deltas, then one `Done` with the whole text.
#[derive(Debug, Clone, PartialEq)]
pub enum CloudEvent {
    Delta(String),
    Done(CloudCompletion),
}

/// A streamed cloud answer. Ends after `Done` or after the first error.
pub type CloudStream = BoxStream<'static, Result<CloudEvent, UpstreamError>>;

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Client of the cloud tier. Cheap to clone; clones share the connection pool and link health.
#[derive(Clone)]
pub struct CloudClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: HttpClient,
    url: http::Uri,
    base_url: String,
    model: String,
    /// Marked sensitive so that it never shows in debug output.
    authorization: Option<HeaderValue>,
    timeout: Duration,
    health: Mutex<LinkHealth>,
}

impl std::fmt::Debug for CloudClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudClient")
            .field("base_url", &self.inner.base_url)
            .field("model", &self.inner.model)
            .field(
                "api_key",
                &self.inner.authorization.as_ref().map(|_| "<set>"),
            )
            .finish_non_exhaustive()
    }
}

impl CloudClient {
    /// Builds the client: reads the API key and CA bundle now, so that a bad config fails at
    /// start-up. Does not connect.
    pub fn new(config: &CloudConfig) -> Result<Self, SetupError> {
        config
            .health
            .validate()
            .map_err(|e| SetupError::Config(format!("cloud.health: {e}")))?;
        if config.model.trim().is_empty() {
            return Err(SetupError::Config("cloud.model is empty".into()));
        }
        let base_url = config.base_url.trim_end_matches('/').to_owned();
        let base: http::Uri = base_url
            .parse()
            .map_err(|e| SetupError::Config(format!("cloud.base_url `{base_url}`: {e}")))?;
        let plain = match base.scheme_str() {
            Some("https") => false,
            Some("http") => true,
            _ => {
                return Err(SetupError::Config(format!(
                    "cloud.base_url `{base_url}` must start with http:// or https://"
                )));
            }
        };
        let Some(host) = base.host() else {
            return Err(SetupError::Config(format!(
                "cloud.base_url `{base_url}` has no host"
            )));
        };
        let url: http::Uri = format!("{base_url}/chat/completions")
            .parse()
            .map_err(|e| SetupError::Config(format!("cloud.base_url `{base_url}`: {e}")))?;

        let authorization = read_api_key(config)?
            .map(|key| {
                let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                    SetupError::Config(
                        "the API key holds characters not allowed in a header".into(),
                    )
                })?;
                value.set_sensitive(true);
                Ok::<_, SetupError>(value)
            })
            .transpose()?;
        if plain && authorization.is_some() && !is_loopback(host) {
            tracing::warn!(base_url, "the cloud API key is sent over plain HTTP");
        }

        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(config.connect_timeout));
        tcp.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::tls::client_config(config.ca_file.as_deref())?)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(tcp);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https);

        Ok(Self {
            inner: Arc::new(Inner {
                http,
                url,
                base_url,
                model: config.model.clone(),
                authorization,
                timeout: config.timeout,
                health: Mutex::new(LinkHealth::new(config.health.clone())),
            }),
        })
    }

    /// The provider model every request is sent to.
    pub fn model(&self) -> &str {
        &self.inner.model
    }

    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// Whether a call would be admitted now (breaker closed, or half-open with a free probe).
    pub fn is_available(&self, now: Instant) -> bool {
        self.inner.with_health(|h| h.is_available(now))
    }

    /// The link's health, for metrics and `route explain`.
    pub fn snapshot(&self, now: Instant) -> LinkSnapshot {
        self.inner.with_health(|h| h.snapshot(now))
    }

    /// Asks for the whole answer in one response.
    pub async fn generate(
        &self,
        request: &GenerateRequest,
        deadline: Option<Instant>,
    ) -> Result<CloudCompletion, UpstreamError> {
        let chat = ChatRequest::from_generate(request, &self.inner.model, false)?;
        let deadline = self.inner.deadline(deadline)?;
        self.inner.acquire()?;
        let started = Instant::now();
        let result = match tokio::time::timeout_at(deadline, self.inner.call_json(&chat)).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::timeout("waiting for the cloud answer")),
        };
        self.inner
            .observe(result.as_ref().map(|_| ()), started.elapsed());
        result
    }

    /// Asks for a streamed answer (`stream: true`, SSE). Errors before the first byte of the
    /// stream are returned here; later ones end the stream.
    pub async fn generate_stream(
        &self,
        request: &GenerateRequest,
        deadline: Option<Instant>,
    ) -> Result<CloudStream, UpstreamError> {
        let chat = ChatRequest::from_generate(request, &self.inner.model, true)?;
        let deadline = self.inner.deadline(deadline)?;
        self.inner.acquire()?;
        let started = Instant::now();
        let opened = match tokio::time::timeout_at(deadline, self.inner.send(&chat, true)).await {
            Ok(result) => result.and_then(check_event_stream),
            Err(_) => Err(UpstreamError::timeout(
                "waiting for the cloud stream to start",
            )),
        };
        let response = match opened {
            Ok(response) => response,
            Err(err) => {
                self.inner.observe(Err(&err), started.elapsed());
                return Err(err);
            }
        };
        Ok(Box::pin(read_stream(
            self.inner.clone(),
            response.into_body(),
            deadline,
            started,
        )))
    }
}

impl Inner {
    fn with_health<T>(&self, f: impl FnOnce(&mut LinkHealth) -> T) -> T {
        f(&mut self.health.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The earlier of the caller's deadline and the configured timeout; an already passed
    /// deadline fails without a call.
    fn deadline(&self, deadline: Option<Instant>) -> Result<tokio::time::Instant, UpstreamError> {
        let now = Instant::now();
        let cap = now + self.timeout;
        let deadline = deadline.map_or(cap, |d| d.min(cap));
        if deadline <= now {
            return Err(UpstreamError::timeout("preparing the cloud call"));
        }
        Ok(tokio::time::Instant::from_std(deadline))
    }

    fn acquire(&self) -> Result<(), UpstreamError> {
        if self.with_health(|h| h.try_acquire(Instant::now())) {
            Ok(())
        } else {
            Err(UpstreamError::new(
                ErrorKind::Unavailable,
                format!(
                    "cloud link {} is open (circuit breaker or health)",
                    self.base_url
                ),
            ))
        }
    }

    /// Feeds one call's outcome to the link health. A rejected request still proves the link.
    fn observe(&self, outcome: Result<(), &UpstreamError>, latency: Duration) {
        let now = Instant::now();
        match outcome {
            Err(err) if err.counts_against_link() => {
                tracing::debug!(base_url = %self.base_url, error = %err, "cloud call failed");
                self.with_health(|h| h.record_failure(now));
            }
            _ => self.with_health(|h| h.record_success(latency, now)),
        }
    }

    async fn send(
        &self,
        chat: &ChatRequest<'_>,
        stream: bool,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let body = serde_json::to_vec(chat)
            .map_err(|e| UpstreamError::new(ErrorKind::InvalidRequest, e.to_string()))?;
        let mut builder = http::Request::post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(
                ACCEPT,
                if stream {
                    "text/event-stream"
                } else {
                    "application/json"
                },
            )
            .header(USER_AGENT, concat!("tiergate/", env!("CARGO_PKG_VERSION")));
        if let Some(auth) = &self.authorization {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| UpstreamError::new(ErrorKind::InvalidRequest, e.to_string()))?;
        let response = self.http.request(request).await.map_err(|e| {
            let kind = if e.is_connect() {
                ErrorKind::Connect
            } else {
                ErrorKind::Unavailable
            };
            UpstreamError::new(kind, format!("{}: {}", self.base_url, error_chain(&e)))
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let message = match Limited::new(response.into_body(), MAX_ERROR_BODY_BYTES)
            .collect()
            .await
        {
            Ok(body) => openai::error_message(&body.to_bytes()),
            Err(e) => format!("(error body unreadable: {e})"),
        };
        Err(UpstreamError::from_http_status(
            status.as_u16(),
            &message,
            retry_after,
        ))
    }

    async fn call_json(&self, chat: &ChatRequest<'_>) -> Result<CloudCompletion, UpstreamError> {
        let response = self.send(chat, false).await?;
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| {
                let kind = if e.is::<http_body_util::LengthLimitError>() {
                    ErrorKind::Protocol
                } else {
                    ErrorKind::Unavailable
                };
                UpstreamError::new(kind, format!("reading the cloud answer: {e}"))
            })?
            .to_bytes();
        openai::parse_response(&body)
    }
}

fn check_event_stream(
    response: http::Response<Incoming>,
) -> Result<http::Response<Incoming>, UpstreamError> {
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("text/event-stream") {
        Ok(response)
    } else {
        Err(UpstreamError::new(
            ErrorKind::Protocol,
            format!("expected text/event-stream, got `{content_type}`"),
        ))
    }
}

/// Turns the SSE body into deltas and a final `Done`, feeding the link health at the end.
fn read_stream(
    inner: Arc<Inner>,
    mut body: Incoming,
    deadline: tokio::time::Instant,
    started: Instant,
) -> impl futures::Stream<Item = Result<CloudEvent, UpstreamError>> + Send + 'static {
    async_stream::stream! {
        let mut parser = SseParser::new();
        let mut done = CloudCompletion {
            text: String::new(),
            finish_reason: None,
            usage: None,
            model: inner.model.clone(),
        };
        let mut first_event: Option<Duration> = None;
        // Set when the stream must end with an error; `None` after `[DONE]`.
        let failure: Option<UpstreamError> = 'read: loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => break 'read Some(UpstreamError::timeout("streaming the cloud answer")),
                Ok(None) => {
                    // Some servers close without `[DONE]`; accept that only after a finish reason.
                    if done.finish_reason.is_some() && !parser.has_partial_event() {
                        break 'read None;
                    }
                    break 'read Some(UpstreamError::new(
                        ErrorKind::Protocol,
                        "the cloud stream ended before [DONE]",
                    ));
                }
                Ok(Some(Err(e))) => {
                    break 'read Some(UpstreamError::new(
                        ErrorKind::Unavailable,
                        format!("the cloud stream broke: {}", error_chain(&e)),
                    ));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else { continue };
            let events = match parser.feed(&data) {
                Ok(events) => events,
                Err(e) => break 'read Some(UpstreamError::new(ErrorKind::Protocol, e.to_string())),
            };
            for event in events {
                if event.data == "[DONE]" {
                    break 'read None;
                }
                if event.event == "error" {
                    break 'read Some(UpstreamError::new(
                        ErrorKind::ServerError,
                        format!("provider error in stream: {}", openai::error_message(event.data.as_bytes())),
                    ));
                }
                let update = match openai::parse_chunk(&event.data) {
                    Ok(update) => update,
                    Err(e) => break 'read Some(e),
                };
                first_event.get_or_insert_with(|| started.elapsed());
                if let Some(model) = update.model {
                    done.model = model;
                }
                if update.finish_reason.is_some() {
                    done.finish_reason = update.finish_reason;
                }
                if update.usage.is_some() {
                    done.usage = update.usage;
                }
                if let Some(delta) = update.delta {
                    done.text.push_str(&delta);
                    yield Ok(CloudEvent::Delta(delta));
                }
            }
        };
        let latency = first_event.unwrap_or_else(|| started.elapsed());
        match failure {
            None => {
                inner.observe(Ok(()), latency);
                yield Ok(CloudEvent::Done(done));
            }
            Some(err) => {
                inner.observe(Err(&err), latency);
                yield Err(err);
            }
        }
    }
}

fn read_api_key(config: &CloudConfig) -> Result<Option<String>, SetupError> {
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

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An error with its sources, since hyper's top-level messages alone ("client error (Connect)")
/// do not say what went wrong.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn config_parses_with_defaults_and_rejects_unknown_fields() {
        let config: CloudConfig = serde_json::from_value(serde_json::json!({
            "base_url": "https://api.example.invalid/v1",
            "model": "gpt-x",
            "timeout": "30s",
            "health": {"consecutive_failures": 2}
        }))
        .unwrap();
        assert_eq!(config.timeout, Duration::from_secs(30));
        assert_eq!(config.connect_timeout, default_connect_timeout());
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
