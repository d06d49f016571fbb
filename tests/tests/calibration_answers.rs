//! The committed int4-fast calibrations are what this build answers. A gate is chosen from a file of
//! answers (calibrated_gate.rs holds the shipped gates to those files), and int4-fast's answers depend
//! on the graph, the engine and the CPU's int8 kernels: a change to any of them that moves an answer
//! leaves the shipped gate judging answers the node no longer gives. So a spread of the calibration
//! prompts is answered again through `tiergate eval confidence`, as `make calibrate-edge` does, and
//! every line must be the committed one byte for byte, for every CPU kind with a committed file: this
//! CPU's natively, older x86-64 kinds through scripts/as-cpu (their newer features hidden from `cpuid`,
//! so ONNX Runtime runs that kind's kernels), a kind this machine cannot show is said and skipped.
//! Needs the real model (`make test` imports it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use tiergate_e2e::cpu_kinds::{as_cpu, committed_int4_fast_kinds};
use tiergate_e2e::{real_model_dir, repo_root, tiergate_bin, wrapped_command};

/// Every STRIDE-th calibration prompt: each category, a few seconds per kind with the debug build.
const STRIDE: usize = 20;

#[test]
fn int4_fast_answers_on_every_cpu_kind_this_machine_can_show_are_the_committed_calibrations() {
    let Some(model) = real_model_dir() else {
        return;
    };
    let root = repo_root();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("prompts.jsonl");
    let prompts = std::fs::read_to_string(root.join("models/calibration/prompts.jsonl")).unwrap();
    let spread: Vec<&str> = prompts.lines().step_by(STRIDE).collect();
    assert!(spread.len() >= 10, "{} prompts", spread.len());
    std::fs::write(&data, spread.join("\n") + "\n").unwrap();

    let native = run_from_root(&[], &["model".into(), "cpu".into()]);
    assert!(native.status.success(), "{}", stderr(&native));
    let native = String::from_utf8(native.stdout).unwrap();
    let native = native.trim_end();
    let kinds = committed_int4_fast_kinds().unwrap();
    assert!(kinds.contains(&"x86-64-avx2".to_string()), "{kinds:?}");
    let mut checked = Vec::new();
    for kind in &kinds {
        let out = dir.path().join(format!("{kind}.jsonl"));
        let eval = eval_args(&data, &model, &out);
        let wrapper = if kind == native {
            Vec::new()
        } else {
            // An older kind this machine cannot show is skipped; the helper says why.
            let Some(wrapper) = as_cpu(kind).unwrap() else {
                continue;
            };
            let seen = run_from_root(&wrapper, &["model".into(), "cpu".into()]);
            assert_eq!(String::from_utf8_lossy(&seen.stdout).trim_end(), kind);
            wrapper
        };
        let answered = run_from_root(&wrapper, &eval);
        assert!(answered.status.success(), "{kind}: {}", stderr(&answered));
        assert_same_lines(&out, &calibration_file(kind), spread.len());
        checked.push(kind.clone());
    }
    eprintln!(
        "{} prompts answered as committed on {checked:?} (this CPU: {native})",
        spread.len()
    );
}

/// `WRAPPER... tiergate ARGS` from the repository's root.
fn run_from_root(wrapper: &[String], args: &[String]) -> Output {
    wrapped_command(wrapper, &tiergate_bin())
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap()
}

fn eval_args(data: &Path, model: &Path, out: &Path) -> Vec<String> {
    [
        "eval",
        "confidence",
        "--data",
        &data.display().to_string(),
        "--model",
        &model.display().to_string(),
        "--variant",
        "int4-fast",
        "--out",
        &out.display().to_string(),
    ]
    .map(str::to_string)
    .to_vec()
}

fn calibration_file(kind: &str) -> PathBuf {
    repo_root().join(format!("models/smollm2/calibration-int4-fast-{kind}.jsonl"))
}

/// Every answered line equals the committed line of the same prompt id, byte for byte.
fn assert_same_lines(answered: &Path, committed: &Path, expected: usize) {
    let committed_text = std::fs::read_to_string(committed).unwrap();
    let committed_by_id: HashMap<String, &str> = committed_text
        .lines()
        .map(|line| (id_of(line), line))
        .collect();
    let answered_text = std::fs::read_to_string(answered).unwrap();
    let lines: Vec<&str> = answered_text.lines().collect();
    assert_eq!(lines.len(), expected, "{}", answered.display());
    for line in lines {
        let id = id_of(line);
        let want = committed_by_id
            .get(&id)
            .unwrap_or_else(|| panic!("{id} is not in {}", committed.display()));
        assert_eq!(
            line,
            *want,
            "{id}: this build answers differently from {}; if the change is meant, \
             re-run `make calibrate-edge` on that CPU kind (or under scripts/as-cpu) and re-check the gate",
            committed.display()
        );
    }
}

fn id_of(line: &str) -> String {
    let row: serde_json::Value = serde_json::from_str(line).unwrap();
    row["id"].as_str().unwrap().to_string()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
