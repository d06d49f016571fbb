//! Reading a streamed (SSE) cloud answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::CONTENT_TYPE;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{CloudEvent, Inner, empty_answer, is_real_stop};
use crate::MAX_ANSWER_BYTES;
use crate::call::{Admission, Timers};
use crate::error::{ErrorKind, UpstreamError, error_chain};
use crate::openai::{self, CloudCompletion};
use crate::sse::SseParser;

pub(super) fn check_event_stream(
    response: http::Response<Incoming>,
) -> Result<http::Response<Incoming>, UpstreamError> {
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("text/event-stream") {
        Ok(response)
    } else {
        Err(UpstreamError::new(
            ErrorKind::Protocol,
            format!("expected text/event-stream, got `{content_type}`"),
        ))
    }
}

/// What a stream carries along from its call.
pub(super) struct StreamCall {
    pub inner: Arc<Inner>,
    pub admission: Admission,
    pub timers: Timers,
    /// The caller gathers the whole answer, which must then come by the whole-answer timer.
    pub whole: bool,
}

/// Turns the SSE body into deltas and a final `Done`. The link hears of the outcome before the
/// last item is handed over, so a consumer that drops the stream after `Done` cannot leave it
/// unreported. Before the first token the first-token timer runs, then the stall timer.
pub(super) fn read_stream(
    call: StreamCall,
    mut body: Incoming,
) -> impl futures::Stream<Item = Result<CloudEvent, UpstreamError>> + Send + 'static {
    let StreamCall {
        inner,
        mut admission,
        timers,
        whole,
    } = call;
    async_stream::stream! {
        let mut parser = SseParser::new();
        let mut done = CloudCompletion {
            text: String::new(),
            finish_reason: None,
            usage: None,
            model: inner.model.clone(),
            logprobs: Vec::new(),
        };
        let mut first_event: Option<Duration> = None;
        let mut last_token: Option<Instant> = None;
        // Set when the stream must end with an error; `None` after `[DONE]`.
        let failure: Option<UpstreamError> = 'read: loop {
            let (timer, awaiting) = timers.next_read(last_token, whole);
            let frame = match tokio::time::timeout_at(timer.at.into(), body.frame()).await {
                Err(_) => break 'read Some(awaiting.timed_out(timer, "cloud")),
                Ok(None) => {
                    // Some servers close without `[DONE]`; accept that only after a finish reason.
                    if done.finish_reason.is_some() && !parser.has_partial_event() {
                        break 'read None;
                    }
                    break 'read Some(UpstreamError::new(
                        ErrorKind::Protocol,
                        "the cloud stream ended before [DONE]",
                    ));
                }
                Ok(Some(Err(e))) => {
                    break 'read Some(UpstreamError::new(
                        ErrorKind::Unavailable,
                        format!("the cloud stream broke: {}", error_chain(&e)),
                    ));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else { continue };
            let events = match parser.feed(&data) {
                Ok(events) => events,
                Err(e) => break 'read Some(UpstreamError::new(ErrorKind::Protocol, e.to_string())),
            };
            for event in events {
                if event.data == "[DONE]" {
                    break 'read None;
                }
                if event.event == "error" {
                    break 'read Some(UpstreamError::new(
                        ErrorKind::ServerError,
                        format!("provider error in stream: {}", openai::error_message(event.data.as_bytes())),
                    ));
                }
                let update = match openai::parse_chunk(&event.data) {
                    Ok(update) => update,
                    Err(e) => break 'read Some(e),
                };
                first_event.get_or_insert_with(|| timers.started.elapsed());
                if let Some(model) = update.model {
                    done.model = model;
                }
                if update.finish_reason.is_some() {
                    done.finish_reason = update.finish_reason;
                }
                if update.usage.is_some() {
                    done.usage = update.usage;
                }
                if update.delta.is_some() || !update.logprobs.is_empty() {
                    let text = update.delta.unwrap_or_default();
                    if done.text.len() + text.len() > MAX_ANSWER_BYTES {
                        break 'read Some(UpstreamError::new(
                            ErrorKind::Protocol,
                            "the cloud answer passed 16 MiB (a provider that ignores max_tokens?)",
                        ));
                    }
                    last_token = Some(Instant::now());
                    done.text.push_str(&text);
                    done.logprobs.extend(update.logprobs.iter().cloned());
                    yield Ok(CloudEvent::Delta { text, logprobs: update.logprobs });
                }
            }
        };
        // An empty answer that did not end with a real stop is a failure, never an answer.
        let failure = failure.or_else(|| {
            (done.text.is_empty() && !is_real_stop(done.finish_reason.as_deref()))
                .then(|| empty_answer(done.finish_reason.as_deref()))
        });
        let latency = first_event.unwrap_or_else(|| timers.started.elapsed());
        match failure {
            None => {
                admission.report(Ok(()), latency);
                yield Ok(CloudEvent::Done(done));
            }
            Some(err) => {
                admission.report(Err(&err), timers.started.elapsed());
                yield Err(err);
            }
        }
    }
}
