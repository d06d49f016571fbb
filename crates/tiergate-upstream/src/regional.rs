//! The regional tier: other tiergate nodes over gRPC (`tiergate.v1.Inference`), balanced over
//! one or more endpoints.
//!
//! Per endpoint: one lazily connected tonic `Channel` (a down endpoint does not block start-up),
//! a [`LinkHealth`] fed by every call (passive outlier detection) and by a background
//! grpc.health.v1 `Watch` (active check), and an in-flight counter. Calls go to the better of two
//! random endpoints whose breaker admits them (see [`crate::balance`]). A call that could not
//! connect is tried on the other endpoints in turn: it never reached a peer, so that is safe.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tiergate_proto::v1::generate_stream_response::Event;
use tiergate_proto::v1::inference_client::InferenceClient;
use tiergate_proto::v1::{GenerateRequest, GenerateResponse, GenerateStreamResponse};
use tiergate_router::health::{LinkHealth, LinkHealthConfig, LinkSnapshot, duration_text};
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, Endpoint, Identity};

use crate::balance;
use crate::error::{ErrorKind, SetupError, UpstreamError};
use crate::health_watch;

/// How to reach the regional tier.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegionalConfig {
    /// gRPC endpoints of regional nodes: `http://host:port`, or `https://host:port` with `tls`.
    pub endpoints: Vec<String>,
    /// Upper bound of one TCP (and TLS) connect.
    #[serde(default = "default_connect_timeout", with = "duration_text")]
    pub connect_timeout: Duration,
    /// Upper bound of one call when the caller's deadline is later or absent.
    #[serde(default = "default_request_timeout", with = "duration_text")]
    pub request_timeout: Duration,
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

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_health_check_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_true() -> bool {
    true
}

impl RegionalConfig {
    /// A config with every optional field at its default.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            connect_timeout: default_connect_timeout(),
            request_timeout: default_request_timeout(),
            health_check_interval: default_health_check_interval(),
            active_health_check: true,
            tls: None,
            health: LinkHealthConfig::default(),
        }
    }
}

/// One endpoint's health, for metrics and `route explain`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointSnapshot {
    pub endpoint: String,
    pub in_flight: usize,
    #[serde(flatten)]
    pub link: LinkSnapshot,
}

/// A streamed regional answer: the peer's `routed`, deltas and `done` messages. Ends after
/// `done` or after the first error.
pub type RegionalStream = BoxStream<'static, Result<GenerateStreamResponse, UpstreamError>>;

/// Latency assumed for an endpoint before its first success when no endpoint has one yet.
const INITIAL_LATENCY: Duration = Duration::from_millis(50);

/// The state of one endpoint, shared with its health-watch task.
#[derive(Debug)]
pub(crate) struct EndpointState {
    uri: String,
    health: Mutex<LinkHealth>,
    in_flight: AtomicUsize,
}

impl EndpointState {
    pub(crate) fn uri(&self) -> &str {
        &self.uri
    }

