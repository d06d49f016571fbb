//! The regional tier: other tiergate nodes over gRPC (`tiergate.v1.Inference`), balanced over
//! one or more endpoints.
//!
//! Per endpoint: one lazily connected tonic `Channel` (a down endpoint does not block start-up),
//! a [`LinkHealth`] fed by every call (passive outlier detection) and by a background
//! grpc.health.v1 `Watch` (active check), and an in-flight counter. Calls go to the better of two
//! random endpoints whose breaker admits them (see [`crate::balance`]). A call that could not
//! connect is tried on the other endpoints in turn: it never reached a peer, so that is safe.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Serialize;
use tiergate_api::NodeRequest;
use tiergate_api::wire::request_to_pb;
use tiergate_proto::v1::inference_client::InferenceClient;
use tiergate_proto::v1::{GenerateRequest, GenerateResponse, GenerateStreamResponse};
use tiergate_router::health::{LinkHealth, LinkSnapshot};
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, Endpoint, Identity};

use crate::TraceContext;
use crate::call::{CallLimits, Link, TierTimeouts, Timer, Timers};
use crate::error::{ErrorKind, SetupError, UpstreamError};
use crate::health_watch;
use crate::peer_key::read_peer_key;

mod config;
mod endpoints;
mod stream;

pub use config::{RegionalConfig, RegionalTlsConfig};
pub(crate) use endpoints::EndpointState;
use endpoints::InFlight;
use stream::{StreamCall, gather, read_stream};

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

