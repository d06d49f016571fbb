//! The serving stack in-process, around a fake route whose answers stream until the test lets
//! them end: admission counts a streamed answer until its last frame, sheds the excess with a
//! retryable status, lets probes through, refuses new requests while closing, and the drain
//! waits for what is in flight.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use prometheus::{Gauge, IntCounterVec, Opts};
use tokio::sync::watch;
use tower::{Service, ServiceExt};

use super::*;

type FakeBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// A route that answers at once with a body that ends when `release` turns true.
fn streaming_route(
    release: watch::Receiver<bool>,
) -> impl Service<
    Request<BodyDeadline<Empty<Bytes>>>,
    Response = Response<FakeBody>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_request: Request<BodyDeadline<Empty<Bytes>>>| {
        let mut release = release.clone();
        async move {
            let end = async move {
                let _ = release.wait_for(|go| *go).await;
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"done")))
            };
            let body = StreamBody::new(futures::stream::once(end));
            Ok::<_, Infallible>(Response::new(BodyExt::boxed_unsync(body)))
        }
    })
}

struct Fixture {
    lifecycle: Lifecycle,
    gate: Arc<Gate>,
    shed: IntCounterVec,
    settings: StackSettings,
}

fn fixture(max: usize) -> Fixture {
    let probe: ReadinessProbe = Arc::new(|| true);
    let lifecycle = Lifecycle::new(probe, Gauge::new("ready", "ready").unwrap());
    lifecycle.set(Phase::Serving);
    let shed = IntCounterVec::new(Opts::new("shed", "shed"), &["api", "reason"]).unwrap();
    let send_timeouts = IntCounterVec::new(Opts::new("cut", "cut"), &["api"]).unwrap();
    let gate = Gate::new(
        max,
        lifecycle.clone(),
        Duration::from_secs(2),
        shed.clone(),
        send_timeouts,
    );
    let settings = StackSettings {
        gate: Arc::clone(&gate),
        timeouts: RouteTimeouts {
            inference: Duration::from_secs(60),
            control: Duration::from_secs(60),
            request_body: Duration::from_secs(60),
            stream_send: Duration::from_secs(60),
        },
        auth: None,
        cors: None,
    };
    Fixture {
        lifecycle,
        gate,
        shed,
        settings,
    }
}

fn post(path: &str) -> Request<Empty<Bytes>> {
    Request::post(path).body(Empty::new()).unwrap()
}

#[tokio::test]
async fn streamed_answers_hold_their_slot_and_the_excess_is_shed_with_retry_after() {
    let f = fixture(2);
    let (release, released) = watch::channel(false);
    let mut stack = serving_stack(Api::Http, &f.settings, streaming_route(released));

    let first = stack
        .ready()
        .await
        .unwrap()
        .call(post("/v1/completions"))
        .await
        .unwrap();
    let second = stack
        .ready()
        .await
        .unwrap()
        .call(post("/v1/chat/completions"))
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(second.status(), 200);
    // Both answers started; their bodies still stream: both slots are taken.
    assert_eq!(f.gate.in_flight(), 2);

    let third = stack
        .ready()
        .await
        .unwrap()
        .call(post("/v1/completions"))
        .await
        .unwrap();
    assert_eq!(third.status(), 503);
    assert_eq!(third.headers()["retry-after"], "2");
    assert!(third.headers().contains_key("x-request-id"));
    assert_eq!(f.shed.with_label_values(&["http", "overloaded"]).get(), 1);

    // Probes are not admitted against the limit.
    let probe = stack
        .ready()
        .await
        .unwrap()
        .call(post("/readyz"))
        .await
        .unwrap();
    assert_eq!(probe.status(), 200);

    release.send_replace(true);
    for response in [first, second] {
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"done");
    }
    assert_eq!(f.gate.in_flight(), 0);
    let again = stack
        .ready()
        .await
        .unwrap()
        .call(post("/v1/completions"))
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn a_dropped_answer_frees_its_slot() {
    let f = fixture(1);
    let (_release, released) = watch::channel(false);
    let mut stack = serving_stack(Api::Http, &f.settings, streaming_route(released));
    let answer = stack
        .ready()
        .await
        .unwrap()
        .call(post("/v1/completions"))
        .await
        .unwrap();
    assert_eq!(f.gate.in_flight(), 1);
    // The client went away mid-stream.
    drop(answer);
    assert_eq!(f.gate.in_flight(), 0);
}

#[tokio::test]
async fn closing_refuses_new_requests_and_the_drain_waits_for_in_flight_ones() {
    let f = fixture(4);
    let (release, released) = watch::channel(false);
    let mut http = serving_stack(Api::Http, &f.settings, streaming_route(released.clone()));
    let mut grpc = serving_stack(Api::Grpc, &f.settings, streaming_route(released));

    let held = http
        .ready()
        .await
        .unwrap()
        .call(post("/v1/completions"))
        .await
        .unwrap();
    // Draining: still served (watchers have not moved yet).
    f.lifecycle.set(Phase::Draining);
    assert!(!f.lifecycle.is_ready());
    let during_delay = http
        .ready()
        .await
        .unwrap()
        .call(post("/v1/completions"))
        .await
        .unwrap();
    assert_eq!(during_delay.status(), 200);
    drop(during_delay);

    f.lifecycle.set(Phase::Closing);
    let refused = http
        .ready()
        .await
        .unwrap()
        .call(post("/v1/completions"))
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "2");
    let refused = grpc
        .ready()
        .await
        .unwrap()
        .call(post("/tiergate.v1.Inference/Generate"))
        .await
        .unwrap();
    assert_eq!(refused.headers()["grpc-status"], "14");
    assert_eq!(refused.headers()["retry-after"], "2");
    assert_eq!(refused.headers()["grpc-retry-pushback-ms"], "2000");
    assert_eq!(f.shed.with_label_values(&["http", "draining"]).get(), 1);
    assert_eq!(f.shed.with_label_values(&["grpc", "draining"]).get(), 1);
    // Health and reflection still answer while closing.
    let health = grpc
        .ready()
        .await
        .unwrap()
        .call(post("/grpc.health.v1.Health/Check"))
        .await
        .unwrap();
    assert!(!health.headers().contains_key("grpc-status"));

    // The drain is not over while an answer streams.
    let mut idle = Box::pin(f.gate.idle());
    assert!((&mut idle).now_or_never().is_none());
    release.send_replace(true);
    let body = held.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"done");
    tokio::time::timeout(Duration::from_secs(10), idle)
        .await
        .expect("the drain did not end once nothing was in flight");
}
