//! Starting a node: load the engine, build the upstream clients, bind both listeners, serve
//! until told to stop. Used by `tiergate serve`, by the in-process demo and by tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tiergate_engine::Engine;
use tiergate_upstream::{CloudClient, RegionalClient};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::accept::IntakeSettings;
use crate::auth::Authenticator;
use crate::cache::ResponseCache;
use crate::config::Config;
use crate::device::{BudgetMonitor, DeviceReporter, EffectiveProfile, Performance};
use crate::grpc::GrpcListenerSettings;
use crate::http::{HttpListenerSettings, HttpState, handle, serve_http};
use crate::metrics::NodeMetrics;
use crate::model_trust::{ModelReloadOutcome, ModelReloader};
use crate::node::{EngineSlot, Node, NodeApi, NodeParts};
use crate::shell::{
    Api, CorsConfig, EndAtStop, Gate, Lifecycle, Phase, ReadinessProbe, RouteTimeouts,
    StackSettings, serving_stack,
};
use crate::tls::{ReloadOutcome, ReloadingTls, TlsMetrics};

/// Above `limits.max_timeout`: how long an inference route may take to start its response
/// before the stack answers for it.
const INFERENCE_TIMEOUT_MARGIN: Duration = Duration::from_secs(10);
/// How long a probe, a scrape or the model list may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// The one state health, `/readyz` and `tiergate_ready` read.
    pub lifecycle: Lifecycle,
    gate: Arc<Gate>,
    drain: DrainSettings,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    reloader: Reloader,
}

/// What SIGHUP reloads, in this order: the TLS certificate (quick; new connections use it at
/// once), then the local model (seconds; see [`Reloader::reload`]).
#[derive(Debug, Clone)]
pub struct Reloader {
    tls: Option<Arc<ReloadingTls>>,
    model: Arc<ModelReloader>,
}

/// What one [`Reloader::reload`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadReport {
    /// None: the node serves without TLS.
    pub tls: Option<ReloadOutcome>,
    pub model: ModelReloadOutcome,
}

impl Reloader {
    /// Re-reads the certificate files now (a set that failed before is tried and reported
    /// again), then re-verifies the model folder and swaps in a changed model that passes.
    pub async fn reload(&self) -> ReloadReport {
        let tls = match &self.tls {
            Some(tls) => Some(reload_tls(Arc::clone(tls), true).await),
            None => None,
        };
        let model = self.model.reload().await;
        ReloadReport { tls, model }
    }
}

async fn reload_tls(tls: Arc<ReloadingTls>, forced: bool) -> ReloadOutcome {
    // Reading files blocks.
    tokio::task::spawn_blocking(move || tls.reload(forced))
        .await
        .unwrap_or(ReloadOutcome::Failed)
}

/// The periodic check of `[server.tls] reload_interval`: picks up rotated files without a signal
/// (cert-manager, certbot hooks that do not signal).
async fn watch_tls_files(tls: Arc<ReloadingTls>) {
    let mut ticks = tokio::time::interval(tls.interval());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: the files were just loaded.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        reload_tls(Arc::clone(&tls), false).await;
    }
}

/// How a node drains (`[server] drain_delay`, `drain_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct DrainSettings {
    pub delay: Duration,
    pub timeout: Duration,
}

/// What a drain did, for the log line and for tests.
#[derive(Debug, Clone, Copy)]
pub struct DrainReport {
    /// Admitted requests still in flight when the drain timeout ran out (0: a clean drain).
    pub abandoned: usize,
    pub elapsed: Duration,
}

/// How long the listeners may take to close once nothing admitted is in flight.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the engine may take to notice that the answers it generates were ended (one
/// forward pass) before the process exits anyway.
const ENGINE_SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

