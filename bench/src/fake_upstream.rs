//! A fake OpenAI-compatible provider that answers at once: the test double of a cloud LLM
//! provider for the gateway-overhead benchmark. It speaks the real wire format (HTTP/1.1 with
//! keep-alive, `POST /v1/chat/completions`, a `chat.completion` JSON with usage, or an SSE
//! stream of `chat.completion.chunk`s ending in `data: [DONE]`) and spends as little as it can,
//! so that what the benchmark measures is the gateway, not the upstream.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
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

/// Serves connections until the task is dropped. Errors of one connection end only it.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        // Answers are one small write each: do not let Nagle hold them back.
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let io = TokioIo::new(stream);
            // Keep-alive is hyper's default for HTTP/1.1; a closed or broken connection
            // is the client's business, not an error of the fake.
            let _closed = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(io, service_fn(answer))
                .await;
        });
    }
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() != CHAT_PATH {
        return Ok(error(StatusCode::NOT_FOUND, "no such path"));
    }
    if request.method() != Method::POST {
        return Ok(error(StatusCode::METHOD_NOT_ALLOWED, "use POST"));
    }
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return Ok(error(StatusCode::PAYLOAD_TOO_LARGE, "body too large")),
    };
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
