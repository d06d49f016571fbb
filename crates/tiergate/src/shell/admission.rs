//! Admission: the node-wide concurrency limit with load shedding, the drain gate, per-route
//! timeouts and the inference body's deadline, in one layer that both listeners share.
//!
//! Written here rather than taken from `tower::limit::ConcurrencyLimit` + `tower::load_shed`:
//! those release their permit when the response *headers* are ready, so a streamed answer (SSE,
//! gRPC server streaming) would stop counting while it still generates; here the permit lives in
//! the response body and is released when the last frame is sent (or the client goes away). And
//! only inference routes are limited: a saturated node must still answer `/readyz`, `/metrics`
//! and health watches, or its orchestrator would restart it for being busy.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use prometheus::{IntCounter, IntCounterVec};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use super::body_deadline::BodyDeadline;
use super::lifecycle::Lifecycle;
use super::refusal::{grpc_error, http_error, retry_after};
use super::send_watch::{BoxError, WatchedBody};

/// Which API a listener speaks; it decides how a refusal is worded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Http,
    Grpc,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Http => "http",
            Api::Grpc => "grpc",
        }
    }

    /// Inference routes are admitted against the limit and get the long timeout; the rest
    /// (probes, metrics, model list, health, reflection) always pass.
    pub(super) fn is_inference(self, path: &str) -> bool {
        match self {
            Api::Http => matches!(path, "/v1/chat/completions" | "/v1/completions"),
            Api::Grpc => path.starts_with("/tiergate.v1.Inference/"),
        }
    }
}

/// Why a request was refused before it reached the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_concurrent_requests` are in flight.
    Overloaded,
    /// The node is shutting down.
    Draining,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Overloaded => "overloaded",
            Refusal::Draining => "draining",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Refusal::Overloaded => "the node is at its concurrency limit; retry later",
            Refusal::Draining => "the node is shutting down; retry on another node",
        }
    }
}

/// The node-wide gate both listeners admit through: one limit for HTTP and gRPC together,
/// since they share one engine and one set of upstream links.
#[derive(Debug)]
pub struct Gate {
    permits: Arc<Semaphore>,
    max: u32,
    lifecycle: Lifecycle,
    retry_after_secs: u64,
    shed: IntCounterVec,
    /// `tiergate_send_timeouts_total` for HTTP and for gRPC, resolved once (not per request).
    send_timeouts: [IntCounter; 2],
}

impl Gate {
    /// `shed` is `tiergate_requests_shed_total{api, reason}`, `send_timeouts`
    /// `tiergate_send_timeouts_total{api}`.
    pub fn new(
        max_concurrent: usize,
        lifecycle: Lifecycle,
        retry_after: Duration,
        shed: IntCounterVec,
        send_timeouts: IntCounterVec,
    ) -> Arc<Gate> {
        let max = u32::try_from(max_concurrent.clamp(1, Semaphore::MAX_PERMITS))
            .unwrap_or(u32::MAX)
            .max(1);
        Arc::new(Gate {
            permits: Arc::new(Semaphore::new(max as usize)),
            max,
            lifecycle,
            // Retry-After speaks whole seconds; 0 would invite a retry storm.
            retry_after_secs: retry_after.as_secs_f64().ceil().max(1.0) as u64,
            shed,
            // Both series exist from the start, at 0, so a rate over them is defined before a cut.
            send_timeouts: [Api::Http, Api::Grpc]
                .map(|api| send_timeouts.with_label_values(&[api.as_str()])),
        })
    }

    fn admit(&self, api: Api) -> Result<OwnedSemaphorePermit, Refusal> {
        let refused = if !self.lifecycle.admits() {
            Refusal::Draining
        } else {
            match Arc::clone(&self.permits).try_acquire_owned() {
                Ok(permit) => return Ok(permit),
                Err(_) => Refusal::Overloaded,
            }
        };
        self.shed
            .with_label_values(&[api.as_str(), refused.as_str()])
            .inc();
        Err(refused)
    }

    /// Admitted requests in flight now (their answers not yet fully sent).
    pub fn in_flight(&self) -> usize {
        (self.max as usize).saturating_sub(self.permits.available_permits())
    }

    /// Completes once no admitted request is in flight. Called while closing, when no new
    /// request is admitted, so it cannot be starved.
    pub async fn idle(&self) {
        if let Ok(all) = self.permits.acquire_many(self.max).await {
            drop(all);
        }
    }
}

/// How long a route may take to produce its response head before it is answered for it.
#[derive(Debug, Clone, Copy)]
pub struct RouteTimeouts {
    /// Inference: a backstop above the longest deadline a request may carry (the node
    /// stops generation at the deadline itself).
    pub inference: Duration,
    /// Everything else: probes, metrics, model list.
    pub control: Duration,
    /// An inference request's body must arrive whole within this of its head
    /// (`server.body_read_timeout`; [`BodyDeadline`]).
    pub request_body: Duration,
    /// An HTTP/2 inference answer whose client takes no data for this long is ended
    /// (`server.send_timeout`; [`WatchedBody`]). HTTP/1.1 answers are bounded by the socket's
    /// TCP_USER_TIMEOUT instead.
    pub stream_send: Duration,
}

