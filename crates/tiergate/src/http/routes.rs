//! HTTP routes: the OpenAI-compatible API, `/v1/models`, `/metrics`, `/healthz`, `/readyz`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};

use super::openai_request::{ParseContext, ParsedRequest, parse_chat, parse_completion};
use super::openai_response::{self as wire, Endpoint, ResponseMeta};
use crate::auth::Tenant;
use crate::device::DeviceReporter;
use crate::metrics::NodeMetrics;
use crate::node::{ModelCard, NodeApi, NodeError, RoutingInfo, StreamEvent};
use crate::shell::{
    BodyDeadline, BodyTimedOut, Lifecycle, REQUEST_ID, fresh_request_id, is_fit_request_id,
    trace_of,
};

/// The response body type of every route: a whole buffer or an SSE stream.
pub type HttpBody = UnsyncBoxBody<Bytes, Infallible>;

/// A request's body as the routes get it: the socket's, under the serving stack's deadline.
pub type RequestBody = BodyDeadline<Incoming>;

/// What the HTTP front end needs.
pub struct HttpState {
    pub node: Arc<dyn NodeApi>,
    pub metrics: NodeMetrics,
    /// `/readyz` and `tiergate_ready` read it.
    pub lifecycle: Lifecycle,
    /// `GET /v1/report`.
    pub device: Arc<DeviceReporter>,
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState")
            .field("node", &self.node.name())
            .finish()
    }
}

/// Routes one request. Never fails: every error becomes a response with the right status.
pub async fn handle(
    state: Arc<HttpState>,
    request: Request<RequestBody>,
) -> Result<Response<HttpBody>, Infallible> {
    let path = request.uri().path();
    let response = match (request.method(), path) {
        (&Method::POST, "/v1/chat/completions") => {
            completions(&state, request, Endpoint::Chat).await
        }
        (&Method::POST, "/v1/completions") => {
            completions(&state, request, Endpoint::Completions).await
        }
        (&Method::GET, "/v1/models") => models(&state, tenant(&request)),
        (&Method::GET, _) if path.starts_with("/v1/models/") => {
            model(&state, &path["/v1/models/".len()..], tenant(&request))
        }
        (&Method::GET, "/metrics") => metrics(&state),
        (&Method::GET, "/v1/report") => report(&state),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if state.lifecycle.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (
            _,
            "/v1/chat/completions"
            | "/v1/completions"
            | "/v1/models"
            | "/v1/report"
            | "/metrics"
            | "/healthz"
            | "/readyz",
        ) => error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!("{} is not allowed on {path}", request.method()),
        ),
        _ => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route for {path}"),
        ),
    };
    Ok(response)
}

async fn completions(
    state: &HttpState,
    request: Request<RequestBody>,
    endpoint: Endpoint,
) -> Response<HttpBody> {
    let now = Instant::now();
    let tenant = tenant(&request).cloned();
    let (parts, body) = request.into_parts();
    if let Some(refusal) = refuse_non_json(state, &parts.headers) {
        return refusal;
    }
    let limit = state.node.limits().max_body_bytes;
    let body = match read_body(&parts.headers, body, limit).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let models = state.node.models();
    let header_constraint = parts
        .headers
        .get("x-tiergate-tier-constraint")
        .and_then(|v| v.to_str().ok());
    let ctx = ParseContext {
        limits: state.node.limits(),
        models: &models,
        header_constraint,
        request_id: request_id(&parts.headers),
        trace: trace_of(&parts.extensions),
        now,
    };
    let parsed = match endpoint {
        Endpoint::Chat => parse_chat(&body, &ctx),
        Endpoint::Completions => parse_completion(&body, &ctx),
    };
    let mut parsed = match parsed {
        Ok(parsed) => parsed,
        Err(err) => return rejected(state, &err),
    };
    if let Some(tenant) = tenant {
        if let Err(err) = tenant.check_model(&parsed.model) {
            return rejected(state, &err);
        }
        parsed.request.tenant = Some(tenant);
    }
    if parsed.stream {
        stream_response(state, endpoint, parsed).await
    } else {
        unary_response(state, endpoint, parsed).await
    }
}

