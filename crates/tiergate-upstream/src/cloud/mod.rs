//! The cloud tier: any OpenAI-compatible `POST {base_url}/chat/completions` (OpenAI, vLLM,
//! llama.cpp server, Ollama, another tiergate) over hyper + rustls, whole or streamed as SSE.
//!
//! Every call feeds the link's [`LinkHealth`] (passive observation) exactly once and is refused
//! at once while the breaker is open or the provider asked us to back off. Calls end at the
//! earliest of the caller's limits and the tier's own timeouts (connect, first token, stall,
//! total), streams included.

mod config;
mod connect;
mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tiergate_api::NodeRequest;
use tiergate_router::health::{LinkHealth, LinkSnapshot};

pub use config::CloudConfig;
use config::{is_loopback, read_api_key};
use connect::ConnectTimeout;
use stream::{StreamCall, check_event_stream, read_stream};

use crate::MAX_ANSWER_BYTES;
use crate::call::{Admission, CallLimits, Link, TierTimeouts, Timers};
use crate::error::{ErrorKind, SetupError, UpstreamError, error_chain};
use crate::openai::{self, ChatRequest, CloudCompletion};

/// How much of an error body is read for its message.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// Unanswered TCP keepalive probes before the kernel closes a pooled connection.
const KEEPALIVE_PROBES: u32 = 3;

/// One event of a streamed cloud answer: text deltas (with the chunk's logprobs, when asked
/// for; a chunk may carry logprobs and no text), then one `Done` with the whole text.
#[derive(Debug, Clone, PartialEq)]
pub enum CloudEvent {
    Delta {
        text: String,
        logprobs: Vec<tiergate_api::TokenLogprob>,
    },
    Done(CloudCompletion),
}

/// A streamed cloud answer. Ends after `Done` or after the first error.
pub type CloudStream = BoxStream<'static, Result<CloudEvent, UpstreamError>>;

