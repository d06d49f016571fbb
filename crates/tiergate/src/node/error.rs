//! The node's one error type: each error knows its HTTP status, gRPC code and metric label.

/// Why a request could not be answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    /// The request itself is wrong; retrying it unchanged fails again.
    #[error("{0}")]
    InvalidArgument(String),
    /// The node is at capacity; retry later.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// No tier allowed for this request can answer now.
    #[error("unavailable: {0}")]
    Unavailable(String),
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
            NodeError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            NodeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
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
            NodeError::Overloaded(_) => Code::ResourceExhausted,
            NodeError::Unavailable(_) | NodeError::Upstream(_) => Code::Unavailable,
            NodeError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            NodeError::Internal(_) => Code::Internal,
        }
    }

    /// A low-cardinality label for metrics and the OpenAI error `type` field.
    pub fn as_label(&self) -> &'static str {
        match self {
            NodeError::InvalidArgument(_) => "invalid_request",
            NodeError::Overloaded(_) => "overloaded",
            NodeError::Unavailable(_) => "unavailable",
            NodeError::DeadlineExceeded(_) => "deadline_exceeded",
            NodeError::Upstream(_) => "upstream_error",
            NodeError::Internal(_) => "internal",
        }
    }
}

impl From<NodeError> for tonic::Status {
    fn from(err: NodeError) -> Self {
        tonic::Status::new(err.grpc_code(), err.to_string())
    }
}
