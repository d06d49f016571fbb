//! The CPU kinds int4-fast was calibrated on, and running a program as an older x86-64 kind
//! (scripts/as-cpu hides the newer features from `cpuid`), so that tests check every kind's
//! answers and gate on one machine.

use std::process::Command;

use anyhow::{Context, bail};

use crate::repo_root;

/// The kinds with a committed int4-fast calibration
/// (models/smollm2/calibration-int4-fast-<kind>.jsonl), sorted.
pub fn committed_int4_fast_kinds() -> anyhow::Result<Vec<String>> {
    let dir = repo_root().join("models/smollm2");
    let mut kinds = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name();
        let kind = name
            .to_str()
            .and_then(|name| name.strip_prefix("calibration-int4-fast-"))
            .and_then(|rest| rest.strip_suffix(".jsonl"));
        kinds.extend(kind.map(str::to_owned));
    }
    kinds.sort();
    Ok(kinds)
}

/// The command prefix that runs a program as `kind` (`[scripts/as-cpu/as-cpu, kind]`), or `None`
/// when this machine cannot show it (no CPUID faulting, no C compiler, or not the kind's own
/// features): the script's reason is on the test's stderr then.
pub fn as_cpu(kind: &str) -> anyhow::Result<Option<Vec<String>>> {
    let script = repo_root().join("scripts/as-cpu/as-cpu");
    let probe = Command::new(&script)
        .args([kind, "true"])
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let reason = String::from_utf8_lossy(&probe.stderr);
    match probe.status.code() {
        Some(0) => Ok(Some(vec![script.display().to_string(), kind.to_owned()])),
        Some(2) => {
            // A skipped kind must say so where the test log shows it.
            #[allow(clippy::print_stderr)]
            {
                eprintln!("{kind}: not shown on this machine: {}", reason.trim());
            }
            Ok(None)
        }
        _ => bail!("{} {kind}: {:?}: {reason}", script.display(), probe.status),
    }
}
