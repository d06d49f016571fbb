//! The CPU kind as an operator sees it: `tiergate model cpu` names the kind that keys
//! `[router.confidence_by_cpu]` (and `make calibrate-edge` names its answers file after it), and
//! `tiergate eval confidence --data` records which graph answered on which kind, so a gate is
//! filed under the kind its answers came from. Run on the bundled toy model (a few prompts).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{repo_root, tiergate_json, tiergate_ok};

const KINDS: [&str; 7] = [
    "x86-64-avx512-vnni",
    "x86-64-avx512",
    "x86-64-avx-vnni",
    "x86-64-avx2",
    "x86-64",
    "aarch64",
    "other",
];

#[test]
fn model_cpu_names_this_machines_kind_for_scripts_and_for_the_config() {
    let text = String::from_utf8(tiergate_ok(&["model", "cpu"]).stdout).unwrap();
    // One line, the name alone: `cpu=$(tiergate model cpu)` in the Makefile.
    assert_eq!(text.lines().count(), 1, "{text:?}");
    let kind = text.trim_end();
    assert!(KINDS.contains(&kind), "{kind}");
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let avx512_core = has!("avx512f")
            && has!("avx512bw")
            && has!("avx512dq")
            && has!("avx512cd")
            && has!("avx512vl");
        if avx512_core {
            let vnni = has!("avx512vnni");
            assert_eq!(
                kind,
                if vnni {
                    "x86-64-avx512-vnni"
                } else {
                    "x86-64-avx512"
                }
            );
        } else if has!("avx2") {
            assert!(["x86-64-avx-vnni", "x86-64-avx2"].contains(&kind), "{kind}");
        }
    }

    let json = tiergate_json(&["model", "cpu", "--json"]);
    assert_eq!(json["cpu_kind"], kind);
    assert_eq!(
        json["int4_fast_gate_section"],
        format!("[router.confidence_by_cpu.{kind}.int4-fast]")
    );
    // The section it prints is one a node's config accepts.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "{}\nmin_token_top1 = 0.55\n",
            json["int4_fast_gate_section"].as_str().unwrap()
        ),
    )
    .unwrap();
    tiergate_ok(&["config", "validate", config.to_str().unwrap()]);
}

#[test]
fn answers_record_the_graph_and_cpu_kind_they_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let prompts =
        std::fs::read_to_string(repo_root().join("models/calibration/prompts.jsonl")).unwrap();
    // Four questions and one prompt an edge model must not answer.
    let some: Vec<&str> = prompts
        .lines()
        .take(4)
        .chain(
            prompts
                .lines()
                .filter(|l| l.contains("must_not_attempt"))
                .take(1),
        )
        .collect();
    let data = dir.path().join("prompts.jsonl");
    std::fs::write(&data, some.join("\n")).unwrap();
    let answers = dir.path().join("answers.jsonl");
    // The bundled edge model's fp32 graph answers the prompts, up to 8 tokens each.
    let answer = |more: &[&str]| {
        let mut args = vec!["eval", "confidence", "--data", data.to_str().unwrap()];
        args.extend([
            "--model",
            "models/edge",
            "--variant",
            "fp32",
            "--max-tokens",
            "8",
        ]);
        args.extend(more);
        tiergate_ok(&args).stdout
    };
    let report: serde_json::Value =
        serde_json::from_slice(&answer(&["--out", answers.to_str().unwrap(), "--json"])).unwrap();
    let kind = String::from_utf8(tiergate_ok(&["model", "cpu"]).stdout).unwrap();
    assert_eq!(report["answered_on"]["variant"], "fp32");
    assert_eq!(report["answered_on"]["cpu_kind"], kind.trim_end());
    assert_eq!(report["prompts"], 5);
    assert_eq!(
        std::fs::read_to_string(&answers).unwrap().lines().count(),
        5
    );

    // Answers read back say nothing of where they were answered; the rest of the report is the same.
    let mut again = tiergate_json(&[
        "eval",
        "confidence",
        "--results",
        answers.to_str().unwrap(),
        "--json",
    ]);
    assert!(again.get("answered_on").is_none(), "{again}");
    again["answered_on"] = report["answered_on"].clone();
    assert_eq!(again, report);

    // The human summary says it too.
    let text = String::from_utf8(answer(&[])).unwrap();
    assert!(
        text.contains(&format!(
            "answered by the fp32 graph on a {} CPU",
            kind.trim_end()
        )),
        "{text}"
    );
}