/// The admission layer: gate + per-route timeout.
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    pub gate: Arc<Gate>,
    pub api: Api,
    pub timeouts: RouteTimeouts,
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`AdmissionLayer`].
#[derive(Debug, Clone)]
pub struct Admission<S> {
    inner: S,
    layer: AdmissionLayer,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Admission<S>
where
    S: Service<Request<BodyDeadline<ReqBody>>, Response = Response<ResBody>, Error = Infallible>,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<GuardedBody<ResBody>>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let AdmissionLayer {
            gate,
            api,
            timeouts,
        } = &self.layer;
        let api = *api;
        let inference = api.is_inference(request.uri().path());
        if api == Api::Grpc && !inference {
            // The gRPC front end records the id of inference calls; these have no other.
            record_header_id(&request);
        }
        let permit = if inference {
            match gate.admit(api) {
                Ok(permit) => Some(permit),
                Err(refusal) => {
                    if api == Api::Grpc {
                        record_header_id(&request);
                    }
                    let response = refusal_response(api, refusal, gate.retry_after_secs);
                    return Box::pin(std::future::ready(Ok(response)));
                }
            }
        } else {
            None
        };
        let limit = if inference {
            timeouts.inference
        } else {
            timeouts.control
        };
        let body_limit = inference.then_some(timeouts.request_body);
        // Only HTTP/2 answers can stall with a healthy socket (see `send_watch`).
        let watch = (inference && request.version() == http::Version::HTTP_2).then(|| {
            let [http, grpc] = &gate.send_timeouts;
            let cuts = if api == Api::Grpc { grpc } else { http }.clone();
            (timeouts.stream_send, cuts)
        });
        let answer =
            (self.inner).call(request.map(|body| BodyDeadline::new(body, body_limit, api)));
        Box::pin(async move {
            match tokio::time::timeout(limit, answer).await {
                Ok(Ok(response)) => Ok(response.map(|body| match watch {
                    Some((send_limit, cuts)) => GuardedBody::Watched {
                        body: WatchedBody::new(body, permit, api, send_limit, cuts),
                    },
                    None => GuardedBody::Inner { body, permit },
                })),
                Ok(Err(never)) => match never {},
                Err(_) => Ok(timeout_response(api, limit)),
            }
        })
    }
}

/// Puts the request's `x-request-id` into the request's span (the trace layer's, current here).
fn record_header_id<B>(request: &Request<B>) {
    if let Some(id) = request
        .headers()
        .get(super::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
    {
        tracing::Span::current().record("request_id", id);
    }
}

pin_project! {
    /// A response body that holds its request's admission permit until the last frame is
    /// sent or the body is dropped (an HTTP/2 answer also until its client takes no data for
    /// the send timeout), or a small body of its own (refusals, timeouts).
    #[project = GuardedBodyProj]
    pub enum GuardedBody<B> {
        Inner { #[pin] body: B, permit: Option<OwnedSemaphorePermit> },
        Watched { body: WatchedBody<B> },
        Own { bytes: Option<Bytes> },
    }
}

/// An empty body of the stack's own (what CORS answers a preflight with).
impl<B> Default for GuardedBody<B> {
    fn default() -> Self {
        GuardedBody::Own { bytes: None }
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            GuardedBodyProj::Inner { body, permit } => {
                let frame = body.poll_frame(cx);
                if let Poll::Ready(None) = frame {
                    // The answer is complete: the slot frees now, not when hyper drops us.
                    permit.take();
                }
                frame.map_err(Into::into)
            }
            GuardedBodyProj::Watched { body } => Pin::new(body).poll_frame(cx),
            GuardedBodyProj::Own { bytes } => {
                Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GuardedBody::Inner { body, .. } => body.is_end_stream(),
            GuardedBody::Watched { body } => body.is_end_stream(),
            GuardedBody::Own { bytes } => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GuardedBody::Inner { body, .. } => body.size_hint(),
            GuardedBody::Watched { body } => body.size_hint(),
            GuardedBody::Own { bytes } => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// 503 + Retry-After (HTTP, in OpenAI's error shape) or UNAVAILABLE + `retry-after` and
/// `grpc-retry-pushback-ms` (gRPC, trailers-only): both say "retry", and when.
fn refusal_response<B>(
    api: Api,
    refusal: Refusal,
    retry_after_secs: u64,
) -> Response<GuardedBody<B>> {
    let kind = match refusal {
        Refusal::Overloaded => "overloaded",
        Refusal::Draining => "unavailable",
    };
    let mut response = match api {
        Api::Http => http_error(StatusCode::SERVICE_UNAVAILABLE, kind, refusal.message()),
        Api::Grpc => grpc_error(tonic::Code::Unavailable, refusal.message()),
    };
    retry_after(&mut response, api, retry_after_secs);
    response
}

fn timeout_response<B>(api: Api, limit: Duration) -> Response<GuardedBody<B>> {
    let message = format!("no response within {} ms", limit.as_millis());
    match api {
        Api::Http => http_error(StatusCode::GATEWAY_TIMEOUT, "timeout", &message),
        Api::Grpc => grpc_error(tonic::Code::DeadlineExceeded, &message),
    }
}
