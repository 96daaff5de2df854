//! No secret ever appears in a log line, an error message, `--help` output
//! or a metric: the real binary is run with every secret setting given
//! (directly and as files), at debug log level, through a start, calls, a
//! scrape of its metrics and failures, and everything it printed is
//! searched for them.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use billing_testkit::pki::TempDir;

/// Distinctive values: none of them can appear by chance.
const DB_PASSWORD: &str = "db-pw-7c1f0e9a";
const JWT_SECRET: &str = "jwt-secret-5b2d8e41c07a";
const SASL_PASSWORD: &str = "sasl-pw-93e0a1c4";
const KAFKA_CONFIG_SECRET: &str = "kafka-cfg-secret-2f6b";

fn billing() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_billing"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "debug")
        .env("BILLING_LOG_FORMAT", "text")
        .env("RUST_BACKTRACE", "0");
    command
}

/// The test server's URL with a password in it (it trusts local
/// connections, so any password is accepted, and printed nowhere).
fn url_with_password(database: &str) -> String {
    let admin = billing_testkit::admin_url();
    let url = billing_testkit::with_database(&admin, database);
    url.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{DB_PASSWORD}@"),
        1,
    )
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn assert_no_secret(what: &str, printed: &str, token: Option<&str>) {
    for secret in [DB_PASSWORD, JWT_SECRET, SASL_PASSWORD, KAFKA_CONFIG_SECRET]
        .into_iter()
        .chain(token)
    {
        assert!(
            !printed.contains(secret),
            "{what} printed a secret ({secret}):\n{printed}"
        );
    }
}

