//! A local engine whose worker is stuck, from the client's side. An edge node with no tier
//! above it answers from its own model, so the local step is the last of its plan and has no
//! first-token share to lose: nothing but the request's deadline bounds it. The engine's
//! threads are stopped (a ptrace stop, as a read from a stalled disk under the weights file
//! would hold them; `tests/tools/stop-threads.py`) while the node's servers run on. Each API
//! must get a deadline error shortly after its deadline, never a hang and never an empty
//! answer. With work waiting on it, the stuck engine turns the node not ready
//! (`server.engine_stall_timeout`), so that load balancers and the edges above move their
//! traffic, and local steps fail at once instead of waiting on it; once the threads run again
//! the node is ready and the next request is answered as before. Where ptrace
//! is refused (not root under Yama's restriction) the test says why and skips; CI runs as root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tiergate_e2e::scenario::{
    post_streamed, real_edge_toml, request, sse_chat, sse_events, sse_has_text, unary_chat,
};
use tiergate_e2e::thread_stop::{ENGINE_THREADS, StoppedThreads};
use tiergate_e2e::{
    Gate, HttpReply, NodeProcess, get, metric, metrics_text, node_toml, real_model_dir,
};

/// The node's `limits.default_timeout`: every request's deadline here.
const DEADLINE: Duration = Duration::from_secs(2);
/// The node's grace past the deadline before it gives up on a silent engine
/// (`LOCAL_STALL_GRACE`), and room for a busy CI machine.
const GRACE: Duration = Duration::from_secs(2);
const SLACK: Duration = Duration::from_secs(3);
/// How long the test waits for any answer: a node that leaves its client waiting fails here
/// instead of hanging the suite.
const CLIENT_GIVES_UP: Duration = Duration::from_secs(20);
const PROMPT: &str = "what is the capital of france";
/// The node's `server.engine_stall_timeout`.
const STALL_TIMEOUT: Duration = Duration::from_secs(1);

/// Streams `PROMPT` over gRPC with no deadline of the client's own; the text it got, or the
/// status it ended with.
async fn grpc_stream_status(node: &NodeProcess) -> Result<String, tonic::Status> {
    use futures::StreamExt;
    use tiergate_proto::v1::generate_stream_response::Event;
    let mut client = node.grpc_client().await.unwrap();
    let mut stream = client.generate_stream(request(PROMPT)).await?.into_inner();
    let mut text = String::new();
    while let Some(message) = stream.next().await {
        if let Some(Event::Delta(delta)) = message?.event {
            text.push_str(&delta.text);
        }
    }
    Ok(text)
}

/// A whole HTTP answer that is an error of `status` naming the stuck engine.
fn assert_stuck_reply(label: &str, reply: &HttpReply, elapsed: Duration, status: u16) {
    eprintln!(
        "{label}: {} after {elapsed:?}: {}",
        reply.status,
        reply.text()
    );
    assert_eq!(reply.status, status, "{}", reply.text());
    assert!(reply.text().contains("stuck"), "{}", reply.text());
}

fn within_bound(elapsed: Duration) -> bool {
    elapsed >= DEADLINE && elapsed < DEADLINE + GRACE + SLACK
}

