//! The trace-context layer of the serving stack: reads a request's W3C `traceparent` /
//! `tracestate` (HTTP header or gRPC metadata, which is the same HTTP/2 header), makes this
//! node's span of the trace, puts it in the request's extensions (where the request span, the
//! front ends and so the upstream calls find it) and returns `traceparent` in the response
//! (HTTP header, gRPC initial metadata).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tiergate_upstream::{TRACEPARENT, TRACESTATE, TraceContext};
use tower::{Layer, Service};

/// Adds [`TraceContextService`] around a service.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextLayer;

impl<S> Layer<S> for TraceContextLayer {
    type Service = TraceContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceContextService { inner }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct TraceContextService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for TraceContextService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let context = incoming_context(request.headers());
        let traceparent = HeaderValue::from_str(&context.traceparent()).ok();
        request.extensions_mut().insert(context);
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            if let Some(value) = traceparent {
                response.headers_mut().insert(TRACEPARENT, value);
            }
            Ok(response)
        })
    }
}

/// This node's span of the trace the headers name (a new trace when they name none, or an
/// invalid one, which is logged at debug: a client bug, not the node's).
fn incoming_context(headers: &http::HeaderMap) -> TraceContext {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (mut context, invalid) =
        TraceContext::from_incoming(header(TRACEPARENT), header(TRACESTATE));
    if let Some(reason) = invalid {
        tracing::debug!(%reason, "invalid traceparent replaced by a new trace");
    }
    // A trace this node starts is flagged sampled when its exporter records it, so that the
    // tiers above (which follow the flag) record their spans of it too.
    if !context.has_caller() && crate::telemetry::sample_new_trace(&context.trace_id()) {
        context.mark_sampled();
    }
    context
}

/// The trace context the stack put in a request's extensions, or a new trace for a request
/// that did not pass the stack (unit tests, the demo's in-process calls).
pub fn trace_of(extensions: &http::Extensions) -> TraceContext {
    extensions
        .get::<TraceContext>()
        .cloned()
        .unwrap_or_else(TraceContext::fresh)
}
