//! Traces end to end, into OTLP receivers of the test's own.
//!
//! In process, over gRPC: one `Reserve` sent with a W3C `traceparent` yields
//! the server span as a child of the caller's span, the store's spans beneath
//! it, and the publisher's and projector's spans linked to it. Then the real
//! binary, configured only by the standard `OTEL_*` variables, exports over
//! HTTP (protobuf) and flushes its last spans when it is stopped.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use billing_server::telemetry::{self, LogFormat, OtlpProtocol, TraceArgs};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use support::TestApp;
use tokio_stream::wrappers::TcpListenerStream;

/// What a receiver got: the spans, each with its resource's service name,
/// and the headers of the last export.
#[derive(Clone, Debug, Default)]
struct Received {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    headers: Arc<Mutex<HashMap<String, String>>>,
}

impl Received {
    fn keep(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| text(a.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
    }

    fn spans(&self) -> Vec<(String, Span)> {
        self.spans.lock().unwrap().clone()
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        _ => None,
    }
}

/// A span's attribute as text.
fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| text(a.value.as_ref()?.value.as_ref()?))
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.keep(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// An OTLP/gRPC receiver on a free port.
async fn grpc_receiver() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let service = TraceServiceServer::new(received.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, received)
}

/// An OTLP/HTTP receiver (protobuf bodies at /v1/traces) on a free port.
async fn http_receiver() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let keeper = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let keeper = keeper.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let keeper = keeper.clone();
                    async move { Ok::<_, std::convert::Infallible>(accept(&keeper, request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, received)
}

async fn accept(
    received: &Received,
    request: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>> {
    use http_body_util::BodyExt as _;
    let ok = request.method() == hyper::Method::POST && request.uri().path() == "/v1/traces";
    *received.headers.lock().unwrap() = request
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let body = request.into_body().collect().await.map(|b| b.to_bytes());
    let mut response = hyper::Response::new(http_body_util::Full::new(hyper::body::Bytes::new()));
    match body
        .ok()
        .and_then(|b| ExportTraceServiceRequest::decode(b).ok())
    {
        Some(export) if ok => {
            received.keep(export);
            let reply = ExportTraceServiceResponse {
                partial_success: None,
            };
            *response.body_mut() = http_body_util::Full::new(reply.encode_to_vec().into());
        }
        _ => *response.status_mut() = hyper::StatusCode::BAD_REQUEST,
    }
    response
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Random W3C ids: a trace (32 hex digits) and a span (16).
fn caller_ids() -> (String, String) {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    (trace, span)
}

#[tokio::test]
async fn a_reserve_is_traced_from_the_caller_through_the_store_to_the_publisher_and_projector() {
    let brokers = std::env::var("BILLING_TEST_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!("BILLING_TEST_KAFKA_BROKERS is not set: run the tests with `make test`")
    });
    let (collector, received) = grpc_receiver().await;
    let telemetry = telemetry::init(
        LogFormat::Text,
        Some(&TraceArgs {
            otlp_endpoint: Some(format!("http://{collector}")),
            otlp_protocol: OtlpProtocol::Grpc,
            otel_service_name: "billing-under-test".into(),
            ..TraceArgs::default()
        }),
    )
    .expect("install telemetry");
    let id = uuid::Uuid::new_v4().simple().to_string();
    let db = billing_testkit::TestDb::new().await;
    let app = TestApp::spawn_with(db, |config| {
        config.roles.push(billing_server::Role::Publisher);
        config.kafka.security.kafka_brokers = Some(brokers);
        config.kafka.kafka_topic = format!("test.account_updated.{id}");
        config.kafka.kafka_alerts_topic = format!("test.balance_alerts.{id}");
    })
    .await;
    let account = app.account(1_000_000).await;

    let (trace_id, caller_span) = caller_ids();
    let mut request = tonic::Request::new(support::reserve(
        "call-traced-1",
        &account.id,
        billing_proto::v1::ServiceType::CallPstnOutgoing,
        2,
    ));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    let mut client = app.client.clone();
    client.reserve(request).await.expect("reserve");

    // Wait for the server's, the publisher's and the projector's spans.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (server, spans) = loop {
        telemetry.flush().await;
        let spans = received.spans();
        let server = spans.iter().find(|(_, s)| {
            s.name == "billing.v1.BillingService/Reserve" && hex(&s.trace_id) == trace_id
        });
        let linked = |name: &str| {
            spans.iter().any(|(_, s)| {
                s.name == name
                    && server.is_some_and(|(_, server)| {
                        s.links.iter().any(|l| l.span_id == server.span_id)
                    })
            })
        };
        if let Some((_, server)) = server
            && linked("publisher.produce")
            && linked("projector.apply")
        {
            break (server.clone(), spans);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "30 s without the whole trace; spans: {:#?}",
            spans.iter().map(|(_, s)| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // The server span continues the caller's trace, as its child.
    assert_eq!(hex(&server.parent_span_id), caller_span);
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(attribute(&server, "account_id"), Some(account.id.clone()));
    assert_eq!(
        attribute(&server, "reservation_id").as_deref(),
        Some("call-traced-1")
    );
    assert_eq!(
        attribute(&server, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    assert!(
        spans
            .iter()
            .all(|(service, _)| service == "billing-under-test")
    );

    // The store's spans sit beneath it: command, batch, and its round trips.
    let by_id: HashMap<Vec<u8>, &Span> =
        spans.iter().map(|(_, s)| (s.span_id.clone(), s)).collect();
    let beneath_server = |span: &Span| {
        let mut parent = span.parent_span_id.clone();
        while let Some(up) = by_id.get(&parent) {
            if up.span_id == server.span_id {
                return true;
            }
            parent = up.parent_span_id.clone();
        }
        false
    };
    for name in ["store.command", "store.batch", "store.write"] {
        assert!(
            spans
                .iter()
                .any(|(_, s)| s.name == name && s.trace_id == server.trace_id && beneath_server(s)),
            "no {name} span beneath the server span"
        );
    }
    let batch = spans
        .iter()
        .find(|(_, s)| s.name == "store.batch" && beneath_server(s))
        .map(|(_, s)| s)
        .unwrap();
    assert_eq!(attribute(batch, "batch_size").as_deref(), Some("1"));

    // The event remembers the span that caused it.
    let row = app
        .db
        .client()
        .await
        .query_one(
            "SELECT trace_id, span_id FROM events WHERE event_type = 'reserved'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0), Some(trace_id));
    assert_eq!(row.get::<_, Option<String>>(1), Some(hex(&server.span_id)));
    telemetry.shutdown().await;
}

#[tokio::test]
async fn the_binary_exports_over_http_as_the_standard_variables_say_and_flushes_when_stopped() {
    let (collector, received) = http_receiver().await;
    let db = billing_testkit::TestDb::new().await;
    let addr = support::free_addr();
    let mut child = Command::new(env!("CARGO_BIN_EXE_billing"))
        .args(["serve", "--migrate", "--roles", "api"])
        .env("BILLING_DATABASE_URL", &db.url)
        .env("BILLING_GRPC_ADDR", addr.to_string())
        .env("BILLING_JWT_SECRET", support::JWT_SECRET)
        .env("BILLING_DB_POOL_SIZE", "4")
        .env("RUST_LOG", "warn")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s3cret%3D")
        .env("OTEL_SERVICE_NAME", "billing-from-env")
        .env("OTEL_TRACES_SAMPLER", "parentbased_always_on")
        .stdout(Stdio::null())
        .spawn()
        .expect("start billing");
    let mut up = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "billing did not start on {addr}");
    let mut client = support::admin(addr).await;
    let (trace_id, caller_span) = caller_ids();
    let mut request = tonic::Request::new(billing_proto::v1::GetBillingAccountRequest {
        id: uuid::Uuid::new_v4().to_string(),
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    let missing = client.get_billing_account(request).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // The batch exporter waits seconds between exports; a graceful stop
    // sends what is left at once.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap();
    assert!(
        exited.unwrap().success(),
        "billing exits cleanly on SIGTERM"
    );

    let spans = received.spans();
    let (service, server) = spans
        .iter()
        .find(|(_, s)| s.name == "billing.v1.BillingService/GetBillingAccount")
        .unwrap_or_else(|| panic!("no server span among {spans:#?}"));
    assert_eq!(service, "billing-from-env");
    assert_eq!(hex(&server.trace_id), trace_id);
    assert_eq!(hex(&server.parent_span_id), caller_span);
    assert_eq!(
        attribute(server, "rpc.grpc.status_code").as_deref(),
        Some("5")
    );
    let headers = received.headers.lock().unwrap().clone();
    assert_eq!(
        headers.get("x-api-key").map(String::as_str),
        Some("s3cret=")
    );
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("application/x-protobuf")
    );
}
