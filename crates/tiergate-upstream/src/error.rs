//! The errors of upstream calls ([`UpstreamError`]) and of building a client ([`SetupError`]).

use std::path::PathBuf;
use std::time::Duration;

/// What kind of failure an upstream call hit. Each kind has a low-cardinality label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No connection could be made (refused, DNS, TLS handshake).
    Connect,
    /// The deadline or the configured timeout passed.
    Timeout,
    /// The upstream asked us to slow down (HTTP 429, gRPC RESOURCE_EXHAUSTED).
    RateLimited,
    /// The upstream rejected the request (HTTP 4xx, gRPC INVALID_ARGUMENT and friends).
    Rejected,
    /// The upstream failed (HTTP 5xx, gRPC INTERNAL/UNKNOWN).
    ServerError,
    /// The upstream answered with something that is not the protocol (bad JSON, truncated stream).
    Protocol,
    /// Nothing can be called now: every endpoint's breaker is open or its health check says
    /// not serving, or the peer said UNAVAILABLE.
    Unavailable,
    /// The request cannot be sent as it is (checked before any I/O).
    InvalidRequest,
}

impl ErrorKind {
    /// A stable label for metrics and logs.
    pub fn as_label(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Rejected => "rejected",
            ErrorKind::ServerError => "server_error",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::InvalidRequest => "invalid_request",
        }
    }
}

/// A failed upstream call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", kind.as_label())]
pub struct UpstreamError {
    kind: ErrorKind,
    message: String,
    http_status: Option<u16>,
    grpc_code: Option<tonic::Code>,
    retry_after: Option<Duration>,
    /// A timeout set by the caller (its deadline or commit point), not by the tier's own
    /// timeouts: it says nothing about the link.
    caller_timeout: bool,
}

impl UpstreamError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            http_status: None,
            grpc_code: None,
            retry_after: None,
            caller_timeout: false,
        }
    }

    /// One of the tier's own timeouts (first token, stall, total) passed.
    pub(crate) fn timeout(what: &str) -> Self {
        Self::new(ErrorKind::Timeout, format!("timed out while {what}"))
    }

    /// The caller's deadline or commit point passed first.
    pub(crate) fn caller_timeout(what: &str) -> Self {
        Self {
            caller_timeout: true,
            ..Self::new(ErrorKind::Timeout, format!("deadline passed while {what}"))
        }
    }

    /// Whether this is a timeout the caller set (its deadline), rather than the tier's own.
    pub fn is_caller_timeout(&self) -> bool {
        self.caller_timeout
    }

    /// The same error, with the timeout said to be the caller's or the tier's own.
    pub(crate) fn with_caller_timeout(mut self, caller: bool) -> Self {
        self.caller_timeout = caller;
        self
    }

    /// An HTTP error status with the provider's own message.
    pub(crate) fn from_http_status(
        status: u16,
        message: &str,
        retry_after: Option<Duration>,
    ) -> Self {
        let kind = match status {
            429 => ErrorKind::RateLimited,
            400..=499 => ErrorKind::Rejected,
            // 1xx/3xx that we did not follow are as unusable as a 5xx.
            _ => ErrorKind::ServerError,
        };
        Self {
            kind,
            message: format!("HTTP {status}: {message}"),
            http_status: Some(status),
            grpc_code: None,
            retry_after,
            caller_timeout: false,
        }
    }

    /// A gRPC status from a regional peer.
    pub(crate) fn from_grpc_status(status: &tonic::Status) -> Self {
        use tonic::Code;
        let code = status.code();
        let kind = match code {
            Code::DeadlineExceeded => ErrorKind::Timeout,
            Code::Unavailable | Code::Cancelled | Code::Aborted => ErrorKind::Unavailable,
            Code::ResourceExhausted => ErrorKind::RateLimited,
            Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unimplemented => ErrorKind::Rejected,
            Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => ErrorKind::ServerError,
        };
        // tonic reports a failed connect as UNAVAILABLE with a `ConnectError` source; say so,
        // since such a request certainly never reached the peer.
        let kind = if kind == ErrorKind::Unavailable && is_connect_error(status) {
            ErrorKind::Connect
        } else {
            kind
        };
        // A tiergate peer says how long to back off in `retry-after` (seconds), as on HTTP.
        let retry_after = status
            .metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Self {
            kind,
            message: format!("gRPC {:?}: {}", code, status.message()),
            http_status: None,
            grpc_code: Some(code),
            retry_after,
            caller_timeout: false,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The provider's or peer's message, with the status it came with.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP status of a cloud answer, when there was one.
    pub fn http_status(&self) -> Option<u16> {
        self.http_status
    }

    /// The gRPC code of a regional answer, when there was one.
    pub fn grpc_code(&self) -> Option<tonic::Code> {
        self.grpc_code
    }

    /// The provider's `Retry-After`, when it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether the same request may succeed elsewhere or later (another endpoint or tier).
    /// A rejected or malformed request, or a protocol violation, fails again unchanged.
    pub fn is_retryable(&self) -> bool {
        match self.kind {
            ErrorKind::Connect
            | ErrorKind::Timeout
            | ErrorKind::RateLimited
            | ErrorKind::ServerError
            | ErrorKind::Unavailable => true,
            ErrorKind::Rejected | ErrorKind::Protocol | ErrorKind::InvalidRequest => false,
        }
    }

    /// A stable label for metrics and logs.
    pub fn as_label(&self) -> &'static str {
        self.kind.as_label()
    }
}

