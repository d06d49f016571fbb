//! The HTTP listener: accepts connections ([`crate::accept`]: socket options, a bounded
//! handshake or first bytes), optionally TLS with certificates that reload, serves HTTP/1.1
//! and HTTP/2 with hyper through the serving stack, and drains connections on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::Service;

use crate::accept::{IntakeSettings, accept_tuned, first_bytes, handshake};
use crate::tls::ReloadingTls;

/// How long open connections may take to close once the listener stops. The node drained its
/// admitted requests before this point; what is left is idle keep-alive and probe traffic.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Transport settings of the HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpListenerSettings {
    /// An HTTP/1 request head must arrive whole within this time, or the connection closes.
    pub header_read_timeout: Duration,
    /// Concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// How long an HTTP/2 PING may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// The handshake bound and the socket options of each accepted connection; its keepalive
    /// interval also paces HTTP/2 PINGs.
    pub intake: IntakeSettings,
}

/// Serves HTTP on `listener` with `service` (the routes inside the serving stack) until
/// `shutdown` completes, then closes open connections gracefully.
pub async fn serve_http<S, E>(
    listener: TcpListener,
    service: S,
    tls: Option<Arc<ReloadingTls>>,
    settings: HttpListenerSettings,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<UnsyncBoxBody<Bytes, E>>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    // hyper enforces the header-read timeout only with a timer; without one a client that
    // sends half its headers holds the connection (and its task) for ever.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        // A vanished HTTP/2 client is found by PINGs; HTTP/1 ones by TCP keepalive (below).
        .keep_alive_interval(settings.intake.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = accept_tuned(&listener, settings.intake) => {
                let Some((stream, peer)) = accepted else {
                    continue;
                };
                let service = TowerToHyperService::new(service.clone());
                let builder = builder.clone();
                let watcher = graceful.watcher();
                // Read per connection: a reloaded certificate is used from the next one on.
                let acceptor = tls.as_ref().map(|tls| tls.http_acceptor());
                let timeout = settings.intake.handshake_timeout;
                tokio::spawn(async move {
                    let served = match acceptor {
                        None => {
                            // hyper sniffs the HTTP version before its header timer starts.
                            if !first_bytes(&stream, peer, timeout).await {
                                return;
                            }
                            let connection = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .into_owned();
                            watcher.watch(connection).await
                        }
                        Some(acceptor) => {
                            let Some(stream) = handshake(acceptor, stream, peer, timeout).await
                            else {
                                return;
                            };
                            let connection = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .into_owned();
                            watcher.watch(connection).await
                        }
                    };
                    if let Err(err) = served {
                        tracing::debug!(error = %err, %peer, "http connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(CLOSE_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("http connections did not close in time");
    }
}
