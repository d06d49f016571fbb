//! An idle engine burns no CPU: with two intra-op threads and spinning on (the default), the
//! bounded spin (`intra_op_spin_duration_us`) puts ONNX Runtime's worker to sleep right after a
//! generation, where ONNX Runtime's own spin keeps a core busy for tens of milliseconds after
//! every run. Its own binary, one test: the process's CPU time must be the engine's alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use tiergate_engine::{Engine, EngineConfig, GenerationRequest, Prompt, SamplingParams};

/// CPU time of every thread of this process so far (`/proc/self/task/*/schedstat`, ns).
fn process_cpu() -> Duration {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path().join("schedstat");
        // A thread may have exited between the listing and the read.
        if let Ok(text) = std::fs::read_to_string(path) {
            total += text
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap();
        }
    }
    Duration::from_nanos(total)
}

/// CPU the process uses in the `idle` after one generation, with the engine loaded as `config`.
async fn cpu_while_idle(config: &EngineConfig, idle: Duration) -> Duration {
    let engine = Engine::load(config).unwrap();
    let request = GenerationRequest::new(
        Prompt::user("write an essay about the causes of the first world war"),
        SamplingParams::greedy(24),
    );
    let answer = engine.generate(request).await.unwrap();
    assert!(!answer.tokens.is_empty());
    let before = process_cpu();
    tokio::time::sleep(idle).await;
    process_cpu() - before
}

#[tokio::test]
async fn an_idle_engine_burns_no_cpu_with_the_default_bounded_spin() {
    let idle = Duration::from_millis(300);
    let two_threads = EngineConfig {
        intra_op_threads: 2,
        ..common::config("regional")
    };
    assert!(two_threads.intra_op_spinning, "spinning is on by default");

    // The control: ONNX Runtime's own spin (2^20 polls) is seen by this measurement.
    let unbounded = cpu_while_idle(
        &EngineConfig {
            intra_op_spin_duration_us: 0,
            ..two_threads.clone()
        },
        idle,
    )
    .await;
    // The default: the worker sleeps once it has spun 20 us without work.
    let bounded = cpu_while_idle(&two_threads, idle).await;
    assert!(
        unbounded >= Duration::from_millis(4),
        "ONNX Runtime's own spin used only {unbounded:?} of CPU in {idle:?} idle"
    );
    assert!(
        bounded <= Duration::from_millis(2),
        "the bounded spin used {bounded:?} of CPU in {idle:?} idle (ONNX Runtime's own: {unbounded:?})"
    );
}