impl RunningNode {
    /// The graceful shutdown, in order:
    /// 1. draining: gRPC health and `/readyz` turn NOT_SERVING at once (`tiergate_ready` 0),
    ///    while requests are still served for `drain_delay`, so that watchers move traffic first;
    /// 2. closing: new inference requests get 503 / UNAVAILABLE with `Retry-After`; in-flight
    ///    ones have up to `drain_timeout` to finish;
    /// 3. stopped: the listeners close (health watches end), open connections are closed.
    pub async fn shutdown(self) -> DrainReport {
        let started = Instant::now();
        self.lifecycle.set(Phase::Draining);
        tracing::info!(delay = ?self.drain.delay, "draining: reported NOT_SERVING");
        tokio::time::sleep(self.drain.delay).await;
        self.lifecycle.set(Phase::Closing);
        let in_flight = self.gate.in_flight();
        tracing::info!(in_flight, timeout = ?self.drain.timeout, "closing: waiting for in-flight requests");
        let abandoned = match tokio::time::timeout(self.drain.timeout, self.gate.idle()).await {
            Ok(()) => 0,
            Err(_) => {
                let left = self.gate.in_flight();
                tracing::warn!(
                    in_flight = left,
                    "drain timeout: in-flight requests abandoned"
                );
                left
            }
        };
        self.lifecycle.set(Phase::Stopped);
        let _ = self.stop.send(true);
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(CLOSE_TIMEOUT, task).await.is_err() {
                tracing::warn!("a listener did not close in time");
                abort.abort();
            }
        }
        // Answers ended at the stop leave their generations behind for a step: the process
        // must not exit while a worker is inside a forward pass.
        let settle = async {
            while self.node.engine().current().has_work() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        if tokio::time::timeout(ENGINE_SETTLE_TIMEOUT, settle)
            .await
            .is_err()
        {
            tracing::warn!("the local engine was still generating at exit");
        }
        let report = DrainReport {
            abandoned,
            elapsed: started.elapsed(),
        };
        tracing::info!(abandoned, elapsed = ?report.elapsed, "stopped");
        report
    }

