//! What the CLI tests share: the repository's root and the built `tiergate` binary run from it,
//! as a user runs it there.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the crate sits two folders below the repository root")
        .to_path_buf()
}

/// `tiergate ARGS`, which must succeed (its standard error in the failure message).
#[allow(dead_code)] // a test file takes what it needs of this module
pub fn tiergate_ok(args: &[&str]) -> Output {
    let output = tiergate(args);
    assert!(
        output.status.success(),
        "tiergate {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `tiergate ARGS`, which must succeed, its standard output read as JSON.
#[allow(dead_code)] // a test file takes what it needs of this module
pub fn tiergate_json(args: &[&str]) -> serde_json::Value {
    serde_json::from_slice(&tiergate_ok(args).stdout).expect("tiergate printed JSON")
}

/// `tiergate ARGS` from the repository's root, whatever its exit status.
pub fn tiergate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tiergate"))
        .current_dir(repo_root())
        .args(args)
        .output()
        .expect("the tiergate binary runs")
}
