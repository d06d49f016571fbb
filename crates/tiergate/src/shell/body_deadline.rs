//! The request body of an inference call must arrive whole within `server.body_read_timeout`
//! of its head. Without a bound, a client that sends its headers and then trickles its body (or
//! goes silent: a dying mobile link, a slow-POST attack) held an admission slot until the route's
//! backstop timeout, five minutes; `max_concurrent_requests` of them shut the node for everyone.
//! A reader still waiting on the body past the bound gets an error instead: HTTP 408 (the
//! front end checks for [`BodyTimedOut`]), gRPC DEADLINE_EXCEEDED (tonic turns a `Status` body
//! error into the call's status).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};

use super::Api;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body that did not arrive whole within its bound.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body did not arrive whole within {} ms of its head", limit.as_millis())]
pub struct BodyTimedOut {
    pub limit: Duration,
}

pin_project! {
    /// A request body that fails once its bound has passed while a reader waits on it.
    pub struct BodyDeadline<B> {
        #[pin]
        body: B,
        // `None`: no bound (control routes: probes, metrics, health watches, reflection), or
        // none left (the body arrived whole, or it timed out).
        bound: Option<Bound>,
        api: Api,
        timed_out: bool,
    }
}

/// When the body is due, and the timer that says so: made only once a reader has to wait,
/// since most bodies arrive with their head and then need no timer at all.
struct Bound {
    due: Instant,
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> BodyDeadline<B> {
    /// `body`, due within `limit` from now when a limit is given.
    pub fn new(body: B, limit: Option<Duration>, api: Api) -> BodyDeadline<B> {
        BodyDeadline {
            body,
            bound: limit.map(|limit| Bound {
                due: Instant::now() + limit,
                limit,
                timer: None,
            }),
            api,
            timed_out: false,
        }
    }
}

impl<B> Body for BodyDeadline<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.project();
        if *this.timed_out {
            return Poll::Ready(None);
        }
        match this.body.poll_frame(cx) {
            Poll::Ready(frame) => {
                if frame.is_none() {
                    // Arrived whole: the bound has nothing left to guard.
                    *this.bound = None;
                }
                Poll::Ready(frame.map(|frame| frame.map_err(Into::into)))
            }
            Poll::Pending => {
                let Some(bound) = this.bound.as_mut() else {
                    return Poll::Pending;
                };
                let timer = (bound.timer).get_or_insert_with(|| Box::pin(sleep_until(bound.due)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                *this.timed_out = true;
                let timed_out = BodyTimedOut { limit: bound.limit };
                *this.bound = None;
                let err: BoxError = match this.api {
                    Api::Http => Box::new(timed_out),
                    Api::Grpc => Box::new(tonic::Status::deadline_exceeded(timed_out.to_string())),
                };
                Poll::Ready(Some(Err(err)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