/// Client of the regional tier. Cheap to clone; clones share channels and health. The health
/// watches stop when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct RegionalClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoints: Vec<(Arc<EndpointState>, Channel)>,
    /// Sent as `x-tiergate-peer-key` with every call, when configured.
    peer_key: Option<tonic::metadata::AsciiMetadataValue>,
    timeouts: TierTimeouts,
    /// Whole answers are asked for as streams and gathered (`stream_whole_answers`).
    stream_whole_answers: bool,
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
            .validate()
            .map_err(|e| SetupError::Config(format!("regional.{e}")))?;
        if config.endpoints.is_empty() {
            return Err(SetupError::Config("regional.endpoints is empty".into()));
        }
        // Channels and health watches spawn tasks: without a runtime that would panic.
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            SetupError::Config("the regional client must be built inside a Tokio runtime".into())
        })?;
        let tls = config.tls.as_ref().map(tonic_tls).transpose()?;
        let peer_key = match &config.peer_key_file {
            Some(path) => Some(read_peer_key(path)?.parse().map_err(|_| {
                SetupError::Config(format!(
                    "peer key file {}: not valid metadata",
                    path.display()
                ))
            })?),
            None => None,
        };
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
                // Pings find a peer that vanished or hung without closing the connection.
                .http2_keep_alive_interval(config.keepalive_interval)
                .keep_alive_timeout(config.keepalive_timeout)
                .keep_alive_while_idle(true);
            if let Some(tls) = &tls {
                endpoint = endpoint
                    .tls_config(tls.clone())
                    .map_err(|e| SetupError::Tls(format!("regional endpoint `{uri}`: {e}")))?;
            }
            // A connector of our own, because tonic applies `connect_timeout` to the whole of a
            // custom connector (TCP and TLS) but only to the TCP connect of its built-in one.
            // The HTTP/2 handshake comes after; the first-token timeout covers it.
            let mut tcp = HttpConnector::new();
            tcp.enforce_http(false);
            tcp.set_nodelay(true);
            let channel = endpoint.connect_with_connector_lazy(tcp);
            let state = Arc::new(EndpointState {
                link: Link::new(uri.clone(), LinkHealth::new(config.health.clone())),
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
                peer_key,
                timeouts: TierTimeouts {
                    first_token: config.first_token_timeout,
                    stall: config.stall_timeout,
                    total: config.request_timeout,
                },
                stream_whole_answers: config.stream_whole_answers,
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

    /// How long until some endpoint may admit a call (zero: now); `None` when every endpoint
    /// waits on its health check.
    pub fn available_in(&self, now: Instant) -> Option<Duration> {
        (self.inner.endpoints.iter())
            .filter_map(|(ep, _)| ep.with_health(|h| h.available_in(now)))
            .min()
    }

    /// Every endpoint's health, in config order.
    pub fn snapshots(&self, now: Instant) -> Vec<EndpointSnapshot> {
        self.inner
            .endpoints
            .iter()
            .map(|(ep, _)| EndpointSnapshot {
                endpoint: ep.uri().to_owned(),
                in_flight: ep.in_flight.load(Ordering::Relaxed),
                link: ep.with_health(|h| h.snapshot(now)),
            })
            .collect()
    }

    /// Asks a regional node for the whole answer. It must arrive by the earliest of the
    /// caller's limits and the configured request timeout; that is also the gRPC timeout sent.
    /// Asked for as a stream (`stream_whole_answers`, the default), its first token must also
    /// come within the first-token timeout and each later message within the stall timeout.
    /// An empty answer that did not end with a real stop is a failure, never an answer.
    pub async fn generate(
        &self,
        request: &NodeRequest,
        limits: impl Into<CallLimits>,
    ) -> Result<GenerateResponse, UpstreamError> {
        let limits = limits.into();
        if !self.inner.stream_whole_answers {
            return self.generate_in_one_response(request, limits).await;
        }
        gather(self.open_stream(request, limits, true).await?).await
    }

    /// The whole answer from one unary `Generate` call.
    async fn generate_in_one_response(
        &self,
        request: &NodeRequest,
        limits: CallLimits,
    ) -> Result<GenerateResponse, UpstreamError> {
        let timers = Timers::start(self.inner.timeouts, limits, "preparing the regional call")?;
        let timer = timers.whole_answer();
        let (inner, trace, request) = (&self.inner, &request.trace, &request_to_pb(request));
        inner
            .with_failover(timer.at, |mut picked| async move {
                let _in_flight = InFlight::new(picked.endpoint.clone());
                let started = Instant::now();
                let mut client = InferenceClient::new(picked.channel.clone());
                let call = client.generate(inner.grpc_request(request.clone(), timer.at, trace));
                let result = match tokio::time::timeout_at(timer.at.into(), call).await {
                    Ok(Ok(response)) => whole_answer(response.into_inner()),
                    Ok(Err(status)) => Err(status_error(&status, timer)),
                    Err(_) => Err(timer.error("waiting for the regional answer")),
                };
                picked
                    .admission
                    .report(result.as_ref().map(|_| ()), started.elapsed());
                result
            })
            .await
    }

    /// Asks a regional node for a streamed answer. Errors before the stream opened are returned
    /// here (after the other endpoints were tried if one could not connect); later ones end the
    /// stream. The first token must come by the first-token timer, each later message within
    /// the stall timeout of the one before.
    pub async fn generate_stream(
        &self,
        request: &NodeRequest,
        limits: impl Into<CallLimits>,
    ) -> Result<RegionalStream, UpstreamError> {
        self.open_stream(request, limits.into(), false).await
    }

    /// Opens a streamed call. `whole`: the caller gathers the whole answer, which must then
    /// also be complete by the whole-answer timer (the caller's commit point), as a unary call
    /// would be; that is then the gRPC timeout sent, so that the peer stops when we do.
    async fn open_stream(
        &self,
        request: &NodeRequest,
        limits: CallLimits,
        whole: bool,
    ) -> Result<RegionalStream, UpstreamError> {
        let timers = Timers::start(self.inner.timeouts, limits, "preparing the regional call")?;
        let first = timers.first_token();
        // A stream the caller reads as it comes may go on until the end of the call; a gathered
        // one ends at the whole-answer timer.
        let sent_deadline = if whole {
            timers.whole_answer().at
        } else {
            timers.end().at
        };
        let (inner, trace, request) = (&self.inner, &request.trace, &request_to_pb(request));
        inner
            .with_failover(first.at, |mut picked| async move {
                let in_flight = InFlight::new(picked.endpoint.clone());
                let started = Instant::now();
                let mut client = InferenceClient::new(picked.channel.clone());
                let call = client.generate_stream(inner.grpc_request(
                    request.clone(),
                    sent_deadline,
                    trace,
                ));
                let opened = match tokio::time::timeout_at(first.at.into(), call).await {
                    Ok(Ok(response)) => response.into_inner(),
                    Ok(Err(status)) => {
                        let err = status_error(&status, first);
                        picked.admission.report(Err(&err), started.elapsed());
                        return Err(err);
                    }
                    Err(_) => {
                        let err = first.error("waiting for the regional stream to start");
                        picked.admission.report(Err(&err), started.elapsed());
                        return Err(err);
                    }
                };
                let call = StreamCall {
                    in_flight,
                    admission: picked.admission,
                    timers,
                    whole,
                    started,
                };
                Ok(Box::pin(read_stream(opened, call)) as RegionalStream)
            })
            .await
    }
}

/// The peer's status as an error. The peer enforces our grpc-timeout itself and may answer
/// CANCELLED when it expires: past the timer, any failure is that timer's timeout.
fn status_error(status: &tonic::Status, timer: Timer) -> UpstreamError {
    let err = UpstreamError::from_grpc_status(status);
    if err.kind() == ErrorKind::Timeout {
        return err.with_caller_timeout(!timer.counts);
    }
    if Instant::now() >= timer.at {
        return timer.error(&format!("calling the regional node ({})", err.message()));
    }
    err
}

/// A whole answer, unless it is empty without a real stop (a peer cut short by a deadline).
fn whole_answer(response: GenerateResponse) -> Result<GenerateResponse, UpstreamError> {
    if response.text.is_empty() && !is_real_stop(&response.finish_reason) {
        return Err(empty_answer(&response.finish_reason));
    }
    Ok(response)
}

fn is_real_stop(finish_reason: &str) -> bool {
    matches!(finish_reason, "stop" | "eos")
}

fn empty_answer(finish_reason: &str) -> UpstreamError {
    UpstreamError::new(
        ErrorKind::ServerError,
        format!("the regional node answered nothing (finish reason `{finish_reason}`)"),
    )
}

impl Inner {
    /// The call as sent: our deadline as its `grpc-timeout`, the peer key when configured, the
    /// request id as `x-request-id` (the peer prefers the proto's `request_id`, the same id) and
    /// the trace context as `traceparent` / `tracestate`.
    fn grpc_request(
        &self,
        request: GenerateRequest,
        deadline: Instant,
        trace: &TraceContext,
    ) -> tonic::Request<GenerateRequest> {
        use tonic::metadata::AsciiMetadataValue;
        let request_id = AsciiMetadataValue::try_from(request.request_id.as_str()).ok();
        let mut request = tonic::Request::new(request);
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let metadata = request.metadata_mut();
        if let Some(key) = &self.peer_key {
            metadata.insert(crate::PEER_KEY_METADATA, key.clone());
        }
        if let Some(id) = request_id.filter(|id| !id.is_empty()) {
            metadata.insert(crate::REQUEST_ID, id);
        }
        if let Ok(value) = AsciiMetadataValue::try_from(trace.traceparent()) {
            metadata.insert(crate::TRACEPARENT, value);
        }
        if let Some(value) = trace
            .tracestate()
            .and_then(|s| AsciiMetadataValue::try_from(s).ok())
        {
            metadata.insert(crate::TRACESTATE, value);
        }
        request
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
