//! The send watch: an HTTP/2 answer whose client stopped taking it.
//!
//! Over HTTP/1.1 a client that stops reading closes its TCP window, the node's unsent bytes
//! wait in the socket, and `server.send_timeout` (TCP_USER_TIMEOUT, `accept.rs`) resets the
//! connection. Over HTTP/2 the stream's own flow-control window fills first: TCP has nothing
//! unsent, the connection stays healthy (the client's library still answers PINGs), and hyper
//! simply stops asking the body for frames, with the request's admission permit inside it, for
//! as long as the client keeps the connection. `max_concurrent_requests` such streams would shut
//! the node.
//!
//! A watched body notes when it hands hyper a frame and forgets it when hyper comes back for
//! the next one; a watchdog task ends the answer when hyper has not come back within the send
//! timeout: the inner body is dropped (the generation behind it stops), the permit frees, and a
//! client that reads again gets an error, never a clean end: gRPC trailers with
//! DEADLINE_EXCEEDED (tonic's frames hold whole messages, so trailers may follow any of them),
//! on HTTP a stream reset. A body waiting for its next token is not watched: hyper asked, the
//! body is late, the client is not.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use prometheus::IntCounter;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::Instrument;

use super::admission::Api;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// See the module's documentation.
pub struct WatchedBody<B> {
    slot: Arc<Mutex<Slot<B>>>,
    watchdog: AbortHandle,
}

struct Slot<B> {
    state: State<B>,
    /// When the body last handed hyper a frame, while hyper has not asked for the next one.
    handed_at: Option<Instant>,
}

enum State<B> {
    Sending {
        body: Pin<Box<B>>,
        _permit: Option<OwnedSemaphorePermit>,
    },
    /// The send timeout ended the answer; the client has not been told yet.
    Cut {
        api: Api,
        limit: Duration,
    },
    Ended,
}

impl<B: Body<Data = Bytes> + Send + 'static> WatchedBody<B> {
    /// Starts watching `body` (which holds `permit` until it ends or is cut). `cuts` counts the
    /// answers the watch ends. Needs a tokio runtime (the watchdog is a task).
    pub fn new(
        body: B,
        permit: Option<OwnedSemaphorePermit>,
        api: Api,
        limit: Duration,
        cuts: IntCounter,
    ) -> WatchedBody<B> {
        let slot = Arc::new(Mutex::new(Slot {
            state: State::Sending {
                body: Box::pin(body),
                _permit: permit,
            },
            handed_at: None,
        }));
        // In the request's span: the watchdog's warning carries the request id.
        let watchdog =
            tokio::spawn(watch(Arc::downgrade(&slot), api, limit, cuts).in_current_span());
        WatchedBody {
            slot,
            watchdog: watchdog.abort_handle(),
        }
    }
}

impl<B> std::fmt::Debug for WatchedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let slot = lock(&self.slot);
        let state = match slot.state {
            State::Sending { .. } => "sending",
            State::Cut { .. } => "cut",
            State::Ended => "ended",
        };
        f.debug_struct("WatchedBody")
            .field("state", &state)
            .field("handed_at", &slot.handed_at)
            .finish()
    }
}

impl<B> Drop for WatchedBody<B> {
    fn drop(&mut self) {
        self.watchdog.abort();
    }
}

fn lock<B>(slot: &Mutex<Slot<B>>) -> MutexGuard<'_, Slot<B>> {
    // A panic while polling the inner body poisons nothing this module relies on.
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sleeps until the frame handed last is `limit` old, and cuts the answer if hyper has still
/// not asked for the next one by then.
async fn watch<B>(slot: Weak<Mutex<Slot<B>>>, api: Api, limit: Duration, cuts: IntCounter) {
    let mut due = Instant::now() + limit;
    loop {
        tokio::time::sleep_until(due).await;
        let Some(slot) = slot.upgrade() else {
            return;
        };
        let mut slot = lock(&slot);
        if !matches!(slot.state, State::Sending { .. }) {
            return;
        }
        due = match slot.handed_at {
            Some(handed) if handed.elapsed() >= limit => {
                // Dropping the inner body stops its generation and frees the permit.
                slot.state = State::Cut { api, limit };
                cuts.inc();
                tracing::warn!(
                    send_timeout_ms = limit.as_millis() as u64,
                    "the client took no data of its answer within the send timeout: answer ended"
                );
                return;
            }
            Some(handed) => handed + limit,
            None => Instant::now() + limit,
        };
    }
}

