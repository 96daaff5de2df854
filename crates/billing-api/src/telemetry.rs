//! Every call's server span and metrics, as a tower layer around the gRPC
//! service ([`TelemetryLayer`]).
//!
//! The caller's W3C trace context (`traceparent` in the metadata) is
//! continued: the call's server span, named `billing.v1.BillingService/Reserve`
//! and so on, is a child of the caller's span, and everything the call does
//! (the handler's span, the store's spans) sits beneath it. Handlers note the
//! account and reservation ids on it ([`record_account`],
//! [`record_reservation`]), and a command's events store its trace and span
//! ids ([`trace_ids`]), so the work they cause later links back to it.
//!
//! Each call is counted and timed, by method and status code, when it ends:
//! when its trailers are sent, or, for a call that fails before a reply,
//! with its response. A call whose client went away first counts as
//! CANCELLED. The method label only takes the service's own method names
//! (read from its descriptors) or `unknown`, so a caller cannot grow the
//! number of series.

use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http_body::Frame;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{Status as SpanStatus, TraceContextExt as _};
use prost::Message as _;
use tonic::Code;
use tonic::body::Body;
use tonic::server::NamedService;
use tracing::Instrument as _;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

tokio::task_local! {
    /// The server span of the call being handled.
    static RPC_SPAN: Span;
}

/// The layer that gives every call of the service it wraps a server span and
/// its metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct TelemetryLayer;

impl<S> tower::Layer<S> for TelemetryLayer {
    type Service = Telemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Telemetry { inner }
    }
}

/// A service whose calls are traced and measured.
#[derive(Clone, Debug)]
pub struct Telemetry<S> {
    inner: S,
}

impl<S: NamedService> NamedService for Telemetry<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<Body>> for Telemetry<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let rpc = Rpc::of(request.uri().path());
        // At DEBUG, like the store's spans: without the OpenTelemetry layer
        // (or RUST_LOG=debug) it is disabled where it is made, and free.
        let span = tracing::debug_span!(
            "rpc",
            otel.name = rpc.name,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = rpc.service,
            rpc.method = rpc.method,
            rpc.grpc.status_code = Empty,
            account_id = Empty,
            reservation_id = Empty,
        );
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&Headers(request.headers()))
        });
        if parent.has_active_span() {
            // Only fails for a span already started, which this one is not.
            let _ = span.set_parent(parent);
        }
        let call = Call {
            rpc,
            started: Instant::now(),
            span: span.clone(),
            code: None,
        };
        let response = span.in_scope(|| self.inner.call(request));
        let response = RPC_SPAN.scope(span.clone(), response.instrument(span));
        Box::pin(async move { Ok(call.respond(response.await?)) })
    }
}

/// One of the service's methods, as labels and span names take it.
#[derive(Debug)]
struct Rpc {
    /// `/billing.v1.BillingService/Reserve`: the request path.
    path: &'static str,
    /// `billing.v1.BillingService/Reserve`: the span's name.
    name: &'static str,
    /// `billing.v1.BillingService`.
    service: &'static str,
    /// `Reserve`: the metrics' `method` label.
    method: &'static str,
}

/// Any path that is not one of the service's methods.
static UNKNOWN: Rpc = Rpc {
    path: "",
    name: "billing.v1.BillingService/unknown",
    service: "billing.v1.BillingService",
    method: "unknown",
};

impl Rpc {
    /// The method a request path names, or [`UNKNOWN`].
    fn of(path: &str) -> &'static Self {
        Self::known()
            .iter()
            .find(|rpc| rpc.path == path)
            .unwrap_or(&UNKNOWN)
    }

    /// Every method of the services in the descriptor set, read once. Their
    /// names live as long as the process (a few dozen bytes each, once).
    fn known() -> &'static [Self] {
        static KNOWN: OnceLock<Vec<Rpc>> = OnceLock::new();
        KNOWN.get_or_init(|| {
            let Ok(set) =
                prost_types::FileDescriptorSet::decode(billing_proto::v1::FILE_DESCRIPTOR_SET)
            else {
                return Vec::new();
            };
            let mut known = Vec::new();
            for file in &set.file {
                for service in &file.service {
                    for method in &service.method {
                        let path: &'static str = String::leak(format!(
                            "/{}.{}/{}",
                            file.package(),
                            service.name(),
                            method.name()
                        ));
                        let name = &path[1..];
                        let (service, method) = name.rsplit_once('/').unwrap_or((name, name));
                        known.push(Rpc {
                            path,
                            name,
                            service,
                            method,
                        });
                    }
                }
            }
            known
        })
    }
}