/// Every secret setting, given directly.
fn with_secrets(command: &mut Command, database_url: &str, brokers: &str) {
    command
        .env("BILLING_DATABASE_URL", database_url)
        .env("BILLING_JWT_SECRET", JWT_SECRET)
        .env("BILLING_KAFKA_BROKERS", brokers)
        .env("BILLING_KAFKA_SECURITY_PROTOCOL", "sasl_plaintext")
        .env("BILLING_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
        .env("BILLING_KAFKA_SASL_USERNAME", "billing")
        .env("BILLING_KAFKA_SASL_PASSWORD", SASL_PASSWORD)
        .env(
            "BILLING_KAFKA_CONFIG",
            format!("client.id=billing-secrets-test,ssl.key.password={KAFKA_CONFIG_SECRET}"),
        );
}

#[test]
fn help_never_shows_a_secret_given_in_the_environment() {
    for args in [
        &["serve", "--help"][..],
        &["migrate", "--help"],
        &["tail", "--help"],
        &["token", "--help"],
        &["--help"],
    ] {
        let mut command = billing();
        with_secrets(&mut command, &url_with_password("x"), "127.0.0.1:1");
        let output = command.args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", text(&output));
        assert_no_secret(&format!("billing {}", args.join(" ")), &text(&output), None);
    }
}

#[test]
fn errors_name_the_setting_never_its_secret() {
    let dir = TempDir::new("secrets-errors");
    // A database that does not answer.
    let dead = format!(
        "postgres://postgres:{DB_PASSWORD}@{}/billing?sslmode=disable",
        support::free_addr()
    );
    let output = billing()
        .args(["migrate"])
        .env("BILLING_DATABASE_URL", &dead)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert_no_secret("a failed migrate", &text(&output), None);
    // The same URL from a file: the file is read, the error still says nothing.
    let file = dir.path().join("database-url");
    std::fs::write(&file, format!("{dead}\n")).unwrap();
    let output = billing()
        .args(["migrate"])
        .env("BILLING_DATABASE_URL_FILE", &file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let printed = text(&output);
    assert_no_secret("a failed migrate from a URL file", &printed, None);
    // A secret file that does not exist: named, and nothing else.
    let output = billing()
        .args(["migrate"])
        .env("BILLING_DATABASE_URL_FILE", dir.path().join("missing"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(text(&output).contains("missing"), "{}", text(&output));
    // A URL that does not parse: the password in it is not echoed.
    let output = billing()
        .args(["migrate"])
        .env(
            "BILLING_DATABASE_URL",
            format!("postgres://postgres:{DB_PASSWORD}@127.0.0.1:notaport/db"),
        )
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert_no_secret("a bad URL", &text(&output), None);
}

/// Runs `billing serve` (every role) with every secret set, makes calls
/// with a token, scrapes the metrics, and stops it.
async fn serve_and_collect(dir: &Path, from_files: bool) -> (String, String) {
    let db = billing_testkit::TestDb::new().await;
    let url = url_with_password(&db.name);
    let grpc = support::free_addr();
    let metrics = support::free_addr();
    let brokers = std::env::var("BILLING_TEST_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!("BILLING_TEST_KAFKA_BROKERS is not set: run the tests with `make test`")
    });
    let mut command = billing();
    with_secrets(&mut command, &url, &brokers);
    if from_files {
        for (name, value) in [
            ("BILLING_DATABASE_URL", url.as_str()),
            ("BILLING_JWT_SECRET", JWT_SECRET),
            ("BILLING_KAFKA_SASL_PASSWORD", SASL_PASSWORD),
        ] {
            let file = dir.join(name.to_lowercase());
            std::fs::write(&file, format!("{value}\n")).unwrap();
            command.env_remove(name).env(format!("{name}_FILE"), &file);
        }
    }
    let log = dir.join(if from_files { "files.log" } else { "env.log" });
    let child = command
        .args(["serve", "--roles", "api,sweeper,projector,publisher"])
        .env("BILLING_GRPC_ADDR", grpc.to_string())
        .env("BILLING_METRICS_ADDR", metrics.to_string())
        .env("BILLING_MIGRATE", "true")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("stderr.log")).unwrap(),
        ))
        .spawn()
        .expect("start billing serve");
    let mut child = Guard(child);
    // Up: the API answers.
    let token = billing_api::auth::mint_hs256(
        JWT_SECRET.as_bytes(),
        "secrets-test",
        "project_super_admin",
        None,
        600,
        None,
        None,
    )
    .unwrap();
    let mut client = None;
    for _ in 0..300 {
        if std::net::TcpStream::connect(grpc).is_ok() {
            client = Some(support::connect(grpc, Some(&token)).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = client.expect("billing serve listens");
    let account = client
        .create_billing_account(billing_proto::v1::CreateBillingAccountRequest {
            customer_id: uuid::Uuid::new_v4().to_string(),
            name: "Secrets".into(),
            ..Default::default()
        })
        .await
        .expect("a call with a token")
        .into_inner();
    // A refused token is logged as refused, not echoed.
    let forged = format!("{token}x");
    let _ = support::connect(grpc, Some(&forged))
        .await
        .get_billing_account(billing_proto::v1::GetBillingAccountRequest {
            id: account.id.clone(),
        })
        .await
        .expect_err("a forged token is refused");
    // Let the publisher fail to authenticate a few times, the projector and
    // the sweeper work.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let scrape = scrape(metrics).await;
    child.stop();
    let logs = format!(
        "{}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
    );
    assert!(
        logs.contains("started the publisher"),
        "the publisher started:\n{logs}"
    );
    (format!("{logs}\n{scrape}"), token)
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    assert!(body.contains("billing_"), "{body}");
    body
}

#[tokio::test]
async fn a_serving_process_never_logs_or_exports_a_secret() {
    let dir = TempDir::new("secrets-serve");
    for from_files in [false, true] {
        let (printed, token) = serve_and_collect(dir.path(), from_files).await;
        assert_no_secret(
            if from_files {
                "billing serve (secrets from files)"
            } else {
                "billing serve"
            },
            &printed,
            Some(&token),
        );
    }
}

/// Kills the child when dropped (a failing test leaves no server behind).
struct Guard(std::process::Child);

impl Guard {
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
