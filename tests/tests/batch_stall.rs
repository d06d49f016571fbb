//! A client streaming an answer from a batching edge node is not frozen by another client's long
//! prompt: the node prefills the long prompt a piece at a time between the decode steps of the
//! answers it is streaming (`[engine] prefill_per_step`), so the streaming client's chunks keep
//! coming while the long prompt waits for its first token. Seen from the clients' side, over
//! HTTP (OpenAI chat completions, SSE), on the real edge model; skips without it unless
//! `TIERGATE_REQUIRE_REAL_MODEL=1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tiergate_e2e::{NodeProcess, http_client, post_json, real_model_dir};

/// The longest gap between two SSE chunks of a running stream while another client's long
/// prompt was answered, and how long that answer (one token: its prefill) took, with the
/// engine's `prefill_per_step` (`None`: the default).
async fn stall_seen_by_a_streaming_client(prefill_per_step: Option<usize>) -> (Duration, Duration) {
    let model = real_model_dir().expect("the real model");
    let budget = prefill_per_step
        .map(|n| format!("prefill_per_step = {n}\n"))
        .unwrap_or_default();
    let toml = format!(
        "[node]\nname = \"edge-1\"\ntier = \"edge\"\n[engine]\nmodel_dir = \"{}\"\n\
         variant = \"int4\"\nmax_batch = 4\n{budget}",
        model.display()
    );
    let edge = NodeProcess::start("edge", &toml).await.unwrap();
    let url = format!("{}/v1/chat/completions", edge.http_url());
    let streaming = json!({
        "model": "tiergate", "max_tokens": 200, "temperature": 0, "stream": true,
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."}],
    });
    let request = http::Request::post(&url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(streaming.to_string())))
        .unwrap();
    let response = http_client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    // Chunk arrival times, read by their own task while the long prompt is sent.
    let reader = tokio::spawn(async move {
        let mut arrivals = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                let text = String::from_utf8_lossy(&data).into_owned();
                arrivals.push((Instant::now(), text));
            }
        }
        arrivals
    });
    // Let the stream get going (past the gate's commit window), then the long prompt: ~1,500
    // tokens, twelve pieces of 128.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let long = "The quick brown fox jumps over the lazy dog near the river bank. ".repeat(105);
    let sent = Instant::now();
    let reply = post_json(
        &url,
        &json!({"model": "tiergate", "max_tokens": 1, "temperature": 0,
                "messages": [{"role": "user", "content": long}]}),
    )
    .await
    .unwrap();
    let answered = Instant::now();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let arrivals = reader.await.unwrap();
    let text: String = arrivals.iter().map(|(_, t)| t.as_str()).collect();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let chunks_after = arrivals.iter().filter(|(t, _)| *t > answered).count();
    assert!(
        chunks_after > 0,
        "the stream outlasted the long prompt's prefill"
    );
    let longest_gap = arrivals
        .windows(2)
        .filter(|pair| pair[1].0 > sent && pair[0].0 < answered)
        .map(|pair| pair[1].0 - pair[0].0)
        .max()
        .unwrap_or_default();
    edge.stop().await.unwrap();
    eprintln!(
        "prefill_per_step {prefill_per_step:?}: longest gap {longest_gap:?}, the long prompt's answer \
         after {:?}",
        answered - sent
    );
    (longest_gap, answered - sent)
}

#[tokio::test]
async fn a_long_prompt_does_not_freeze_a_streaming_client_of_a_batching_node() {
    if real_model_dir().is_none() {
        return;
    }
    let (gap, long_answer) = stall_seen_by_a_streaming_client(None).await;
    // The default, pieces of 256 positions: the stream pauses for about one piece, a small
    // part of the long prompt's prefill (~1,500 positions; measured: 1.4 s of 7.6 s).
    assert!(
        gap * 2 < long_answer,
        "longest gap {gap:?} while the long prompt took {long_answer:?}"
    );
    // Whole prompts first (0): the stream waits for the whole prefill.
    let (gap, long_answer) = stall_seen_by_a_streaming_client(Some(0)).await;
    assert!(
        gap * 3 >= long_answer * 2,
        "longest gap {gap:?} while the long prompt took {long_answer:?}"
    );
}
