//! A client that vanishes without closing its connection (power loss, a dropped route: a
//! half-open connection) must not hold the node's connection, and the requests on it, for the
//! many minutes TCP takes to notice. The node pings every HTTP/2 connection that has been quiet
//! for `server.keepalive_interval` and closes it when the PING is not answered within
//! `server.keepalive_timeout`. A peer that stops answering is, seen from the node, exactly a
//! peer that vanished: this test plays one on both listeners (gRPC, and HTTP/2 on the HTTP
//! port) by opening an HTTP/2 connection and then never acknowledging anything.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tiergate_e2e::get;
use tiergate_e2e::scenario::lone_edge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: length 0, type 0x4, no flags, stream 0.
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 0x4, 0, 0, 0, 0, 0];
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;

/// What a silent HTTP/2 peer saw before the node closed the connection.
struct Seen {
    frame_types: Vec<u8>,
    closed_after: Duration,
}

/// Opens an HTTP/2 connection to `addr`, then reads (never writes) until the node closes it.
async fn play_a_vanished_client(addr: SocketAddr) -> Seen {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(PREFACE).await.unwrap();
    stream.write_all(&EMPTY_SETTINGS).await.unwrap();
    let started = Instant::now();
    let mut frame_types = Vec::new();
    let mut buffer = Vec::new();
    let mut chunk = [0_u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
            // Frame headers: 3 bytes length, 1 byte type, 1 flags, 4 stream id.
            while buffer.len() >= 9 {
                let length = usize::from(buffer[0]) << 16
                    | usize::from(buffer[1]) << 8
                    | usize::from(buffer[2]);
                if buffer.len() < 9 + length {
                    break;
                }
                frame_types.push(buffer[3]);
                buffer.drain(..9 + length);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read_all)
        .await
        .expect("the node kept the silent connection open for 30 s");
    Seen {
        frame_types,
        closed_after: started.elapsed(),
    }
}

#[tokio::test]
async fn a_client_that_stops_answering_is_pinged_then_dropped_on_both_listeners() {
    let (interval, timeout) = (Duration::from_secs(1), Duration::from_secs(1));
    let edge =
        lone_edge("[server]\nkeepalive_interval = \"1s\"\nkeepalive_timeout = \"1s\"\n".into())
            .await
            .unwrap();

    for (listener, addr) in [("gRPC", edge.grpc), ("HTTP/2 on the HTTP port", edge.http)] {
        let seen = play_a_vanished_client(addr).await;
        eprintln!(
            "{listener}: frames {:?}, closed after {:?}",
            seen.frame_types, seen.closed_after
        );
        assert!(
            seen.frame_types.contains(&PING),
            "{listener}: the node closed the connection without pinging it: {:?}",
            seen.frame_types
        );
        // Timers cannot fire early: this was the keepalive, not another limit.
        assert!(
            seen.closed_after >= interval + timeout,
            "{listener}: {:?}",
            seen.closed_after
        );
        // It says why, where it can (h2 sends GOAWAY before closing on a ping timeout).
        eprintln!(
            "{listener}: GOAWAY sent: {}",
            seen.frame_types.contains(&GOAWAY)
        );
    }

    // Clients that answer are untouched: a whole request still works after all that.
    let reply = get(&format!("{}/healthz", edge.http_url())).await.unwrap();
    assert_eq!(reply.status, 200);
}
