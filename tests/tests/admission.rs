//! The transport and admission limits of a real node: over `max_concurrent_requests` the excess
//! is refused at once with a retryable status and `Retry-After` while the admitted requests are
//! served and probes still answer; a client that sends half its headers is cut at the header
//! timeout; one that trickles its body holds its slot only until the body timeout, and one that
//! stops reading its answer only until the send timeout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use tiergate_bench::fake_upstream::Fault;
use tiergate_e2e::scenario::{EdgeLinks, FakeCloud, lone_edge, request, start_edge, unary_chat};
use tiergate_e2e::{Gate, NodeProcess, get, metric, metrics_text};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PROMPT: &str = "what is the capital of france";

#[tokio::test]
async fn over_the_concurrency_limit_the_excess_is_shed_at_once_and_the_rest_served() {
    // A cloud that never answers holds the admitted requests until their budget for it ends;
    // then the edge answers them with its own model.
    let cloud = FakeCloud::start().await.unwrap();
    cloud.faults.set(Fault::StallBeforeHeaders);
    let links = EdgeLinks {
        cloud: Some(cloud.url.clone()),
        failures_to_open: 100,
        extra: "[server]\nmax_concurrent_requests = 2\nretry_after = \"3s\"\n\
                [limits]\ndefault_timeout = \"4s\"\n"
            .into(),
        ..EdgeLinks::default()
    };
    let edge = start_edge(&links, Gate::CloudFirst).await.unwrap();

    let mut holders = Vec::new();
    for _ in 0..2 {
        let edge_url = edge.http_url();
        holders.push(tokio::spawn(async move {
            let body = serde_json::json!({
                "model": "tiergate",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": PROMPT}],
            });
            tiergate_e2e::post_json(&format!("{edge_url}/v1/chat/completions"), &body).await
        }));
    }
    // Both are admitted once both reached the stalled cloud.
    let until = Instant::now() + Duration::from_secs(10);
    while cloud.faults.calls() < 2 {
        assert!(
            Instant::now() < until,
            "the holders never reached the cloud"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The excess: four HTTP requests, a gRPC call and a gRPC stream, all at once.
    let http_excess = futures::future::join_all((0..4).map(|_| unary_chat(&edge, PROMPT))).await;
    let mut client = edge.grpc_client().await.unwrap();
    let unary = client.generate(request(PROMPT)).await;
    let stream = client.generate_stream(request(PROMPT)).await;
    // Probes and scrapes are never shed.
    let readyz = get(&format!("{}/readyz", edge.http_url())).await.unwrap();
    let text = metrics_text(&edge).await.unwrap();
    let holders_pending = holders.iter().filter(|h| !h.is_finished()).count();

    for excess in &http_excess {
        let (reply, elapsed) = excess.as_ref().unwrap();
        eprintln!("shed HTTP request answered in {elapsed:?}");
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert_eq!(reply.header("retry-after"), Some("3"));
        assert_eq!(reply.json().unwrap()["error"]["type"], "overloaded");
    }
    for status in [unary.err(), stream.err()] {
        let status = status.expect("a gRPC call over the limit was served");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert_eq!(
            status
                .metadata()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("3")
        );
    }
    assert_eq!(readyz.status, 200);
    assert_eq!(
        holders_pending, 2,
        "the shed requests were not answered before the admitted ones"
    );
    assert_eq!(
        metric(
            &text,
            "tiergate_requests_shed_total",
            &[("api", "http"), ("reason", "overloaded")]
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "tiergate_requests_shed_total",
            &[("api", "grpc"), ("reason", "overloaded")]
        ),
        Some(2.0)
    );

    // The admitted ones are served, and their slots free again.
    for holder in holders {
        let reply = holder.await.unwrap().unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    cloud.faults.set(Fault::None);
    let (reply, _) = unary_chat(&edge, PROMPT).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn a_client_that_sends_half_its_headers_is_cut_at_the_header_timeout() {
    let header_timeout = Duration::from_secs(1);
    let edge = lone_edge(format!(
        "[server]\nheader_read_timeout = \"{}ms\"\n",
        header_timeout.as_millis()
    ))
    .await
    .unwrap();

    let mut slow = TcpStream::connect(edge.http).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: tiergate\r\nx-half: ")
        .await
        .unwrap();
    // The node closes the connection (possibly after a 408); reading reaches its end.
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), slow.read_to_end(&mut received)).await;
    let elapsed = started.elapsed();
    eprintln!(
        "slow-header client cut after {elapsed:?}, received {:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(read.is_ok(), "the connection was still open after 20 s");
    assert!(
        received.is_empty() || received.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&received)
    );
    // A timer cannot fire early: this was the header timeout, not something else.
    assert!(elapsed >= header_timeout, "{elapsed:?}");

    // Whole requests are unaffected.
    let reply = get(&format!("{}/healthz", edge.http_url())).await.unwrap();
    assert_eq!(reply.status, 200);
}

/// A client that sends its headers and then its body a byte at a time (a dying link, a
/// slow-POST attack) holds its admission slot only for `server.body_read_timeout`: HTTP gets
/// 408 and the connection closes, gRPC gets DEADLINE_EXCEEDED. While it waits the slot is
/// taken (with `max_concurrent_requests = 1` the next request is shed); after it, the next
/// request is served. Before the bound existed such a client held its slot for the route's
/// backstop, `limits.max_timeout` + 10 s: five minutes.
#[tokio::test]
async fn a_client_that_trickles_its_body_is_cut_at_the_body_timeout_and_frees_its_slot() {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;

    let body_timeout = Duration::from_secs(1);
    let edge = lone_edge(format!(
        "[server]\nbody_read_timeout = \"{}ms\"\nmax_concurrent_requests = 1\n",
        body_timeout.as_millis()
    ))
    .await
    .unwrap();

    // HTTP/1.1: a whole head promising 400 bytes, then a byte every 200 ms.
    let (mut from_node, mut to_node) = TcpStream::connect(edge.http).await.unwrap().into_split();
    let started = Instant::now();
    to_node
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: tiergate\r\n\
              content-type: application/json\r\ncontent-length: 400\r\n\r\n{",
        )
        .await
        .unwrap();
    let trickle = async move {
        while to_node.write_all(b" ").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let others = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (reply, _) = unary_chat(&edge, PROMPT).await.unwrap();
        assert_eq!(
            reply.status,
            503,
            "the slow client held no slot: {}",
            reply.text()
        );
    };
    let mut received = Vec::new();
    let answer = async {
        tokio::time::timeout(
            Duration::from_secs(20),
            from_node.read_to_end(&mut received),
        )
        .await
    };
    let (read, ()) = tokio::select! {
        done = async { tokio::join!(answer, others) } => done,
        () = trickle => panic!("the node stopped reading before it answered"),
    };
    let elapsed = started.elapsed();
    let received = String::from_utf8_lossy(&received);
    eprintln!("HTTP: a trickling body answered after {elapsed:?}: {received}");
    assert!(read.is_ok(), "the connection was still open after 20 s");
    assert!(received.starts_with("HTTP/1.1 408"), "{received}");
    assert!(received.contains("request_timeout"), "{received}");
    assert!(
        elapsed >= body_timeout && elapsed < body_timeout + Duration::from_secs(3),
        "{elapsed:?}"
    );
    let (reply, _) = unary_chat(&edge, PROMPT).await.unwrap();
    assert_eq!(
        reply.status,
        200,
        "the slot was not freed: {}",
        reply.text()
    );

    // gRPC over HTTP/2: a message frame promising 100 bytes, 3 of them sent, then silence.
    let (body_tx, body_rx) =
        futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, Infallible>>();
    body_tx
        .unbounded_send(Ok(Frame::data(Bytes::from_static(&[
            0, 0, 0, 0, 100, 10, 1, b'h',
        ]))))
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let call = http::Request::post(format!(
        "{}/tiergate.v1.Inference/Generate",
        edge.grpc_url()
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(StreamBody::new(body_rx))
    .unwrap();
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(call))
        .await
        .expect("no gRPC answer within 20 s")
        .unwrap();
    let mut status = response.headers().clone();
    if !status.contains_key("grpc-status") {
        let rest = response.into_body().collect().await.unwrap();
        status = rest.trailers().cloned().unwrap_or_default();
    }
    let elapsed = started.elapsed();
    eprintln!("gRPC: a silent body answered after {elapsed:?}: {status:?}");
    assert_eq!(status.get("grpc-status").unwrap(), "4", "{status:?}");
    assert!(
        (status.get("grpc-message").unwrap().to_str().unwrap()).contains("did%20not%20arrive")
            || (status.get("grpc-message").unwrap().to_str().unwrap()).contains("did not arrive"),
        "{status:?}"
    );
    assert!(
        elapsed >= body_timeout && elapsed < body_timeout + Duration::from_secs(3),
        "{elapsed:?}"
    );
    drop(body_tx);
    let (reply, _) = unary_chat(&edge, PROMPT).await.unwrap();
    assert_eq!(
        reply.status,
        200,
        "the slot was not freed: {}",
        reply.text()
    );
}

/// A client that stops reading a long streamed answer but keeps its connection open (a frozen
/// app; its receive buffer fills and its TCP window closes) holds its admission slot only for
/// `server.send_timeout`: the node's kernel then resets the connection (TCP_USER_TIMEOUT covers
/// data that cannot be sent for a zero window), the answer's generation stops, and the next
/// request is served. Before, nothing bounded it: the slot was held as long as the client
/// stayed. Real model: a long answer with log-probabilities, so that it outgrows the socket
/// buffers (the client also asks for small segments and keeps a small receive buffer).
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_at_the_send_timeout_and_frees_its_slot() {
    use socket2::{Domain, Socket, Type};
    use tiergate_e2e::real_model_dir;
    use tiergate_e2e::scenario::{
        LONG_ANSWER_LIMITS, LONG_MAX_TOKENS, LONG_PROMPT, real_edge_toml, shed_until_served,
    };

    let Some(model) = real_model_dir() else {
        eprintln!("skipped: the real model is not imported (scripts/import-real-model.sh)");
        return;
    };
    let send_timeout = Duration::from_secs(1);
    let server = format!(
        "[server]\nsend_timeout = \"{}ms\"\nmax_concurrent_requests = 1\n{LONG_ANSWER_LIMITS}",
        send_timeout.as_millis()
    );
    let edge = NodeProcess::start("edge-1", &real_edge_toml(&model, &server))
        .await
        .unwrap();

    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.set_tcp_mss(1000).unwrap();
    socket.connect(&edge.http.into()).unwrap();
    socket.set_nonblocking(true).unwrap();
    let mut frozen = TcpStream::from_std(socket.into()).unwrap();
    let body = serde_json::json!({
        "model": "tiergate", "max_tokens": LONG_MAX_TOKENS, "temperature": 0, "stream": true,
        "logprobs": true, "top_logprobs": 20,
        "messages": [{"role": "user", "content": LONG_PROMPT}],
    })
    .to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: tiergate\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    frozen.write_all(head.as_bytes()).await.unwrap();
    frozen.write_all(body.as_bytes()).await.unwrap();
    let sent = Instant::now();

    // The frozen client never reads. Others are shed while it holds the one slot, then served.
    let (shed, served_after) = shed_until_served(&edge, sent, Duration::from_secs(30))
        .await
        .unwrap();
    eprintln!(
        "a client that stopped reading: {shed} requests shed, the next served {served_after:?} after it asked"
    );
    assert!(shed > 0, "the frozen client never held the slot");

    // Its connection was reset by the node, not left open.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), frozen.read_to_end(&mut rest)).await;
    eprintln!(
        "the frozen client's connection: {read:?} after {} bytes",
        rest.len()
    );
    assert!(
        matches!(read, Ok(Err(ref err)) if err.kind() == std::io::ErrorKind::ConnectionReset),
        "{read:?}"
    );
}
