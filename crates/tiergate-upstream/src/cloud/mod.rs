//! The cloud tier: any OpenAI-compatible `POST {base_url}/chat/completions` (OpenAI, vLLM,
//! llama.cpp server, Ollama, another tiergate) over hyper + rustls, whole or streamed as SSE.
//!
//! Every call feeds the link's [`LinkHealth`] (passive observation) and is refused at once
//! while the breaker is open. Calls end at the earlier of the caller's deadline and the
//! configured timeout, streams included.

mod config;
mod stream;

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
use tiergate_proto::v1::GenerateRequest;
use tiergate_router::health::{LinkHealth, LinkSnapshot};

pub use config::CloudConfig;
use config::{is_loopback, read_api_key};
use stream::{check_event_stream, read_stream};

use crate::error::{ErrorKind, SetupError, UpstreamError, error_chain};
use crate::openai::{self, ChatRequest, CloudCompletion};

/// Largest non-streamed answer accepted; a bigger one is a protocol error, never truncated.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// How much of an error body is read for its message.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

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
