//! Logs and traces.
//!
//! Logs: readable lines on a terminal, JSON lines otherwise; `RUST_LOG`
//! filters (default: ours from INFO, the libraries' from WARN).
//!
//! Traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans go out over OTLP
//! (`OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` or `http/protobuf`), batched on a
//! thread of their own: a slow or unreachable collector costs spans (the
//! queue drops what it cannot hold), never a request's time. Without it no
//! OpenTelemetry layer is installed, and the store's per-command spans (at
//! DEBUG) are disabled where they are created. The W3C `traceparent` of
//! incoming calls is continued (see `billing_api::telemetry`).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Level;
use tracing_subscriber::filter::FilterFn;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::Secret;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    Text,
    Json,
}

/// Our own events from INFO; the libraries' (PostgreSQL's notices, which
/// tokio-postgres logs at INFO with source paths, HTTP/2, Kafka) only from
/// WARN. `RUST_LOG` replaces this.
const DEFAULT_FILTER: &str = "info,tokio_postgres=warn,h2=warn,hyper=warn,tower=warn,rdkafka=warn";

/// How long a batch of spans may take to export before it is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutting down may wait for the last spans to go out.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The OTLP transport (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (a collector's port 4317).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318), the standard default.
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

/// Which traces are recorded (`OTEL_TRACES_SAMPLER`, the standard names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum SamplerKind {
    AlwaysOn,
    AlwaysOff,
    Traceidratio,
    ParentbasedAlwaysOn,
    ParentbasedAlwaysOff,
    ParentbasedTraceidratio,
}

/// Where and how traces are exported: the standard OpenTelemetry variables.
/// (The SDK reads the other standard ones itself, e.g.
/// `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_BSP_*`.)
#[derive(Clone, Debug, clap::Args)]
pub struct TraceArgs {
    /// The OTLP collector, e.g. http://127.0.0.1:4318 (http/protobuf) or
    /// http://127.0.0.1:4317 (grpc). Unset: no traces leave the process.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The OTLP transport.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        value_enum,
        default_value = "http/protobuf"
    )]
    pub otlp_protocol: OtlpProtocol,
    /// Headers sent with every export, `key=value,...` (values URL-encoded),
    /// e.g. a backend's API key.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_HEADERS", hide_env_values = true)]
    pub otlp_headers: Option<Secret>,
    /// The service's name in traces.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "billing")]
    pub otel_service_name: String,
    /// Which traces are recorded. The parent-based samplers follow the
    /// caller's decision.
    #[arg(
        long,
        env = "OTEL_TRACES_SAMPLER",
        value_enum,
        default_value = "parentbased_always_on"
    )]
    pub otel_traces_sampler: SamplerKind,
    /// The ratio (0 to 1) of the traceidratio samplers (default 1).
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG")]
    pub otel_traces_sampler_arg: Option<f64>,
}

impl Default for TraceArgs {
    /// No export: what tests and the other subcommands use.
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::HttpProtobuf,
            otlp_headers: None,
            otel_service_name: "billing".to_owned(),
            otel_traces_sampler: SamplerKind::ParentbasedAlwaysOn,
            otel_traces_sampler_arg: None,
        }
    }
}

/// The installed telemetry. Shut it down at exit, so the last spans go out.
#[derive(Debug)]
#[must_use = "shut telemetry down at exit, or the last spans are lost"]
pub struct Telemetry {
    /// The span pipeline, when traces are exported.
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends every span ended so far (tests wait for their spans with it).
    pub async fn flush(&self) {
        if let Some(provider) = self.provider.clone() {
            // The export blocks its thread: keep it off the async workers.
            let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
        }
    }

    /// Exports what is left and stops the exporter, waiting a few seconds at
    /// most (a collector that is down costs those spans, not the exit).
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let shutdown = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, shutdown).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => {
                tracing::warn!(%error, "traces: the exporter did not shut down cleanly")
            }
            _ => tracing::warn!("traces: the last spans were not exported in time"),
        }
    }
}