    /// Waits until both servers end (after a shutdown signal from elsewhere).
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// The handle SIGHUP uses.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// A handle that makes the listeners stop at once (no drain) when `true` is sent.
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Loads the engine and builds the upstream clients: a node ready to answer, not yet listening
/// (`route explain` uses it as is).
pub async fn build_node(config: &Config) -> Result<(Arc<Node>, NodeMetrics), StartError> {
    let parts = build_parts(config).await?;
    Ok((parts.node, parts.metrics))
}

/// Whether `[router.confidence_by_cpu.<this CPU's kind>.int4-fast]` is configured.
fn int4_fast_gated_here(router: &tiergate_router::RouterConfig) -> bool {
    router
        .confidence_by_cpu
        .get(tiergate_engine::Int8Kernels::detect().as_str())
        .is_some_and(|gates| gates.contains_key(tiergate_engine::ModelVariant::Int4Fast.as_str()))
}

/// What [`build_parts`] makes.
struct Parts {
    node: Arc<Node>,
    metrics: NodeMetrics,
    /// The engine's slot (readiness watches the workers of the engine in it).
    engine: EngineSlot,
    model: ModelReloader,
}

/// The node, its metrics, its engine slot and the model reloader.
async fn build_parts(config: &Config) -> Result<Parts, StartError> {
    // `engine.variant = "auto"` keeps to the device's memory budget, at start and on reload, and
    // runs int4-fast with AVX-512 only under a gate calibrated on this CPU's answers.
    let engine_config = tiergate_engine::EngineConfig {
        memory_budget_mb: config.device.effective().values.memory_budget_mb,
        int4_fast_with_avx512: int4_fast_gated_here(&config.router),
        ..config.engine.clone()
    };
    // Loading checks the signature (with trusted keys), verifies hashes and builds ort sessions.
    let (engine, loaded) =
        crate::model_trust::load_engine(&engine_config, &config.model_trust).await?;
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
    let slot = EngineSlot::new(engine);
    let mut metrics = NodeMetrics::new(&config.node.name)?;
    metrics.performance = Arc::new(Performance::new(config.device.latency_window));
    let cache = ResponseCache::open(&config.cache, &metrics);
    let node = Node::new(NodeParts {
        cache,
        name: config.node.name.clone(),
        tier: config.node.tier,
        routed_model: config.node.routed_model.clone(),
        engine: slot.clone(),
        router: config.router.clone(),
        budget: config.budget,
        retry: config.retry,
        hedge: config.hedge,
        regional,
        cloud,
        limits: config.limits.clone(),
        metrics: metrics.clone(),
        peer_key,
        privacy: config.privacy.clone(),
        generation_budget: config.device.effective().generation_budget(),
        engine_stall_timeout: config.server.engine_stall_timeout,
    });
    let watched = crate::model_trust::Watched {
        node_name: &config.node.name,
        engine: &engine_config,
        trust: &config.model_trust,
        model: loaded,
        slot: slot.clone(),
    };
    let model = crate::model_trust::watch(watched, &node, &metrics)?;
    Ok(Parts {
        node,
        metrics,
        engine: slot,
        model,
    })
}

/// Loads everything and starts serving; returns once both listeners are bound and the node
/// reports itself ready.
pub async fn start_node(config: Config) -> Result<RunningNode, StartError> {
    let Parts {
        node,
        metrics,
        engine,
        model,
    } = build_parts(&config).await?;
    let profile = config.device.effective();
    log_profile(&profile, &config, &engine.current());
    let monitor = BudgetMonitor::new(
        profile,
        Arc::clone(&metrics.performance),
        metrics.registry(),
        &config.node.name,
    )?;
    let device = Arc::new(DeviceReporter {
        node: config.node.name.clone(),
        tier: config.node.tier,
        profile,
        engine: engine.clone(),
        limits: config.limits.clone(),
        metrics: metrics.clone(),
        monitor: Arc::clone(&monitor),
    });

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })
    };
    let grpc_listener = bind(config.server.grpc_listen).await?;
    let http_listener = bind(config.server.http_listen).await?;
    let grpc_addr = local_addr(&grpc_listener, config.server.grpc_listen);
    let http_addr = local_addr(&http_listener, config.server.http_listen);

    let tls = match &config.server.tls {
        Some(tls) => {
            let gauges = TlsMetrics::register(metrics.registry(), &config.node.name)?;
            Some(ReloadingTls::load(tls.clone(), gauges)?)
        }
        None => None,
    };
    // Ready means: serving, and the engine still has live workers to generate with, which are
    // not stuck with work.
    let stall_timeout = config.server.engine_stall_timeout;
    let was_stuck = AtomicBool::new(false);
    let probe: ReadinessProbe = Arc::new(move || {
        let engine = engine.current();
        let stalled = engine.stuck_past(stall_timeout);
        // Said once per change: the probe runs every second.
        if was_stuck.swap(stalled.is_some(), Ordering::Relaxed) != stalled.is_some() {
            match stalled {
                Some(waited) => tracing::warn!(
                    stalled_s = waited.as_secs(),
                    "the local engine has had work without progress: not ready, local steps fail"
                ),
                None => tracing::info!("the local engine moves again: ready"),
            }
        }
        engine.workers_alive() > 0 && stalled.is_none()
    });
    let lifecycle = Lifecycle::new(probe, metrics.ready.clone());
    let server = &config.server;
    let gate = Gate::new(
        server.max_concurrent_requests,
        lifecycle.clone(),
        server.retry_after,
        metrics.requests_shed.clone(),
        metrics.send_timeouts.clone(),
    );
    let auth = Authenticator::new(
        &config.tenants,
        config.node.tier,
        &metrics,
        node.peer_key().cloned(),
    )
    .map_err(|(path, message)| crate::config::ConfigError::Invalid { path, message })?;
    warn_when_open(auth.is_some(), &[grpc_addr, http_addr]);
    let stack = StackSettings {
        auth,
        cors: server.cors.as_ref().map(CorsConfig::layer),
        gate: Arc::clone(&gate),
        timeouts: RouteTimeouts {
            // The node ends generation at the request's deadline itself; this only catches
            // a response that never starts.
            inference: config.limits.max_timeout + INFERENCE_TIMEOUT_MARGIN,
            control: CONTROL_TIMEOUT,
            request_body: server.body_read_timeout,
            stream_send: server.send_timeout,
        },
    };
    let (stop, stopped) = watch::channel(false);
    let monitor_task = {
        let stopped = stopped.clone();
        let interval = config.device.check_interval;
        tokio::spawn(async move {
            tokio::select! {
                () = monitor.run(interval) => {}
                () = wait_for_stop(stopped) => {}
            }
        })
    };
    // Answers still running when the node stops end with an error their clients read.
    let node_api: Arc<dyn NodeApi> = Arc::new(Arc::clone(&node));
    let api: Arc<dyn NodeApi> = Arc::new(EndAtStop::new(node_api, &lifecycle));
    let intake = IntakeSettings {
        handshake_timeout: server.handshake_timeout,
        keepalive_interval: server.keepalive_interval,
        send_timeout: server.send_timeout,
    };
    let grpc_task = {
        let api = Arc::clone(&api);
        let settings = GrpcListenerSettings {
            tls: tls.clone(),
            stack: stack.clone(),
            lifecycle: lifecycle.clone(),
            device: Arc::clone(&device),
            max_concurrent_streams: server.max_concurrent_streams,
            keepalive_timeout: server.keepalive_timeout,
            intake,
        };
        let stopped = stopped.clone();
        tokio::spawn(async move {
            if let Err(err) =
                crate::grpc::serve_grpc(grpc_listener, api, settings, wait_for_stop(stopped)).await
            {
                tracing::error!(error = %err, "gRPC server failed");
            }
        })
    };
    let http_task = {
        let state = Arc::new(HttpState {
            node: api,
            metrics,
            lifecycle: lifecycle.clone(),
            device,
        });
        let routes = tower::service_fn(move |request| handle(Arc::clone(&state), request));
        let service = serving_stack(Api::Http, &stack, routes);
        let settings = HttpListenerSettings {
            header_read_timeout: server.header_read_timeout,
            max_concurrent_streams: server.max_concurrent_streams,
            keepalive_timeout: server.keepalive_timeout,
            intake,
        };
        tokio::spawn(serve_http(
            http_listener,
            service,
            tls.clone(),
            settings,
            wait_for_stop(stopped.clone()),
        ))
    };
    let reloader = Reloader {
        tls,
        model: Arc::new(model),
    };
    let mut tasks = vec![grpc_task, http_task, monitor_task];
    if let Some(tls) = &reloader.tls {
        let tls = Arc::clone(tls);
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                () = watch_tls_files(tls) => {}
                () = wait_for_stop(stopped) => {}
            }
        }));
    }
    lifecycle.set(Phase::Serving);
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
        lifecycle,
        gate,
        drain: DrainSettings {
            delay: config.server.drain_delay,
            timeout: config.server.drain_timeout,
        },
        stop,
        tasks,
        reloader,
    })
}

