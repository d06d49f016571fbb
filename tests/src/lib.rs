//! Helpers for end-to-end tests: start real `tiergate serve` processes on 127.0.0.1 with
//! ephemeral ports, and talk to them over real gRPC and HTTP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tiergate_proto::v1::inference_client::InferenceClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub mod cpu_kinds;
pub mod faults;
pub mod netns;
pub mod pki;
pub mod scenario;
pub mod thread_stop;

/// How long a node may take to load its model and bind (generous: CI machines are shared).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The repository root (models/, .tools/).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The imported real edge model (`TIERGATE_REAL_MODEL`, set by `make test`), or `None` with a
/// note when it is absent; with `TIERGATE_REQUIRE_REAL_MODEL=1` (also `make test`) absence fails.
pub fn real_model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("TIERGATE_REAL_MODEL").map(PathBuf::from);
    let required = std::env::var("TIERGATE_REQUIRE_REAL_MODEL").is_ok_and(|v| v == "1");
    match dir {
        Some(dir) if dir.join("manifest.json").is_file() => Some(dir),
        other => {
            assert!(
                !required,
                "TIERGATE_REQUIRE_REAL_MODEL=1 but no model at {other:?}: run scripts/import-real-model.sh"
            );
            // A skipped test must say so where the test log shows it.
            #[allow(clippy::print_stderr)]
            {
                eprintln!("skipped: TIERGATE_REAL_MODEL is not a model folder ({other:?})");
            }
            None
        }
    }
}

/// `program` run through `wrapper` (`ip netns exec NAME`, `scripts/as-cpu/as-cpu KIND`), or alone.
pub fn wrapped_command(wrapper: &[String], program: &Path) -> std::process::Command {
    match wrapper.split_first() {
        Some((first, rest)) => {
            let mut command = std::process::Command::new(first);
            command.args(rest).arg(program);
            command
        }
        None => std::process::Command::new(program),
    }
}

/// The `tiergate` binary of this build: beside the test binary's `deps/` folder.
pub fn tiergate_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("target/debug"), Path::to_path_buf);
    profile_dir.join("tiergate")
}

/// A running `tiergate serve` process; killed when dropped.
#[derive(Debug)]
pub struct NodeProcess {
    pub name: String,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    child: Child,
    /// What the node wrote to stderr, when started with [`NodeProcess::start_logged`].
    logs: Option<Arc<Mutex<String>>>,
    _dir: tempfile::TempDir,
}

/// How a test starts a node process: on 127.0.0.1 by default; `wrapper` runs it through
/// another command (e.g. `ip netns exec NS`), listening on `listen_ip`; with `log_filter` its
/// logs are kept for [`NodeProcess::logs`].
#[derive(Debug, Clone)]
pub struct Launch {
    pub wrapper: Vec<String>,
    pub listen_ip: std::net::IpAddr,
    pub log_filter: Option<String>,
}

impl Default for Launch {
    fn default() -> Self {
        Launch {
            wrapper: Vec::new(),
            listen_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            log_filter: None,
        }
    }
}

impl NodeProcess {
    /// Starts a node from a TOML config (paths in it are relative to the repo root). The
    /// listen addresses are forced to 127.0.0.1:0 and read back from the node's ready line.
    pub async fn start(name: &str, config_toml: &str) -> anyhow::Result<NodeProcess> {
        Self::launch(name, config_toml, &Launch::default()).await
    }

    /// Like [`NodeProcess::start`], with logs at `filter` kept for [`NodeProcess::logs`] (and
    /// still echoed to the test's stderr).
    pub async fn start_logged(
        name: &str,
        config_toml: &str,
        filter: &str,
    ) -> anyhow::Result<NodeProcess> {
        let launch = Launch {
            log_filter: Some(filter.to_owned()),
            ..Launch::default()
        };
        Self::launch(name, config_toml, &launch).await
    }

