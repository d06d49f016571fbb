//! W3C trace context (`traceparent`, `tracestate`): what a node accepts from its client, sends
//! to the tiers above it and returns in its answer.
//!
//! Every node is one span of the trace: it keeps the trace id it was given (or starts a trace
//! when it was given none, or an invalid one), makes its own span id, and sends
//! `00-<trace id>-<its span id>-<flags>` upstream (gRPC metadata, HTTP header) and back to its
//! client. It lives with the request model, below both front ends and the clients that send it.

use std::fmt;

/// The header (HTTP) and metadata key (gRPC) of the trace parent.
pub const TRACEPARENT: &str = "traceparent";
/// The header and metadata key of vendor trace state, passed on as is.
pub const TRACESTATE: &str = "tracestate";

/// The longest `tracestate` passed on (the W3C limit is 32 members; 512 characters is the size
/// the spec asks a platform to propagate at least).
const MAX_TRACESTATE_LEN: usize = 512;

/// Why a `traceparent` was not accepted (it is then replaced by a new trace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TraceparentError {
    #[error("not four dash-separated fields of 2, 32, 16 and 2 lowercase hex digits")]
    Format,
    #[error("version is not 00")]
    Version,
    #[error("trace id is all zeros")]
    ZeroTraceId,
    #[error("parent id is all zeros")]
    ZeroParentId,
}

/// A valid incoming `traceparent`: the caller's trace and span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traceparent {
    pub trace_id: u128,
    pub parent_id: u64,
    pub flags: u8,
}

/// Parses a version-00 `traceparent`: `00-` 32 hex digits (not all zero) `-` 16 hex digits
/// (not all zero) `-` 2 hex digits, lowercase, nothing else.
pub fn parse_traceparent(value: &str) -> Result<Traceparent, TraceparentError> {
    let fields: Vec<&str> = value.split('-').collect();
    let [version, trace_id, parent_id, flags] = fields[..] else {
        return Err(TraceparentError::Format);
    };
    let lower_hex = |field: &str, len: usize| {
        field.len() == len
            && field
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let well_formed = lower_hex(version, 2)
        && lower_hex(trace_id, 32)
        && lower_hex(parent_id, 16)
        && lower_hex(flags, 2);
    if !well_formed {
        return Err(TraceparentError::Format);
    }
    if version != "00" {
        return Err(TraceparentError::Version);
    }
    // The fields are checked hex digits of the right length: these parses cannot fail.
    let hex = |field: &str| u128::from_str_radix(field, 16).map_err(|_| TraceparentError::Format);
    let trace_id = hex(trace_id)?;
    let parent_id = u64::try_from(hex(parent_id)?).map_err(|_| TraceparentError::Format)?;
    let flags = u8::try_from(hex(flags)?).map_err(|_| TraceparentError::Format)?;
    if trace_id == 0 {
        return Err(TraceparentError::ZeroTraceId);
    }
    if parent_id == 0 {
        return Err(TraceparentError::ZeroParentId);
    }
    Ok(Traceparent {
        trace_id,
        parent_id,
        flags,
    })
}

/// This node's span of a request's trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    /// The caller's span, when the request came with a valid `traceparent`.
    parent_id: Option<u64>,
    flags: u8,
    tracestate: Option<String>,
}

impl TraceContext {
    /// A new trace whose first span is this node's (flags 00: nothing is recorded by default).
    pub fn fresh() -> Self {
        TraceContext {
            trace_id: nonzero(rand::random::<u128>),
            span_id: nonzero(rand::random::<u64>),
            parent_id: None,
            flags: 0,
            tracestate: None,
        }
    }

