//! The HTTP listener: accepts connections (TCP_NODELAY on each), optionally TLS, serves HTTP/1.1
//! and HTTP/2 with hyper through the serving stack, and drains connections on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::Service;

/// How long open connections may take to close once the listener stops. The node drained its
/// admitted requests before this point; what is left is idle keep-alive and probe traffic.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Transport settings of the HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpListenerSettings {
    /// An HTTP/1 request head must arrive whole within this time, or the connection closes.
    pub header_read_timeout: Duration,
    /// Concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Idle time before a connection's peer is probed (HTTP/2 PING, TCP keepalive).
    pub keepalive_interval: Duration,
    /// How long an HTTP/2 PING may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
}

/// Serves HTTP on `listener` with `service` (the routes inside the serving stack) until
/// `shutdown` completes, then closes open connections gracefully.
pub async fn serve_http<S, E>(
    listener: TcpListener,
    service: S,
    tls: Option<TlsAcceptor>,
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
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if let Err(err) = stream.set_nodelay(true) {
                    tracing::debug!(error = %err, %peer, "set_nodelay failed");
                }
                let keepalive = TcpKeepalive::new()
                    .with_time(settings.keepalive_interval)
                    .with_interval(settings.keepalive_interval);
                if let Err(err) = SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
                    tracing::debug!(error = %err, %peer, "TCP keepalive not set");
                }
                let service = TowerToHyperService::new(service.clone());
                let builder = builder.clone();
                let watcher = graceful.watcher();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let served = match tls {
                        None => {
                            let connection = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .into_owned();
                            watcher.watch(connection).await
                        }
                        Some(acceptor) => {
                            // The handshake is bounded so a silent client cannot hold a task.
                            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                            let stream = match handshake.await {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(err)) => {
                                    tracing::debug!(error = %err, %peer, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
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
