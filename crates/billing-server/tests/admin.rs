//! `billing admin …` run as an operator would: the real binary against the
//! real server on a port, with a super admin's token.

mod support;

use billing_proto::v1 as pb;
use serde_json::Value;
use support::{TestApp, token};
use tonic::Code;

/// What one run of the binary printed, and how it ended.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        assert!(self.ok, "the command failed: {}", self.stderr);
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

/// Runs `billing admin ARGS` against `app` with `token` (none when `None`).
async fn admin(app: &TestApp, token: Option<String>, args: &[&str]) -> Run {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_billing"));
    command
        .arg("admin")
        .args(args)
        .env("BILLING_GRPC_ADDR", app.addr.to_string())
        .env_remove("BILLING_TOKEN")
        .env("BILLING_LOG_FORMAT", "text");
    if let Some(token) = token {
        command.env("BILLING_TOKEN", token);
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run billing");
    Run {
        ok: output.status.success(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn operator() -> Option<String> {
    Some(token("ops-olga", "project_super_admin", None))
}

/// The idempotency key a run printed for the operator.
fn printed_key(run: &Run) -> String {
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("idempotency key "))
        .unwrap_or_else(|| panic!("no key printed: {}", run.stdout));
    line.split_whitespace().nth(2).unwrap().to_owned()
}

#[tokio::test]
async fn an_operator_tops_up_in_dollars_exactly_and_a_retry_with_the_printed_key_pays_once() {
    let app = TestApp::spawn().await;
    let account = app.account(0).await;
    let id = account.id.as_str();

    let topup = admin(
        &app,
        operator(),
        &["topup", id, "--amount", "20.10", "--reason", "ticket 4711"],
    )
    .await;
    assert!(topup.ok, "{}", topup.stderr);
    assert!(
        topup.stdout.contains("20.10 USD (20100000 micros)"),
        "{}",
        topup.stdout
    );
    let key = printed_key(&topup);

    let again = admin(
        &app,
        operator(),
        &[
            "topup",
            id,
            "--amount",
            "20.10",
            "--reason",
            "ticket 4711",
            "--key",
            &key,
        ],
    )
    .await;
    assert!(again.ok, "{}", again.stderr);
    assert_eq!(app.get(id).await.balance_credit, 20_100_000);

    let shown = admin(&app, operator(), &["show", id, "--json"])
        .await
        .json();
    assert_eq!(shown["balance"]["balance"], 20_100_000);
    assert_eq!(shown["account"]["balance_credit"], 20_100_000);

    let table = admin(&app, operator(), &["show", id]).await;
    assert!(
        table
            .stdout
            .contains("balance         20.10 USD (20100000 micros)"),
        "{}",
        table.stdout
    );
}

#[tokio::test]
async fn an_adjustment_down_takes_credit_with_its_reason_and_the_ledger_shows_it_first() {
    let app = TestApp::spawn().await;
    let account = app.account(10_000_000).await;
    let id = account.id.as_str();

    let adjust = admin(
        &app,
        operator(),
        &[
            "adjust",
            id,
            "--amount",
            "-2.5",
            "--reason",
            "duplicate top-up",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(adjust["account"]["balance_credit"], 7_500_000);
    assert!(
        adjust["idempotency_key"]
            .as_str()
            .is_some_and(|k| !k.is_empty())
    );

    let ledger = admin(&app, operator(), &["ledger", id, "--json"])
        .await
        .json();
    let entries = ledger["transactions"].as_array().unwrap();
    assert_eq!(entries[0]["amount_credit"], -2_500_000);
    assert_eq!(
        entries[0]["reference_type"],
        "REFERENCE_TYPE_MANUAL_ADJUSTMENT"
    );
    assert!(entries[0]["version"].as_i64() > entries[1]["version"].as_i64());

    let table = admin(&app, operator(), &["ledger", id, "--limit", "1"]).await;
    assert!(table.ok, "{}", table.stderr);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(lines[1].starts_with("VERSION"), "{}", table.stdout);
    assert!(lines[2].contains("adjustment"), "{}", table.stdout);
    assert!(lines[2].contains("-2.50"), "{}", table.stdout);
    assert!(
        lines[3].starts_with("more: --page-token "),
        "{}",
        table.stdout
    );
}

#[tokio::test]
async fn an_operator_grants_promotional_credit_with_an_expiry_and_removes_it_explicitly() {
    let app = TestApp::spawn().await;
    let account = app.account(1_000_000).await;
    let id = account.id.as_str();

    let granted = admin(
        &app,
        operator(),
        &[
            "promote",
            id,
            "--amount",
            "5.00",
            "--expires",
            "2099-01-01T00:00:00Z",
            "--reason",
            "goodwill",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(granted["account"]["balance_credit"], 1_000_000);
    assert_eq!(granted["account"]["balance_promotional"], 5_000_000);
    assert_eq!(granted["account"]["available_credit"], 6_000_000);

    let shown = admin(&app, operator(), &["show", id]).await;
    assert!(
        shown
            .stdout
            .contains("  grant         5.00 USD (5000000 micros) until 2099-01-01 00:00:00"),
        "{}",
        shown.stdout
    );
    let grants = granted["account"]["promotional_grants"].as_array().unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0]["remaining"], 5_000_000);
    assert_eq!(grants[0]["expires_at"], "2099-01-01T00:00:00Z");

    let removed = admin(
        &app,
        operator(),
        &[
            "adjust",
            id,
            "--promotional",
            "--amount",
            "-1.25",
            "--reason",
            "granted twice",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(removed["account"]["balance_promotional"], 3_750_000);
    assert_eq!(removed["account"]["balance_credit"], 1_000_000);

    let ledger = admin(&app, operator(), &["ledger", id, "--json"])
        .await
        .json();
    let entries = ledger["transactions"].as_array().unwrap();
    assert_eq!(entries[0]["amount_promotional"], -1_250_000);
    assert_eq!(
        entries[1]["transaction_type"],
        "TRANSACTION_TYPE_PROMOTIONAL_GRANT"
    );
    assert_eq!(entries[1]["amount_promotional"], 5_000_000);

    // A date that is not RFC 3339 is refused before anything is sent.
    let bad = admin(
        &app,
        operator(),
        &[
            "promote",
            id,
            "--amount",
            "1",
            "--expires",
            "tomorrow",
            "--reason",
            "x",
        ],
    )
    .await;
    assert!(!bad.ok);
}

#[tokio::test]
async fn freeze_stops_holds_and_unfreeze_lets_them_again() {
    let app = TestApp::spawn().await;
    let account = app.account(10_000_000).await;
    let id = account.id.as_str();
    let mut client = app.client.clone();

    let frozen = admin(&app, operator(), &["freeze", id]).await;
    assert!(
        frozen.stdout.contains("status          frozen"),
        "{}",
        frozen.stdout
    );
    let refused = client
        .reserve(support::reserve("r-frozen", id, pb::ServiceType::CallVn, 1))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    let thawed = admin(&app, operator(), &["unfreeze", id]).await;
    assert!(
        thawed.stdout.contains("status          active"),
        "{}",
        thawed.stdout
    );
    client
        .reserve(support::reserve("r-thawed", id, pb::ServiceType::CallVn, 1))
        .await
        .expect("an active account takes holds");
}

#[tokio::test]
async fn accounts_filter_by_customer() {
    let app = TestApp::spawn().await;
    let customer = uuid::Uuid::new_v4();
    let mine = app
        .account_with(
            0,
            pb::CreateBillingAccountRequest {
                customer_id: customer.to_string(),
                name: "Support line".into(),
                ..Default::default()
            },
        )
        .await;
    let _other = app.account(0).await;

    // Lists come from the read model, which the projector fills a moment
    // after the write.
    let customer = customer.to_string();
    let mut listed = Value::Null;
    for _ in 0..50 {
        let args = ["accounts", "--customer", &customer, "--json"];
        listed = admin(&app, operator(), &args).await.json();
        if listed.get("billing_accounts").is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let accounts = listed["billing_accounts"].as_array().expect("listed");
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0]["id"], mine.id.as_str());

    let table = admin(&app, operator(), &["accounts", "--customer", &customer]).await;
    assert_eq!(table.stdout.lines().count(), 2, "{}", table.stdout);
    assert!(table.stdout.contains("Support line"), "{}", table.stdout);
}

#[tokio::test]
async fn bad_amounts_and_refused_calls_exit_non_zero_and_change_nothing() {
    let app = TestApp::spawn().await;
    let account = app.account(1_000_000).await;
    let id = account.id.as_str();
    let before = app.event_count().await;

    let too_precise = admin(
        &app,
        operator(),
        &["topup", id, "--amount", "1.0000001", "--reason", "x"],
    )
    .await;
    assert!(!too_precise.ok);
    assert!(
        too_precise.stderr.contains("more precise than a micro"),
        "{}",
        too_precise.stderr
    );

    let no_reason = admin(&app, operator(), &["topup", id, "--amount", "1"]).await;
    assert!(!no_reason.ok);
    assert!(
        no_reason.stderr.contains("--reason"),
        "{}",
        no_reason.stderr
    );

    let no_token = admin(&app, None, &["topup", id, "--amount", "1", "--reason", "x"]).await;
    assert!(!no_token.ok);
    assert!(
        no_token.stderr.starts_with("Unauthenticated"),
        "{}",
        no_token.stderr
    );

    let customer = Some(token("cust", "customer_admin", Some(uuid::Uuid::new_v4())));
    let not_theirs = admin(&app, customer, &["show", id]).await;
    assert!(!not_theirs.ok);

    assert_eq!(app.event_count().await, before);
}

#[tokio::test]
async fn an_operator_registers_a_webhook_reads_its_deliveries_and_sends_a_failed_one_again() {
    let app = TestApp::spawn().await;
    let customer = uuid::Uuid::new_v4();
    let account = app
        .account_with(
            0,
            pb::CreateBillingAccountRequest {
                customer_id: customer.to_string(),
                ..Default::default()
            },
        )
        .await;
    let customer = customer.to_string();

    let created = admin(
        &app,
        operator(),
        &[
            "webhooks",
            "create",
            "--customer",
            &customer,
            "--name",
            "ticket 4713",
            "--uri",
            "https://hooks.example.com/billing",
            "--event-type",
            "account_updated",
            "--event-type",
            "balance_low",
            "--account",
            &account.id,
        ],
    )
    .await;
    assert!(created.ok, "{}", created.stderr);
    assert!(created.stdout.contains("secret"), "{}", created.stdout);
    assert!(created.stdout.contains("whsec_"), "{}", created.stdout);
    let id = created
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("webhook "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no id: {}", created.stdout))
        .to_owned();

    let listed = admin(
        &app,
        operator(),
        &["webhooks", "list", "--customer", &customer, "--json"],
    )
    .await
    .json();
    let webhooks = listed["webhooks"].as_array().unwrap();
    assert_eq!(webhooks.len(), 1);
    assert_eq!(webhooks[0]["id"], id.as_str());
    assert_eq!(webhooks[0]["event_types"][1], "balance_low");
    assert!(webhooks[0].get("secret").is_none(), "no secret in a list");
    let table = admin(
        &app,
        operator(),
        &["webhooks", "list", "--customer", &customer],
    )
    .await;
    assert_eq!(table.stdout.lines().count(), 2, "{}", table.stdout);
    assert!(table.stdout.contains("https://hooks.example.com/billing"));

    let shown = admin(&app, operator(), &["webhooks", "show", &id]).await;
    assert!(
        shown.stdout.contains("status    enabled"),
        "{}",
        shown.stdout
    );
    assert!(!shown.stdout.contains("whsec_"), "{}", shown.stdout);

    // A failed delivery, as the dispatcher leaves one.
    let delivery = uuid::Uuid::now_v7();
    app.db
        .client()
        .await
        .execute(
            "INSERT INTO webhook_deliveries (id, webhook_id, message_id, event_type, account_id,
                 account_version, status, attempts, last_status_code, last_error, created_at)
             VALUES ($1, $2, 'msg_1', 'account_updated', $3, 1, 'failed', 8, 503,
                     'HTTP 503: down for maintenance', now())",
            &[
                &delivery,
                &id.parse::<uuid::Uuid>().unwrap(),
                &account.id.parse::<uuid::Uuid>().unwrap(),
            ],
        )
        .await
        .unwrap();
    let failed = admin(
        &app,
        operator(),
        &["webhooks", "deliveries", &id, "--status", "failed"],
    )
    .await;
    assert!(failed.ok, "{}", failed.stderr);
    let lines: Vec<&str> = failed.stdout.lines().collect();
    assert!(lines[0].starts_with("ID"), "{}", failed.stdout);
    assert!(lines[1].contains("503"), "{}", failed.stdout);
    assert!(
        lines[1].contains("down for maintenance"),
        "{}",
        failed.stdout
    );

    let retried = admin(
        &app,
        operator(),
        &["webhooks", "retry", &delivery.to_string(), "--json"],
    )
    .await
    .json();
    assert_eq!(retried["status"], "WEBHOOK_DELIVERY_STATUS_PENDING");
    let pending = admin(
        &app,
        operator(),
        &[
            "webhooks",
            "deliveries",
            &id,
            "--status",
            "pending",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(pending["deliveries"][0]["id"], delivery.to_string());
    // Sent again once: a second retry is refused, and says why.
    let again = admin(
        &app,
        operator(),
        &["webhooks", "retry", &delivery.to_string()],
    )
    .await;
    assert!(!again.ok);
    assert!(
        again.stderr.contains("DELIVERY_NOT_FAILED"),
        "{}",
        again.stderr
    );

    let disabled = admin(&app, operator(), &["webhooks", "disable", &id]).await;
    assert!(
        disabled
            .stdout
            .contains("disabled  disabled through the API"),
        "{}",
        disabled.stdout
    );
    let rotated = admin(&app, operator(), &["webhooks", "rotate", &id, "--json"])
        .await
        .json();
    assert!(rotated["secret"].as_str().unwrap().starts_with("whsec_"));
    assert!(rotated["previous_secret_expires_at"].is_string());
    let deleted = admin(&app, operator(), &["webhooks", "delete", &id]).await;
    assert!(deleted.ok, "{}", deleted.stderr);
    let gone = admin(&app, operator(), &["webhooks", "show", &id]).await;
    assert!(!gone.ok);
    assert!(gone.stderr.contains("WEBHOOK_NOT_FOUND"), "{}", gone.stderr);

    // Bad input is the service's INVALID_ARGUMENT, naming the field.
    let bad = admin(
        &app,
        operator(),
        &[
            "webhooks",
            "create",
            "--customer",
            &customer,
            "--uri",
            "ftp://hooks.example.com/",
            "--event-type",
            "account_updated",
        ],
    )
    .await;
    assert!(!bad.ok);
    assert!(bad.stderr.contains("uri"), "{}", bad.stderr);
}
