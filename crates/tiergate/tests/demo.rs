//! `tiergate demo --exit --json`: three nodes in one process, the mixed workload, one row per
//! prompt saying where it went and why. With `TIERGATE_REAL_MODEL` set (as `make test` does) the
//! demo runs the real edge model and its workload; without it, the toy models.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[test]
fn demo_routes_the_mixed_workload_across_the_tiers() {
    let rows = common::tiergate_json(&["demo", "--exit", "--json"]);
    let rows = rows.as_array().unwrap();
    assert!(rows.len() >= 8, "{rows:?}");
    let kinds: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    let real = std::env::var_os("TIERGATE_REAL_MODEL").is_some();
    let first = if real { "easy" } else { "in-domain" };
    for kind in [first, "harder", "open-ended", "privacy"] {
        assert!(kinds.contains(kind), "{kinds:?}");
    }
    if real {
        // The real model answers an easy question itself, confidently and right.
        let japan = rows
            .iter()
            .find(|r| r["prompt"] == "What is the capital of Japan?")
            .unwrap();
        assert_eq!(japan["tier"], "edge", "{japan}");
        assert_eq!(japan["reason"], "early_exit", "{japan}");
        assert!(
            japan["answer"].as_str().unwrap().contains("Tokyo"),
            "{japan}"
        );
    }
    for row in rows {
        let tier = row["tier"].as_str().unwrap();
        assert!(["edge", "regional", "cloud"].contains(&tier), "{row}");
        assert!(!row["reason"].as_str().unwrap().is_empty(), "{row}");
        assert_eq!(row["degraded"], false, "all three tiers are up: {row}");
        if row["kind"] == "privacy" {
            assert_eq!(
                tier, "edge",
                "privacy-pinned prompts stay at the edge: {row}"
            );
            assert_eq!(row["reason"], "tier_constraint");
        }
        if row["kind"] == "open-ended" {
            assert_ne!(tier, "edge", "open-ended prompts go up: {row}");
        }
    }
}
