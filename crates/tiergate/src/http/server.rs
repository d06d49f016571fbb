//! The HTTP listener: accepts connections (TCP_NODELAY on each), optionally TLS, serves HTTP/1.1
//! and HTTP/2 with hyper, and drains connections on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::routes::{HttpState, handle};

/// How long open connections may take to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP on `listener` until `shutdown` completes, then drains open connections.
pub async fn serve_http(
    listener: TcpListener,
    state: Arc<HttpState>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Builder::new(TokioExecutor::new());
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
                let state = Arc::clone(&state);
                let service = service_fn(move |request| handle(Arc::clone(&state), request));
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
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("http connections did not drain in time");
    }
}
