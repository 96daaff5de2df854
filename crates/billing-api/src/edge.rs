//! The transport edge: explicit size limits on messages and metadata, and a
//! clear status for a request body the framework cannot read or a request
//! over a limit.
//!
//! tonic answers a body that does not decode (bad protobuf, invalid UTF-8 in
//! a `string`, a missing message, a bad compressed flag) with INTERNAL, and
//! one over the size limit with OUT_OF_RANGE, before any handler runs.
//! [`Edge`] wraps the service and turns those into INVALID_ARGUMENT
//! (`MALFORMED_REQUEST`) and RESOURCE_EXHAUSTED (`REQUEST_TOO_LARGE`). It
//! tells them from the service's own statuses by the ErrorInfo every status
//! of this service carries.

use std::task::{Context, Poll};

use tonic::Code;
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;

/// The largest request message accepted, in bytes (the largest valid one,
/// an account with every text field full, is under 4 KiB).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// The largest response message sent, in bytes (a full page of accounts is
/// under 400 KiB).
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// The most request metadata (headers) accepted, in bytes, counted as
/// HTTP/2 counts it: name, value and 32 bytes per header. A request over it
/// is RESOURCE_EXHAUSTED (`METADATA_TOO_LARGE`).
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// The header list HTTP/2 itself accepts. Between [`MAX_METADATA_BYTES`] and
/// this, [`Edge`] answers with a gRPC status; above it HTTP/2 refuses the
/// stream alone (HTTP 431, which gRPC clients report as UNKNOWN); above four
/// times it HTTP/2 (h2) closes the connection as abuse, failing every call
/// on it.
pub const HTTP2_MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;
/// The largest HTTP/2 frame accepted. A header block larger than one frame
/// comes in CONTINUATION frames, and one over the header list limit that
/// does makes HTTP/2 close the connection, so a frame holds any header
/// block short of abuse.
pub const MAX_FRAME_BYTES: u32 = 4 * HTTP2_MAX_HEADER_LIST_BYTES;

/// A server transport with the limits above. The binary builds its server
/// from this.
pub fn transport() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_max_header_list_size(HTTP2_MAX_HEADER_LIST_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
}

/// The size of request metadata as HTTP/2 counts it (RFC 9113, 6.5.2).
pub fn metadata_bytes(request: &http::Request<Body>) -> usize {
    let pseudo = request.method().as_str().len()
        + request.uri().path().len()
        + request.uri().scheme_str().map_or(0, str::len)
        + request.uri().authority().map_or(0, |a| a.as_str().len())
        + 4 * 32;
    request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum::<usize>()
        + pseudo
}

/// A gRPC service whose framework-raised request errors are refined.
#[derive(Clone, Debug)]
pub struct Edge<S> {
    inner: S,
}

impl<S> Edge<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: NamedService> NamedService for Edge<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<Body>> for Edge<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let metadata = metadata_bytes(&request);
        if metadata > MAX_METADATA_BYTES {
            tracing::info!(metadata, "request metadata over the limit refused");
            let status = crate::status::metadata_too_large(MAX_METADATA_BYTES);
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let response = self.inner.call(request);
        Box::pin(async move { response.await.map(refine) })
    }
}

/// The status a response should carry instead of the framework's, if any.
fn refine(response: http::Response<Body>) -> http::Response<Body> {
    let headers = response.headers();
    // A reply (grpc-status comes in trailers), or a status of our own.
    if !headers.contains_key("grpc-status") || headers.contains_key("grpc-status-details-bin") {
        return response;
    }
    let Some(status) = Status::from_header_map(headers) else {
        return response;
    };
    let refined = match status.code() {
        Code::Internal => {
            let detail = status
                .message()
                .strip_prefix("failed to decode Protobuf message: ")
                .unwrap_or(status.message());
            tracing::info!(detail, "malformed request refused");
            crate::status::malformed(detail, field_of(detail))
        }
        Code::OutOfRange => crate::status::request_too_large(MAX_REQUEST_BYTES),
        _ => return response,
    };
    refined.into_http()
}

/// The top-level field a decode error names: prost describes one as
/// `Message.field: Inner.field: description`.
fn field_of(detail: &str) -> Option<&str> {
    let (path, _) = detail.split_once(": ")?;
    let (message, field) = path.split_once('.')?;
    let is_name =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    (is_name(message) && is_name(field)).then_some(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decode_error_names_its_top_level_field() {
        assert_eq!(
            field_of(
                "ReserveRequest.reservation_id: invalid string value: data is not UTF-8 encoded"
            ),
            Some("reservation_id")
        );
        assert_eq!(field_of("buffer underflow"), None);
        assert_eq!(field_of("Missing request message."), None);
        assert_eq!(
            field_of("invalid wire type: Varint (expected LengthDelimited)"),
            None
        );
    }

    #[test]
    fn framework_errors_are_refined_and_ours_are_kept() {
        let decode = Status::internal("failed to decode Protobuf message: buffer underflow");
        let refined = Status::from_header_map(refine(decode.into_http()).headers()).unwrap();
        assert_eq!(refined.code(), Code::InvalidArgument);
        let too_big = Status::out_of_range("Error, decoded message length too large");
        let refined = Status::from_header_map(refine(too_big.into_http()).headers()).unwrap();
        assert_eq!(refined.code(), Code::ResourceExhausted);
        let ours = crate::status::internal();
        let kept = Status::from_header_map(refine(ours.into_http()).headers()).unwrap();
        assert_eq!(kept.code(), Code::Internal);
        let version = crate::status::version_ahead(3, 9);
        let kept = Status::from_header_map(refine(version.into_http()).headers()).unwrap();
        assert_eq!(kept.code(), Code::OutOfRange);
    }
}
