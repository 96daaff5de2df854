//! gRPC health that means something: the server reports NOT_SERVING while
//! its PostgreSQL is stopped and SERVING once it is back (a server of the
//! test's own, started and stopped with `scripts/pg.sh`), each role under its
//! own name, and a publisher without a broker is not serving. `billing
//! health` (the container health check) exits 0 only when SERVING.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use billing_proto::v1 as pb;
use billing_server::{Application, Role, ServeConfig};
use tokio::sync::oneshot;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const PG_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/pg.sh");

/// A PostgreSQL server of this test's own, removed when dropped.
struct OwnPostgres {
    dir: PathBuf,
    port: u16,
    url: String,
}

impl OwnPostgres {
    fn start() -> Self {
        let port = support::free_addr().port();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("pg-health-{}", uuid::Uuid::new_v4().simple()));
        let output = Command::new(PG_SH)
            .args([
                "start",
                dir.to_str().unwrap(),
                &port.to_string(),
                "--ephemeral",
            ])
            .output()
            .expect("run scripts/pg.sh");
        assert!(
            output.status.success(),
            "pg.sh start: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let url = String::from_utf8(output.stdout).unwrap().trim().to_owned();
        Self { dir, port, url }
    }

    fn stop(&self) {
        let status = Command::new(PG_SH)
            .args(["stop", self.dir.to_str().unwrap()])
            .status()
            .expect("run scripts/pg.sh");
        assert!(status.success());
    }

    /// Starts the stopped server again, with its data.
    fn restart(&self) {
        let output = Command::new(PG_SH)
            .args(["start", self.dir.to_str().unwrap(), &self.port.to_string()])
            .output()
            .expect("run scripts/pg.sh");
        assert!(
            output.status.success(),
            "pg.sh start: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        // Stops it and removes its data, wherever it lives (as root, outside
        // the checkout, with `dir` a link to it).
        let _ = Command::new(PG_SH)
            .args(["wipe", self.dir.to_str().unwrap()])
            .output();
    }
}

/// A running server; stopped when dropped.
struct Running {
    addr: std::net::SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn run(config: ServeConfig) -> Running {
    let app = Application::build(config).await.expect("build");
    let addr = app.local_addr().expect("gRPC is served");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    Running { addr, _stop: stop }
}

/// What the server says of `service` now (`Err`: the code it answered with).
async fn status(addr: std::net::SocketAddr, service: &str) -> Result<ServingStatus, tonic::Code> {
    let channel = support::channel(addr).await;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map(|reply| reply.into_inner().status())
        .map_err(|status| status.code())
}

/// Waits up to `within` for `service` to report `expected`.
async fn wait_for(
    addr: std::net::SocketAddr,
    service: &str,
    expected: ServingStatus,
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let now = status(addr, service).await;
        if now == Ok(expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{service:?} is {now:?} after {within:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `billing health --addr ADDR --service SERVICE`: whether it exited 0.
/// (Off the test's runtime thread, which also runs the server.)
async fn health_command(addr: std::net::SocketAddr, service: &'static str) -> bool {
    let mut command = Command::new(env!("CARGO_BIN_EXE_billing"));
    command
        .args(["health", "--addr", &addr.to_string(), "--service", service])
        .env("RUST_BACKTRACE", "0");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run billing health");
    eprintln!(
        "billing health --service {service:?}: {}, {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    output.status.success()
}

#[tokio::test]
async fn health_is_not_serving_while_the_database_is_stopped_and_serving_once_it_is_back() {
    let pg = OwnPostgres::start();
    let config = ServeConfig::for_database(&pg.url, support::JWT_SECRET);
    let server = run(config).await;
    let addr = server.addr;
    let services = [
        "",
        "api",
        "sweeper",
        "projector",
        "billing.v1.BillingService",
    ];
    for service in services {
        wait_for(
            addr,
            service,
            ServingStatus::Serving,
            Duration::from_secs(10),
        )
        .await;
    }
    assert!(health_command(addr, "").await);
    assert!(health_command(addr, "projector").await);

    pg.stop();
    for service in services {
        wait_for(
            addr,
            service,
            ServingStatus::NotServing,
            Duration::from_secs(10),
        )
        .await;
    }
    assert!(!health_command(addr, "").await, "billing health exits 1");
    assert!(!health_command(addr, "api").await);

    pg.restart();
    for service in services {
        wait_for(
            addr,
            service,
            ServingStatus::Serving,
            Duration::from_secs(15),
        )
        .await;
    }
    assert!(health_command(addr, "").await);
    // And it means it: calls work again.
    let mut client = support::admin(addr).await;
    client
        .create_billing_account(pb::CreateBillingAccountRequest {
            customer_id: uuid::Uuid::new_v4().to_string(),
            name: "After the restart".into(),
            ..Default::default()
        })
        .await
        .expect("a call after the database came back");
}

#[tokio::test]
async fn a_publisher_without_a_broker_is_not_serving_and_with_one_it_is() {
    // Nothing listens on a port just freed.
    let dead = support::free_addr().to_string();
    let live = std::env::var("BILLING_TEST_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!("BILLING_TEST_KAFKA_BROKERS is not set: run the tests with `make test`")
    });
    let mut servers = Vec::new();
    for brokers in [dead, live] {
        let db = billing_testkit::TestDb::new().await;
        let mut config = ServeConfig::for_database(&db.url, support::JWT_SECRET);
        // A publisher-only process: it serves health alone on its address.
        config.roles = vec![Role::Projector, Role::Publisher];
        config.kafka.security.kafka_brokers = Some(brokers);
        let id = uuid::Uuid::new_v4().simple().to_string();
        config.kafka.kafka_topic = format!("test.account_updated.{id}");
        config.kafka.kafka_alerts_topic = format!("test.balance_alerts.{id}");
        servers.push((run(config).await, db));
    }
    let (without, with) = (servers[0].0.addr, servers[1].0.addr);

    wait_for(with, "", ServingStatus::Serving, Duration::from_secs(15)).await;
    wait_for(
        with,
        "publisher",
        ServingStatus::Serving,
        Duration::from_secs(1),
    )
    .await;

    // The database answers, so the projector serves; the publisher does
    // not, and so neither does the process.
    wait_for(
        without,
        "projector",
        ServingStatus::Serving,
        Duration::from_secs(10),
    )
    .await;
    for _ in 0..5 {
        assert_eq!(
            status(without, "publisher").await,
            Ok(ServingStatus::NotServing)
        );
        assert_eq!(status(without, "").await, Ok(ServingStatus::NotServing));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!health_command(without, "publisher").await);

    // Without the api role there is no API here, only health.
    assert_eq!(status(without, "api").await, Err(tonic::Code::NotFound));
    let mut client = support::admin(without).await;
    let refused = client
        .get_billing_account(pb::GetBillingAccountRequest {
            id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented);
}
