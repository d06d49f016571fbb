//! The early-exit gates that deploy/edge.toml ships for the real edge model are the ones
//! `tiergate eval confidence` chooses on the committed calibration answers: one for the exact
//! graphs (models/smollm2/calibration.jsonl), and for int4-fast one per CPU kind it was answered
//! on (calibration-int4-fast-<cpu kind>.jsonl; the AVX2 one is also its gate on kinds without one of
//! their own, and a kind answered on without one, as AVX-VNNI, must choose that same gate).
//! Recalibrating without updating the config fails here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{repo_root, tiergate_json};
use tiergate::config::Config;
use tiergate_e2e::cpu_kinds::committed_int4_fast_kinds;
use tiergate_router::ConfidenceConfig;

/// `tiergate eval confidence --results FILE --json`: the gate it chooses on those answers.
fn chosen_gate(results: &str) -> serde_json::Value {
    let report = tiergate_json(&["eval", "confidence", "--results", results, "--json"]);
    let chosen = report["chosen"].clone();
    // The budget the gate was chosen for holds on the data.
    assert!(
        chosen["error_rate_kept"].as_f64().unwrap() <= 0.1,
        "{results}: {chosen}"
    );
    assert!(
        chosen["must_not_kept_share"].as_f64().unwrap() <= 0.1,
        "{results}: {chosen}"
    );
    assert!(
        chosen["kept_share"].as_f64().unwrap() > 0.0,
        "{results}: {chosen}"
    );
    chosen["gate"].clone()
}

fn assert_same_gate(shipped: &ConfidenceConfig, gate: &serde_json::Value, which: &str) {
    assert_eq!(
        shipped.commit_window as u64,
        gate["commit_window"].as_u64().unwrap(),
        "{which}"
    );
    let close = |a: f32, b: &serde_json::Value| (f64::from(a) - b.as_f64().unwrap()).abs() < 1e-6;
    assert!(
        close(shipped.min_mean_top1, &gate["min_mean_top1"]),
        "{which}: {gate}"
    );
    assert!(
        close(shipped.min_token_top1, &gate["min_token_top1"]),
        "{which}: {gate}"
    );
    assert_eq!(
        shipped.max_prompt_nll.is_none(),
        gate["max_prompt_nll"].is_null(),
        "{which}"
    );
    assert_eq!(
        shipped.max_mean_entropy.is_none(),
        gate["max_mean_entropy"].is_null(),
        "{which}"
    );
}

#[test]
fn shipped_edge_gates_are_the_calibrated_ones() {
    // The config may not name a model folder that exists here: check only the router part.
    let config = Config::load(Some(&repo_root().join("deploy/edge.toml"))).unwrap();
    let router = &config.router;

    // The exact graphs (fp32, int4 and any graph without a gate of its own).
    let exact = chosen_gate("models/smollm2/calibration.jsonl");
    assert_same_gate(&router.confidence, &exact, "[router.confidence]");
    for variant in ["fp32", "int4"] {
        assert_eq!(
            router.confidence_for(Some(variant), None),
            router.confidence
        );
    }

    // int4-fast, which `auto` runs on x86-64 without AVX-512: the gate calibrated on its answers
    // there, also its gate on a CPU kind without one of its own.
    let fast = chosen_gate("models/smollm2/calibration-int4-fast-x86-64-avx2.jsonl");
    assert_same_gate(
        &router.confidence_for(Some("int4-fast"), None),
        &fast,
        "[router.confidence_by_variant.int4-fast]",
    );
    assert_eq!(
        router.confidence_by_variant.keys().collect::<Vec<_>>(),
        ["int4-fast"]
    );

    // On every CPU kind answered on, int4-fast's gate there (its own section, or the one above) is
    // the one chosen on that kind's answers; a kind with a section of its own has answers (with
    // AVX-512, `auto` runs int4-fast only because such a section exists).
    for cpu in ["x86-64-avx512-vnni", "x86-64-avx512"] {
        assert!(
            router.confidence_by_cpu.contains_key(cpu),
            "{cpu}: {:?}",
            router.confidence_by_cpu.keys()
        );
    }
    let answered = committed_int4_fast_kinds().unwrap();
    for (cpu, gates) in &router.confidence_by_cpu {
        assert_eq!(gates.keys().collect::<Vec<_>>(), ["int4-fast"], "{cpu}");
        assert!(answered.contains(cpu), "{cpu} has a gate but no answers");
    }
    for cpu in &answered {
        let chosen = chosen_gate(&format!("models/smollm2/calibration-int4-fast-{cpu}.jsonl"));
        assert_same_gate(
            &router.confidence_for(Some("int4-fast"), Some(cpu)),
            &chosen,
            &format!("int4-fast's gate on {cpu}"),
        );
    }
}