async fn unary_response(
    state: &HttpState,
    endpoint: Endpoint,
    parsed: ParsedRequest,
) -> Response<HttpBody> {
    let mut meta = ResponseMeta::new(endpoint, &parsed.request.request_id, parsed.model);
    meta.logprobs = parsed.request.sampling.logprobs.is_some();
    match state.node.generate(parsed.request).await {
        Ok(answer) => {
            let body = wire::completion(&meta, &answer);
            let mut response = json_response(StatusCode::OK, &body);
            routing_headers(response.headers_mut(), &answer.routing);
            if let Some(budget) = answer.finish_reason.budget_stop() {
                response
                    .headers_mut()
                    .insert("x-tiergate-budget-stop", HeaderValue::from_static(budget));
            }
            response
        }
        Err(err) => node_error(&err),
    }
}

async fn stream_response(
    state: &HttpState,
    endpoint: Endpoint,
    parsed: ParsedRequest,
) -> Response<HttpBody> {
    let mut meta = ResponseMeta::new(endpoint, &parsed.request.request_id, parsed.model);
    meta.logprobs = parsed.request.sampling.logprobs.is_some();
    let include_usage = parsed.include_usage;
    let mut events = match state.node.generate_stream(parsed.request).await {
        Ok(events) => events,
        Err(err) => return node_error(&err),
    };
    // The headers wait for the tier to be settled, so they can say which tier answers.
    let routing = match events.next().await {
        Some(Ok(StreamEvent::Routed(routing))) => routing,
        Some(Err(err)) => return node_error(&err),
        Some(Ok(_)) | None => {
            let err = NodeError::Internal("stream did not start with its routing".to_owned());
            return node_error(&err);
        }
    };
    let first = wire::role_chunk(&meta, &routing).map(|chunk| sse_data(&chunk));
    let frames = events
        .map(move |event| match event {
            Ok(StreamEvent::Delta { text, logprobs }) => {
                sse_data(&wire::delta_chunk(&meta, &text, &logprobs))
            }
            Ok(StreamEvent::Done(answer)) => {
                let mut out = sse_data(&wire::final_chunk(&meta, &answer)).to_vec();
                if include_usage {
                    out.extend_from_slice(&sse_data(&wire::usage_chunk(&meta, &answer)));
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                Bytes::from(out)
            }
            // A routing change after the start cannot happen; a repeat carries nothing new.
            Ok(StreamEvent::Routed(_)) => Bytes::new(),
            Err(err) => {
                let mut out = sse_data(&wire::error_body(&err)).to_vec();
                out.extend_from_slice(b"data: [DONE]\n\n");
                Bytes::from(out)
            }
        })
        .filter(|bytes| std::future::ready(!bytes.is_empty()));
    let frames = futures::stream::iter(first).chain(frames);
    let body = StreamBody::new(frames.map(|bytes| Ok::<_, Infallible>(Frame::data(bytes))));
    let mut response = Response::new(BodyExt::boxed_unsync(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    routing_headers(headers, &routing);
    response
}

/// Reads a request body up to `limit` bytes; more is 413, never truncated.
async fn read_body(
    headers: &HeaderMap,
    body: RequestBody,
    limit: usize,
) -> Result<Bytes, Response<HttpBody>> {
    let too_large = || {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("request body exceeds the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        // The connection closes after it: the rest of the body was never read.
        Err(err) if err.is::<BodyTimedOut>() => Err(error_response(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            &err.to_string(),
        )),
        Err(err) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("cannot read request body: {err}"),
        )),
    }
}

/// The caller's tenant, which the serving stack's authentication put in the extensions.
fn tenant<B>(request: &Request<B>) -> Option<&Arc<Tenant>> {
    request.extensions().get::<Arc<Tenant>>()
}

/// The node's models, those a tenant may use.
fn visible_models(state: &HttpState, tenant: Option<&Arc<Tenant>>) -> Vec<ModelCard> {
    let mut models = state.node.models();
    if let Some(tenant) = tenant {
        models.retain(|card| tenant.allows_model(&card.id));
    }
    models
}

fn models(state: &HttpState, tenant: Option<&Arc<Tenant>>) -> Response<HttpBody> {
    let data: Vec<Value> = visible_models(state, tenant)
        .iter()
        .map(model_json)
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{id}`: one model as OpenAI describes it, or 404 naming the ones there are.
fn model(state: &HttpState, id: &str, tenant: Option<&Arc<Tenant>>) -> Response<HttpBody> {
    let models = visible_models(state, tenant);
    match models.iter().find(|m| m.id == id) {
        Some(found) => json_response(StatusCode::OK, &model_json(found)),
        None => {
            let known: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
            error_response(
                StatusCode::NOT_FOUND,
                "model_not_found",
                &format!("no model `{id}`; this node serves: {}", known.join(", ")),
            )
        }
    }
}

fn model_json(card: &ModelCard) -> Value {
    json!({
        "id": card.id,
        "object": "model",
        "created": 0,
        "owned_by": "tiergate",
        "tiergate": {"tier": card.tier, "local": card.local},
    })
}

fn metrics(state: &HttpState) -> Response<HttpBody> {
    // Link states change with time alone (an open breaker turns half-open), and readiness
    // with the engine workers: read them now.
    state.node.refresh_metrics();
    state.lifecycle.is_ready();
    match state.metrics.render() {
        Ok(body) => {
            let mut response = Response::new(full(Bytes::from(body)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(NodeMetrics::content_type()),
            );
            response
        }
        Err(err) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &format!("cannot render metrics: {err}"),
        ),
    }
}

/// Refuses a body that does not say it is JSON (415), before reading it. A web page can post
/// `text/plain` or a form to a loopback node without a CORS preflight; only `application/json`
/// (with parameters such as `charset=utf-8`) needs one, so only it is accepted.
fn refuse_non_json(state: &HttpState, headers: &HeaderMap) -> Option<Response<HttpBody>> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if media_type.eq_ignore_ascii_case("application/json") {
        return None;
    }
    let err = NodeError::InvalidArgument(format!(
        "Content-Type must be application/json, got `{content_type}`"
    ));
    state.node.count_rejection(&err);
    Some(error_response(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_request_error",
        &err.to_string(),
    ))
}

/// A request refused before it reached the node (the node counts its own failures).
fn rejected(state: &HttpState, err: &NodeError) -> Response<HttpBody> {
    state.node.count_rejection(err);
    node_error(err)
}

fn node_error(err: &NodeError) -> Response<HttpBody> {
    let mut response = json_response(err.http_status(), &wire::error_body(err));
    if let Some(wait) = err.retry_after() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs()));
    }
    response
}

fn routing_headers(headers: &mut HeaderMap, routing: &RoutingInfo) {
    let mut put = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    put("x-tiergate-tier", routing.tier.to_string());
    put("x-tiergate-reason", routing.reason.clone());
    put(
        "x-tiergate-complexity",
        format!("{:.4}", routing.complexity),
    );
    if let Some(confidence) = routing.local_confidence {
        put("x-tiergate-local-confidence", format!("{confidence:.4}"));
    }
    put("x-tiergate-degraded", routing.degraded.to_string());
    put("x-tiergate-node", routing.node.clone());
    if let Some(cache) = routing.cache {
        put("x-tiergate-cache", cache.as_str().to_owned());
    }
}

/// The request's `x-request-id` (the serving stack set a fit one), else a fresh one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_fit_request_id(v))
        .map_or_else(fresh_request_id, str::to_owned)
}

fn sse_data(value: &Value) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    // Serializing a serde_json::Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, value);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn full(bytes: Bytes) -> HttpBody {
    BodyExt::boxed_unsync(Full::new(bytes))
}

/// `GET /v1/report`: the device profile, model constraints, live performance, compliance.
fn report(state: &HttpState) -> Response<HttpBody> {
    match serde_json::to_value(state.device.report()) {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(err) => node_error(&NodeError::Internal(format!("report: {err}"))),
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response<HttpBody> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error_response(status: StatusCode, kind: &str, message: &str) -> Response<HttpBody> {
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": null, "code": status.as_u16()}}),
    )
}

fn text(status: StatusCode, body: &'static str) -> Response<HttpBody> {
    let mut response = Response::new(full(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