/// Installs the global subscriber: logs, and with `traces` (and their
/// endpoint) the OpenTelemetry layer. Call once, at start-up.
pub fn init(format: LogFormat, traces: Option<&TraceArgs>) -> anyhow::Result<Telemetry> {
    // The OTLP exporter's HTTP client builds its TLS settings at start,
    // whether or not the endpoint is https.
    crate::tls::install_crypto_provider();
    let provider = match traces {
        Some(args) if args.otlp_endpoint.is_some() => Some(tracer_provider(args)?),
        _ => None,
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let json = match format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Text => false,
        LogFormat::Json => true,
    };
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    };
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("billing"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(FilterFn::new(exported))
    });
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces)
        .try_init()
        .context("installing the log subscriber")?;
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    }
    Ok(Telemetry { provider })
}

/// What becomes part of a trace, whatever `RUST_LOG` says: our spans from
/// DEBUG (the store's work), and our events from INFO (as span events).
fn exported(metadata: &tracing::Metadata<'_>) -> bool {
    let ours = metadata.target().starts_with("billing");
    let level = if metadata.is_span() {
        Level::DEBUG
    } else {
        Level::INFO
    };
    ours && *metadata.level() <= level
}

fn tracer_provider(args: &TraceArgs) -> anyhow::Result<SdkTracerProvider> {
    let endpoint = args
        .otlp_endpoint
        .as_deref()
        .context("no OTLP endpoint")?
        .trim_end_matches('/');
    let headers = match &args.otlp_headers {
        Some(headers) => parse_headers(headers.expose())?,
        None => HashMap::new(),
    };
    let exporter = match args.otlp_protocol {
        OtlpProtocol::Grpc => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (key, value) in &headers {
                let key: tonic::metadata::MetadataKey<tonic::metadata::Ascii> = key
                    .parse()
                    .with_context(|| format!("OTEL_EXPORTER_OTLP_HEADERS: bad name {key:?}"))?;
                let value = value.parse().with_context(|| {
                    format!("OTEL_EXPORTER_OTLP_HEADERS: bad value for {key:?}")
                })?;
                metadata.insert(key, value);
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .with_metadata(metadata)
                .build()
        }
        // The standard variable names the collector; traces go to its
        // /v1/traces.
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(format!("{endpoint}/v1/traces"))
            .with_timeout(EXPORT_TIMEOUT)
            .with_headers(headers)
            .build(),
    }
    .context("building the OTLP exporter")?;
    let resource = Resource::builder()
        .with_service_name(args.otel_service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler(
            args.otel_traces_sampler,
            args.otel_traces_sampler_arg,
        ))
        .with_resource(resource)
        .build())
}

fn sampler(kind: SamplerKind, ratio: Option<f64>) -> Sampler {
    let ratio = ratio.unwrap_or(1.0).clamp(0.0, 1.0);
    match kind {
        SamplerKind::AlwaysOn => Sampler::AlwaysOn,
        SamplerKind::AlwaysOff => Sampler::AlwaysOff,
        SamplerKind::Traceidratio => Sampler::TraceIdRatioBased(ratio),
        SamplerKind::ParentbasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        SamplerKind::ParentbasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        SamplerKind::ParentbasedTraceidratio => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        }
    }
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: `key=value` pairs separated by commas, the
/// values percent-encoded (the W3C baggage format the standard names).
fn parse_headers(text: &str) -> anyhow::Result<HashMap<String, String>> {
    let mut headers = HashMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .context("OTEL_EXPORTER_OTLP_HEADERS: expected key=value pairs")?;
        headers.insert(key.trim().to_owned(), percent_decode(value.trim())?);
    }
    Ok(headers)
}

fn percent_decode(text: &str) -> anyhow::Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .context("OTEL_EXPORTER_OTLP_HEADERS: a bad %-escape")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).context("OTEL_EXPORTER_OTLP_HEADERS: not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_pairs_with_percent_encoded_values() {
        let headers = parse_headers("api-key=abc%3D%3D, x-tenant = billing ,").unwrap();
        assert_eq!(headers["api-key"], "abc==");
        assert_eq!(headers["x-tenant"], "billing");
        assert!(parse_headers("no-equals-sign").is_err());
        assert!(parse_headers("k=%zz").is_err());
    }
}