    /// [`NodeProcess::start`], launched as `launch` says.
    // The captured logs are echoed to the test's stderr, as an uncaptured node's would be.
    #[allow(clippy::print_stderr)]
    pub async fn launch(
        name: &str,
        config_toml: &str,
        launch: &Launch,
    ) -> anyhow::Result<NodeProcess> {
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&config_path, config_toml)?;
        let bin = tiergate_bin();
        if !bin.exists() {
            bail!("{} is missing: run `cargo build` first", bin.display());
        }
        let listen = format!("\"{}\"", SocketAddr::new(launch.listen_ip, 0));
        let log_filter = launch.log_filter.as_deref();
        let mut child = Command::from(wrapped_command(&launch.wrapper, &bin))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(repo_root())
            .env("TIERGATE__SERVER__GRPC_LISTEN", &listen)
            .env("TIERGATE__SERVER__HTTP_LISTEN", &listen)
            .env("TIERGATE_LOG", log_filter.unwrap_or("warn"))
            // No colour codes in captured logs.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if log_filter.is_some() {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let logs = match child.stderr.take() {
            Some(stderr) => {
                let logs = Arc::new(Mutex::new(String::new()));
                let sink = Arc::clone(&logs);
                let tag = name.to_owned();
                let mut lines = BufReader::new(stderr).lines();
                tokio::spawn(async move {
                    while let Ok(Some(line)) = lines.next_line().await {
                        eprintln!("[{tag}] {line}");
                        let mut all = sink.lock().unwrap_or_else(PoisonError::into_inner);
                        all.push_str(&line);
                        all.push('\n');
                    }
                });
                Some(logs)
            }
            None => None,
        };
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                    && value["event"] == "listening"
                {
                    return Ok::<_, anyhow::Error>(value);
                }
            }
            bail!("node {name} exited before it was ready")
        })
        .await
        .with_context(|| format!("node {name} did not become ready"))??;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let addr = |key: &str| -> anyhow::Result<SocketAddr> {
            ready[key]
                .as_str()
                .context("missing address")?
                .parse()
                .context("bad address")
        };
        Ok(NodeProcess {
            name: name.to_owned(),
            grpc: addr("grpc")?,
            http: addr("http")?,
            child,
            logs,
            _dir: dir,
        })
    }

    /// What the node logged so far (empty unless started with [`NodeProcess::start_logged`]).
    pub fn logs(&self) -> String {
        self.logs.as_ref().map_or_else(String::new, |logs| {
            logs.lock().unwrap_or_else(PoisonError::into_inner).clone()
        })
    }

    /// Sends SIGTERM, as systemd and Kubernetes do (through `kill`, no libc in the tests).
    pub fn terminate(&self) -> anyhow::Result<()> {
        self.signal("TERM")
    }

    /// Sends SIGHUP: the node reloads its TLS certificate and its model.
    pub fn hang_up(&self) -> anyhow::Result<()> {
        self.signal("HUP")
    }

    fn signal(&self, name: &str) -> anyhow::Result<()> {
        let pid = self.child.id().context("the node already exited")?;
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{name} {pid} failed: {status}");
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub async fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => Ok(Some(status?)),
            Err(_) => Ok(None),
        }
    }

    /// Stops the process (SIGKILL) and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// The node's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    pub async fn grpc_client(&self) -> anyhow::Result<InferenceClient<tonic::transport::Channel>> {
        Ok(InferenceClient::connect(self.grpc_url()).await?)
    }
}