/// Without tenants anyone who reaches a listener may use the node: fine on loopback, worth a
/// warning anywhere else.
fn warn_when_open(authenticated: bool, listening: &[SocketAddr]) {
    if authenticated {
        return;
    }
    if let Some(open) = listening.iter().find(|addr| !addr.ip().is_loopback()) {
        tracing::warn!(
            listen = %open,
            "no [[tenants]] configured: API requests are not authenticated on a non-loopback listener"
        );
    }
}

/// The effective device profile, once at start: its budgets, and the engine settings in force
/// (after `[engine]` / `[limits]` took precedence over the profile).
fn log_profile(profile: &EffectiveProfile, config: &Config, engine: &Engine) {
    let v = &profile.values;
    let model = engine.model();
    tracing::info!(
        profile = profile.profile.map_or("none", |p| p.as_str()),
        memory_budget_mb = v.memory_budget_mb,
        latency_budget_ms = v.latency_budget_ms,
        accuracy_target = v.accuracy_target,
        stop_at_budget_share = v.stop_at_budget_share,
        threads = config.engine.intra_op_threads,
        variant = %model.variant,
        context_length = model.context_length,
        max_tokens = config.limits.max_new_tokens,
        "device profile"
    );
    // Which calibrated gate the loaded graph gets on this CPU (a reload may change the graph;
    // the explain JSON always shows the current one).
    let cpu = model.cpu_kind.as_str();
    let gate = config
        .router
        .confidence_for(Some(model.variant.as_str()), Some(cpu));
    tracing::info!(
        variant = %model.variant,
        cpu_kind = cpu,
        commit_window = gate.commit_window,
        min_mean_top1 = %gate.min_mean_top1,
        min_token_top1 = %gate.min_token_top1,
        "early-exit gate"
    );
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
