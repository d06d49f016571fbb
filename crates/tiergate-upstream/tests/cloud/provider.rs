//! The fake OpenAI-compatible provider: real HTTP/1.1 and HTTP/2 over rustls, real wire format.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tiergate_upstream::CloudConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::common::TestPki;

pub const API_KEY: &str = "sk-test-0123456789";

/// What the fake provider does with the next requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Normal,
    Status(u16),
    /// Never answers.
    Stall,
    /// Streams the first delta, then never sends more.
    StallMidStream,
    /// Streams some deltas, then closes the body mid-event without `[DONE]`.
    TruncateStream,
    /// Answers 200 with a body that is not JSON.
    BadJson,
    /// Streams 1 KB deltas as fast as it can, never finishing (a provider that ignores
    /// `max_tokens`).
    Endless,
}

pub struct State {
    mode: Mutex<Mode>,
    calls: AtomicUsize,
    last_body: Mutex<Option<Value>>,
    last_version: Mutex<Option<http::Version>>,
}

pub struct Provider {
    state: Arc<State>,
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Provider {
    pub async fn start(pki: Option<&TestPki>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = pki.map(|pki| tokio_rustls::TlsAcceptor::from(Arc::new(server_tls(pki))));
        let state = Arc::new(State {
            mode: Mutex::new(Mode::Normal),
            calls: AtomicUsize::new(0),
            last_body: Mutex::new(None),
            last_version: Mutex::new(None),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                tcp.set_nodelay(true).unwrap();
                let state = shared.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(acceptor) => {
                            // A client that does not trust us aborts the handshake: fine.
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                        }
                    }
                });
            }
        });
        Self { state, addr, task }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// The HTTP version of the last request (HTTP/2 when ALPN negotiated it).
    pub fn last_version(&self) -> Option<http::Version> {
        *self.state.last_version.lock().unwrap()
    }

    pub fn last_body(&self) -> Value {
        self.state.last_body.lock().unwrap().clone().unwrap()
    }

    pub fn https_config(&self, pki: &TestPki) -> CloudConfig {
        let key_file = pki.dir().join("api-key");
        std::fs::write(&key_file, format!("{API_KEY}\n")).unwrap();
        CloudConfig {
            ca_file: Some(pki.ca_file.clone()),
            api_key_file: Some(key_file),
            ..CloudConfig::new(
                format!("https://127.0.0.1:{}/v1/", self.addr.port()),
                "fake-gpt",
            )
        }
    }
}

pub fn server_tls(pki: &TestPki) -> rustls::ServerConfig {
    let certs = CertificateDer::pem_slice_iter(pki.server_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

pub type Body = BoxBody<Bytes, Infallible>;

pub fn json_response(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

pub fn openai_error(status: u16, message: &str, kind: &str) -> Response<Body> {
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "code": null}}),
    )
}

pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    state.calls.fetch_add(1, Ordering::SeqCst);
    *state.last_version.lock().unwrap() = Some(req.version());
    if req.method() != http::Method::POST || req.uri().path() != "/v1/chat/completions" {
        return Ok(openai_error(404, "no such route", "invalid_request_error"));
    }
    let authorized = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == format!("Bearer {API_KEY}").as_bytes());
    if !authorized {
        return Ok(openai_error(
            401,
            "Incorrect API key provided",
            "invalid_request_error",
        ));
    }
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return Ok(openai_error(
            400,
            "We could not parse the JSON body",
            "invalid_request_error",
        ));
    };
    *state.last_body.lock().unwrap() = Some(request.clone());
    let mode = *state.mode.lock().unwrap();
    match mode {
        Mode::Status(429) => {
            let mut response = openai_error(429, "Rate limit reached for requests", "requests");
            response
                .headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("7"));
            return Ok(response);
        }
        Mode::Status(code) => {
            return Ok(openai_error(
                code,
                "The server had an error while processing your request",
                "server_error",
            ));
        }
        Mode::Stall => std::future::pending::<()>().await,
        Mode::BadJson => {
            return Ok(Response::new(
                Full::new(Bytes::from_static(b"{\"choices\": [")).boxed(),
            ));
        }
        Mode::Endless => {
            let chunk = json!({
                "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "fake-gpt-0613",
                "choices": [{"index": 0, "delta": {"content": "x".repeat(1024)}, "finish_reason": null}]
            });
            let event = Bytes::from(format!("data: {chunk}\n\n"));
            let frames = futures::stream::repeat_with(move || {
                Ok::<_, Infallible>(Frame::data(event.clone()))
            });
            return Ok(Response::builder()
                .header("content-type", "text/event-stream")
                .body(BodyExt::boxed(StreamBody::new(frames)))
                .unwrap());
        }
        Mode::Normal | Mode::StallMidStream | Mode::TruncateStream => {}
    }
    let prompt = request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_owned();
    let answer = answer_for(&prompt);
    // OpenAI answers logprobs only to `logprobs: true`, with `top_logprobs` alternatives.
    let top = (request["logprobs"].as_bool() == Some(true))
        .then(|| request["top_logprobs"].as_u64().unwrap_or(0) as usize);
    let usage = json!({
        "prompt_tokens": prompt.split_whitespace().count(),
        "completion_tokens": answer.split_whitespace().count(),
        "total_tokens": prompt.split_whitespace().count() + answer.split_whitespace().count()
    });
    if request["stream"].as_bool() != Some(true) {
        return Ok(json_response(
            200,
            &json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "fake-gpt-0613",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop",
                    "logprobs": top.map(|k| json!({"content": pieces(&answer).iter().enumerate().map(|(i, p)| token_logprob(p, i, k)).collect::<Vec<_>>(), "refusal": null}))}],
                "usage": usage
            }),
        ));
    }
    let sse = sse_body(&answer, &usage, top);
    let bytes = match mode {
        Mode::StallMidStream => {
            // The role chunk and the first delta, then silence.
            let second = sse
                .match_indices("\n\n")
                .nth(2)
                .map(|(i, _)| i + 2)
                .unwrap();
            sse.as_bytes()[..second].to_vec()
        }
        Mode::TruncateStream => {
            let cut = sse.find("\"finish_reason\":\"stop\"").unwrap();
            sse.as_bytes()[..cut].to_vec()
        }
        _ => sse.into_bytes(),
    };
    let stall = mode == Mode::StallMidStream;
    // Small frames, sent apart, so that events arrive split mid-line and mid-event.
    let frames = async_stream::stream! {
        for piece in bytes.chunks(7) {
            yield Ok::<_, Infallible>(Frame::data(Bytes::copy_from_slice(piece)));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if stall {
            std::future::pending::<()>().await;
        }
    };
    Ok(Response::builder()
        .header("content-type", "text/event-stream; charset=utf-8")
        .header("cache-control", "no-cache")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .unwrap())
}

pub fn answer_for(prompt: &str) -> String {
    format!("You said: {prompt} \u{2713}")
}

/// The answer as OpenAI streams it: a role chunk, one chunk per word, a finish chunk, a usage
/// chunk, `[DONE]`; with a keep-alive comment and mixed line ends as real servers send.
pub fn sse_body(answer: &str, usage: &Value, top: Option<usize>) -> String {
    let chunk = |delta: Value, finish: Value, logprobs: Value| {
        json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "fake-gpt-0613",
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]
        })
    };
    let mut out = String::from(": keep-alive\n\n");
    out += &format!(
        "data: {}\n\n",
        chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
            Value::Null
        )
    );
    for (i, piece) in pieces(answer).into_iter().enumerate() {
        let end = if i % 2 == 0 { "\r\n\r\n" } else { "\n\n" };
        let logprobs = top.map_or(
            Value::Null,
            |k| json!({"content": [token_logprob(&piece, i, k)], "refusal": null}),
        );
        out += &format!(
            "data: {}{end}",
            chunk(json!({"content": piece}), Value::Null, logprobs)
        );
    }
    out += &format!("data: {}\n\n", chunk(json!({}), json!("stop"), Value::Null));
    out += &format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "fake-gpt-0613", "choices": [], "usage": usage})
    );
    out += "data: [DONE]\n\n";
    out
}

/// The answer's tokens as this provider counts them: one per word, with its leading space.
pub fn pieces(answer: &str) -> Vec<String> {
    (answer.split(' ').enumerate())
        .map(|(i, word)| {
            if i == 0 {
                word.to_owned()
            } else {
                format!(" {word}")
            }
        })
        .collect()
}

/// OpenAI's logprob entry for token `i` with `k` alternatives: the token itself first (the
/// provider answers greedily), then made-up others. The first token has `bytes: null`, as
/// OpenAI sends for tokens without a byte form.
pub fn token_logprob(piece: &str, i: usize, k: usize) -> Value {
    let logprob = -0.125 * (i as f64 + 1.0);
    let bytes = |t: &str| {
        if i == 0 {
            Value::Null
        } else {
            json!(t.as_bytes())
        }
    };
    let top: Vec<Value> = (0..k)
        .map(|j| {
            let token = if j == 0 {
                piece.to_owned()
            } else {
                format!("alt{j}")
            };
            json!({"token": token, "logprob": logprob - j as f64, "bytes": bytes(&token)})
        })
        .collect();
    json!({"token": piece, "logprob": logprob, "bytes": bytes(piece), "top_logprobs": top})
}
