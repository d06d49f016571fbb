//! The node's one error type: each error knows its HTTP status, gRPC code and metric label.

use std::time::Duration;

/// How long a client told "overloaded" should wait: the engine's queue drains in about that.
const OVERLOADED_RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long a client told "unavailable" should wait: the default time an open breaker waits
/// before it probes its upstream again.
const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Why a request could not be answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    /// The request itself is wrong; retrying it unchanged fails again.
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller's tenant may not do this (a tier or a model it is not allowed).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The caller's tenant is over one of its limits; retry after `retry_after`.
    #[error("rate limited: {message}")]
    TenantLimited {
        message: String,
        retry_after: Duration,
    },
    /// The node is at capacity; retry later.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// No tier allowed for this request can answer now.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// No tier allowed for this request can answer, and link health knows when an upstream
    /// may take calls again (an open breaker's probe time, a back-pressure hold-off).
    #[error("unavailable: {message}")]
    LinksDown {
        message: String,
        retry_after: Duration,
    },
    /// The request's deadline passed before an answer could start.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// An upstream failed after the answer had started streaming; it cannot be retried elsewhere.
    #[error("upstream failed: {0}")]
    Upstream(String),
    /// A bug or an unexpected failure of the local engine.
    #[error("internal error: {0}")]
    Internal(String),
}

impl NodeError {
    /// The HTTP status an OpenAI-compatible client expects for this error.
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            NodeError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            NodeError::PermissionDenied(_) => StatusCode::FORBIDDEN,
            NodeError::Overloaded(_) | NodeError::TenantLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            NodeError::Unavailable(_) | NodeError::LinksDown { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            NodeError::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            NodeError::Upstream(_) => StatusCode::BAD_GATEWAY,
            NodeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status code for this error.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            NodeError::InvalidArgument(_) => Code::InvalidArgument,
            NodeError::PermissionDenied(_) => Code::PermissionDenied,
            NodeError::Overloaded(_) | NodeError::TenantLimited { .. } => Code::ResourceExhausted,
            NodeError::Unavailable(_) | NodeError::LinksDown { .. } | NodeError::Upstream(_) => {
                Code::Unavailable
            }
            NodeError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            NodeError::Internal(_) => Code::Internal,
        }
    }

    /// How long the client should wait before trying again, for errors where waiting helps
    /// (sent as `Retry-After` on HTTP 429/503 and as `retry-after` gRPC metadata). Whole
    /// seconds, at least one: `Retry-After` has no finer unit, and 0 would invite a tight loop.
    pub fn retry_after(&self) -> Option<Duration> {
        let wait = match self {
            NodeError::Overloaded(_) => OVERLOADED_RETRY_AFTER,
            NodeError::Unavailable(_) => UNAVAILABLE_RETRY_AFTER,
            NodeError::LinksDown { retry_after, .. }
            | NodeError::TenantLimited { retry_after, .. } => *retry_after,
            _ => return None,
        };
        let whole_seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Some(Duration::from_secs(whole_seconds.max(1)))
    }

    /// A low-cardinality label for metrics and the OpenAI error `type` field.
    pub fn as_label(&self) -> &'static str {
        match self {
            NodeError::InvalidArgument(_) => "invalid_request",
            NodeError::PermissionDenied(_) => "permission_denied",
            NodeError::TenantLimited { .. } => "rate_limited",
            NodeError::Overloaded(_) => "overloaded",
            NodeError::Unavailable(_) | NodeError::LinksDown { .. } => "unavailable",
            NodeError::DeadlineExceeded(_) => "deadline_exceeded",
            NodeError::Upstream(_) => "upstream_error",
            NodeError::Internal(_) => "internal",
        }
    }
}

impl From<NodeError> for tonic::Status {
    fn from(err: NodeError) -> Self {
        let mut status = tonic::Status::new(err.grpc_code(), err.to_string());
        if let Some(wait) = err.retry_after() {
            let metadata = status.metadata_mut();
            metadata.insert("retry-after", wait.as_secs().into());
            // What gRPC clients with a retry policy read (gRFC A6).
            metadata.insert(
                "grpc-retry-pushback-ms",
                u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).into(),
            );
        }
        status
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn overloaded_and_unavailable_say_when_to_come_back() {
        let status = tonic::Status::from(NodeError::Overloaded("queue full".into()));
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.metadata().get("retry-after").unwrap(), "1");
        assert_eq!(
            status.metadata().get("grpc-retry-pushback-ms").unwrap(),
            "1000"
        );
        let status = tonic::Status::from(NodeError::Unavailable("offline".into()));
        assert_eq!(status.metadata().get("retry-after").unwrap(), "5");
        // A wait that link health knows is rounded up to whole seconds, never to zero.
        let links_down = |millis| NodeError::LinksDown {
            message: "every upstream is down".into(),
            retry_after: Duration::from_millis(millis),
        };
        assert_eq!(
            links_down(12_300).retry_after(),
            Some(Duration::from_secs(13))
        );
        assert_eq!(links_down(0).retry_after(), Some(Duration::from_secs(1)));
        let status = tonic::Status::from(links_down(7_000));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.metadata().get("retry-after").unwrap(), "7");
        let status = tonic::Status::from(NodeError::InvalidArgument("bad".into()));
        assert!(status.metadata().get("retry-after").is_none());
    }
}
