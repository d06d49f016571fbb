//! Reading a streamed (SSE) cloud answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::CONTENT_TYPE;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{CloudEvent, Inner};
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

/// Turns the SSE body into deltas and a final `Done`, feeding the link health at the end.
pub(super) fn read_stream(
    inner: Arc<Inner>,
    mut body: Incoming,
    deadline: tokio::time::Instant,
    started: Instant,
) -> impl futures::Stream<Item = Result<CloudEvent, UpstreamError>> + Send + 'static {
    async_stream::stream! {
        let mut parser = SseParser::new();
        let mut done = CloudCompletion {
            text: String::new(),
            finish_reason: None,
            usage: None,
            model: inner.model.clone(),
        };
        let mut first_event: Option<Duration> = None;
        // Set when the stream must end with an error; `None` after `[DONE]`.
        let failure: Option<UpstreamError> = 'read: loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => break 'read Some(UpstreamError::timeout("streaming the cloud answer")),
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
                first_event.get_or_insert_with(|| started.elapsed());
                if let Some(model) = update.model {
                    done.model = model;
                }
                if update.finish_reason.is_some() {
                    done.finish_reason = update.finish_reason;
                }
                if update.usage.is_some() {
                    done.usage = update.usage;
                }
                if let Some(delta) = update.delta {
                    done.text.push_str(&delta);
                    yield Ok(CloudEvent::Delta(delta));
                }
            }
        };
        let latency = first_event.unwrap_or_else(|| started.elapsed());
        match failure {
            None => {
                inner.observe(Ok(()), latency);
                yield Ok(CloudEvent::Done(done));
            }
            Some(err) => {
                inner.observe(Err(&err), latency);
                yield Err(err);
            }
        }
    }
}
