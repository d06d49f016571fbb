//! Authentication, in the serving stack after the trace span and before admission: finds the
//! tenant of the request's API key, records its name in the request's span, checks its request
//! rate, and puts it in the request's extensions for the front ends and the node. Refusals are
//! answered here, in the API's shape: 401 + `WWW-Authenticate: Bearer` / UNAUTHENTICATED, and
//! 429 + `Retry-After` / RESOURCE_EXHAUSTED + `retry-after`. Before admission, so that a flood
//! of bad keys or an over-limit tenant takes no concurrency slot from anyone.
//!
//! Only the API routes are guarded (HTTP `/v1/…`, gRPC `tiergate.v1.Inference` and
//! `tiergate.v1.Admin`, the gRPC twin of `GET /v1/report`, with the same rule): probes,
//! metrics, gRPC health and reflection stay open. A gRPC call from a peer node (the deployment's
//! peer key, or a verified client certificate) passes without a tenant: its own node
//! authenticated and limited the client. The credential headers are removed once read, so no
//! later layer can log or forward them.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{BoxFuture, FutureExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use super::admission::{Api, GuardedBody};
use super::refusal::{grpc_error, http_error, retry_after};
use crate::auth::Authenticator;

/// The authentication layer; a no-op without tenants.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    pub auth: Option<Arc<Authenticator>>,
    pub api: Api,
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Authenticate<S> {
        Authenticate {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Authenticate<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, ReqBody, B> Service<Request<ReqBody>> for Authenticate<S>
where
    S: Service<Request<ReqBody>, Response = Response<GuardedBody<B>>, Error = Infallible>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<GuardedBody<B>>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let api = self.layer.api;
        let Some(auth) = &self.layer.auth else {
            return self.inner.call(request).boxed();
        };
        let path = request.uri().path();
        if !is_guarded(api, path) || (api == Api::Grpc && from_peer(auth, &request)) {
            return self.inner.call(request).boxed();
        }
        let inference = api.is_inference(path);
        let tenant = match auth.authenticate(request.headers()) {
            Ok(tenant) => tenant,
            Err(failure) => {
                tracing::debug!(
                    reason = failure.as_str(),
                    "request refused: not authenticated"
                );
                let response = unauthenticated(api, failure.message());
                return std::future::ready(Ok(response)).boxed();
            }
        };
        tracing::Span::current().record("tenant", tenant.name());
        let headers = request.headers_mut();
        headers.remove(header::AUTHORIZATION);
        headers.remove("x-api-key");
        if inference && let Err(wait) = tenant.admit_request() {
            let message = format!(
                "tenant `{}` is over its requests_per_second; retry in {} s",
                tenant.name(),
                wait.as_secs()
            );
            let mut response = match api {
                Api::Http => http_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", &message),
                Api::Grpc => grpc_error(tonic::Code::ResourceExhausted, &message),
            };
            retry_after(&mut response, api, wait.as_secs());
            return std::future::ready(Ok(response)).boxed();
        }
        request.extensions_mut().insert(tenant);
        self.inner.call(request).boxed()
    }
}

/// The routes that need a key: the HTTP API (`/v1/…`, models and report included), gRPC
/// inference and admin (any tenant's key or a peer, as `GET /v1/report`).
fn is_guarded(api: Api, path: &str) -> bool {
    match api {
        Api::Http => path.starts_with("/v1/"),
        Api::Grpc => {
            path.starts_with("/tiergate.v1.Inference/") || path.starts_with("/tiergate.v1.Admin/")
        }
    }
}

/// A peer node: the deployment's peer key, or a client certificate the TLS handshake verified
/// against `client_ca_file` (the same peers whose forwarding information is trusted).
fn from_peer<B>(auth: &Authenticator, request: &Request<B>) -> bool {
    let verified_certificate = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
        .is_some_and(|certs| !certs.is_empty());
    verified_certificate || auth.is_peer_key(request.headers())
}

fn unauthenticated<B>(api: Api, message: &str) -> Response<GuardedBody<B>> {
    match api {
        Api::Http => {
            let mut response =
                http_error(StatusCode::UNAUTHORIZED, "authentication_error", message);
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
        Api::Grpc => grpc_error(tonic::Code::Unauthenticated, message),
    }
}