#[tokio::test]
async fn a_stuck_engine_worker_ends_requests_with_errors_and_the_node_turns_not_ready() {
    let mut toml = node_toml("edge-1", "edge", "edge", None, None, Gate::Commit);
    toml.push_str(&format!(
        "[limits]\ndefault_timeout = \"{}s\"\n[server]\nengine_stall_timeout = \"{}ms\"\n",
        DEADLINE.as_secs(),
        STALL_TIMEOUT.as_millis()
    ));
    let node = NodeProcess::start_logged("edge-1", &toml, "warn")
        .await
        .unwrap();
    let (reply, _) = unary_chat(&node, PROMPT).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());

    let stopped = match StoppedThreads::stop(node.pid().unwrap(), ENGINE_THREADS)
        .await
        .unwrap()
    {
        Ok(stopped) => stopped,
        Err(why) => {
            eprintln!("skipped: this machine refuses ptrace ({why}); run as root");
            return;
        }
    };
    eprintln!("engine threads stopped: {:?}", stopped.tids);
    // Stopped but idle: nothing waits on it, so nothing says it is stuck.
    tokio::time::sleep(STALL_TIMEOUT * 2).await;
    let readyz = format!("{}/readyz", node.http_url());
    assert_eq!(get(&readyz).await.unwrap().status, 200);

    // The first wave meets the engine before anything knows it is stuck: a whole answer over
    // HTTP, a streamed one (nothing was sent before the first token, so a status too) and a
    // gRPC stream without `grpc-timeout` (tonic's client would enforce one itself), at once.
    let (whole, sse, grpc) = tokio::time::timeout(CLIENT_GIVES_UP, async {
        tokio::join!(unary_chat(&node, PROMPT), sse_chat(&node, PROMPT), async {
            let started = Instant::now();
            (grpc_stream_status(&node).await, started.elapsed())
        })
    })
    .await
    .expect("a client was left waiting on a stuck engine");
    let (reply, elapsed) = whole.unwrap();
    assert_stuck_reply("whole answer", &reply, elapsed, 504);
    assert!(within_bound(elapsed), "{elapsed:?}");
    let sse = sse.unwrap();
    eprintln!(
        "SSE: {} after {:?}: {}",
        sse.reply.status,
        sse.elapsed,
        sse.reply.text()
    );
    assert_eq!(sse.reply.status, 504, "{}", sse.reply.text());
    assert!(sse.text.is_empty());
    assert!(within_bound(sse.elapsed), "{:?}", sse.elapsed);
    let (streamed, elapsed) = grpc;
    eprintln!("gRPC: {streamed:?} after {elapsed:?}");
    let status = streamed.expect_err("a status, not an answer");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("stuck"), "{status:?}");
    assert!(within_bound(elapsed), "{elapsed:?}");

    // Their jobs still wait for the stuck worker, longer than the stall timeout: the node is
    // not ready, and a new request fails at once instead of waiting out its deadline.
    let reply = get(&readyz).await.unwrap();
    assert_eq!(reply.status, 503, "{}", reply.text());
    let text = metrics_text(&node).await.unwrap();
    assert_eq!(metric(&text, "tiergate_ready", &[]), Some(0.0));
    assert!(
        node.logs()
            .contains("the local engine has had work without progress"),
        "{}",
        node.logs()
    );
    let (reply, elapsed) = unary_chat(&node, PROMPT).await.unwrap();
    assert_stuck_reply("once known stuck", &reply, elapsed, 503);
    assert!(elapsed < SLACK, "{elapsed:?}");
    let started = Instant::now();
    let status = grpc_stream_status(&node).await.expect_err("a status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < SLACK);

    let text = metrics_text(&node).await.unwrap();
    let deadline_errors = metric(
        &text,
        "tiergate_requests_total",
        &[("outcome", "deadline_exceeded")],
    );
    assert_eq!(deadline_errors, Some(3.0), "{text}");

    // The worker runs again: the three abandoned requests are dropped unanswered (their
    // callers left), the node is ready, and the next request is answered as before.
    stopped.release().await.unwrap();
    let started = Instant::now();
    while get(&readyz).await.unwrap().status != 200 {
        assert!(
            started.elapsed() < CLIENT_GIVES_UP,
            "still not ready after the engine ran again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("ready again after {:?}", started.elapsed());
    let (reply, _) = tokio::time::timeout(CLIENT_GIVES_UP, unary_chat(&node, PROMPT))
        .await
        .expect("no answer after the engine ran again")
        .unwrap();
    eprintln!(
        "after release: {} after {:?}",
        reply.status,
        started.elapsed()
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json().unwrap();
    let content = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!content.is_empty());
    assert_eq!(answer["tiergate"]["tier"], "edge");
}

/// The same stop in the middle of an answer, on the real model (slow enough to stop between two
/// tokens): the text the client already has stays, and the stream ends with an error event
/// after the deadline's grace, never with a finish chunk that would pass the cut-off text for a
/// whole answer. Skips without the real model unless `TIERGATE_REQUIRE_REAL_MODEL=1`.
#[tokio::test]
async fn a_stuck_engine_mid_answer_ends_the_stream_with_an_error_after_its_text() {
    let Some(model) = real_model_dir() else {
        eprintln!("skipped: the real model is not imported (scripts/import-real-model.sh)");
        return;
    };
    let deadline = Duration::from_secs(4);
    let limits = format!("[limits]\ndefault_timeout = \"{}s\"\n", deadline.as_secs());
    let toml = real_edge_toml(&model, &limits);
    let node = NodeProcess::start("edge-1", &toml).await.unwrap();
    let body = serde_json::json!({
        "model": "tiergate", "max_tokens": 400, "temperature": 0, "stream": true,
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."}],
    });
    let started = Instant::now();
    let url = format!("{}/v1/chat/completions", node.http_url());
    let response = post_streamed(&url, &body).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut stream = String::new();
    let mut stopped = None;
    let read_all = async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                stream.push_str(&String::from_utf8_lossy(&data));
            }
            // Text reached the client: now the engine gets stuck.
            if stopped.is_none() && sse_has_text(&stream) {
                let stop = StoppedThreads::stop(node.pid().unwrap(), ENGINE_THREADS)
                    .await
                    .unwrap();
                stopped = Some((stop, started.elapsed()));
            }
        }
    };
    tokio::time::timeout(CLIENT_GIVES_UP, read_all)
        .await
        .expect("the stream was left open on a stuck engine");
    let elapsed = started.elapsed();
    let (stopped, stopped_at) = match stopped.expect("the answer sent text") {
        (Ok(stopped), at) => (stopped, at),
        (Err(why), _) => {
            eprintln!("skipped: this machine refuses ptrace ({why}); run as root");
            return;
        }
    };
    eprintln!("stopped at {stopped_at:?}, stream ended at {elapsed:?}:\n{stream}");
    let events = sse_events(&stream).unwrap();
    assert_eq!(
        events.finish_reason, None,
        "a finish chunk after the engine got stuck"
    );
    assert!(!events.text.is_empty());
    let error = events.error.expect("an error event ends the stream");
    assert!(error.to_string().contains("stuck"), "{error}");
    assert!(stopped_at < deadline, "{stopped_at:?}");
    assert!(
        elapsed >= deadline && elapsed < deadline + GRACE + SLACK,
        "{elapsed:?}"
    );
    stopped.release().await.unwrap();
    let (reply, _) = tokio::time::timeout(CLIENT_GIVES_UP, unary_chat(&node, PROMPT))
        .await
        .expect("no answer after the engine ran again")
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
}