type HttpClient = Client<ConnectTimeout<HttpsConnector<HttpConnector>>, Full<Bytes>>;

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
    timeouts: TierTimeouts,
    /// Whole answers are asked for as streams and gathered (`stream_whole_answers`).
    stream_whole_answers: bool,
    link: Arc<Link>,
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
            .validate()
            .map_err(|e| SetupError::Config(format!("cloud.{e}")))?;
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
        // Without probes, a pooled connection whose path died silently (a NAT that dropped
        // its mapping) is found only by the next request sent into it, which then loses its
        // first-token timeout. Probes every third of the timeout, three unanswered: closed.
        tcp.set_keepalive(Some(config.keepalive_interval));
        tcp.set_keepalive_interval(Some(
            (config.keepalive_timeout / KEEPALIVE_PROBES).max(Duration::from_secs(1)),
        ));
        tcp.set_keepalive_retries(Some(KEEPALIVE_PROBES));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::tls::client_config(config.ca_file.as_deref())?)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(tcp);
        // The connect timeout covers the TLS handshake too, not only TCP.
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .timer(TokioTimer::new())
            .http2_keep_alive_interval(config.keepalive_interval)
            .http2_keep_alive_timeout(config.keepalive_timeout)
            .http2_keep_alive_while_idle(true)
            .build(ConnectTimeout::new(https, config.connect_timeout));

        Ok(Self {
            inner: Arc::new(Inner {
                http,
                url,
                base_url: base_url.clone(),
                model: config.model.clone(),
                authorization,
                timeouts: TierTimeouts {
                    first_token: config.first_token_timeout,
                    stall: config.stall_timeout,
                    total: config.request_timeout,
                },
                stream_whole_answers: config.stream_whole_answers,
                link: Link::new(base_url, LinkHealth::new(config.health.clone())),
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

    /// How long until the link may admit a call (zero: now).
    pub fn available_in(&self, now: Instant) -> Option<Duration> {
        self.inner.with_health(|h| h.available_in(now))
    }

    /// The link's health, for metrics and `route explain`.
    pub fn snapshot(&self, now: Instant) -> LinkSnapshot {
        self.inner.with_health(|h| h.snapshot(now))
    }

    /// Asks for the whole answer. It must arrive by the earliest of the caller's limits and the
    /// configured timeout; asked for as a stream (`stream_whole_answers`, the default), its
    /// first token must also come within the first-token timeout and each later chunk within
    /// the stall timeout. An empty answer that did not end with a real stop is a failure, never
    /// an answer.
    pub async fn generate(
        &self,
        request: &NodeRequest,
        limits: impl Into<CallLimits>,
    ) -> Result<CloudCompletion, UpstreamError> {
        let limits = limits.into();
        if !self.inner.stream_whole_answers {
            return self.generate_in_one_response(request, limits).await;
        }
        let mut stream = self.open_stream(request, limits, true).await?;
        while let Some(event) = stream.next().await {
            if let CloudEvent::Done(done) = event? {
                return Ok(done);
            }
        }
        // `read_stream` ends with `Done` or an error; this is only a guard.
        Err(UpstreamError::new(
            ErrorKind::Protocol,
            "the cloud stream ended without an answer",
        ))
    }

    /// The whole answer as one JSON response (`stream: false`).
    async fn generate_in_one_response(
        &self,
        request: &NodeRequest,
        limits: CallLimits,
    ) -> Result<CloudCompletion, UpstreamError> {
        let chat = ChatRequest::from_node(request, &self.inner.model, false);
        let timers = Timers::start(self.inner.timeouts, limits, "preparing the cloud call")?;
        let timer = timers.whole_answer();
        let mut admission = self.inner.admit()?;
        let propagated = Propagated::new(request);
        let call = self.inner.call_json(&chat, &propagated);
        let result = match tokio::time::timeout_at(timer.at.into(), call).await {
            Ok(result) => result.and_then(whole_answer),
            Err(_) => Err(timer.error("waiting for the cloud answer")),
        };
        admission.report(result.as_ref().map(|_| ()), timers.started.elapsed());
        result
    }

    /// Asks for a streamed answer (`stream: true`, SSE). Errors before the first byte of the
    /// stream are returned here; later ones end the stream. The response headers and the first
    /// token must come by the first-token timer, each later chunk within the stall timeout.
    pub async fn generate_stream(
        &self,
        request: &NodeRequest,
        limits: impl Into<CallLimits>,
    ) -> Result<CloudStream, UpstreamError> {
        self.open_stream(request, limits.into(), false).await
    }

    /// Opens a streamed call. `whole`: the caller gathers the whole answer, which must then
    /// also be complete by the whole-answer timer (the caller's commit point), as a one-response
    /// call would be.
    async fn open_stream(
        &self,
        request: &NodeRequest,
        limits: CallLimits,
        whole: bool,
    ) -> Result<CloudStream, UpstreamError> {
        let chat = ChatRequest::from_node(request, &self.inner.model, true);
        let timers = Timers::start(self.inner.timeouts, limits, "preparing the cloud call")?;
        let first = timers.first_token();
        let mut admission = self.inner.admit()?;
        let propagated = Propagated::new(request);
        let send = self.inner.send(&chat, true, &propagated);
        let opened = match tokio::time::timeout_at(first.at.into(), send).await {
            Ok(result) => result.and_then(check_event_stream),
            Err(_) => Err(first.error("waiting for the cloud stream to start")),
        };
        let response = match opened {
            Ok(response) => response,
            Err(err) => {
                admission.report(Err(&err), timers.started.elapsed());
                return Err(err);
            }
        };
        let call = StreamCall {
            inner: self.inner.clone(),
            admission,
            timers,
            whole,
        };
        Ok(Box::pin(read_stream(call, response.into_body())))
    }
}

/// The headers that tie a cloud call to its request: `x-request-id` (providers and proxies log
/// it) and the trace context (`traceparent`, `tracestate`). A value that is not a valid header
/// is left out rather than failing the call.
struct Propagated {
    headers: Vec<(&'static str, HeaderValue)>,
}

impl Propagated {
    fn new(request: &NodeRequest) -> Self {
        let mut headers = Vec::new();
        let mut add = |name: &'static str, value: &str| {
            if let Ok(value) = HeaderValue::from_str(value)
                && !value.is_empty()
            {
                headers.push((name, value));
            }
        };
        add(crate::REQUEST_ID, &request.request_id);
        add(crate::TRACEPARENT, &request.trace.traceparent());
        if let Some(state) = request.trace.tracestate() {
            add(crate::TRACESTATE, state);
        }
        Propagated { headers }
    }
}

/// A whole answer, unless it is empty without a real stop (a provider cut short).
fn whole_answer(done: CloudCompletion) -> Result<CloudCompletion, UpstreamError> {
    if done.text.is_empty() && !is_real_stop(done.finish_reason.as_deref()) {
        return Err(empty_answer(done.finish_reason.as_deref()));
    }
    Ok(done)
}

/// A provider that gives no finish reason is taken to have stopped (some servers omit it).
fn is_real_stop(finish_reason: Option<&str>) -> bool {
    matches!(finish_reason, None | Some("stop" | "eos" | "end_turn"))
}

fn empty_answer(finish_reason: Option<&str>) -> UpstreamError {
    UpstreamError::new(
        ErrorKind::ServerError,
        format!(
            "the cloud answered nothing (finish reason `{}`)",
            finish_reason.unwrap_or("none")
        ),
    )
}

impl Inner {
    fn with_health<T>(&self, f: impl FnOnce(&mut LinkHealth) -> T) -> T {
        self.link.with_health(f)
    }

    fn admit(&self) -> Result<Admission, UpstreamError> {
        self.link.admit(Instant::now()).ok_or_else(|| {
            UpstreamError::new(
                ErrorKind::Unavailable,
                format!(
                    "cloud link {} is open (circuit breaker, health or back-off)",
                    self.base_url
                ),
            )
        })
    }

    async fn send(
        &self,
        chat: &ChatRequest<'_>,
        stream: bool,
        propagated: &Propagated,
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
        for (name, value) in &propagated.headers {
            builder = builder.header(*name, value.clone());
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

    async fn call_json(
        &self,
        chat: &ChatRequest<'_>,
        propagated: &Propagated,
    ) -> Result<CloudCompletion, UpstreamError> {
        let response = self.send(chat, false, propagated).await?;
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
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
