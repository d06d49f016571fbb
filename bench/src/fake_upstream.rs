//! A fake OpenAI-compatible provider that answers at once: the test double of a cloud LLM
//! provider for the gateway-overhead benchmark. It speaks the real wire format (HTTP/1.1 with
//! keep-alive, `POST /v1/chat/completions`, a `chat.completion` JSON with usage, or an SSE
//! stream of `chat.completion.chunk`s ending in `data: [DONE]`) and spends as little as it can,
//! so that what the benchmark measures is the gateway, not the upstream.
//!
//! Resilience tests drive the same fake into the ways a real provider fails ([`Fault`]): it
//! stalls before answering, stalls mid-stream, answers an error status at once, answers nothing
//! with `finish_reason: "length"`, or flaps between failing and answering. [`Faults`] is the
//! switch, shared with the test; [`serve`] (the benchmark's) never fails.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;

/// The path it serves, as under an OpenAI `base_url` ending in `/v1`.
pub const CHAT_PATH: &str = "/v1/chat/completions";
/// The text of every answer.
pub const ANSWER_TEXT: &str = "Hello from the fake upstream.";
/// Largest request body read; a bigger one is refused with 413.
const MAX_BODY_BYTES: usize = 1 << 20;

/// The whole answer, fixed: built once, served as is.
const COMPLETION_JSON: &str = concat!(
    r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"#,
    r#""model":"bench-upstream","choices":[{"index":0,"message":{"role":"assistant","#,
    r#""content":"Hello from the fake upstream."},"finish_reason":"stop"}],"#,
    r#""usage":{"prompt_tokens":9,"completion_tokens":6,"total_tokens":15}}"#
);

/// The streamed answer, fixed: role, two deltas, the finish reason, usage, `[DONE]`.
const COMPLETION_SSE: &str = concat!(
    r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench-upstream","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench-upstream","choices":[{"index":0,"delta":{"content":"Hello from"},"finish_reason":null}]}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench-upstream","choices":[{"index":0,"delta":{"content":" the fake upstream."},"finish_reason":null}]}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench-upstream","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench-upstream","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":6,"total_tokens":15}}"#,
    "\n\n",
    "data: [DONE]\n\n",
);

/// A provider cut short before its first token: 200, no text, `finish_reason: "length"`.
const EMPTY_LENGTH_JSON: &str = concat!(
    r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"#,
    r#""model":"bench-upstream","choices":[{"index":0,"message":{"role":"assistant","#,
    r#""content":""},"finish_reason":"length"}]}"#
);

/// The same, streamed: an empty role chunk, the finish reason, `[DONE]`.
const EMPTY_LENGTH_SSE: &str = concat!(
    r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench-upstream","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench-upstream","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#,
    "\n\n",
    "data: [DONE]\n\n",
);

/// The fields of a chat request the fake looks at; the rest is accepted and ignored.
#[derive(Debug, Deserialize)]
struct ChatRequest {
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    messages: Vec<serde_json::Value>,
}

/// Binds `addr` (port 0 picks a free port) and returns the listener with its bound address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// How the fake fails, for resilience tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answers at once (the benchmark's behaviour).
    None,
    /// Reads the request and never answers (no status line).
    StallBeforeHeaders,
    /// Streams the role chunk and one delta, then never sends more. A whole answer stalls
    /// before its headers.
    StallMidStream,
    /// Answers this status at once, in OpenAI's error shape.
    Status(u16),
    /// Answers 200 with no text and `finish_reason: "length"` (a provider cut short).
    EmptyLength,
    /// Alternates, every `period`, between 503 at once and answering.
    Flap { period: Duration },
    /// Answers, but only after this long (a provider slow to its first byte).
    Slow(Duration),
}

/// The fault switch and the request and connection counters, shared between a test and the
/// fake it serves.
#[derive(Debug, Clone)]
pub struct Faults {
    fault: Arc<Mutex<Fault>>,
    since: Instant,
    calls: Arc<AtomicUsize>,
    /// Connections accepted and not yet closed: how a test sees, from the provider's side, that
    /// a caller hung up.
    open: Arc<AtomicUsize>,
    /// The body of the last chat request: what a test asserts the provider was (not) told.
    last_body: Arc<Mutex<Option<String>>>,
    /// The headers of the last chat request: what a test asserts the caller propagated
    /// (request id, trace context).
    last_headers: Arc<Mutex<Option<http::HeaderMap>>>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            fault: Arc::new(Mutex::new(Fault::None)),
            since: Instant::now(),
            calls: Arc::new(AtomicUsize::new(0)),
            open: Arc::new(AtomicUsize::new(0)),
            last_body: Arc::new(Mutex::new(None)),
            last_headers: Arc::new(Mutex::new(None)),
        }
    }
}

