//! The early-exit gate that deploy/edge.toml ships for the real edge model is the one
//! `tiergate eval confidence` chooses on the committed calibration answers
//! (models/smollm2/calibration.jsonl): recalibrating without updating the config fails here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use tiergate::config::Config;

#[test]
fn shipped_edge_gate_is_the_calibrated_one() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let output = Command::new(env!("CARGO_BIN_EXE_tiergate"))
        .args([
            "eval",
            "confidence",
            "--results",
            "models/smollm2/calibration.jsonl",
            "--json",
        ])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let chosen = &report["chosen"];
    let gate = &chosen["gate"];
    // The budget the gate was chosen for holds on the data.
    assert!(
        chosen["error_rate_kept"].as_f64().unwrap() <= 0.1,
        "{chosen}"
    );
    assert!(
        chosen["must_not_kept_share"].as_f64().unwrap() <= 0.1,
        "{chosen}"
    );
    assert!(chosen["kept_share"].as_f64().unwrap() > 0.0, "{chosen}");

    // The config may not name a model folder that exists here: check only the router part.
    let config = Config::load(Some(&root.join("deploy/edge.toml"))).unwrap();
    let shipped = config.router.confidence;
    assert_eq!(
        shipped.commit_window as u64,
        gate["commit_window"].as_u64().unwrap()
    );
    let close = |a: f32, b: &serde_json::Value| (f64::from(a) - b.as_f64().unwrap()).abs() < 1e-6;
    assert!(
        close(shipped.min_mean_top1, &gate["min_mean_top1"]),
        "{gate}"
    );
    assert!(
        close(shipped.min_token_top1, &gate["min_token_top1"]),
        "{gate}"
    );
    assert_eq!(
        shipped.max_prompt_nll.is_none(),
        gate["max_prompt_nll"].is_null()
    );
    assert_eq!(
        shipped.max_mean_entropy.is_none(),
        gate["max_mean_entropy"].is_null()
    );
}
