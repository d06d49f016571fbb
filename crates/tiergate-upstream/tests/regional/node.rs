//! An in-test regional node: tonic serving an echo `Inference` and tonic-health.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tiergate_proto::v1::generate_stream_response::Event;
use tiergate_proto::v1::inference_server::{Inference, InferenceServer};
use tiergate_proto::v1::{
    ExplainResponse, GenerateRequest, GenerateResponse, GenerateStreamResponse, RoutingInfo,
    TextDelta, Tier, Usage,
};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};
use tonic_health::server::HealthReporter;

use crate::common::TestPki;

/// Answers `"{node}: {prompt}"`, a word a delta when streamed. A prompt starting with
/// `sleep:N ` waits N ms first; a streamed one starting with `stall:N ` sends N deltas, then
/// nothing more while the call lasts, and `endless` sends 64 KiB deltas without end.
#[derive(Clone)]
pub struct Echo {
    name: String,
    calls: Arc<AtomicUsize>,
    streams: Arc<AtomicUsize>,
    pub seen_timeout: Arc<Mutex<Option<String>>>,
}

impl Echo {
    pub async fn begin(&self, request: &Request<GenerateRequest>) -> Result<String, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.seen_timeout.lock().unwrap() = request
            .metadata()
            .get("grpc-timeout")
            .map(|v| v.to_str().unwrap().to_owned());
        let prompt = request.get_ref().prompt.clone();
        if prompt.is_empty() {
            return Err(Status::invalid_argument("prompt is empty"));
        }
        if let Some(rest) = prompt.strip_prefix("sleep:") {
            let ms: u64 = rest.split_whitespace().next().unwrap().parse().unwrap();
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Ok(prompt)
    }

    pub fn routing(&self) -> RoutingInfo {
        RoutingInfo {
            tier: Tier::Regional as i32,
            reason: "echo".into(),
            node: self.name.clone(),
            ..Default::default()
        }
    }

    pub fn answer(&self, prompt: &str) -> String {
        format!("{}: {prompt}", self.name)
    }

    fn usage() -> Usage {
        Usage {
            prompt_tokens: 1,
            completion_tokens: 2,
        }
    }
}

pub type EventStream = Pin<Box<dyn Stream<Item = Result<GenerateStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Inference for Echo {
    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<GenerateResponse>, Status> {
        let prompt = self.begin(&request).await?;
        Ok(Response::new(GenerateResponse {
            text: self.answer(&prompt),
            routing: Some(self.routing()),
            usage: Some(Self::usage()),
            finish_reason: "stop".into(),
            model: "echo".into(),
            ..Default::default()
        }))
    }

    type GenerateStreamStream = EventStream;

    async fn generate_stream(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.streams.fetch_add(1, Ordering::SeqCst);
        let prompt = self.begin(&request).await?;
        let answer = self.answer(&prompt);
        let stall_after: Option<usize> = prompt
            .strip_prefix("stall:")
            .map(|rest| rest.split_whitespace().next().unwrap().parse().unwrap());
        let mut events = vec![GenerateStreamResponse {
            event: Some(Event::Routed(self.routing())),
        }];
        for (i, word) in answer.split(' ').enumerate() {
            let text = if i == 0 {
                word.to_owned()
            } else {
                format!(" {word}")
            };
            events.push(GenerateStreamResponse {
                event: Some(Event::Delta(TextDelta {
                    text,
                    ..Default::default()
                })),
            });
        }
        events.push(GenerateStreamResponse {
            event: Some(Event::Done(GenerateResponse {
                routing: Some(self.routing()),
                usage: Some(Self::usage()),
                finish_reason: "stop".into(),
                model: "echo".into(),
                ..Default::default()
            })),
        });
        if prompt.starts_with("endless") {
            let chunk = GenerateStreamResponse {
                event: Some(Event::Delta(TextDelta {
                    text: "x".repeat(64 * 1024),
                    ..Default::default()
                })),
            };
            let endless = futures::stream::repeat(chunk).map(Ok);
            events.truncate(1);
            let routed = futures::stream::iter(events.into_iter().map(Ok));
            return Ok(Response::new(Box::pin(routed.chain(endless))));
        }
        if let Some(deltas) = stall_after {
            // The routed message and `deltas` deltas, then silence.
            events.truncate(1 + deltas);
            let sent = futures::stream::iter(events.into_iter().map(Ok));
            return Ok(Response::new(Box::pin(
                sent.chain(futures::stream::pending()),
            )));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(
            events.into_iter().map(Ok),
        ))))
    }

    async fn explain(
        &self,
        _request: Request<GenerateRequest>,
    ) -> Result<Response<ExplainResponse>, Status> {
        Err(Status::unimplemented("not in the echo"))
    }
}

/// A regional node on its own runtime, so that stopping it closes every connection at once,
/// as a killed process would.
pub struct Node {
    pub echo: Echo,
    addr: SocketAddr,
    health: HealthReporter,
    runtime: Option<tokio::runtime::Runtime>,
    tls: bool,
}

impl Node {
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, None).await
    }

    pub async fn start_with(name: &str, pki: Option<&TestPki>) -> Self {
        let echo = Echo {
            name: name.to_owned(),
            calls: Arc::new(AtomicUsize::new(0)),
            streams: Arc::new(AtomicUsize::new(0)),
            seen_timeout: Arc::new(Mutex::new(None)),
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<InferenceServer<Echo>>().await;
        let mut builder = Server::builder();
        if let Some(pki) = pki {
            let tls = ServerTlsConfig::new()
                .identity(Identity::from_pem(
                    &pki.server_cert_pem,
                    &pki.server_key_pem,
                ))
                .client_ca_root(Certificate::from_pem(&pki.ca_pem));
            builder = builder.tls_config(tls).unwrap();
        }
        let router = builder
            .add_service(health_service)
            .add_service(InferenceServer::new(echo.clone()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            router.serve_with_incoming(incoming).await.unwrap();
        });
        Self {
            echo,
            addr,
            health,
            runtime: Some(runtime),
            tls: pki.is_some(),
        }
    }

    pub fn uri(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.addr.port())
    }

    pub fn calls(&self) -> usize {
        self.echo.calls.load(Ordering::SeqCst)
    }

    /// How many of the calls were `GenerateStream`.
    pub fn streams(&self) -> usize {
        self.echo.streams.load(Ordering::SeqCst)
    }

    pub async fn set_serving(&self, serving: bool) {
        if serving {
            self.health.set_serving::<InferenceServer<Echo>>().await;
        } else {
            self.health.set_not_serving::<InferenceServer<Echo>>().await;
        }
    }

    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}