impl Faults {
    /// From now on, requests meet `fault`.
    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner) = fault;
    }

    /// Chat requests received so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    /// The body of the last chat request received, if any.
    pub fn last_body(&self) -> Option<String> {
        self.last_body
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A header of the last chat request received, if that request had it.
    pub fn last_header(&self, name: &str) -> Option<String> {
        let headers = self
            .last_headers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let value = headers.as_ref()?.get(name)?;
        value.to_str().ok().map(str::to_owned)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The fault a request meets now (a flap resolved to its current half).
    fn current(&self) -> Fault {
        let fault = *self.fault.lock().unwrap_or_else(PoisonError::into_inner);
        match fault {
            Fault::Flap { period } => {
                let half = self.since.elapsed().as_nanos() / period.as_nanos().max(1);
                if half.is_multiple_of(2) {
                    Fault::Status(503)
                } else {
                    Fault::None
                }
            }
            other => other,
        }
    }
}

/// Serves connections until the task is dropped. Errors of one connection end only it.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    serve_with_faults(listener, Faults::default()).await
}

/// [`serve`], failing as `faults` says.
pub async fn serve_with_faults(listener: TcpListener, faults: Faults) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        // Answers are one small write each: do not let Nagle hold them back.
        stream.set_nodelay(true)?;
        let faults = faults.clone();
        faults.open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let io = TokioIo::new(stream);
            let open = Arc::clone(&faults.open);
            // Keep-alive is hyper's default for HTTP/1.1; a closed or broken connection
            // is the client's business, not an error of the fake.
            let _closed = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(
                    io,
                    service_fn(move |request| answer_with(request, faults.clone())),
                )
                .await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

type Chunks = futures::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>;
/// A whole body, or a stream that stalls.
type Body = Either<Full<Bytes>, StreamBody<Chunks>>;

async fn answer_with(
    request: Request<Incoming>,
    faults: Faults,
) -> Result<Response<Body>, Infallible> {
    let whole = |response: Response<Full<Bytes>>| Ok(response.map(Either::Left));
    if request.uri().path() == CHAT_PATH {
        faults.calls.fetch_add(1, Ordering::Relaxed);
    }
    let fault = faults.current();
    match fault {
        Fault::None | Fault::Flap { .. } => {}
        Fault::Slow(delay) => tokio::time::sleep(delay).await,
        Fault::StallBeforeHeaders => return futures::future::pending().await,
        Fault::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return whole(error(status, "injected failure"));
        }
        Fault::StallMidStream | Fault::EmptyLength => {}
    }
    let response = answer(request, &faults).await?;
    let is_stream = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    match (fault, is_stream) {
        (Fault::StallMidStream, true) => {
            let start: Vec<Result<Frame<Bytes>, Infallible>> = COMPLETION_SSE
                .split_inclusive("\n\n")
                .take(2)
                .map(|event| Ok(Frame::data(Bytes::from_static(event.as_bytes()))))
                .collect();
            let stalled = futures::stream::iter(start).chain(futures::stream::pending());
            let (parts, _) = response.into_parts();
            Ok(Response::from_parts(
                parts,
                Either::Right(StreamBody::new(stalled.boxed())),
            ))
        }
        (Fault::StallMidStream, false) => futures::future::pending().await,
        (Fault::EmptyLength, true) => whole(with_type(EMPTY_LENGTH_SSE, "text/event-stream")),
        (Fault::EmptyLength, false) => whole(with_type(EMPTY_LENGTH_JSON, "application/json")),
        _ => whole(response),
    }
}

async fn answer(
    request: Request<Incoming>,
    faults: &Faults,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() != CHAT_PATH {
        return Ok(error(StatusCode::NOT_FOUND, "no such path"));
    }
    if request.method() != Method::POST {
        return Ok(error(StatusCode::METHOD_NOT_ALLOWED, "use POST"));
    }
    *faults
        .last_headers
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(request.headers().clone());
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return Ok(error(StatusCode::PAYLOAD_TOO_LARGE, "body too large")),
    };
    *faults
        .last_body
        .lock()
        .unwrap_or_else(PoisonError::into_inner) =
        Some(String::from_utf8_lossy(&body).into_owned());
    let chat: ChatRequest = match serde_json::from_slice(&body) {
        Ok(chat) => chat,
        Err(_) => return Ok(error(StatusCode::BAD_REQUEST, "body is not a chat request")),
    };
    if chat.messages.is_empty() {
        return Ok(error(StatusCode::BAD_REQUEST, "messages is empty"));
    }
    Ok(if chat.stream {
        with_type(COMPLETION_SSE, "text/event-stream")
    } else {
        with_type(COMPLETION_JSON, "application/json")
    })
}

fn with_type(body: &'static str, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// An error in OpenAI's shape: `{"error":{"message":..,"type":..}}`.
fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "error": {"message": message, "type": "invalid_request_error"}
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