/// A plain HTTP/1.1 client for the tests.
pub fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response read whole.
#[derive(Debug)]
pub struct HttpReply {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl HttpReply {
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends a request with a body and reads the whole reply.
pub async fn http_send(
    method: http::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> anyhow::Result<HttpReply> {
    let mut builder = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(body.into()))?;
    let response = http_client().request(request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(HttpReply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// POSTs JSON.
pub async fn post_json(url: &str, body: &serde_json::Value) -> anyhow::Result<HttpReply> {
    http_send(
        http::Method::POST,
        url,
        &[("content-type", "application/json")],
        serde_json::to_vec(body)?,
    )
    .await
}

/// GETs a URL.
pub async fn get(url: &str) -> anyhow::Result<HttpReply> {
    http_send(http::Method::GET, url, &[], Bytes::new()).await
}

/// Router settings that make a node's early-exit check always commit or always abandon, so a
/// test decides the path instead of the toy model's mood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// The node's defaults.
    Default,
    /// Every local attempt commits.
    Commit,
    /// Every local attempt is abandoned (escalates).
    Abandon,
    /// Every prompt skips the local attempt and goes to the cloud first.
    CloudFirst,
    /// Every local attempt is tried and abandoned on its prompt's NLL, before any token.
    SurprisedByEveryPrompt,
    /// Every prompt skips the local attempt and goes to the regional tier first.
    RegionalFirst,
}

impl Gate {
    /// The `[router]` section of this gate.
    pub fn router_toml(self) -> &'static str {
        match self {
            Gate::Default => "",
            Gate::Commit => {
                "[router]\nlocal_max_complexity = 1.0\n[router.confidence]\nmin_mean_top1 = 0.0\nmin_token_top1 = 0.0\n"
            }
            Gate::Abandon => {
                "[router]\nlocal_max_complexity = 1.0\n[router.confidence]\nmin_mean_top1 = 1.0\n"
            }
            Gate::CloudFirst => {
                "[router]\nlocal_max_complexity = 0.0\ncloud_min_complexity = 0.0\n"
            }
            Gate::SurprisedByEveryPrompt => {
                "[router]\nlocal_max_complexity = 1.0\n[router.confidence]\nmin_mean_top1 = 0.0\nmin_token_top1 = 0.0\nmax_prompt_nll = 0.0\n"
            }
            Gate::RegionalFirst => {
                "[router]\nlocal_max_complexity = 0.0\ncloud_min_complexity = 1.0\n"
            }
        }
    }
}

/// The peer key the test clusters share (a test fixture, relative to the repo root).
pub const PEER_KEY_FILE: &str = "tests/fixtures/peer.key";

/// The peer key itself, for a test that plays a peer node.
pub fn peer_key() -> String {
    std::fs::read_to_string(repo_root().join(PEER_KEY_FILE))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The TOML of a node of `tier` running `model`, with upstreams and a router gate.
pub fn node_toml(
    name: &str,
    tier: &str,
    model: &str,
    regional: Option<&NodeProcess>,
    cloud: Option<&NodeProcess>,
    gate: Gate,
) -> String {
    let mut toml = format!(
        "[node]\nname = \"{name}\"\ntier = \"{tier}\"\npeer_key_file = \"{PEER_KEY_FILE}\"\n\
         [engine]\nmodel_dir = \"models/{model}\"\n"
    );
    if let Some(regional) = regional {
        toml.push_str(&format!(
            "[upstreams.regional]\nendpoints = [\"{}\"]\nhealth_check_interval = \"100ms\"\n\
             peer_key_file = \"{PEER_KEY_FILE}\"\n",
            regional.grpc_url()
        ));
    }
    if let Some(cloud) = cloud {
        toml.push_str(&format!(
            "[upstreams.cloud]\nbase_url = \"{}/v1\"\nmodel = \"tiergate\"\n",
            cloud.http_url()
        ));
    }
    toml.push_str(gate.router_toml());
    toml
}

/// Edge, regional and a cloud stand-in, each a real `tiergate serve` process.
#[derive(Debug)]
pub struct Cluster {
    pub edge: NodeProcess,
    pub regional: Option<NodeProcess>,
    pub cloud: Option<NodeProcess>,
}

impl Cluster {
    /// Starts cloud, then regional (cloud above it), then edge (regional, cloud as fallback).
    pub async fn start(edge_gate: Gate, regional_gate: Gate) -> anyhow::Result<Cluster> {
        let cloud = NodeProcess::start(
            "cloud",
            &node_toml("cloud-1", "cloud", "regional", None, None, Gate::Default),
        )
        .await?;
        let regional = NodeProcess::start(
            "regional",
            &node_toml(
                "regional-1",
                "regional",
                "regional",
                None,
                Some(&cloud),
                regional_gate,
            ),
        )
        .await?;
        let edge = NodeProcess::start(
            "edge",
            &node_toml(
                "edge-1",
                "edge",
                "edge",
                Some(&regional),
                Some(&cloud),
                edge_gate,
            ),
        )
        .await?;
        Ok(Cluster {
            edge,
            regional: Some(regional),
            cloud: Some(cloud),
        })
    }
}

/// The value of one sample in a Prometheus text exposition: `name` with every label of
/// `labels` (other labels may be present). `None` when no such sample exists.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, rest) = series.split_once('{').unwrap_or((series, ""));
            (series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .reduce(|a, b| a + b)
}

/// The node's `/metrics` text.
pub async fn metrics_text(node: &NodeProcess) -> anyhow::Result<String> {
    Ok(get(&format!("{}/metrics", node.http_url())).await?.text())
}

/// The node's `/metrics` text once `settled` holds on it, for counts a node updates off the
/// request path; read every 20 ms. After `within` the last text is returned as it is, for the
/// caller's assertions to judge.
pub async fn metrics_text_once(
    node: &NodeProcess,
    within: Duration,
    settled: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let give_up = tokio::time::Instant::now() + within;
    loop {
        let text = metrics_text(node).await?;
        if settled(&text) || tokio::time::Instant::now() >= give_up {
            return Ok(text);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
