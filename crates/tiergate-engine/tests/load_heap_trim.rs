//! The heap trim after load (`trim_heap_after_load`) gives the load's freed memory back, on
//! the real int4 model. Its own binary, one test: the measure is the process's anonymous
//! memory, which another test loading a model on a parallel thread would move (as it did when
//! this check lived in tests/real_model.rs: 24 KB trimmed in one CI run, ~15 MB alone).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::real_model_dir;
use tiergate_engine::{Engine, EngineConfig, ModelVariant};

fn load(trim_heap_after_load: bool) -> Option<Engine> {
    let dir = real_model_dir()?;
    Some(
        Engine::load(&EngineConfig {
            variant: ModelVariant::Int4.into(),
            intra_op_threads: 2,
            trim_heap_after_load,
            ..EngineConfig::for_model(dir)
        })
        .unwrap(),
    )
}

#[test]
fn the_load_gives_its_freed_heap_back() {
    if !cfg!(target_os = "linux") {
        return;
    }
    let Some(trimmed) = load(true) else {
        return;
    };
    let anonymous_at = |name: &str| {
        trimmed
            .load_memory()
            .iter()
            .find(|s| s.stage == name)
            .map(|s| s.memory.anonymous)
            .unwrap()
    };
    let freed = anonymous_at("sessions created") - anonymous_at("heap trimmed");
    // Measured: ~15 MB (the tokenizer's JSON, graph optimisation's temporaries).
    assert!(freed > 1_000_000, "trimmed {freed} bytes");
    drop(trimmed);

    let untrimmed = load(false).unwrap();
    assert!(
        untrimmed
            .load_memory()
            .iter()
            .all(|s| s.stage != "heap trimmed")
    );
}