/// The request's headers as the propagator reads them.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// A call in flight: counted, timed and its span ended when dropped, with
/// the status it ended with (CANCELLED if none was seen: the caller left).
struct Call {
    rpc: &'static Rpc,
    started: Instant,
    span: Span,
    code: Option<Code>,
}

impl Call {
    /// Ends the call with a status sent in the response's headers (a call
    /// that failed before replying), or follows its body to the trailers.
    fn respond(mut self, response: http::Response<Body>) -> http::Response<Body> {
        if let Some(code) = status_code(response.headers()) {
            self.code = Some(code);
            return response;
        }
        response.map(|body| {
            Body::new(Observed {
                inner: body,
                call: Some(self),
            })
        })
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(Code::Cancelled);
        let name = code_name(code);
        let elapsed = self.started.elapsed().as_secs_f64();
        metrics::counter!("billing_rpc_requests_total", "method" => self.rpc.method, "code" => name)
            .increment(1);
        metrics::histogram!(
            "billing_rpc_duration_seconds",
            "method" => self.rpc.method,
            "code" => name
        )
        .record(elapsed);
        self.span.record("rpc.grpc.status_code", code as i32);
        if is_server_error(code) {
            self.span.set_status(SpanStatus::error(name));
        }
    }
}

/// A reply's body, watched for the trailers that carry its status.
struct Observed {
    inner: Body,
    call: Option<Call>,
}

impl http_body::Body for Observed {
    type Data = prost::bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let code = match &frame {
            Some(Ok(frame)) => frame
                .trailers_ref()
                .map(|t| status_code(t).unwrap_or(Code::Ok)),
            Some(Err(status)) => Some(status.code()),
            // The end, without trailers: gRPC always sends them.
            None => Some(Code::Unknown),
        };
        if let Some(code) = code
            && let Some(mut call) = self.call.take()
        {
            call.code = Some(code);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn status_code(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?;
    Some(Code::from_bytes(value.as_bytes()))
}

/// The codes that say the server failed (OpenTelemetry's rule for gRPC
/// servers); the others are the caller's doing.
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// A status code's name as gRPC spells it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Notes the account on the call's server span.
pub(crate) fn record_account(account_id: uuid::Uuid) {
    let _ = RPC_SPAN.try_with(|span| {
        span.record("account_id", tracing::field::display(account_id));
    });
}

/// Notes the reservation on the call's server span.
pub(crate) fn record_reservation(reservation_id: &str) {
    let _ = RPC_SPAN.try_with(|span| {
        span.record("reservation_id", reservation_id);
    });
}

/// The W3C trace id and, when the call is traced and sampled, span id of the
/// call's server span; `None` when it has no trace (OpenTelemetry is off).
pub(crate) fn trace_ids() -> Option<(String, Option<String>)> {
    RPC_SPAN
        .try_with(|span| {
            let context = span.context();
            let span_context = context.span().span_context().clone();
            span_context.is_valid().then(|| {
                (
                    span_context.trace_id().to_string(),
                    span_context
                        .is_sampled()
                        .then(|| span_context.span_id().to_string()),
                )
            })
        })
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_services_own_methods_are_labels() {
        let reserve = Rpc::of("/billing.v1.BillingService/Reserve");
        assert_eq!(reserve.method, "Reserve");
        assert_eq!(reserve.name, "billing.v1.BillingService/Reserve");
        assert_eq!(reserve.service, "billing.v1.BillingService");
        assert_eq!(
            Rpc::of("/billing.v1.BillingService/NoSuchMethod").method,
            "unknown"
        );
        assert_eq!(Rpc::of("/x/../Reserve").method, "unknown");
    }

    #[test]
    fn a_status_in_the_headers_is_read() {
        let response = tonic::Status::not_found("x").into_http::<Body>();
        assert_eq!(status_code(response.headers()), Some(Code::NotFound));
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
    }
}