    fn with_health<T>(&self, f: impl FnOnce(&mut LinkHealth) -> T) -> T {
        f(&mut self.health.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn set_health_check(&self, serving: bool) {
        self.with_health(|h| h.set_health_check(serving));
    }

    pub(crate) fn clear_health_check(&self) {
        self.with_health(|h| h.clear_health_check());
    }

    /// Feeds one call's outcome to the link health. A rejected request still proves the link.
    fn observe(&self, outcome: Result<(), &UpstreamError>, latency: Duration) {
        let now = Instant::now();
        match outcome {
            Err(err) if err.counts_against_link() => {
                tracing::debug!(endpoint = %self.uri, error = %err, "regional call failed");
                self.with_health(|h| h.record_failure(now));
            }
            _ => self.with_health(|h| h.record_success(latency, now)),
        }
    }
}

/// Counts a call as in flight on its endpoint until dropped.
struct InFlight(Arc<EndpointState>);

impl InFlight {
    fn new(endpoint: Arc<EndpointState>) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(endpoint)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Client of the regional tier. Cheap to clone; clones share channels and health. The health
/// watches stop when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct RegionalClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoints: Vec<(Arc<EndpointState>, Channel)>,
    request_timeout: Duration,
    watchers: Vec<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for watcher in &self.watchers {
            watcher.abort();
        }
    }
}

impl RegionalClient {
    /// Builds the channels (lazily connected) and starts the health watches. Must be called
    /// inside a Tokio runtime. Reads the TLS files now, so that a bad config fails at start-up.
    pub fn new(config: &RegionalConfig) -> Result<Self, SetupError> {
        config
            .health
            .validate()
            .map_err(|e| SetupError::Config(format!("regional.health: {e}")))?;
        if config.endpoints.is_empty() {
            return Err(SetupError::Config("regional.endpoints is empty".into()));
        }
        // Channels and health watches spawn tasks: without a runtime that would panic.
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            SetupError::Config("the regional client must be built inside a Tokio runtime".into())
        })?;
        let tls = config.tls.as_ref().map(tonic_tls).transpose()?;
        let wanted_scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        let mut watchers = Vec::new();
        for uri in &config.endpoints {
            let endpoint = Endpoint::from_shared(uri.clone())
                .map_err(|e| SetupError::Config(format!("regional endpoint `{uri}`: {e}")))?;
            if endpoint.uri().scheme_str() != Some(wanted_scheme) {
                return Err(SetupError::Config(format!(
                    "regional endpoint `{uri}` must start with {wanted_scheme}:// {}",
                    if tls.is_some() {
                        "when tls is set"
                    } else {
                        "(set regional.tls for https)"
                    }
                )));
            }
            let mut endpoint = endpoint
                .tcp_nodelay(true)
                .connect_timeout(config.connect_timeout)
                // Pings find a peer that vanished without closing the connection.
                .http2_keep_alive_interval(Duration::from_secs(20))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true);
            if let Some(tls) = &tls {
                endpoint = endpoint
                    .tls_config(tls.clone())
                    .map_err(|e| SetupError::Tls(format!("regional endpoint `{uri}`: {e}")))?;
            }
            let channel = endpoint.connect_lazy();
            let state = Arc::new(EndpointState {
                uri: uri.clone(),
                health: Mutex::new(LinkHealth::new(config.health.clone())),
                in_flight: AtomicUsize::new(0),
            });
            if config.active_health_check {
                watchers.push(runtime.spawn(health_watch::watch(
                    state.clone(),
                    channel.clone(),
                    config.health_check_interval,
                )));
            }
            endpoints.push((state, channel));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                endpoints,
                request_timeout: config.request_timeout,
                watchers,
            }),
        })
    }

    /// Whether some endpoint would admit a call now.
    pub fn is_available(&self, now: Instant) -> bool {
        self.inner
            .endpoints
            .iter()
            .any(|(ep, _)| ep.with_health(|h| h.is_available(now)))
    }

    /// Every endpoint's health, in config order.
    pub fn snapshots(&self, now: Instant) -> Vec<EndpointSnapshot> {
        self.inner
            .endpoints
            .iter()
            .map(|(ep, _)| EndpointSnapshot {
                endpoint: ep.uri.clone(),
                in_flight: ep.in_flight.load(Ordering::Relaxed),
                link: ep.with_health(|h| h.snapshot(now)),
            })
            .collect()
    }

    /// Asks a regional node for the whole answer. The gRPC timeout is the time left until the
    /// earlier of `deadline` and the configured request timeout.
    pub async fn generate(
        &self,
        request: GenerateRequest,
        deadline: Option<Instant>,
    ) -> Result<GenerateResponse, UpstreamError> {
        let deadline = self.inner.deadline(deadline)?;
        let mut tried = Vec::new();
        let mut last_error = None;
        loop {
            let (index, endpoint, channel) = self.inner.pick(&tried, last_error)?;
            let in_flight = InFlight::new(endpoint.clone());
            let started = Instant::now();
            let mut client = InferenceClient::new(channel);
            let call = client.generate(grpc_request(request.clone(), deadline));
            let result = match tokio::time::timeout_at(deadline.into(), call).await {
                Ok(Ok(response)) => Ok(response.into_inner()),
                Ok(Err(status)) => Err(status_error(&status, deadline)),
                Err(_) => Err(UpstreamError::timeout("waiting for the regional answer")),
            };
            endpoint.observe(result.as_ref().map(|_| ()), started.elapsed());
            drop(in_flight);
            match result {
                Err(err) if self.inner.may_retry(&err, &mut tried, index, deadline) => {
                    last_error = Some(err);
                }
                other => return other,
            }
        }
    }

    /// Asks a regional node for a streamed answer. Errors before the stream opened are returned
    /// here (after the other endpoints were tried if one could not connect); later ones end the
    /// stream.
    pub async fn generate_stream(
        &self,
        request: GenerateRequest,
        deadline: Option<Instant>,
    ) -> Result<RegionalStream, UpstreamError> {
        let deadline = self.inner.deadline(deadline)?;
        let mut tried = Vec::new();
        let mut last_error = None;
        loop {
            let (index, endpoint, channel) = self.inner.pick(&tried, last_error)?;
            let in_flight = InFlight::new(endpoint.clone());
            let started = Instant::now();
            let mut client = InferenceClient::new(channel);
            let call = client.generate_stream(grpc_request(request.clone(), deadline));
            let opened = match tokio::time::timeout_at(deadline.into(), call).await {
                Ok(Ok(response)) => Ok(response.into_inner()),
                Ok(Err(status)) => Err(status_error(&status, deadline)),
                Err(_) => Err(UpstreamError::timeout(
                    "waiting for the regional stream to start",
                )),
            };
            match opened {
                Ok(messages) => {
                    return Ok(Box::pin(read_stream(
                        messages, in_flight, deadline, started,
                    )));
                }
                Err(err) => {
                    endpoint.observe(Err(&err), started.elapsed());
                    drop(in_flight);
                    if !self.inner.may_retry(&err, &mut tried, index, deadline) {
                        return Err(err);
                    }
                    last_error = Some(err);
                }
            }
        }
    }
}

