//! Logprobs through the cloud client: asked for in the OpenAI body only when the request
//! wants them, parsed from whole and streamed answers in OpenAI's wire format.

use futures::StreamExt;
use serde_json::json;
use tiergate_api::{NodeRequest, TokenLogprob};
use tiergate_upstream::{CloudClient, CloudEvent};

use crate::provider::{Provider, answer_for, pieces};
use crate::{TestPki, request, soon};

fn asking(prompt: &str, top: u32) -> NodeRequest {
    let mut request = request(prompt);
    request.sampling.logprobs = Some(top);
    request
}

/// What the fake provider sends for `answer` with `k` alternatives, as the node holds it.
fn check(got: &[TokenLogprob], answer: &str, k: usize) {
    let pieces = pieces(answer);
    assert_eq!(got.len(), pieces.len());
    for (i, (token, piece)) in got.iter().zip(&pieces).enumerate() {
        assert_eq!(&token.token, piece);
        assert_eq!(token.logprob, -0.125 * (i as f32 + 1.0));
        // `bytes: null` (token 0) falls back to the token's own UTF-8.
        assert_eq!(token.bytes, piece.as_bytes());
        assert_eq!(token.top_logprobs.len(), k);
        assert_eq!(token.top_logprobs[0].token, *piece);
        assert_eq!(token.top_logprobs[1].logprob, token.logprob - 1.0);
    }
}

#[tokio::test]
async fn a_whole_answer_asks_for_logprobs_and_reads_them() {
    let pki = TestPki::new();
    let provider = Provider::start(Some(&pki)).await;
    let client = CloudClient::new(&provider.https_config(&pki)).unwrap();
    let done = client
        .generate(&asking("say \u{e9}t\u{e9}", 2), soon())
        .await
        .unwrap();
    let sent = provider.last_body();
    assert_eq!(
        (&sent["logprobs"], &sent["top_logprobs"]),
        (&json!(true), &json!(2))
    );
    check(&done.logprobs, &answer_for("say \u{e9}t\u{e9}"), 2);

    // Not asked: not sent (some compatible providers refuse the fields), none read.
    let plain = client.generate(&request("plain"), soon()).await.unwrap();
    let sent = provider.last_body();
    assert!(
        sent.get("logprobs").is_none() && sent.get("top_logprobs").is_none(),
        "{sent}"
    );
    assert!(plain.logprobs.is_empty());
}

#[tokio::test]
async fn a_streamed_answer_carries_each_chunks_logprobs_with_its_text() {
    let pki = TestPki::new();
    let provider = Provider::start(Some(&pki)).await;
    let client = CloudClient::new(&provider.https_config(&pki)).unwrap();
    let prompt = "stream me some words";
    let mut stream = client
        .generate_stream(&asking(prompt, 3), soon())
        .await
        .unwrap();
    let mut streamed = Vec::new();
    let mut done = None;
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            CloudEvent::Delta { text, logprobs } => {
                assert_eq!(logprobs.len(), 1, "one token per chunk");
                assert_eq!(logprobs[0].token, text);
                streamed.extend(logprobs);
            }
            CloudEvent::Done(completion) => done = Some(completion),
        }
    }
    assert_eq!(provider.last_body()["top_logprobs"], 3);
    check(&streamed, &answer_for(prompt), 3);
    assert_eq!(done.unwrap().logprobs, streamed);
}
