//! Reading a streamed regional answer: timers per message, the empty-answer check, and the
//! report to the endpoint's link; and gathering one into a whole answer.

use std::time::{Duration, Instant};

use futures::StreamExt;
use tiergate_proto::v1::generate_stream_response::Event;
use tiergate_proto::v1::{GenerateResponse, GenerateStreamResponse};

use super::endpoints::InFlight;
use super::{RegionalStream, empty_answer, is_real_stop, status_error};
use crate::MAX_ANSWER_BYTES;
use crate::call::{Admission, Timers};
use crate::error::{ErrorKind, UpstreamError};

/// What a stream carries along from its call.
pub(super) struct StreamCall {
    pub(super) in_flight: InFlight,
    pub(super) admission: Admission,
    pub(super) timers: Timers,
    /// The caller gathers the whole answer, which must then come by the whole-answer timer.
    pub(super) whole: bool,
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
        whole,
        started,
    } = call;
    async_stream::stream! {
        let mut first_message: Option<Duration> = None;
        let mut text_bytes = 0_usize;
        // Text seen so far; before the first token the first-token timer runs, then the stall one.
        let mut last_token: Option<Instant> = None;
        loop {
            let (timer, awaiting) = timers.next_read(last_token, whole);
            let error = match tokio::time::timeout_at(timer.at.into(), messages.message()).await {
                Ok(Ok(Some(message))) => {
                    first_message.get_or_insert_with(|| started.elapsed());
                    match &message.event {
                        Some(Event::Delta(delta)) => {
                            text_bytes += delta.text.len();
                            if text_bytes > MAX_ANSWER_BYTES {
                                UpstreamError::new(
                                    ErrorKind::Protocol,
                                    "the regional answer passed 16 MiB",
                                )
                            } else {
                                if !delta.text.is_empty() || !delta.logprobs.is_empty() {
                                    last_token = Some(Instant::now());
                                }
                                yield Ok(message);
                                continue;
                            }
                        }
                        Some(Event::Done(done))
                            if last_token.is_none() && !is_real_stop(&done.finish_reason) =>
                        {
                            empty_answer(&done.finish_reason)
                        }
                        Some(Event::Done(_)) => {
                            admission.report(Ok(()), first_message.unwrap_or_default());
                            yield Ok(message);
                            break;
                        }
                        Some(Event::Routed(_)) | None => {
                            yield Ok(message);
                            continue;
                        }
                    }
                }
                Ok(Ok(None)) => UpstreamError::new(
                    ErrorKind::Protocol,
                    "the regional stream ended without a done message",
                ),
                Ok(Err(status)) => status_error(&status, timer),
                Err(_) => awaiting.timed_out(timer, "regional"),
            };
            admission.report(Err(&error), started.elapsed());
            yield Err(error);
            break;
        }
        drop(in_flight);
    }
}

/// The whole answer of a stream read by [`read_stream`]: the deltas' text and tokens, the rest
/// (routing, usage, timing, finish reason) from its `done`.
pub(super) async fn gather(mut stream: RegionalStream) -> Result<GenerateResponse, UpstreamError> {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    while let Some(message) = stream.next().await {
        match message?.event {
            Some(Event::Delta(delta)) => {
                text.push_str(&delta.text);
                logprobs.extend(delta.logprobs);
            }
            // `done` carries no text of its own (the proto's contract).
            Some(Event::Done(done)) => {
                return Ok(GenerateResponse {
                    text,
                    logprobs,
                    ..done
                });
            }
            Some(Event::Routed(_)) | None => {}
        }
    }
    // `read_stream` ends with `done` or an error; this is only a guard.
    Err(UpstreamError::new(
        ErrorKind::Protocol,
        "the regional stream ended without an answer",
    ))
}
