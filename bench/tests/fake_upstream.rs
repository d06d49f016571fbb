//! The fake upstream speaks the wire format a real provider does: tiergate's own cloud client
//! reads its whole and streamed answers, and bad requests get OpenAI-shaped errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use raw_http::read_response;
use tiergate_api::{Input, NodeRequest, Sampling};
use tiergate_bench::fake_upstream::{self, ANSWER_TEXT};
use tiergate_upstream::{CloudClient, CloudConfig, CloudEvent};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

async fn start() -> (SocketAddr, JoinHandle<std::io::Result<()>>) {
    let (listener, addr) = fake_upstream::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    (addr, tokio::spawn(fake_upstream::serve(listener)))
}

fn client(addr: SocketAddr) -> CloudClient {
    CloudClient::new(&CloudConfig::new(format!("http://{addr}/v1"), "bench")).unwrap()
}

fn request() -> NodeRequest {
    NodeRequest::new(
        Input::Text("hello".to_owned()),
        Sampling::default(),
        Instant::now() + Duration::from_secs(10),
    )
}

fn soon() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(10))
}

#[tokio::test]
async fn the_cloud_client_reads_the_whole_answer_with_usage() {
    let (addr, server) = start().await;
    let answer = client(addr).generate(&request(), soon()).await.unwrap();
    assert_eq!(answer.text, ANSWER_TEXT);
    assert_eq!(answer.finish_reason.as_deref(), Some("stop"));
    let usage = answer.usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (9, 6));
    server.abort();
}

#[tokio::test]
async fn the_cloud_client_reads_the_stream_to_done() {
    use futures::StreamExt;
    let (addr, server) = start().await;
    let mut stream = client(addr)
        .generate_stream(&request(), soon())
        .await
        .unwrap();
    let mut deltas = String::new();
    let mut done = None;
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            CloudEvent::Delta { text, .. } => deltas += &text,
            CloudEvent::Done(completion) => done = Some(completion),
        }
    }
    let done = done.expect("the stream ends with Done");
    assert_eq!(deltas, ANSWER_TEXT);
    assert_eq!(done.text, ANSWER_TEXT);
    assert_eq!(done.usage.unwrap().completion_tokens, 6);
    server.abort();
}

/// Raw HTTP/1.1 on one connection: keep-alive holds across answers, errors included.
#[tokio::test]
async fn bad_requests_get_openai_errors_on_a_kept_alive_connection() {
    let (addr, server) = start().await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let cases = [
        ("POST", "/v1/models", "{}", 404),
        ("GET", "/v1/chat/completions", "", 405),
        ("POST", "/v1/chat/completions", "not json", 400),
        ("POST", "/v1/chat/completions", r#"{"messages":[]}"#, 400),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
            200,
        ),
    ];
    for (method, path, body, status) in cases {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(body.as_bytes()).await.unwrap();
        let (got_status, got_body) = read_response(&mut conn).await;
        assert_eq!(got_status, status, "{method} {path} {body}: {got_body}");
        let json: serde_json::Value = serde_json::from_str(&got_body).unwrap();
        if status == 200 {
            assert_eq!(json["object"], "chat.completion");
        } else {
            assert!(json["error"]["message"].is_string(), "{got_body}");
        }
    }
    server.abort();
}

/// Reads one HTTP/1.1 response with a content-length body.
mod raw_http {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    pub async fn read_response(conn: &mut TcpStream) -> (u16, String) {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            conn.read_exact(&mut byte).await.unwrap();
            buf.push(byte[0]);
        }
        let head = String::from_utf8(buf).unwrap();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().unwrap())
            })
            .expect("content-length");
        let mut body = vec![0u8; length];
        conn.read_exact(&mut body).await.unwrap();
        (status, String::from_utf8(body).unwrap())
    }
}