fn is_connect_error(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// An error with its sources, since hyper's top-level messages alone ("client error (Connect)")
/// do not say what went wrong.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Why a client could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("invalid config: {0}")]
    Config(String),
    #[error("cannot read {what} `{path}`: {source}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("API key environment variable `{0}` is not set or is empty")]
    MissingApiKeyEnv(String),
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn http_statuses_map_to_kinds() {
        let cases = [
            (400, ErrorKind::Rejected, false),
            (401, ErrorKind::Rejected, false),
            (404, ErrorKind::Rejected, false),
            (429, ErrorKind::RateLimited, true),
            (500, ErrorKind::ServerError, true),
            (503, ErrorKind::ServerError, true),
        ];
        for (status, kind, retryable) in cases {
            let err = UpstreamError::from_http_status(status, "provider says no", None);
            assert_eq!(err.kind(), kind, "{status}");
            assert_eq!(err.is_retryable(), retryable, "{status}");
            assert_eq!(err.http_status(), Some(status));
            assert!(err.to_string().contains("provider says no"));
        }
    }

    #[test]
    fn grpc_codes_map_to_kinds() {
        use tonic::{Code, Status};
        let cases = [
            (Code::Unavailable, ErrorKind::Unavailable, true),
            (Code::DeadlineExceeded, ErrorKind::Timeout, true),
            (Code::ResourceExhausted, ErrorKind::RateLimited, true),
            (Code::InvalidArgument, ErrorKind::Rejected, false),
            (Code::Unauthenticated, ErrorKind::Rejected, false),
            (Code::Internal, ErrorKind::ServerError, true),
        ];
        for (code, kind, retryable) in cases {
            let err = UpstreamError::from_grpc_status(&Status::new(code, "peer message"));
            assert_eq!(err.kind(), kind, "{code:?}");
            assert_eq!(err.is_retryable(), retryable, "{code:?}");
            assert_eq!(err.grpc_code(), Some(code));
            assert!(err.message().contains("peer message"));
        }
    }

    #[test]
    fn labels_are_stable() {
        assert_eq!(UpstreamError::timeout("x").as_label(), "timeout");
        assert_eq!(UpstreamError::caller_timeout("x").as_label(), "timeout");
        assert_eq!(
            UpstreamError::new(ErrorKind::Unavailable, "all open").as_label(),
            "unavailable"
        );
    }
}
