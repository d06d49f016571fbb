//! Network faults between two real processes, on 127.0.0.1: a TCP proxy whose mode a test
//! switches ([`FaultProxy`]), and a listener that accepts and never speaks ([`Blackhole`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Bytes flow both ways.
    Pass,
    /// Connections are accepted and closed at once; open ones are cut (a node that went away).
    Refuse,
    /// Connections are accepted and held; nothing flows either way (a peer that hangs).
    Blackhole,
    /// Bytes flow both ways, but each read from the target reaches the client this much later
    /// (a slow link: every call through it takes at least this long).
    Delay(Duration),
    /// The connections open now go silent for good and stay open (a peer that hung while TCP
    /// lives on: its kernel, or a middlebox, still acknowledges); new ones pass.
    FreezeOpen,
}

/// A TCP proxy to `target` on 127.0.0.1:0; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: watch::Sender<ProxyMode>,
    task: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    pub async fn start(target: SocketAddr, mode: ProxyMode) -> anyhow::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = watch::channel(mode);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, target, rx.clone()));
            }
        });
        Ok(FaultProxy {
            addr,
            mode: tx,
            task,
        })
    }

    /// Switches the mode; it applies to open connections too.
    pub fn set(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn relay(mut client: TcpStream, target: SocketAddr, mut mode: watch::Receiver<ProxyMode>) {
    let _ = client.set_nodelay(true);
    let current = *mode.borrow_and_update();
    match current {
        ProxyMode::Refuse => return,
        ProxyMode::Blackhole => {
            hold(client, mode).await;
            return;
        }
        ProxyMode::Pass | ProxyMode::Delay(_) | ProxyMode::FreezeOpen => {}
    }
    let mut delay = delay_of(current);
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return;
    };
    let _ = upstream.set_nodelay(true);
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let mut up = [0_u8; 16 * 1024];
    let mut down = [0_u8; 16 * 1024];
    loop {
        tokio::select! {
            read = client_read.read(&mut up) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => if upstream_write.write_all(&up[..n]).await.is_err() { return },
            },
            read = upstream_read.read(&mut down) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    if client_write.write_all(&down[..n]).await.is_err() { return }
                }
            },
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                match *mode.borrow_and_update() {
                    next @ (ProxyMode::Pass | ProxyMode::Delay(_)) => delay = delay_of(next),
                    ProxyMode::Refuse => return,
                    ProxyMode::Blackhole | ProxyMode::FreezeOpen => break,
                }
            }
        }
    }
    // Stop relaying but keep both ends open: a peer that hangs mid-call.
    let _held_upstream = upstream;
    hold(client, mode).await;
}

fn delay_of(mode: ProxyMode) -> Duration {
    match mode {
        ProxyMode::Delay(delay) => delay,
        _ => Duration::ZERO,
    }
}

/// Keeps a connection open and silent until the mode becomes `Refuse` or the proxy stops.
async fn hold(mut client: TcpStream, mut mode: watch::Receiver<ProxyMode>) {
    let mut sink = [0_u8; 16 * 1024];
    loop {
        tokio::select! {
            // Read and drop what the client sends, so it never blocks on a full buffer.
            read = client.read(&mut sink) => if matches!(read, Ok(0) | Err(_)) { return },
            changed = mode.changed() => {
                if changed.is_err() || *mode.borrow_and_update() == ProxyMode::Refuse {
                    return;
                }
            }
        }
    }
}

/// A listener that accepts TCP connections and never says a word: no HTTP/2 preface, no
/// TLS, nothing. Stops (closing them) when dropped.
#[derive(Debug)]
pub struct Blackhole {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Blackhole {
    pub async fn start() -> anyhow::Result<Blackhole> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let held = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                held.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(socket);
            }
        });
        Ok(Blackhole { addr, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
