//! Threads of a node process stopped while the others run on: a worker stuck in a call that
//! does not return, as a stalled disk under the model's weights file or a starved CPU leaves
//! it, with no hook in the product. `tests/tools/stop-threads.py` holds them in a ptrace stop
//! (Python's ctypes: the tests' crate has no `unsafe`) until released, or until it dies.

use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::repo_root;

/// A node's engine threads: the worker (`tiergate-engine-N`, cut to 15 characters by the
/// kernel) and the intra-op threads it started, which inherit its name.
pub const ENGINE_THREADS: &str = "tiergate-engin";

/// stop-threads.py's exit code when ptrace is refused.
const NOT_PERMITTED: i32 = 77;

/// Threads held stopped; released by [`StoppedThreads::release`], or when dropped (the tracer
/// is killed and the kernel lets them go).
#[derive(Debug)]
pub struct StoppedThreads {
    tracer: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// The stopped threads' ids.
    pub tids: Vec<u32>,
}

impl StoppedThreads {
    /// Stops every thread of process `pid` whose name starts with `name_prefix`. `Ok(Err(why))`
    /// when this machine refuses ptrace (not root under Yama's restriction): the caller says why
    /// and skips. Fails when no thread has that name or anything else goes wrong.
    pub async fn stop(
        pid: u32,
        name_prefix: &str,
    ) -> anyhow::Result<Result<StoppedThreads, String>> {
        let script = repo_root().join("tests/tools/stop-threads.py");
        let mut tracer = Command::new("python3")
            .arg(&script)
            .arg(pid.to_string())
            .arg(name_prefix)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", script.display()))?;
        let stdout = tracer.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        match lines.next_line().await? {
            Some(line) if line.starts_with("stopped ") => {
                let tids = line
                    .split_whitespace()
                    .skip(1)
                    .map(str::parse)
                    .collect::<Result<Vec<u32>, _>>()?;
                Ok(Ok(StoppedThreads {
                    tracer,
                    lines,
                    tids,
                }))
            }
            _ => {
                let output = tracer.wait_with_output().await?;
                let why = format!(
                    "stop-threads.py could not stop {name_prefix}* in {pid}: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                if output.status.code() == Some(NOT_PERMITTED) {
                    return Ok(Err(why));
                }
                bail!(why)
            }
        }
    }

    /// Lets the threads run again.
    pub async fn release(mut self) -> anyhow::Result<()> {
        drop(self.tracer.stdin.take());
        let said = self.lines.next_line().await?;
        let status = self.tracer.wait().await?;
        if !status.success() || said.as_deref() != Some("released") {
            bail!("stop-threads.py did not release the threads cleanly: {status}, {said:?}");
        }
        Ok(())
    }
}
