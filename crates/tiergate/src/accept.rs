//! Connection intake shared by both listeners: socket options on every accepted connection,
//! a bound on how long a new connection may stay silent (TLS handshake, or the first bytes of a
//! plaintext one), and for gRPC the stream of ready connections tonic serves.
//!
//! Without the bound a TCP peer that connects and never speaks held a file descriptor and a
//! task for ever: HTTP/2 PINGs only start once a connection speaks HTTP/2.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::tls::ReloadingTls;

/// How the listeners treat a fresh connection.
#[derive(Debug, Clone, Copy)]
pub struct IntakeSettings {
    /// The TLS handshake, or a plaintext connection's first bytes, must arrive within this.
    pub handshake_timeout: Duration,
    /// TCP keepalive probes after this long idle.
    pub keepalive_interval: Duration,
    /// Data for the peer may stay unsent (its TCP window closed: it stopped reading) or
    /// unacknowledged this long before the kernel resets the connection (TCP_USER_TIMEOUT).
    pub send_timeout: Duration,
}

/// TCP_NODELAY (see DESIGN: a peer stalled 44 ms per request without it), TCP keepalive (finds
/// HTTP/1 peers that vanished) and the send timeout: a peer that stops reading while still
/// acknowledging (a frozen app) closes its window, and nothing else would ever end the
/// connection, nor free the admission slot of the answer waiting on it.
fn tune(stream: &TcpStream, peer: SocketAddr, settings: IntakeSettings) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(error = %err, %peer, "set_nodelay failed");
    }
    let keepalive = TcpKeepalive::new()
        .with_time(settings.keepalive_interval)
        .with_interval(settings.keepalive_interval);
    let socket = SockRef::from(stream);
    if let Err(err) = socket.set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %err, %peer, "TCP keepalive not set");
    }
    // Linux applies it to a closed window since 5.10 (time since the first window probe).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(err) = socket.set_tcp_user_timeout(Some(settings.send_timeout)) {
        tracing::debug!(error = %err, %peer, "TCP user timeout not set");
    }
}

/// The next connection on `listener`, tuned; `None` after a failed accept (out of file
/// descriptors and the like), which backs off first instead of spinning. Cancel-safe.
pub async fn accept_tuned(
    listener: &TcpListener,
    settings: IntakeSettings,
) -> Option<(TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok((stream, peer)) => {
            tune(&stream, peer, settings);
            Some((stream, peer))
        }
        Err(err) => {
            tracing::warn!(error = %err, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// Waits, without consuming anything, until the peer has sent a byte: false when it closed or
/// stayed silent for `timeout` (the caller then drops the connection).
pub async fn first_bytes(stream: &TcpStream, peer: SocketAddr, timeout: Duration) -> bool {
    let mut byte = [0_u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut byte)).await {
        Ok(Ok(n)) => n > 0,
        Ok(Err(err)) => {
            tracing::debug!(error = %err, %peer, "connection failed before its first bytes");
            false
        }
        Err(_) => {
            tracing::debug!(%peer, "connection sent nothing in time: closed");
            false
        }
    }
}

/// The TLS handshake with the acceptor in force now, bounded by `timeout`.
pub async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(err)) => {
            tracing::debug!(error = %err, %peer, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// How many ready connections may wait for tonic to pick them up.
const READY_QUEUE: usize = 64;

type Incoming<IO> = ReceiverStream<Result<IO, std::io::Error>>;

/// gRPC over TLS: each accepted connection's handshake runs in its own task (a slow client
/// delays nobody), and tonic gets the connections that finished it. Tonic reads the verified
/// client certificate from the TLS stream (mTLS peer identity).
pub fn grpc_tls_incoming(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    settings: IntakeSettings,
) -> Incoming<TlsStream<TcpStream>> {
    incoming(listener, settings, move |stream, peer| {
        let acceptor = tls.grpc_acceptor();
        handshake(acceptor, stream, peer, settings.handshake_timeout)
    })
}

/// Plaintext gRPC: a connection reaches tonic once it has sent its first bytes (the HTTP/2
/// preface).
pub fn grpc_plain_incoming(listener: TcpListener, settings: IntakeSettings) -> Incoming<TcpStream> {
    incoming(listener, settings, move |stream, peer| async move {
        first_bytes(&stream, peer, settings.handshake_timeout)
            .await
            .then_some(stream)
    })
}

/// Accepts until the consumer (tonic) drops the stream, i.e. until the server stops.
fn incoming<IO, F, Fut>(listener: TcpListener, settings: IntakeSettings, prepare: F) -> Incoming<IO>
where
    IO: Send + 'static,
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = Option<IO>> + Send + 'static,
{
    let (ready, receiver) = mpsc::channel(READY_QUEUE);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = accept_tuned(&listener, settings) => accepted,
                () = ready.closed() => return,
            };
            let Some((stream, peer)) = accepted else {
                continue;
            };
            let prepared = prepare(stream, peer);
            let ready = ready.clone();
            tokio::spawn(async move {
                if let Some(connection) = prepared.await {
                    // Fails only when the server stopped meanwhile: the connection is dropped.
                    let _ = ready.send(Ok(connection)).await;
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}
