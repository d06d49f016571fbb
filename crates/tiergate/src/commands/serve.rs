//! `tiergate serve --config FILE`: one node, until SIGINT or SIGTERM; SIGHUP reloads the TLS
//! certificate and the local model.

use std::io::Write;

use anyhow::Context;
use serde_json::json;
use tiergate::config::Config;
use tiergate::serve::start_node;

use crate::cli::ServeArgs;

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref()).context("loading the configuration")?;
    let node = start_node(config).await?;
    // One JSON line on stdout says where the node listens (ports may have been 0): scripts and
    // the end-to-end tests read it. Logs go to stderr.
    let ready = json!({
        "event": "listening",
        "node": node.name,
        "grpc": node.grpc_addr.to_string(),
        "http": node.http_addr.to_string(),
    });
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{ready}")?;
        out.flush()?;
    }
    let reloads = tokio::spawn(reload_on_hangup(node.reloader()));
    shutdown_signal().await;
    reloads.abort();
    tracing::info!("shutdown signal: draining");
    // A second signal during the drain means "now": the process exits without waiting.
    tokio::select! {
        report = node.shutdown() => {
            if report.abandoned > 0 {
                tracing::warn!(abandoned = report.abandoned, "exited with requests in flight");
            }
        }
        () = shutdown_signal() => tracing::warn!("second signal: exiting without draining"),
    }
    Ok(())
}

/// Each SIGHUP runs one reload; signals that arrive during it are merged into the next one.
async fn reload_on_hangup(reloader: tiergate::serve::Reloader) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGHUP: reloads only on schedule");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            let report = reloader.reload().await;
            tracing::info!(?report, "reload done");
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reloader;
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM (systemd, Kubernetes).
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
