//! Reading a streamed regional answer: timers per message, the empty-answer check, and the
//! report to the endpoint's link.

use std::time::{Duration, Instant};

use tiergate_proto::v1::GenerateStreamResponse;
use tiergate_proto::v1::generate_stream_response::Event;

use super::endpoints::InFlight;
use super::{empty_answer, is_real_stop, status_error};
use crate::call::{Admission, Timers};
use crate::error::{ErrorKind, UpstreamError};

/// What a stream carries along from its call.
pub(super) struct StreamCall {
    pub(super) in_flight: InFlight,
    pub(super) admission: Admission,
    pub(super) timers: Timers,
    pub(super) started: Instant,
}

/// Passes the peer's messages through until `done`. The link hears of the outcome before the
/// last item is handed over: a consumer that drops the stream after `done` must not leave the
/// success unreported (a half-open breaker would never close on streamed traffic).
pub(super) fn read_stream(
    mut messages: tonic::Streaming<GenerateStreamResponse>,
    call: StreamCall,
) -> impl futures::Stream<Item = Result<GenerateStreamResponse, UpstreamError>> + Send + 'static {
    let StreamCall {
        in_flight,
        mut admission,
        timers,
        started,
    } = call;
    async_stream::stream! {
        let mut first_message: Option<Duration> = None;
        // Text seen so far; before the first token the first-token timer runs, then the stall one.
        let mut last_token: Option<Instant> = None;
        loop {
            let timer = match last_token {
                None => timers.first_token(),
                Some(last) => timers.next_message(last),
            };
            let error = match tokio::time::timeout_at(timer.at.into(), messages.message()).await {
                Ok(Ok(Some(message))) => {
                    first_message.get_or_insert_with(|| started.elapsed());
                    let finish = match &message.event {
                        Some(Event::Delta(delta)) => {
                            if !delta.text.is_empty() || !delta.logprobs.is_empty() {
                                last_token = Some(Instant::now());
                            }
                            None
                        }
                        Some(Event::Done(done)) => Some(done.finish_reason.clone()),
                        _ => None,
                    };
                    match finish {
                        None => {
                            yield Ok(message);
                            continue;
                        }
                        Some(reason) if last_token.is_none() && !is_real_stop(&reason) => {
                            empty_answer(&reason)
                        }
                        Some(_) => {
                            admission.report(Ok(()), first_message.unwrap_or_default());
                            yield Ok(message);
                            break;
                        }
                    }
                }
                Ok(Ok(None)) => UpstreamError::new(
                    ErrorKind::Protocol,
                    "the regional stream ended without a done message",
                ),
                Ok(Err(status)) => status_error(&status, timer),
                Err(_) => timer.error(if last_token.is_none() {
                    "waiting for the first regional token"
                } else {
                    "waiting for the next regional token (stalled)"
                }),
            };
            admission.report(Err(&error), started.elapsed());
            yield Err(error);
            break;
        }
        drop(in_flight);
    }
}
