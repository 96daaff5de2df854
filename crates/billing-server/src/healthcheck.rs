//! `billing health`: asks a running process's gRPC health service about one
//! service (default `""`, the whole process) and succeeds only if it is
//! SERVING. Docker Compose health checks run it: the runtime image has no
//! other tools.

use std::time::Duration;

use anyhow::Context as _;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::tls::ClientTlsArgs;

/// Asks `addr` (`host:port`, or `https://host:port` for TLS as `tls` says)
/// about `service`, within `timeout`. `Ok` when it is SERVING; otherwise an
/// error saying what it is (exit status 1).
pub async fn run(
    addr: &str,
    tls: &ClientTlsArgs,
    service: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let endpoint = crate::tls::client::endpoint(addr, tls)?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach {addr}"))?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .with_context(|| format!("{addr} did not answer a health check of {service:?}"))?;
    let status = reply.into_inner().status();
    println!("{}", status.as_str_name());
    if status == ServingStatus::Serving {
        Ok(())
    } else {
        anyhow::bail!("{service:?} at {addr} is {}", status.as_str_name())
    }
}
