//! The exporter's id generator: the ids the trace-context layer already chose, when a span is
//! started inside [`with_next`], random ids otherwise.

use std::cell::Cell;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

thread_local! {
    static NEXT_TRACE: Cell<Option<TraceId>> = const { Cell::new(None) };
    static NEXT_SPAN: Cell<Option<SpanId>> = const { Cell::new(None) };
}

/// Runs `start` (which starts one span on this thread) with the ids that span is to get. The
/// SDK asks its id generator and offers no other way to set a span's id.
pub(super) fn with_next(trace_id: TraceId, span_id: SpanId, start: impl FnOnce()) {
    NEXT_TRACE.with(|c| c.set(Some(trace_id)));
    NEXT_SPAN.with(|c| c.set(Some(span_id)));
    start();
    // Not consumed when the span was not started (e.g. not sampled): never leak them into
    // the next span of this thread.
    NEXT_TRACE.with(|c| c.set(None));
    NEXT_SPAN.with(|c| c.set(None));
}

/// See the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeIds;

impl IdGenerator for NodeIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE
            .with(Cell::take)
            .unwrap_or_else(|| RandomIdGenerator::default().new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_SPAN
            .with(Cell::take)
            .unwrap_or_else(|| RandomIdGenerator::default().new_span_id())
    }
}
