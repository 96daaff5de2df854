//! Authentication and roles, end to end: every RPC times every role, bad
//! tokens, and the actor recorded on what a principal changes.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use billing_proto::v1 as pb;
use pb::ServiceType as S;
use support::{Client, JWT_SECRET, TestApp, commit_ms, reserve};
use tonic::Code;
use uuid::Uuid;

/// Every RPC of the service, as the matrix calls them.
const RPCS: [&str; 26] = [
    "CreateBillingAccount",
    "GetBillingAccount",
    "UpdateBillingAccount",
    "AddBalance",
    "SubtractBalance",
    "Rate",
    "Reserve",
    "Extend",
    "Commit",
    "Release",
    "Debit",
    "GetBalance",
    "ListBillingAccounts",
    "ListTransactions",
    "EstimateCost",
    "ComparePlans",
    "WatchAccount",
    "CreateWebhook",
    "GetWebhook",
    "ListWebhooks",
    "UpdateWebhook",
    "DeleteWebhook",
    "RotateWebhookSecret",
    "ListWebhookDeliveries",
    "RetryWebhookDelivery",
    "ReplayWebhook",
];

/// A webhook of the customer of `account_id`, made by `admin` unless it
/// has one.
async fn webhook_of(admin: &mut Client, account_id: &str) -> (String, String) {
    let customer = admin
        .get_billing_account(pb::GetBillingAccountRequest {
            id: account_id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .customer_id;
    let listed = admin
        .list_webhooks(pb::ListWebhooksRequest {
            customer_id: customer.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let id = match listed.webhooks.first() {
        Some(webhook) => webhook.id.clone(),
        None => {
            admin
                .create_webhook(webhook_request(&customer))
                .await
                .unwrap()
                .into_inner()
                .id
        }
    };
    (customer, id)
}

fn webhook_request(customer: &str) -> pb::CreateWebhookRequest {
    pb::CreateWebhookRequest {
        customer_id: customer.to_owned(),
        uri: "https://hooks.example.com/billing".into(),
        event_types: vec!["account_updated".into()],
        ..Default::default()
    }
}

/// A failed delivery of `webhook_id` about `account_id`, written as the
/// dispatcher would.
async fn failed_delivery(
    db: &billing_testkit::TestDb,
    webhook_id: &str,
    account_id: &str,
) -> String {
    let id = Uuid::now_v7();
    let version = i64::try_from(UNIQUE.fetch_add(1, Ordering::Relaxed)).unwrap() + 1;
    db.client()
        .await
        .execute(
            "INSERT INTO webhook_deliveries (id, webhook_id, message_id, event_type, account_id,
                 account_version, status, attempts, created_at)
             VALUES ($1, $2, $1::uuid::text, 'account_updated', $3, $4, 'failed', 8, now())",
            &[
                &id,
                &webhook_id.parse::<Uuid>().unwrap(),
                &account_id.parse::<Uuid>().unwrap(),
                &version,
            ],
        )
        .await
        .unwrap();
    id.to_string()
}

/// The status a caller should get from an RPC.
type Expected = Box<dyn Fn(&str) -> Code>;

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", UNIQUE.fetch_add(1, Ordering::Relaxed))
}

/// Calls `rpc` as `client` with a valid request about `account_id`. Holds
/// that the call needs are made first by `admin`.
async fn call(
    rpc: &str,
    client: &mut Client,
    admin: &mut Client,
    account_id: &str,
    db: &billing_testkit::TestDb,
) -> Result<(), tonic::Status> {
    let id = account_id.to_owned();
    let live_hold = async |admin: &mut Client| {
        let rid = unique("call");
        admin
            .reserve(reserve(&rid, account_id, S::CallPstnOutgoing, 1))
            .await
            .unwrap();
        rid
    };
    match rpc {
        "CreateBillingAccount" => client
            .create_billing_account(pb::CreateBillingAccountRequest {
                customer_id: Uuid::new_v4().to_string(),
                ..Default::default()
            })
            .await
            .map(drop),
        "GetBillingAccount" => client
            .get_billing_account(pb::GetBillingAccountRequest { id })
            .await
            .map(drop),
        "UpdateBillingAccount" => client
            .update_billing_account(pb::UpdateBillingAccountRequest {
                id,
                detail: Some(unique("d")),
                ..Default::default()
            })
            .await
            .map(drop),
        "AddBalance" => client
            .add_balance(pb::AddBalanceRequest {
                account_id: id,
                amount_credit: 1,
                idempotency_key: unique("add"),
                ..Default::default()
            })
            .await
            .map(drop),
        "SubtractBalance" => client
            .subtract_balance(pb::SubtractBalanceRequest {
                account_id: id,
                amount_credit: 1,
                idempotency_key: unique("sub"),
                ..Default::default()
            })
            .await
            .map(drop),
        "Rate" => client
            .rate(pb::RateRequest {
                service_type: S::Sms.into(),
                quantity: 1,
                account_id: id,
                ..Default::default()
            })
            .await
            .map(drop),
        "Reserve" => client
            .reserve(reserve(&unique("call"), &id, S::CallPstnOutgoing, 1))
            .await
            .map(drop),
        "Extend" => {
            let rid = live_hold(admin).await;
            client
                .extend(pb::ExtendRequest {
                    reservation_id: rid,
                    additional_units: 1,
                    allow_partial: false,
                    idempotency_key: unique("extend"),
                })
                .await
                .map(drop)
        }
        "Commit" => {
            let rid = live_hold(admin).await;
            client.commit(commit_ms(&rid, 30_000)).await.map(drop)
        }
        "Release" => {
            let rid = live_hold(admin).await;
            client
                .release(pb::ReleaseRequest {
                    reservation_id: rid,
                })
                .await
                .map(drop)
        }
        "Debit" => client
            .debit(pb::DebitRequest {
                account_id: id,
                service_type: S::Sms.into(),
                quantity: 1,
                idempotency_key: unique("debit"),
                ..Default::default()
            })
            .await
            .map(drop),
        "GetBalance" => client
            .get_balance(pb::GetBalanceRequest {
                account_id: id,
                ..Default::default()
            })
            .await
            .map(drop),
        "ListBillingAccounts" => client
            .list_billing_accounts(pb::ListBillingAccountsRequest::default())
            .await
            .map(drop),
        "ListTransactions" => client
            .list_transactions(pb::ListTransactionsRequest {
                account_id: id,
                ..Default::default()
            })
            .await
            .map(drop),
        "EstimateCost" => client
            .estimate_cost(pb::EstimateCostRequest {
                account_id: id,
                lines: vec![pb::UsageLine {
                    service_type: S::Sms.into(),
                    count: 1,
                    quantity: 1,
                    ..Default::default()
                }],
            })
            .await
            .map(drop),
        "ComparePlans" => client
            .compare_plans(pb::ComparePlansRequest::default())
            .await
            .map(drop),
        "WatchAccount" => client
            .watch_account(pb::WatchAccountRequest {
                account_id: id,
                after_version: None,
            })
            .await
            .map(drop),
        "CreateWebhook" => {
            let (customer, _) = webhook_of(admin, account_id).await;
            client
                .create_webhook(webhook_request(&customer))
                .await
                .map(drop)
        }
        "GetWebhook" => {
            let (_, id) = webhook_of(admin, account_id).await;
            client
                .get_webhook(pb::GetWebhookRequest { id })
                .await
                .map(drop)
        }
        "ListWebhooks" => {
            let (customer_id, _) = webhook_of(admin, account_id).await;
            client
                .list_webhooks(pb::ListWebhooksRequest {
                    customer_id,
                    ..Default::default()
                })
                .await
                .map(drop)
        }
        "UpdateWebhook" => {
            let (_, id) = webhook_of(admin, account_id).await;
            client
                .update_webhook(pb::UpdateWebhookRequest {
                    id,
                    name: Some(unique("hook")),
                    ..Default::default()
                })
                .await
                .map(drop)
        }
        "DeleteWebhook" => {
            let (_, id) = webhook_of(admin, account_id).await;
            client
                .delete_webhook(pb::DeleteWebhookRequest { id })
                .await
                .map(drop)
        }
        "RotateWebhookSecret" => {
            let (_, id) = webhook_of(admin, account_id).await;
            client
                .rotate_webhook_secret(pb::RotateWebhookSecretRequest {
                    id,
                    overlap_seconds: None,
                })
                .await
                .map(drop)
        }
        "ListWebhookDeliveries" => {
            let (_, webhook_id) = webhook_of(admin, account_id).await;
            client
                .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
                    webhook_id,
                    ..Default::default()
                })
                .await
                .map(drop)
        }
        "RetryWebhookDelivery" => {
            let (_, webhook_id) = webhook_of(admin, account_id).await;
            let delivery_id = failed_delivery(db, &webhook_id, account_id).await;
            client
                .retry_webhook_delivery(pb::RetryWebhookDeliveryRequest { delivery_id })
                .await
                .map(drop)
        }
        "ReplayWebhook" => {
            let (_, webhook_id) = webhook_of(admin, account_id).await;
            client
                .replay_webhook(pb::ReplayWebhookRequest {
                    webhook_id,
                    since: Some(prost_types::Timestamp::default()),
                })
                .await
                .map(drop)
        }
        other => panic!("no call for {other}"),
    }
}