    /// This node's span of the trace a request came with: the caller's trace when its
    /// `traceparent` is valid (its `tracestate` is then kept, when plain ASCII of at most 512
    /// characters), else a new trace. The error says why a given `traceparent` was replaced.
    pub fn from_incoming(
        traceparent: Option<&str>,
        tracestate: Option<&str>,
    ) -> (Self, Option<TraceparentError>) {
        let Some(value) = traceparent else {
            return (Self::fresh(), None);
        };
        match parse_traceparent(value.trim()) {
            Ok(parent) => {
                let tracestate = tracestate
                    .map(str::trim)
                    .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE_LEN)
                    .filter(|s| s.bytes().all(|b| (b' '..=b'~').contains(&b)))
                    .map(str::to_owned);
                let context = TraceContext {
                    trace_id: parent.trace_id,
                    span_id: nonzero(rand::random::<u64>),
                    parent_id: Some(parent.parent_id),
                    flags: parent.flags,
                    tracestate,
                };
                (context, None)
            }
            Err(err) => (Self::fresh(), Some(err)),
        }
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// This node's span id, 16 lowercase hex digits.
    pub fn span_id(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    /// The caller's span id, when there was a caller's trace.
    pub fn parent_id(&self) -> Option<String> {
        self.parent_id.map(|id| format!("{id:016x}"))
    }

    /// The `traceparent` this node sends upstream and returns: the trace, with this node's
    /// span as the parent.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the trace came from a caller (else this node started it).
    pub fn has_caller(&self) -> bool {
        self.parent_id.is_some()
    }

    /// Sets the sampled flag of a trace this node started (its exporter decided to record it),
    /// so the tiers above record their spans of it too. A caller's flags are never changed.
    pub fn mark_sampled(&mut self) {
        if self.parent_id.is_none() {
            self.flags |= 0x01;
        }
    }

    /// The caller's `tracestate`, passed on unchanged.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent())
    }
}

/// A random id that is not zero (an all-zero id is invalid in W3C trace context).
fn nonzero<T: PartialEq + Default>(mut draw: impl FnMut() -> T) -> T {
    loop {
        let value = draw();
        if value != T::default() {
            return value;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn only_a_trace_this_node_started_can_be_marked_sampled() {
        let mut fresh = TraceContext::fresh();
        fresh.mark_sampled();
        assert!(fresh.traceparent().ends_with("-01"));
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let (mut called, _) = TraceContext::from_incoming(Some(unsampled), None);
        called.mark_sampled();
        assert_eq!(called.flags(), 0);
    }

    #[test]
    fn a_valid_traceparent_is_read() {
        let parent = parse_traceparent(VALID).unwrap();
        assert_eq!(parent.trace_id, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        assert_eq!(parent.parent_id, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(parent.flags, 1);
    }

    #[test]
    fn each_invalid_form_is_refused_with_its_reason() {
        let cases = [
            ("", TraceparentError::Format),
            ("garbage", TraceparentError::Format),
            // a field too short or too long
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                TraceparentError::Format,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
                TraceparentError::Format,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
                TraceparentError::Format,
            ),
            // uppercase hex and non-hex characters
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                TraceparentError::Format,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
                TraceparentError::Format,
            ),
            // a fifth field (allowed only by later versions, which are refused anyway)
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                TraceparentError::Format,
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceparentError::Version,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceparentError::Version,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                TraceparentError::ZeroTraceId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                TraceparentError::ZeroParentId,
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_traceparent(value), Err(expected), "{value:?}");
        }
    }

    #[test]
    fn a_node_keeps_the_trace_and_makes_its_own_span() {
        let (context, error) = TraceContext::from_incoming(Some(VALID), Some("vendor=abc"));
        assert_eq!(error, None);
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.parent_id().as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(context.span_id(), "00f067aa0ba902b7");
        assert_eq!(context.tracestate(), Some("vendor=abc"));
        let sent = context.traceparent();
        let parsed = parse_traceparent(&sent).unwrap();
        assert_eq!(parsed.trace_id, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        assert_eq!(format!("{:016x}", parsed.parent_id), context.span_id());
        assert_eq!(parsed.flags, 1);
    }

    #[test]
    fn an_invalid_or_absent_traceparent_starts_a_new_trace() {
        let (context, error) = TraceContext::from_incoming(
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("vendor=abc"),
        );
        assert_eq!(error, Some(TraceparentError::ZeroTraceId));
        assert_ne!(context.trace_id(), "0".repeat(32));
        assert_eq!(context.parent_id(), None);
        // Trace state belongs to the trace it came with: dropped with it.
        assert_eq!(context.tracestate(), None);
        assert!(parse_traceparent(&context.traceparent()).is_ok());

        let (context, error) = TraceContext::from_incoming(None, None);
        assert_eq!(error, None);
        assert!(parse_traceparent(&context.traceparent()).is_ok());
    }

    #[test]
    fn unfit_tracestate_is_dropped() {
        let long = "a=".to_owned() + &"b".repeat(600);
        let (context, _) = TraceContext::from_incoming(Some(VALID), Some(&long));
        assert_eq!(context.tracestate(), None);
        let (context, _) = TraceContext::from_incoming(Some(VALID), Some("a=\u{7f}"));
        assert_eq!(context.tracestate(), None);
    }
}
