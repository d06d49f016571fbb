//! Starting a node: load the engine, build the upstream clients, bind both listeners, serve
//! until told to stop. Used by `tiergate serve`, by the in-process demo and by tests.

use std::net::SocketAddr;
use std::sync::Arc;

use tiergate_upstream::{CloudClient, RegionalClient};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cache::ResponseCache;
use crate::config::Config;
use crate::http::{HttpState, serve_http};
use crate::metrics::NodeMetrics;
use crate::node::{Node, NodeApi, NodeParts};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot load the local model")]
    Engine(#[from] tiergate_engine::EngineError),
    #[error("cannot set up upstream `{tier}`: {message}")]
    Upstream { tier: &'static str, message: String },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot register metrics")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot set up TLS")]
    Tls(#[from] crate::tls::TlsError),
    #[error("the engine loader thread failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("invalid configuration")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Model(#[from] crate::model_trust::LoadError),
}

/// A node that serves until [`RunningNode::shutdown`].
#[derive(Debug)]
pub struct RunningNode {
    pub name: String,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub node: Arc<Node>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningNode {
    /// Stops accepting, drains open connections and waits for both servers to end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Waits until both servers end (after a shutdown signal from elsewhere).
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// A handle that makes the node stop when `true` is sent.
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Loads the engine and builds the upstream clients: a node ready to answer, not yet listening
/// (`route explain` uses it as is).
pub async fn build_node(config: &Config) -> Result<(Arc<Node>, NodeMetrics), StartError> {
    // Loading checks the signature (with trusted keys), verifies hashes and builds ort sessions.
    let (engine, loaded) =
        crate::model_trust::load_engine(&config.engine, &config.model_trust).await?;
    let regional = match &config.upstreams.regional {
        Some(regional) => {
            Some(
                RegionalClient::new(regional).map_err(|e| StartError::Upstream {
                    tier: "regional",
                    message: e.to_string(),
                })?,
            )
        }
        None => None,
    };
    let cloud = match &config.upstreams.cloud {
        Some(cloud) => Some(CloudClient::new(cloud).map_err(|e| StartError::Upstream {
            tier: "cloud",
            message: e.to_string(),
        })?),
        None => None,
    };
    let peer_key = match &config.node.peer_key_file {
        Some(path) => Some(tiergate_upstream::PeerKey::new(
            &tiergate_upstream::read_peer_key(path).map_err(|e| {
                crate::config::ConfigError::Invalid {
                    path: "node.peer_key_file".to_owned(),
                    message: e.to_string(),
                }
            })?,
        )),
        None => None,
    };
    let metrics = NodeMetrics::new(&config.node.name)?;
    let cache = ResponseCache::open(&config.cache, &metrics);
    let node = Node::new(NodeParts {
        cache,
        name: config.node.name.clone(),
        tier: config.node.tier,
        routed_model: config.node.routed_model.clone(),
        engine,
        router: config.router,
        budget: config.budget,
        retry: config.retry,
        hedge: config.hedge,
        regional,
        cloud,
        limits: config.limits.clone(),
        metrics: metrics.clone(),
        peer_key,
        privacy: config.privacy.clone(),
    });
    crate::model_trust::watch(
        &config.node.name,
        &config.model_trust,
        loaded,
        &node,
        &metrics,
    )?;
    Ok((node, metrics))
}

/// Loads everything and starts serving; returns once both listeners are bound.
pub async fn start_node(config: Config) -> Result<RunningNode, StartError> {
    let (node, metrics) = build_node(&config).await?;

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })
    };
    let grpc_listener = bind(config.server.grpc_listen).await?;
    let http_listener = bind(config.server.http_listen).await?;
    let grpc_addr = local_addr(&grpc_listener, config.server.grpc_listen);
    let http_addr = local_addr(&http_listener, config.server.http_listen);

    let (grpc_tls, http_tls) = match &config.server.tls {
        Some(tls) => (Some(tls.grpc_config()?), Some(tls.http_acceptor()?)),
        None => (None, None),
    };
    let (stop, stopped) = watch::channel(false);
    let api: Arc<dyn NodeApi> = Arc::new(Arc::clone(&node));
    let grpc_task = {
        let api = Arc::clone(&api);
        let stopped = stopped.clone();
        tokio::spawn(async move {
            if let Err(err) =
                crate::grpc::serve_grpc(grpc_listener, api, grpc_tls, wait_for_stop(stopped)).await
            {
                tracing::error!(error = %err, "gRPC server failed");
            }
        })
    };
    let http_task = {
        let state = Arc::new(HttpState { node: api, metrics });
        tokio::spawn(serve_http(
            http_listener,
            state,
            http_tls,
            wait_for_stop(stopped),
        ))
    };
    tracing::info!(
        node = %config.node.name,
        tier = %config.node.tier,
        %grpc_addr,
        %http_addr,
        "node serving"
    );
    Ok(RunningNode {
        name: config.node.name,
        grpc_addr,
        http_addr,
        node,
        stop,
        tasks: vec![grpc_task, http_task],
    })
}

fn local_addr(listener: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(fallback)
}

async fn wait_for_stop(mut stopped: watch::Receiver<bool>) {
    while !*stopped.borrow_and_update() {
        if stopped.changed().await.is_err() {
            return;
        }
    }
}
