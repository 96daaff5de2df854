//! Logging: readable lines on a terminal, JSON lines otherwise. `RUST_LOG`
//! filters (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

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

/// Installs the global subscriber. Call once, at start-up.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let json = match format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Text => false,
        LogFormat::Json => true,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }
}
