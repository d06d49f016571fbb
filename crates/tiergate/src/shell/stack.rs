//! The serving stack: the one function that wraps both listeners' routes in the same layers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use tiergate_upstream::TraceContext;
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{MakeSpan, TraceLayer};
use tracing::Span;

use super::admission::{AdmissionLayer, Api, Gate, RouteTimeouts};
use super::authenticate::AuthLayer;
use super::body_deadline::BodyDeadline;
use super::send_watch::BoxError;
use super::trace_context::TraceContextLayer;
use crate::auth::Authenticator;

/// The header that carries a request's id in and out (HTTP header, gRPC metadata).
pub const REQUEST_ID: &str = "x-request-id";

/// The stack around a listener's routes, as one type.
pub type StackService<ReqBody, E> =
    BoxCloneService<Request<ReqBody>, Response<UnsyncBoxBody<Bytes, E>>, Infallible>;

/// What the stack needs from its node.
#[derive(Debug, Clone)]
pub struct StackSettings {
    pub gate: Arc<Gate>,
    pub timeouts: RouteTimeouts,
    /// The tenants' keys (`[[tenants]]`); `None`: authentication off.
    pub auth: Option<Arc<Authenticator>>,
    /// CORS for the HTTP listener (`[server.cors]`); never applied to gRPC.
    pub cors: Option<tower_http::cors::CorsLayer>,
}

/// Wraps `routes` (the HTTP router or tonic's `Routes`) in the serving stack. The order, from
/// the socket inwards:
///
/// 1. request id: a client's `x-request-id` is kept when it is short and plain, anything else
///    is replaced by a fresh one, so every later layer and the node can rely on one;
/// 2. the id goes back in the response (`x-request-id`), unless the handler set its own (gRPC
///    answers with the proto's `request_id` when the client gave one);
/// 3. W3C trace context: the client's `traceparent` when valid (else a new trace), this node's
///    own span id, kept in the request's extensions for the front ends (which send it to the
///    tiers above) and returned as `traceparent`;
/// 4. a trace span per request carrying the id, the trace id, the API, method and path (and
///    the tenant, once known); everything logged while serving the request (and the access
///    line when its response starts) is inside it;
/// 5. CORS, HTTP only and only when `[server.cors]` is set: preflights answered here (before
///    authentication: a browser sends no key with them), CORS headers on every answer;
/// 6. authentication (`[[tenants]]`): the API key's tenant into the span and the request's
///    extensions, its request rate checked; 401 / UNAUTHENTICATED, 429 / RESOURCE_EXHAUSTED
///    (see `authenticate.rs`); probes, metrics, gRPC health and reflection stay open;
/// 7. admission: inference routes are refused with a retryable 503 / UNAVAILABLE and
///    `Retry-After` while the node closes or when `max_concurrent_requests` are in flight
///    (shed at once, never queued: a queue would only hide the overload from the tier below,
///    which can route elsewhere), counted in `tiergate_requests_shed_total`; a per-route
///    timeout bounds how long a route may take to start its response, and an inference
///    request's body must arrive whole within `server.body_read_timeout` (HTTP 408, gRPC
///    DEADLINE_EXCEEDED), so a client that trickles it holds no slot for long; an HTTP/2
///    answer whose client takes no data for `server.send_timeout` is ended (`send_watch`);
/// 8. the routes. Body limits are enforced where the body is decoded (`limits.max_body_bytes`:
///    HTTP 413 in OpenAI's error shape, gRPC `max_decoding_message_size`), so that the error
///    speaks the API's format.
///
/// Transport limits sit below the stack, in the listeners: hyper's HTTP/1 header-read timeout
/// (`server.header_read_timeout`) and the HTTP/2 streams per connection
/// (`server.max_concurrent_streams`).
pub fn serving_stack<S, ReqBody, ResBody>(
    api: Api,
    settings: &StackSettings,
    routes: S,
) -> StackService<ReqBody, BoxError>
where
    S: Service<Request<BodyDeadline<ReqBody>>, Response = Response<ResBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Body + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    ServiceBuilder::new()
        // One concrete type for the listeners (a box per request is noise beside inference).
        .boxed_clone()
        .map_response(|response: Response<_>| response.map(BodyExt::boxed_unsync))
        // 1. request id, checked, set when absent or unfit.
        .map_request(drop_unfit_request_id::<ReqBody>)
        .layer(SetRequestIdLayer::x_request_id(FreshRequestId))
        // 2. the id goes back to the client.
        .layer(PropagateRequestIdLayer::x_request_id())
        // 3. trace context in, this node's span of it out.
        .layer(TraceContextLayer)
        // 4. a span per request, and an access line at INFO when the response starts.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(RequestSpan { api })
                .on_request(())
                .on_response(access_line)
                // Errors are in the access line's status; shed requests would otherwise log
                // one ERROR each, at the moment the node is busiest.
                .on_failure(()),
        )
        // 5. CORS, on the HTTP listener when configured.
        .option_layer(settings.cors.clone().filter(|_| api == Api::Http))
        // 6. authentication: the tenant of the key, its request rate.
        .layer(AuthLayer {
            auth: settings.auth.clone(),
            api,
        })
        // 7. admission (drain gate, concurrency limit + load shed) and per-route timeouts.
        .layer(AdmissionLayer {
            gate: Arc::clone(&settings.gate),
            api,
            timeouts: settings.timeouts,
        })
        // 8. the routes.
        .service(routes)
}

/// Whether a client-given id is usable as is: short, and only letters, digits, `-` and `_`
/// (it ends up in logs and response headers).
pub fn is_fit_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A fresh id: 16 hex digits.
pub fn fresh_request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn drop_unfit_request_id<B>(mut request: Request<B>) -> Request<B> {
    let fit = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_fit_request_id);
    if !fit {
        request.headers_mut().remove(REQUEST_ID);
    }
    request
}

#[derive(Debug, Clone, Copy)]
struct FreshRequestId;

impl MakeRequestId for FreshRequestId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&fresh_request_id())
            .ok()
            .map(RequestId::new)
    }
}

#[derive(Debug, Clone, Copy)]
struct RequestSpan {
    api: Api,
}

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &Request<B>) -> Span {
        // On gRPC the id is recorded later, once: by the front end, which prefers the proto's
        // `request_id` (what an edge node forwards), or by admission for other routes and
        // refusals. Recording it here too would print two ids on every line.
        let id = match self.api {
            Api::Http => request
                .headers()
                .get(REQUEST_ID)
                .and_then(|v| v.to_str().ok()),
            Api::Grpc => None,
        };
        let trace = request.extensions().get::<TraceContext>();
        let span = tracing::info_span!(
            "request",
            request_id = id,
            trace_id = trace.map(|t| tracing::field::display(t.trace_id())),
            span_id = trace.map(|t| tracing::field::display(t.span_id())),
            api = self.api.as_str(),
            method = %request.method(),
            path = request.uri().path(),
            tenant = tracing::field::Empty,
        );
        // With trace export on, this span is exported as the node's span of the trace.
        if let Some(trace) = trace {
            crate::telemetry::adopt(&span, trace);
        }
        span
    }
}

fn access_line<B>(response: &Response<B>, latency: Duration, _span: &Span) {
    let grpc_status = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok());
    tracing::info!(
        status = response.status().as_u16(),
        grpc_status,
        latency_ms = latency.as_secs_f64() * 1000.0,
        "response"
    );
}