#[tokio::test]
async fn the_matrix_covers_every_rpc_of_the_service() {
    let pool =
        prost_reflect::DescriptorPool::decode(billing_proto::v1::FILE_DESCRIPTOR_SET).unwrap();
    let service = pool
        .get_service_by_name("billing.v1.BillingService")
        .unwrap();
    let mut methods: Vec<String> = service.methods().map(|m| m.name().to_owned()).collect();
    methods.sort();
    let mut covered: Vec<String> = RPCS.iter().map(|s| (*s).to_owned()).collect();
    covered.sort();
    assert_eq!(
        methods, covered,
        "a new RPC needs a row in the policy and in this matrix"
    );
}

#[tokio::test]
async fn every_rpc_times_every_role() {
    let app = TestApp::spawn().await;
    let mut admin = app.client.clone();
    let customer = Uuid::new_v4();
    let owned = app
        .account_with(
            1_000_000_000,
            pb::CreateBillingAccountRequest {
                customer_id: customer.to_string(),
                ..Default::default()
            },
        )
        .await;
    let service_only = [
        "Rate",
        "Reserve",
        "Extend",
        "Commit",
        "Release",
        "Debit",
        "GetBillingAccount",
        "GetBalance",
        "EstimateCost",
        "ComparePlans",
        "WatchAccount",
    ];
    let customer_reads = [
        "GetBillingAccount",
        "GetBalance",
        "ListTransactions",
        "Rate",
        "EstimateCost",
        "ComparePlans",
        "WatchAccount",
        // Its own customer's webhooks.
        "CreateWebhook",
        "GetWebhook",
        "ListWebhooks",
        "UpdateWebhook",
        "DeleteWebhook",
        "RotateWebhookSecret",
        "ListWebhookDeliveries",
        "RetryWebhookDelivery",
        "ReplayWebhook",
    ];

    let mut callers: Vec<(&str, Client, Expected)> = vec![
        (
            "no token",
            support::connect(app.addr, None).await,
            Box::new(|_| Code::Unauthenticated),
        ),
        (
            "project_super_admin",
            app.client_as("project_super_admin", None).await,
            Box::new(|_| Code::Ok),
        ),
        (
            "service",
            app.client_as("service", None).await,
            Box::new(move |rpc| {
                if service_only.contains(&rpc) {
                    Code::Ok
                } else {
                    Code::PermissionDenied
                }
            }),
        ),
        (
            "customer_admin of the account",
            app.client_as("customer_admin", Some(customer)).await,
            Box::new(move |rpc| {
                if customer_reads.contains(&rpc) {
                    Code::Ok
                } else {
                    Code::PermissionDenied
                }
            }),
        ),
        (
            "customer_admin of another customer",
            app.client_as("customer_admin", Some(Uuid::new_v4())).await,
            // Comparing plans names no account.
            Box::new(|rpc| {
                if rpc == "ComparePlans" {
                    Code::Ok
                } else {
                    Code::PermissionDenied
                }
            }),
        ),
    ];
    let mut failures = Vec::new();
    for (who, client, expected) in &mut callers {
        for rpc in RPCS {
            let got = match call(rpc, client, &mut admin, &owned.id, &app.db).await {
                Ok(()) => Code::Ok,
                Err(status) => status.code(),
            };
            if got != expected(rpc) {
                failures.push(format!(
                    "{who} calling {rpc}: expected {:?}, got {got:?}",
                    expected(rpc)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn a_customer_admin_reads_its_own_account_without_naming_it() {
    let app = TestApp::spawn().await;
    let customer = Uuid::new_v4();
    let owned = app
        .account_with(
            0,
            pb::CreateBillingAccountRequest {
                customer_id: customer.to_string(),
                ..Default::default()
            },
        )
        .await;
    let mut own = app.client_as("customer_admin", Some(customer)).await;
    let mine = own
        .get_billing_account(pb::GetBillingAccountRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.id, owned.id);
    let mut nobody = app.client_as("customer_admin", Some(Uuid::new_v4())).await;
    let err = nobody
        .get_billing_account(pb::GetBillingAccountRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Naming an account that does not exist tells a customer admin nothing.
    let err = own
        .get_billing_account(pb::GetBillingAccountRequest {
            id: Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut admin = app.client.clone();
    let err = admin
        .get_billing_account(pb::GetBillingAccountRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "an admin must name the account"
    );
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn claims(role: Option<&str>, customer_id: Option<&str>, exp_offset: i64) -> serde_json::Value {
    let exp = jsonwebtoken::get_current_timestamp() as i64 + exp_offset;
    let mut claims = serde_json::json!({ "sub": "mallory", "exp": exp });
    if let Some(role) = role {
        claims["role"] = role.into();
    }
    if let Some(customer_id) = customer_id {
        claims["customer_id"] = customer_id.into();
    }
    claims
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn with(
    mut claims: serde_json::Value,
    key: &str,
    value: impl Into<serde_json::Value>,
) -> serde_json::Value {
    claims[key] = value.into();
    claims
}

/// A well-signed token whose header names a critical extension.
fn critical(claims: &serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.crit = Some(vec!["urn:example:must-understand".to_owned()]);
    header.extras.insert("urn:example:must-understand", true);
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

fn signed(alg: jsonwebtoken::Algorithm, secret: &str, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn forged_expired_and_malformed_tokens_are_unauthenticated_and_change_nothing() {
    let app = TestApp::spawn().await;
    let account = app.account(1_000).await;
    let events_before = app
        .store
        .feed()
        .account_events(account.id.parse().unwrap())
        .await
        .unwrap()
        .len();
    let admin = Some("project_super_admin");
    let hs256 = jsonwebtoken::Algorithm::HS256;
    let none_token = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims(admin, None, 3_600).to_string().as_bytes())
    );
    let cases: Vec<(&str, String)> = vec![
        (
            "forged signature",
            signed(
                hs256,
                "another-secret-0123456789",
                &claims(admin, None, 3_600),
            ),
        ),
        ("alg none", none_token),
        (
            "algorithm switched to HS384",
            signed(
                jsonwebtoken::Algorithm::HS384,
                JWT_SECRET,
                &claims(admin, None, 3_600),
            ),
        ),
        (
            "expired",
            signed(hs256, JWT_SECRET, &claims(admin, None, -120)),
        ),
        (
            "no role",
            signed(hs256, JWT_SECRET, &claims(None, None, 3_600)),
        ),
        (
            "unknown role",
            signed(hs256, JWT_SECRET, &claims(Some("root"), None, 3_600)),
        ),
        (
            "customer_admin without customer_id",
            signed(
                hs256,
                JWT_SECRET,
                &claims(Some("customer_admin"), None, 3_600),
            ),
        ),
        ("not a JWT", "hello".to_owned()),
        (
            "not valid yet (nbf)",
            signed(
                hs256,
                JWT_SECRET,
                &with(claims(admin, None, 3_600), "nbf", now() + 600),
            ),
        ),
        (
            "a critical header parameter",
            critical(&claims(admin, None, 3_600)),
        ),
        (
            "a subject with a NUL",
            signed(
                hs256,
                JWT_SECRET,
                &with(claims(admin, None, 3_600), "sub", "mal\0lory"),
            ),
        ),
        (
            "a 10 KB subject",
            signed(
                hs256,
                JWT_SECRET,
                &with(claims(admin, None, 3_600), "sub", "m".repeat(10_000)),
            ),
        ),
    ];
    for (case, token) in cases {
        let mut client = support::connect(app.addr, Some(&token)).await;
        let err = client
            .add_balance(pb::AddBalanceRequest {
                account_id: account.id.clone(),
                amount_credit: 1_000_000,
                idempotency_key: unique("forged"),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{case}: {err:?}");
        assert!(
            !err.message().contains(&token),
            "{case}: the token leaked into the error"
        );
    }
    // A token of another scheme.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut basic = pb::billing_service_client::BillingServiceClient::with_interceptor(
        channel,
        |mut r: tonic::Request<()>| {
            r.metadata_mut()
                .insert("authorization", "Basic YWxpY2U6c2VjcmV0".parse().unwrap());
            Ok(r)
        },
    );
    let err = basic
        .get_billing_account(pb::GetBillingAccountRequest {
            id: account.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // Two authorization headers: a valid one first does not decide.
    let admin_token = support::token("admin-alice", "project_super_admin", None);
    for pair in [
        [admin_token.clone(), "garbage".to_owned()],
        [admin_token.clone(), admin_token.clone()],
    ] {
        let channel = support::channel(app.addr).await;
        let mut twice = pb::billing_service_client::BillingServiceClient::with_interceptor(
            channel,
            move |mut r: tonic::Request<()>| {
                for token in &pair {
                    r.metadata_mut()
                        .append("authorization", format!("Bearer {token}").parse().unwrap());
                }
                Ok(r)
            },
        );
        let err = twice
            .add_balance(pb::AddBalanceRequest {
                account_id: account.id.clone(),
                amount_credit: 1_000_000,
                idempotency_key: unique("twice"),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    }

    let events_after = app
        .store
        .feed()
        .account_events(account.id.parse().unwrap())
        .await
        .unwrap()
        .len();
    assert_eq!(events_after, events_before, "nothing changed");
    assert_eq!(app.get(&account.id).await.balance_credit, 1_000);
}

#[tokio::test]
async fn the_actor_is_recorded_on_events_and_ledger_entries() {
    let app = TestApp::spawn().await;
    let account = app.account(100_000).await;
    let mut call_control = support::connect(
        app.addr,
        Some(&support::token("call-control-eu1", "service", None)),
    )
    .await;
    call_control
        .reserve(reserve("audited", &account.id, S::CallPstnOutgoing, 2))
        .await
        .unwrap();
    let done = call_control
        .commit(commit_ms("audited", 60_000))
        .await
        .unwrap()
        .into_inner();

    let events = app
        .store
        .feed()
        .account_events(account.id.parse().unwrap())
        .await
        .unwrap();
    let actors: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e.event_type.as_str(),
                e.actor.principal.as_str(),
                e.actor.role.as_str(),
            )
        })
        .collect();
    assert_eq!(
        actors,
        [
            ("account_created", "admin-alice", "project_super_admin"),
            ("tokens_granted", "admin-alice", "project_super_admin"),
            ("balance_added", "admin-alice", "project_super_admin"),
            ("reserved", "call-control-eu1", "service"),
            ("committed", "call-control-eu1", "service"),
        ]
    );
    let mut admin = app.client.clone();
    let ledger = admin
        .list_transactions(pb::ListTransactionsRequest {
            account_id: account.id.clone(),
            min_version: done.account.unwrap().version,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .transactions;
    assert_eq!(
        (ledger[0].actor.as_str(), ledger[0].actor_role.as_str()),
        ("call-control-eu1", "service")
    );
    assert_eq!(
        (ledger[1].actor.as_str(), ledger[1].actor_role.as_str()),
        ("admin-alice", "project_super_admin")
    );
}
