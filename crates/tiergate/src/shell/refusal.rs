//! Small responses the stack's own layers answer with (admission refusals, timeouts,
//! authentication failures), in each API's error shape.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::admission::{Api, GuardedBody};

pub(super) fn http_error<B>(
    status: StatusCode,
    kind: &str,
    message: &str,
) -> Response<GuardedBody<B>> {
    let body = serde_json::json!({
        "error": {"message": message, "type": kind, "param": null, "code": status.as_u16()}
    });
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    let mut response = Response::new(GuardedBody::Own { bytes: Some(bytes) });
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(super) fn grpc_error<B>(code: tonic::Code, message: &str) -> Response<GuardedBody<B>> {
    // A trailers-only response: status 200 and the gRPC status in the headers.
    let mut response = Response::new(GuardedBody::Own { bytes: None });
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code as i32));
    if let Ok(message) = HeaderValue::from_str(message) {
        headers.insert("grpc-message", message);
    }
    response
}

/// `Retry-After` (whole seconds), and on gRPC `grpc-retry-pushback-ms` too (gRFC A6), which
/// gRPC clients with a retry policy read.
pub(super) fn retry_after<B>(response: &mut Response<B>, api: Api, seconds: u64) {
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    if api == Api::Grpc {
        headers.insert(
            "grpc-retry-pushback-ms",
            HeaderValue::from(seconds.saturating_mul(1000)),
        );
    }
}