impl Inner {
    fn deadline(&self, deadline: Option<Instant>) -> Result<Instant, UpstreamError> {
        let now = Instant::now();
        let cap = now + self.request_timeout;
        let deadline = deadline.map_or(cap, |d| d.min(cap));
        if deadline <= now {
            return Err(UpstreamError::timeout("preparing the regional call"));
        }
        Ok(deadline)
    }

    /// Power of two choices among the endpoints that admit a call, skipping `tried`; takes the
    /// chosen endpoint's admission (a probe slot when half-open). When none is left, a retry
    /// reports the error that made it retry.
    fn pick(
        &self,
        tried: &[usize],
        last_error: Option<UpstreamError>,
    ) -> Result<(usize, Arc<EndpointState>, Channel), UpstreamError> {
        let now = Instant::now();
        let fallback = self
            .endpoints
            .iter()
            .filter_map(|(ep, _)| ep.with_health(|h| h.latency_ewma()))
            .min()
            .unwrap_or(INITIAL_LATENCY);
        let mut excluded = tried.to_vec();
        loop {
            let loads: Vec<Option<f64>> = self
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, (ep, _))| {
                    if excluded.contains(&i) {
                        return None;
                    }
                    ep.with_health(|h| {
                        h.is_available(now).then(|| {
                            let in_flight = ep.in_flight.load(Ordering::Relaxed);
                            balance::load_estimate(h.latency_ewma(), in_flight, fallback)
                        })
                    })
                })
                .collect();
            let Some(index) = balance::choose(&loads, &mut rand::rng()) else {
                if let Some(err) = last_error {
                    return Err(err);
                }
                return Err(UpstreamError::new(
                    ErrorKind::Unavailable,
                    format!("no regional endpoint is available ({})", self.describe(now)),
                ));
            };
            let (endpoint, channel) = &self.endpoints[index];
            if endpoint.with_health(|h| h.try_acquire(now)) {
                return Ok((index, endpoint.clone(), channel.clone()));
            }
            // Another call took the last probe slot in the meantime.
            excluded.push(index);
        }
    }

    /// A call that could not connect never reached a peer: try another endpoint while one is
    /// left and time remains.
    fn may_retry(
        &self,
        err: &UpstreamError,
        tried: &mut Vec<usize>,
        index: usize,
        deadline: Instant,
    ) -> bool {
        tried.push(index);
        err.kind() == ErrorKind::Connect
            && tried.len() < self.endpoints.len()
            && Instant::now() < deadline
    }

    fn describe(&self, now: Instant) -> String {
        self.endpoints
            .iter()
            .map(|(ep, _)| {
                let snap = ep.with_health(|h| h.snapshot(now));
                format!(
                    "{}: {:?}, health check {:?}",
                    ep.uri, snap.state, snap.health_check
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The peer's status as an error. The peer enforces our grpc-timeout itself and may answer
/// CANCELLED when it expires: past the deadline, any failure is a timeout.
fn status_error(status: &tonic::Status, deadline: Instant) -> UpstreamError {
    let err = UpstreamError::from_grpc_status(status);
    if Instant::now() >= deadline && err.kind() != ErrorKind::Timeout {
        return UpstreamError::new(
            ErrorKind::Timeout,
            format!("deadline passed ({})", err.message()),
        );
    }
    err
}

fn grpc_request(request: GenerateRequest, deadline: Instant) -> tonic::Request<GenerateRequest> {
    let mut request = tonic::Request::new(request);
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    request
}

/// Passes the peer's messages through until `done`, feeding the link health at the end.
fn read_stream(
    mut messages: tonic::Streaming<GenerateStreamResponse>,
    in_flight: InFlight,
    deadline: Instant,
    started: Instant,
) -> impl futures::Stream<Item = Result<GenerateStreamResponse, UpstreamError>> + Send + 'static {
    async_stream::stream! {
        let endpoint = in_flight.0.clone();
        let mut first_message: Option<Duration> = None;
        loop {
            let error = match tokio::time::timeout_at(deadline.into(), messages.message()).await {
                Ok(Ok(Some(message))) => {
                    first_message.get_or_insert_with(|| started.elapsed());
                    let done = matches!(message.event, Some(Event::Done(_)));
                    yield Ok(message);
                    if done {
                        endpoint.observe(Ok(()), first_message.unwrap_or_default());
                        break;
                    }
                    continue;
                }
                Ok(Ok(None)) => UpstreamError::new(
                    ErrorKind::Protocol,
                    "the regional stream ended without a done message",
                ),
                Ok(Err(status)) => status_error(&status, deadline),
                Err(_) => UpstreamError::timeout("streaming the regional answer"),
            };
            endpoint.observe(Err(&error), started.elapsed());
            yield Err(error);
            break;
        }
        drop(in_flight);
    }
}

fn tonic_tls(config: &RegionalTlsConfig) -> Result<tonic::transport::ClientTlsConfig, SetupError> {
    let read = |what: &'static str, path: &PathBuf| {
        std::fs::read(path).map_err(|source| SetupError::ReadFile {
            what,
            path: path.clone(),
            source,
        })
    };
    // Parse the bundle now: tonic would only notice a bad one at the first connect.
    crate::tls::read_pem_certs(&config.ca_file)?;
    let mut tls = tonic::transport::ClientTlsConfig::new().ca_certificate(Certificate::from_pem(
        read("regional CA bundle", &config.ca_file)?,
    ));
    match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(
                read("regional client certificate", cert)?,
                read("regional client key", key)?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(SetupError::Config(
                "regional.tls needs both cert_file and key_file, or neither".into(),
            ));
        }
    }
    if let Some(domain) = &config.domain {
        tls = tls.domain_name(domain.clone());
    }
    Ok(tls)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn building_outside_a_runtime_is_an_error_not_a_panic() {
        let err = RegionalClient::new(&RegionalConfig::new(vec!["http://127.0.0.1:1".into()]))
            .unwrap_err();
        assert!(err.to_string().contains("Tokio runtime"), "{err}");
    }

    #[tokio::test]
    async fn bad_endpoints_are_named() {
        for (endpoint, needle) in [("not a uri", "not a uri"), ("ftp://h:1", "http://")] {
            let err = RegionalClient::new(&RegionalConfig::new(vec![endpoint.into()])).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
    }
}