impl<B> Body for WatchedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut slot = lock(&self.slot);
        let polled = match &mut slot.state {
            State::Sending { body, .. } => body.as_mut().poll_frame(cx),
            State::Cut { api, limit } => {
                let ending = cut_ending(*api, *limit);
                slot.state = State::Ended;
                return Poll::Ready(Some(ending));
            }
            State::Ended => return Poll::Ready(None),
        };
        match polled {
            Poll::Pending => {
                slot.handed_at = None;
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                slot.handed_at = Some(Instant::now());
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                slot.state = State::Ended;
                Poll::Ready(Some(Err(err.into())))
            }
            Poll::Ready(None) => {
                // The answer is complete: the slot frees now, not when hyper drops us.
                slot.state = State::Ended;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &lock(&self.slot).state {
            State::Sending { body, .. } => body.is_end_stream(),
            State::Cut { .. } => false,
            State::Ended => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        // A whole answer keeps its exact length (hyper's content-length).
        match &lock(&self.slot).state {
            State::Sending { body, .. } => body.size_hint(),
            State::Cut { .. } | State::Ended => SizeHint::default(),
        }
    }
}

/// What a client that reads again finds after the cut.
fn cut_ending(api: Api, limit: Duration) -> Result<Frame<Bytes>, BoxError> {
    let message = format!(
        "the client took no data of its answer for {} ms (server.send_timeout): answer ended",
        limit.as_millis()
    );
    match api {
        Api::Grpc => {
            let mut trailers = HeaderMap::new();
            trailers.insert(
                "grpc-status",
                HeaderValue::from(tonic::Code::DeadlineExceeded as i32),
            );
            if let Ok(message) = HeaderValue::from_str(&message) {
                trailers.insert("grpc-message", message);
            }
            Ok(Frame::trailers(trailers))
        }
        // A half-sent HTTP answer cannot say more: the stream is reset.
        Api::Http => Err(message.into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::convert::Infallible;
    use std::sync::Arc;

    use http_body_util::{BodyExt, StreamBody};
    use prometheus::IntCounter;
    use tokio::sync::{Semaphore, mpsc};
    use tokio_stream::wrappers::ReceiverStream;

    use super::*;

    const LIMIT: Duration = Duration::from_millis(200);

    type Token = Result<Frame<Bytes>, Infallible>;
    type Frames = StreamBody<ReceiverStream<Token>>;

    /// The answer, the sender of its frames, the admission slots and the cut counter.
    struct Answer {
        body: WatchedBody<Frames>,
        frames: mpsc::Sender<Token>,
        slots: Arc<Semaphore>,
        cuts: IntCounter,
    }

    /// A watched answer whose frames the test sends, holding the one permit of `slots`.
    fn answer(api: Api) -> Answer {
        let slots = Arc::new(Semaphore::new(1));
        let permit = Arc::clone(&slots).try_acquire_owned().unwrap();
        let (frames, receiver) = mpsc::channel(8);
        let cuts = IntCounter::new("cuts", "cuts").unwrap();
        let body = WatchedBody::new(
            StreamBody::new(ReceiverStream::new(receiver)),
            Some(permit),
            api,
            LIMIT,
            cuts.clone(),
        );
        Answer {
            body,
            frames,
            slots,
            cuts,
        }
    }

    fn token(text: &'static str) -> Token {
        Ok(Frame::data(Bytes::from_static(text.as_bytes())))
    }

    #[tokio::test]
    async fn a_frame_hyper_never_comes_back_after_ends_the_answer_at_the_limit() {
        let Answer {
            mut body,
            frames,
            slots,
            cuts,
        } = answer(Api::Grpc);
        frames.send(token("first")).await.unwrap();
        frames.send(token("second")).await.unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "first");
        // Handed, and hyper does not come back (the stream's window is full).
        tokio::time::sleep(LIMIT / 2).await;
        assert_eq!(slots.available_permits(), 0, "cut before the limit");
        tokio::time::sleep(LIMIT).await;
        assert_eq!(slots.available_permits(), 1, "the slot is still held");
        assert_eq!(cuts.get(), 1);
        assert!(frames.is_closed(), "the answer behind the body still runs");
        // The client reads again: trailers with the error, then the end; not "second".
        let trailers = body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(trailers["grpc-status"], "4");
        assert!(
            trailers["grpc-message"]
                .to_str()
                .unwrap()
                .contains("send_timeout")
        );
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn on_http_the_cut_answer_ends_with_an_error() {
        let Answer {
            mut body, frames, ..
        } = answer(Api::Http);
        frames.send(token("data: first\n\n")).await.unwrap();
        body.frame().await.unwrap().unwrap();
        tokio::time::sleep(LIMIT * 2).await;
        let ending = body.frame().await.unwrap();
        assert!(ending.unwrap_err().to_string().contains("send_timeout"));
    }

    #[tokio::test]
    async fn an_answer_slow_to_produce_its_frames_is_not_cut() {
        let Answer {
            mut body,
            frames,
            slots,
            cuts,
        } = answer(Api::Grpc);
        frames.send(token("first")).await.unwrap();
        body.frame().await.unwrap().unwrap();
        // Hyper asks for the next frame at once; the answer takes three limits to produce it.
        let waited = tokio::time::timeout(LIMIT * 3, body.frame()).await;
        assert!(waited.is_err(), "a frame came from nowhere");
        assert_eq!(slots.available_permits(), 0);
        frames.send(token("second")).await.unwrap();
        drop(frames);
        let second = body.frame().await.unwrap().unwrap();
        assert_eq!(second.into_data().unwrap(), "second");
        assert!(body.frame().await.is_none());
        assert_eq!(
            slots.available_permits(),
            1,
            "the ended answer still holds its slot"
        );
        assert_eq!(cuts.get(), 0);
    }
}
