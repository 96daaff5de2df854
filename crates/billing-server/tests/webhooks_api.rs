//! The webhook registration API over real gRPC against real PostgreSQL:
//! settings round trips, secrets and their rotation, who may do what, bad
//! input, the per-customer limit, idempotent creation, and the delivery
//! list, retry and replay (on delivery rows the test writes itself, as the
//! dispatcher would).

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use billing_proto::v1 as pb;
use support::{Client, TestApp, assert_status};
use tonic::Code;
use tonic_types::StatusExt as _;
use uuid::Uuid;

const ALL_TYPES: [&str; 4] = [
    "account_updated",
    "balance_low",
    "balance_recovered",
    "credit_limit_exceeded",
];

fn create(customer: Uuid, uri: &str) -> pb::CreateWebhookRequest {
    pb::CreateWebhookRequest {
        customer_id: customer.to_string(),
        name: "balance alerts".into(),
        uri: uri.into(),
        event_types: vec!["account_updated".into()],
        ..Default::default()
    }
}

/// An account of `customer`.
async fn account_of(app: &TestApp, customer: Uuid) -> String {
    app.account_with(
        0,
        pb::CreateBillingAccountRequest {
            customer_id: customer.to_string(),
            ..Default::default()
        },
    )
    .await
    .id
}

async fn webhook_rows(app: &TestApp) -> i64 {
    app.db
        .client()
        .await
        .query_one("SELECT count(*) FROM webhooks", &[])
        .await
        .unwrap()
        .get(0)
}

/// A delivery row as the dispatcher would write it, made `age_s` seconds
/// ago; returns its id.
async fn insert_delivery(
    app: &TestApp,
    webhook_id: &str,
    (account_id, version, event_type): (&str, i64, &str),
    status: &str,
    age_s: f64,
) -> Uuid {
    let id = Uuid::now_v7();
    let webhook_id: Uuid = webhook_id.parse().unwrap();
    let account_id: Uuid = account_id.parse().unwrap();
    app.db
        .client()
        .await
        .execute(
            "INSERT INTO webhook_deliveries (id, webhook_id, message_id, event_type, account_id,
                 account_version, status, attempts, last_status_code, last_error,
                 next_attempt_at, delivered_at, created_at)
             VALUES ($1, $2, 'msg_' || $1::uuid::text, $3, $4, $5, $6,
                     CASE $6 WHEN 'pending' THEN 0 ELSE 8 END,
                     CASE $6 WHEN 'pending' THEN NULL WHEN 'delivered' THEN 200 ELSE 500 END,
                     CASE $6 WHEN 'failed' THEN 'HTTP 500: oops' ELSE '' END,
                     CASE $6 WHEN 'pending' THEN now() + interval '1 hour' END,
                     CASE $6 WHEN 'delivered' THEN now() END,
                     now() - $7 * interval '1 second')",
            &[
                &id,
                &webhook_id,
                &event_type,
                &account_id,
                &version,
                &status,
                &age_s,
            ],
        )
        .await
        .unwrap();
    id
}

fn timestamp_ago(seconds: u64) -> prost_types::Timestamp {
    let at = SystemTime::now() - Duration::from_secs(seconds);
    let since = at.duration_since(UNIX_EPOCH).unwrap();
    prost_types::Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
    }
}

fn seconds_from_now(t: &prost_types::Timestamp) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    t.seconds - now
}

/// The ErrorInfo `field` of an INVALID_ARGUMENT.
fn invalid_field(status: &tonic::Status) -> String {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let info = details.error_info().expect("an ErrorInfo");
    info.metadata.get("field").cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_webhook_is_created_read_listed_updated_and_deleted_with_its_deliveries() {
    let app = TestApp::spawn().await;
    let mut admin = app.client.clone();
    let customer = Uuid::new_v4();
    let account = account_of(&app, customer).await;

    let created = admin
        .create_webhook(pb::CreateWebhookRequest {
            method: "put".into(),
            event_types: vec![
                "balance_low".into(),
                "account_updated".into(),
                "balance_low".into(),
            ],
            account_ids: vec![account.clone(), account.clone()],
            ..create(customer, "https://hooks.example.com/billing?x=1")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.customer_id, customer.to_string());
    assert_eq!(created.name, "balance alerts");
    assert_eq!(created.uri, "https://hooks.example.com/billing?x=1");
    assert_eq!(created.method, "PUT");
    assert_eq!(created.event_types, ["account_updated", "balance_low"]);
    assert_eq!(created.account_ids, std::slice::from_ref(&account));
    assert_eq!(created.status(), pb::WebhookStatus::Enabled);
    assert_eq!(created.disabled_reason, "");
    assert!(created.created_at.is_some() && created.updated_at.is_some());
    assert!(created.previous_secret_expires_at.is_none());
    assert_eq!(
        Uuid::parse_str(&created.id).unwrap().get_version_num(),
        7,
        "ids sort by creation"
    );

    let got = admin
        .get_webhook(pb::GetWebhookRequest {
            id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got,
        pb::Webhook {
            secret: String::new(),
            ..created.clone()
        }
    );

    // The default method, every event type, all accounts; another customer.
    let second = admin
        .create_webhook(pb::CreateWebhookRequest {
            event_types: ALL_TYPES.map(String::from).to_vec(),
            ..create(customer, "http://127.0.0.1:9000/hook")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.method, "POST");
    assert_eq!(second.event_types, ALL_TYPES);
    assert!(second.account_ids.is_empty());
    let elsewhere = admin
        .create_webhook(create(Uuid::new_v4(), "https://other.example/"))
        .await
        .unwrap()
        .into_inner();

    // One customer's, a page at a time, oldest first.
    let page = |token: String| pb::ListWebhooksRequest {
        customer_id: customer.to_string(),
        page_size: 1,
        page_token: token,
    };
    let first = admin
        .list_webhooks(page(String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.webhooks.len(), 1);
    assert_eq!(first.webhooks[0].id, created.id);
    assert!(first.webhooks[0].secret.is_empty());
    let rest = admin
        .list_webhooks(page(first.next_page_token.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.webhooks.len(), 1);
    assert_eq!(rest.webhooks[0].id, second.id);
    assert!(rest.next_page_token.is_empty(), "the last page");
    let everyone = admin
        .list_webhooks(pb::ListWebhooksRequest::default())
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = everyone.webhooks.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(ids, [&created.id, &second.id, &elsewhere.id]);

    // Only what is set changes.
    let updated = admin
        .update_webhook(pb::UpdateWebhookRequest {
            id: created.id.clone(),
            name: Some("renamed".into()),
            uri: Some("https://hooks.example.com/v2".into()),
            event_types: Some(pb::WebhookEventTypes {
                values: vec!["credit_limit_exceeded".into()],
            }),
            account_ids: Some(pb::WebhookAccountIds::default()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.name, "renamed");
    assert_eq!(updated.uri, "https://hooks.example.com/v2");
    assert_eq!(updated.method, "PUT", "unset: unchanged");
    assert_eq!(updated.event_types, ["credit_limit_exceeded"]);
    assert!(
        updated.account_ids.is_empty(),
        "set and empty: every account"
    );
    assert!(updated.secret.is_empty());

    // Disabled with a reason; enabled again clears it and the failing streak.
    let disabled = admin
        .update_webhook(pb::UpdateWebhookRequest {
            id: created.id.clone(),
            enabled: Some(false),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(disabled.status(), pb::WebhookStatus::Disabled);
    assert_eq!(disabled.disabled_reason, "disabled through the API");
    app.db
        .client()
        .await
        .execute(
            "UPDATE webhooks SET failing_since = now() WHERE id = $1",
            &[&created.id.parse::<Uuid>().unwrap()],
        )
        .await
        .unwrap();
    let enabled = admin
        .update_webhook(pb::UpdateWebhookRequest {
            id: created.id.clone(),
            enabled: Some(true),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(enabled.status(), pb::WebhookStatus::Enabled);
    assert_eq!(enabled.disabled_reason, "");
    assert!(enabled.failing_since.is_none());
    assert_eq!(enabled.name, "renamed");

    // Deleting takes its deliveries with it.
    insert_delivery(
        &app,
        &created.id,
        (&account, 1, "account_updated"),
        "delivered",
        0.0,
    )
    .await;
    admin
        .delete_webhook(pb::DeleteWebhookRequest {
            id: created.id.clone(),
        })
        .await
        .unwrap();
    let gone = admin
        .get_webhook(pb::GetWebhookRequest {
            id: created.id.clone(),
        })
        .await
        .unwrap_err();
    assert_status(&gone, Code::NotFound, "WEBHOOK_NOT_FOUND");
    let again = admin
        .delete_webhook(pb::DeleteWebhookRequest {
            id: created.id.clone(),
        })
        .await
        .unwrap_err();
    assert_status(&again, Code::NotFound, "WEBHOOK_NOT_FOUND");
    let left: i64 = app
        .db
        .client()
        .await
        .query_one("SELECT count(*) FROM webhook_deliveries", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    assert_eq!(webhook_rows(&app).await, 2);
}

#[tokio::test]
async fn secrets_are_shown_only_when_made_and_a_rotation_keeps_the_previous_one_for_the_overlap() {
    let app = TestApp::spawn().await;
    let mut admin = app.client.clone();
    let customer = Uuid::new_v4();
    let created = admin
        .create_webhook(create(customer, "https://hooks.example.com/"))
        .await
        .unwrap()
        .into_inner();
    let key = |secret: &str| {
        let encoded = secret
            .strip_prefix("whsec_")
            .unwrap_or_else(|| panic!("not whsec_: {secret}"));
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("standard base64")
    };
    assert!(key(&created.secret).len() >= 24);

    let id = created.id.clone();
    let got = admin
        .get_webhook(pb::GetWebhookRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(got.secret.is_empty(), "GetWebhook shows no secret");
    let listed = admin
        .list_webhooks(pb::ListWebhooksRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.webhooks.iter().all(|w| w.secret.is_empty()));
    let updated = admin
        .update_webhook(pb::UpdateWebhookRequest {
            id: id.clone(),
            name: Some("x".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(updated.secret.is_empty(), "UpdateWebhook shows no secret");

    // The default overlap: 24 hours.
    let rotated = admin
        .rotate_webhook_secret(pb::RotateWebhookSecretRequest {
            id: id.clone(),
            overlap_seconds: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.secret, created.secret);
    assert!(key(&rotated.secret).len() >= 24);
    let until = rotated.previous_secret_expires_at.expect("an overlap");
    assert!(
        (86_390..=86_410).contains(&seconds_from_now(&until)),
        "{until:?}"
    );
    let row = app
        .db
        .client()
        .await
        .query_one(
            "SELECT secret, previous_secret,
                    extract(epoch FROM previous_secret_until - now())::float8
             FROM webhooks WHERE id = $1",
            &[&id.parse::<Uuid>().unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), rotated.secret);
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some(created.secret.as_str())
    );
    let left: f64 = row.get(2);
    assert!((86_390.0..=86_410.0).contains(&left), "{left}");
    let shown = admin
        .get_webhook(pb::GetWebhookRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(shown.secret.is_empty());
    assert_eq!(shown.previous_secret_expires_at, Some(until));

    // An overlap of an hour: the secret just made is the previous one now.
    let hour = admin
        .rotate_webhook_secret(pb::RotateWebhookSecretRequest {
            id: id.clone(),
            overlap_seconds: Some(3_600),
        })
        .await
        .unwrap()
        .into_inner();
    let previous: Option<String> = app
        .db
        .client()
        .await
        .query_one(
            "SELECT previous_secret FROM webhooks WHERE id = $1",
            &[&id.parse::<Uuid>().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(previous.as_deref(), Some(rotated.secret.as_str()));
    let until = hour.previous_secret_expires_at.unwrap();
    assert!((3_590..=3_610).contains(&seconds_from_now(&until)));

    // No overlap: a leaked secret stops signing at once.
    let at_once = admin
        .rotate_webhook_secret(pb::RotateWebhookSecretRequest {
            id: id.clone(),
            overlap_seconds: Some(0),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(at_once.previous_secret_expires_at.is_none());
    let previous: Option<String> = app
        .db
        .client()
        .await
        .query_one(
            "SELECT previous_secret FROM webhooks WHERE id = $1",
            &[&id.parse::<Uuid>().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(previous, None);

    for bad in [-1, 7 * 86_400 + 1, i64::MAX, i64::MIN] {
        let err = admin
            .rotate_webhook_secret(pb::RotateWebhookSecretRequest {
                id: id.clone(),
                overlap_seconds: Some(bad),
            })
            .await
            .unwrap_err();
        assert_eq!(invalid_field(&err), "overlap_seconds", "{bad}");
    }
    let current: String = app
        .db
        .client()
        .await
        .query_one(
            "SELECT secret FROM webhooks WHERE id = $1",
            &[&id.parse::<Uuid>().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        current, at_once.secret,
        "a refused rotation changes nothing"
    );
}

/// Every webhook RPC about `webhook_id` (and `delivery_id`) as `client`:
/// the codes, by RPC.
async fn every_rpc_on(
    client: &mut Client,
    customer: Uuid,
    webhook_id: &str,
    delivery_id: &str,
) -> Vec<(&'static str, Code)> {
    let code = |r: Result<(), tonic::Status>| r.map_or_else(|s| s.code(), |()| Code::Ok);
    let id = webhook_id.to_owned();
    vec![
        (
            "CreateWebhook",
            code(
                client
                    .create_webhook(create(customer, "https://x.example/"))
                    .await
                    .map(drop),
            ),
        ),
        (
            "GetWebhook",
            code(
                client
                    .get_webhook(pb::GetWebhookRequest { id: id.clone() })
                    .await
                    .map(drop),
            ),
        ),
        (
            "ListWebhooks",
            code(
                client
                    .list_webhooks(pb::ListWebhooksRequest {
                        customer_id: customer.to_string(),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
        ),
        (
            "UpdateWebhook",
            code(
                client
                    .update_webhook(pb::UpdateWebhookRequest {
                        id: id.clone(),
                        name: Some("taken over".into()),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
        ),
        (
            "RotateWebhookSecret",
            code(
                client
                    .rotate_webhook_secret(pb::RotateWebhookSecretRequest {
                        id: id.clone(),
                        overlap_seconds: None,
                    })
                    .await
                    .map(drop),
            ),
        ),
        (
            "ListWebhookDeliveries",
            code(
                client
                    .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
                        webhook_id: id.clone(),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
        ),
        (
            "RetryWebhookDelivery",
            code(
                client
                    .retry_webhook_delivery(pb::RetryWebhookDeliveryRequest {
                        delivery_id: delivery_id.to_owned(),
                    })
                    .await
                    .map(drop),
            ),
        ),
        (
            "ReplayWebhook",
            code(
                client
                    .replay_webhook(pb::ReplayWebhookRequest {
                        webhook_id: id.clone(),
                        since: Some(timestamp_ago(3_600)),
                    })
                    .await
                    .map(drop),
            ),
        ),
        (
            "DeleteWebhook",
            code(
                client
                    .delete_webhook(pb::DeleteWebhookRequest { id })
                    .await
                    .map(drop),
            ),
        ),
    ]
}

#[tokio::test]
async fn a_customer_admin_manages_its_own_customers_webhooks_and_no_one_elses() {
    let app = TestApp::spawn().await;
    let mut admin = app.client.clone();
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let alice_account = account_of(&app, alice).await;
    let bob_account = account_of(&app, bob).await;
    let mut alice_admin = app.client_as("customer_admin", Some(alice)).await;

    // Its own: the customer defaults to the token's.
    let own = alice_admin
        .create_webhook(pb::CreateWebhookRequest {
            customer_id: String::new(),
            account_ids: vec![alice_account.clone()],
            ..create(alice, "https://alice.example/hook")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.customer_id, alice.to_string());
    assert!(own.secret.starts_with("whsec_"));
    let listed = alice_admin
        .list_webhooks(pb::ListWebhooksRequest::default())
        .await
        .unwrap()
        .into_inner();
    let bobs = admin
        .create_webhook(create(bob, "https://bob.example/hook"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.webhooks.len(), 1);
    let listed = alice_admin
        .list_webhooks(pb::ListWebhooksRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.webhooks.len(), 1, "only its own customer's");
    assert_eq!(listed.webhooks[0].id, own.id);
    let failed = insert_delivery(
        &app,
        &bobs.id,
        (&bob_account, 1, "account_updated"),
        "failed",
        10.0,
    )
    .await;
    let own_failed = insert_delivery(
        &app,
        &own.id,
        (&alice_account, 1, "account_updated"),
        "failed",
        10.0,
    )
    .await;

    let before = webhook_rows(&app).await;
    // Bob's webhook, and ids that do not exist: all refused alike.
    for (what, webhook, delivery) in [
        ("bob's", bobs.id.clone(), failed.to_string()),
        (
            "missing",
            Uuid::now_v7().to_string(),
            Uuid::now_v7().to_string(),
        ),
    ] {
        for (rpc, got) in every_rpc_on(&mut alice_admin, bob, &webhook, &delivery).await {
            assert_eq!(got, Code::PermissionDenied, "{what}: {rpc}");
        }
    }
    // Accounts of another customer, or none, are not its to name.
    for account in [bob_account.clone(), Uuid::new_v4().to_string()] {
        let err = alice_admin
            .create_webhook(pb::CreateWebhookRequest {
                account_ids: vec![account.clone()],
                ..create(alice, "https://alice.example/2")
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        let err = alice_admin
            .update_webhook(pb::UpdateWebhookRequest {
                id: own.id.clone(),
                account_ids: Some(pb::WebhookAccountIds {
                    values: vec![account],
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    assert_eq!(webhook_rows(&app).await, before, "nothing created");
    let bobs_now = admin
        .get_webhook(pb::GetWebhookRequest {
            id: bobs.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        bobs_now,
        pb::Webhook {
            secret: String::new(),
            ..bobs.clone()
        }
    );
    let bob_delivery_status: String = app
        .db
        .client()
        .await
        .query_one(
            "SELECT status FROM webhook_deliveries WHERE id = $1",
            &[&failed],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bob_delivery_status, "failed");

    // Its own: every RPC works (the delete last).
    for (rpc, got) in every_rpc_on(&mut alice_admin, alice, &own.id, &own_failed.to_string()).await
    {
        assert_eq!(got, Code::Ok, "own: {rpc}");
    }

    // Call control has no part in webhooks.
    let mut service = app.client_as("service", None).await;
    for (rpc, got) in every_rpc_on(&mut service, bob, &bobs.id, &failed.to_string()).await {
        assert_eq!(got, Code::PermissionDenied, "service: {rpc}");
    }

    // An admin naming what does not exist learns it does not.
    let err = admin
        .get_webhook(pb::GetWebhookRequest {
            id: Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, "WEBHOOK_NOT_FOUND");
    let err = admin
        .retry_webhook_delivery(pb::RetryWebhookDeliveryRequest {
            delivery_id: Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, "WEBHOOK_DELIVERY_NOT_FOUND");
    // ... and an account of another customer is a bad argument for it.
    let err = admin
        .create_webhook(pb::CreateWebhookRequest {
            account_ids: vec![bob_account],
            ..create(alice, "https://alice.example/3")
        })
        .await
        .unwrap_err();
    assert_eq!(invalid_field(&err), "account_ids");
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field_and_creates_or_changes_nothing() {
    let app = TestApp::spawn().await;
    let mut admin = app.client.clone();
    let customer = Uuid::new_v4();
    let good = create(customer, "https://hooks.example.com/");
    let cases: Vec<(&str, pb::CreateWebhookRequest)> = vec![
        ("uri", create(customer, "not a url")),
        ("uri", create(customer, "hooks.example.com/billing")),
        ("uri", create(customer, "/billing")),
        ("uri", create(customer, "ftp://hooks.example.com/")),
        ("uri", create(customer, "file:///etc/passwd")),
        ("uri", create(customer, "https://")),
        ("uri", create(customer, "")),
        ("uri", create(customer, "https://exa mple.com/")),
        (
            "uri",
            create(customer, &format!("https://e.com/{}", "a".repeat(3_000))),
        ),
        (
            "event_types",
            pb::CreateWebhookRequest {
                event_types: vec![],
                ..good.clone()
            },
        ),
        (
            "event_types",
            pb::CreateWebhookRequest {
                event_types: vec!["account_updated".into(), "balance_changed".into()],
                ..good.clone()
            },
        ),
        (
            "event_types",
            pb::CreateWebhookRequest {
                event_types: vec!["\0".repeat(10_000)],
                ..good.clone()
            },
        ),
        (
            "method",
            pb::CreateWebhookRequest {
                method: "GET".into(),
                ..good.clone()
            },
        ),
        (
            "method",
            pb::CreateWebhookRequest {
                method: "POST ".into(),
                ..good.clone()
            },
        ),
        (
            "name",
            pb::CreateWebhookRequest {
                name: "n".repeat(256),
                ..good.clone()
            },
        ),
        (
            "name",
            pb::CreateWebhookRequest {
                name: "a\0b".into(),
                ..good.clone()
            },
        ),
        (
            "customer_id",
            pb::CreateWebhookRequest {
                customer_id: "customer-7".into(),
                ..good.clone()
            },
        ),
        (
            "customer_id",
            pb::CreateWebhookRequest {
                customer_id: String::new(),
                ..good.clone()
            },
        ),
        (
            "account_ids",
            pb::CreateWebhookRequest {
                account_ids: vec!["not-an-id".into()],
                ..good.clone()
            },
        ),
        (
            "account_ids",
            pb::CreateWebhookRequest {
                account_ids: vec![Uuid::new_v4().to_string()],
                ..good.clone()
            },
        ),
        (
            "idempotency_key",
            pb::CreateWebhookRequest {
                idempotency_key: "k".repeat(256),
                ..good.clone()
            },
        ),
    ];
    for (field, request) in cases {
        let err = admin.create_webhook(request.clone()).await.unwrap_err();
        assert_eq!(invalid_field(&err), field, "{request:?}: {err:?}");
        assert!(err.message().len() <= 256);
    }
    assert_eq!(webhook_rows(&app).await, 0, "nothing was created");

    // The same rules on an update, which then changes nothing.
    let webhook = admin.create_webhook(good).await.unwrap().into_inner();
    let update = |patch: pb::UpdateWebhookRequest| pb::UpdateWebhookRequest {
        id: webhook.id.clone(),
        name: Some("changed".into()),
        ..patch
    };
    let cases: Vec<(&str, pb::UpdateWebhookRequest)> = vec![
        (
            "uri",
            update(pb::UpdateWebhookRequest {
                uri: Some("ftp://x.example/".into()),
                ..Default::default()
            }),
        ),
        (
            "method",
            update(pb::UpdateWebhookRequest {
                method: Some("DELETE".into()),
                ..Default::default()
            }),
        ),
        (
            "event_types",
            update(pb::UpdateWebhookRequest {
                event_types: Some(pb::WebhookEventTypes::default()),
                ..Default::default()
            }),
        ),
        (
            "account_ids",
            update(pb::UpdateWebhookRequest {
                account_ids: Some(pb::WebhookAccountIds {
                    values: vec![Uuid::new_v4().to_string()],
                }),
                ..Default::default()
            }),
        ),
        (
            "id",
            pb::UpdateWebhookRequest {
                id: "x".into(),
                ..Default::default()
            },
        ),
    ];
    for (field, request) in cases {
        let err = admin.update_webhook(request.clone()).await.unwrap_err();
        assert_eq!(invalid_field(&err), field, "{request:?}: {err:?}");
    }
    let after = admin
        .get_webhook(pb::GetWebhookRequest {
            id: webhook.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        after,
        pb::Webhook {
            secret: String::new(),
            ..webhook.clone()
        }
    );

    // Ids, filters, pages and times of the other RPCs.
    let err = admin
        .get_webhook(pb::GetWebhookRequest { id: "1".into() })
        .await
        .unwrap_err();
    assert_eq!(invalid_field(&err), "id");
    let err = admin
        .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
            webhook_id: webhook.id.clone(),
            status: 42,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(invalid_field(&err), "status");
    let err = admin
        .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
            webhook_id: webhook.id.clone(),
            page_token: "w1.nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(invalid_field(&err), "page_token");
    let err = admin
        .list_webhooks(pb::ListWebhooksRequest {
            page_size: -1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(invalid_field(&err), "page_size");
    let err = admin
        .retry_webhook_delivery(pb::RetryWebhookDeliveryRequest::default())
        .await
        .unwrap_err();
    assert_eq!(invalid_field(&err), "delivery_id");
    for since in [
        None,
        Some(prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        }),
        Some(prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        }),
    ] {
        let err = admin
            .replay_webhook(pb::ReplayWebhookRequest {
                webhook_id: webhook.id.clone(),
                since,
            })
            .await
            .unwrap_err();
        assert_eq!(invalid_field(&err), "since");
    }
}

#[tokio::test]
async fn a_customer_has_at_most_20_webhooks_even_when_they_are_created_at_once() {
    let app = TestApp::spawn().await;
    let customer = Uuid::new_v4();
    let calls = (0..25).map(|i| {
        let mut client = app.client.clone();
        async move {
            client
                .create_webhook(create(customer, &format!("https://hooks.example.com/{i}")))
                .await
        }
    });
    let results = futures::future::join_all(calls).await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(created, 20);
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_status(refused, Code::FailedPrecondition, "TOO_MANY_WEBHOOKS");
    }
    assert_eq!(webhook_rows(&app).await, 20);
    // One more, alone, is refused too; another customer is not limited by it.
    let mut admin = app.client.clone();
    let err = admin
        .create_webhook(create(customer, "https://hooks.example.com/21"))
        .await
        .unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "TOO_MANY_WEBHOOKS");
    assert_eq!(webhook_rows(&app).await, 20, "the 21st created nothing");
    admin
        .create_webhook(create(Uuid::new_v4(), "https://hooks.example.com/other"))
        .await
        .unwrap();
    // A deleted one frees its place.
    let listed = admin
        .list_webhooks(pb::ListWebhooksRequest {
            customer_id: customer.to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.webhooks.len(), 20);
    admin
        .delete_webhook(pb::DeleteWebhookRequest {
            id: listed.webhooks[0].id.clone(),
        })
        .await
        .unwrap();
    admin
        .create_webhook(create(customer, "https://hooks.example.com/again"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_keyed_create_is_made_once_and_its_retry_gets_the_first_webhook_and_secret() {
    let app = TestApp::spawn().await;
    let mut admin = app.client.clone();
    let customer = Uuid::new_v4();
    let request = pb::CreateWebhookRequest {
        idempotency_key: "create-hook-1".into(),
        ..create(customer, "https://hooks.example.com/")
    };
    let first = admin
        .create_webhook(request.clone())
        .await
        .unwrap()
        .into_inner();
    let again = admin
        .create_webhook(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first, "the same webhook, its secret included");
    assert_eq!(webhook_rows(&app).await, 1);

    let err = admin
        .create_webhook(pb::CreateWebhookRequest {
            uri: "https://elsewhere.example.com/".into(),
            ..request.clone()
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(webhook_rows(&app).await, 1);

    // Keys are per customer.
    let other = admin
        .create_webhook(pb::CreateWebhookRequest {
            customer_id: Uuid::new_v4().to_string(),
            ..request.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(other.id, first.id);
    // Without a key, a retry makes another.
    let unkeyed = create(customer, "https://hooks.example.com/");
    let a = admin.create_webhook(unkeyed.clone()).await.unwrap();
    let b = admin.create_webhook(unkeyed).await.unwrap();
    assert_ne!(a.into_inner().id, b.into_inner().id);
}

#[tokio::test]
async fn deliveries_are_listed_newest_first_a_page_at_a_time_and_by_status() {
    let app = TestApp::spawn().await;
    let mut admin = app.client.clone();
    let customer = Uuid::new_v4();
    let account = account_of(&app, customer).await;
    let webhook = admin
        .create_webhook(create(customer, "https://hooks.example.com/"))
        .await
        .unwrap()
        .into_inner();
    let other = admin
        .create_webhook(create(customer, "https://other.example.com/"))
        .await
        .unwrap()
        .into_inner();
    let statuses = ["delivered", "failed", "delivered", "failed", "pending"];
    let mut ids = Vec::new();
    for (version, status) in (1..).zip(statuses) {
        ids.push(
            insert_delivery(
                &app,
                &webhook.id,
                (&account, version, "account_updated"),
                status,
                0.0,
            )
            .await,
        );
    }
    insert_delivery(
        &app,
        &other.id,
        (&account, 1, "account_updated"),
        "failed",
        0.0,
    )
    .await;

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = admin
            .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
                webhook_id: webhook.id.clone(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.deliveries.len() <= 2);
        seen.extend(page.deliveries);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    let listed: Vec<String> = seen.iter().map(|d| d.id.clone()).collect();
    let newest_first: Vec<String> = ids.iter().rev().map(ToString::to_string).collect();
    assert_eq!(listed, newest_first);
    let newest = &seen[0];
    assert_eq!(newest.webhook_id, webhook.id);
    assert_eq!(newest.account_id, account);
    assert_eq!(newest.account_version, 5);
    assert_eq!(newest.event_type, "account_updated");
    assert_eq!(newest.status(), pb::WebhookDeliveryStatus::Pending);
    assert!(newest.next_attempt_at.is_some() && newest.delivered_at.is_none());
    assert_eq!(newest.message_id, format!("msg_{}", ids[4]));
    let failed = &seen[1];
    assert_eq!(failed.status(), pb::WebhookDeliveryStatus::Failed);
    assert_eq!(failed.attempts, 8);
    assert_eq!(failed.last_status_code, Some(500));
    assert_eq!(failed.last_error, "HTTP 500: oops");
    assert!(seen[2].delivered_at.is_some());

    let only_failed = admin
        .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
            webhook_id: webhook.id.clone(),
            status: pb::WebhookDeliveryStatus::Failed.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let failed_ids: Vec<String> = only_failed
        .deliveries
        .iter()
        .map(|d| d.id.clone())
        .collect();
    assert_eq!(failed_ids, [ids[3].to_string(), ids[1].to_string()]);
    assert!(only_failed.next_page_token.is_empty());
}

#[tokio::test]
async fn a_failed_delivery_is_sent_again_and_nothing_else_is() {
    let app = TestApp::spawn().await;
    let mut admin = app.client.clone();
    let customer = Uuid::new_v4();
    let account = account_of(&app, customer).await;
    let webhook = admin
        .create_webhook(create(customer, "https://hooks.example.com/"))
        .await
        .unwrap()
        .into_inner();
    let failed = insert_delivery(
        &app,
        &webhook.id,
        (&account, 1, "account_updated"),
        "failed",
        60.0,
    )
    .await;
    let delivered = insert_delivery(
        &app,
        &webhook.id,
        (&account, 2, "account_updated"),
        "delivered",
        50.0,
    )
    .await;
    let pending = insert_delivery(
        &app,
        &webhook.id,
        (&account, 3, "account_updated"),
        "pending",
        40.0,
    )
    .await;
    let retry = |id: Uuid| pb::RetryWebhookDeliveryRequest {
        delivery_id: id.to_string(),
    };

    let again = admin
        .retry_webhook_delivery(retry(failed))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.id, failed.to_string());
    assert_eq!(again.status(), pb::WebhookDeliveryStatus::Pending);
    assert_eq!(again.attempts, 0, "the schedule starts over");
    let due = again.next_attempt_at.expect("due");
    assert!(seconds_from_now(&due).abs() <= 5, "due now: {due:?}");
    assert_eq!(
        again.message_id,
        format!("msg_{failed}"),
        "the same message"
    );
    let row = app
        .db
        .client()
        .await
        .query_one(
            "SELECT status, attempts, next_attempt_at <= now() + interval '5 seconds'
             FROM webhook_deliveries WHERE id = $1",
            &[&failed],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "pending");
    assert_eq!(row.get::<_, i32>(1), 0);
    assert!(row.get::<_, bool>(2));

    for (id, status) in [
        (failed, "pending"),
        (delivered, "delivered"),
        (pending, "pending"),
    ] {
        let err = admin.retry_webhook_delivery(retry(id)).await.unwrap_err();
        assert_status(&err, Code::FailedPrecondition, "DELIVERY_NOT_FAILED");
        let details = err.get_error_details();
        assert_eq!(details.error_info().unwrap().metadata["status"], status);
    }

    // A disabled webhook's failed delivery waits until it is enabled.
    let other = insert_delivery(
        &app,
        &webhook.id,
        (&account, 4, "balance_low"),
        "failed",
        30.0,
    )
    .await;
    admin
        .update_webhook(pb::UpdateWebhookRequest {
            id: webhook.id.clone(),
            enabled: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = admin
        .retry_webhook_delivery(retry(other))
        .await
        .unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "WEBHOOK_DISABLED");
    let status: String = app
        .db
        .client()
        .await
        .query_one(
            "SELECT status FROM webhook_deliveries WHERE id = $1",
            &[&other],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "failed", "refused: nothing changed");
}

/// A replay's copy: account, version, event type, whether its message id
/// is the first's, replay number, status, whether it is due within the
/// hour, attempts.
type ReplayCopy = (String, i64, String, bool, i32, String, bool, i32);

#[tokio::test]
async fn a_replay_queues_each_change_since_once_again_in_its_first_order() {
    let app = TestApp::spawn().await;
    let mut admin = app.client.clone();
    let customer = Uuid::new_v4();
    let a = account_of(&app, customer).await;
    let b = account_of(&app, customer).await;
    let webhook = admin
        .create_webhook(pb::CreateWebhookRequest {
            event_types: ALL_TYPES.map(String::from).to_vec(),
            ..create(customer, "https://hooks.example.com/")
        })
        .await
        .unwrap()
        .into_inner();
    // Before `since`: not replayed.
    insert_delivery(
        &app,
        &webhook.id,
        (&a, 1, "account_updated"),
        "delivered",
        7_200.0,
    )
    .await;
    // Since: a2, b1, a2's alert, a3 (failed), b2 (pending), and a copy of
    // a2 an earlier replay made.
    let changes = [
        ((a.as_str(), 2, "account_updated"), "delivered", 600.0),
        ((b.as_str(), 1, "account_updated"), "delivered", 500.0),
        ((a.as_str(), 2, "balance_low"), "delivered", 500.0),
        ((a.as_str(), 3, "account_updated"), "failed", 400.0),
        ((b.as_str(), 2, "account_updated"), "pending", 300.0),
    ];
    let mut firsts = Vec::new();
    for (change, status, age) in changes {
        firsts.push(insert_delivery(&app, &webhook.id, change, status, age).await);
    }
    let client = app.db.client().await;
    client
        .execute(
            "INSERT INTO webhook_deliveries (id, webhook_id, message_id, event_type, account_id,
                 account_version, status, created_at, replay)
             SELECT $1, webhook_id, message_id, event_type, account_id, account_version,
                    'delivered', now() - interval '200 seconds', 1
             FROM webhook_deliveries WHERE id = $2",
            &[&Uuid::now_v7(), &firsts[0]],
        )
        .await
        .unwrap();
    let since = timestamp_ago(3_600);

    let reply = admin
        .replay_webhook(pb::ReplayWebhookRequest {
            webhook_id: webhook.id.clone(),
            since: Some(since),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.replayed, 5);
    assert!(!reply.truncated && reply.next_since.is_none());

    let copies = client
        .query(
            "SELECT c.account_id::text, c.account_version, c.event_type, c.message_id = f.message_id,
                    c.replay, c.status,
                    -- due soon, or waiting its turn behind another
                    coalesce(c.next_attempt_at <= now() + interval '2 hours', true), c.attempts
             FROM webhook_deliveries c
             JOIN webhook_deliveries f ON f.webhook_id = c.webhook_id AND f.replay = 0
                  AND (f.account_id, f.account_version, f.event_type)
                    = (c.account_id, c.account_version, c.event_type)
             WHERE c.webhook_id = $1 AND c.created_at > now() - interval '60 seconds'
             ORDER BY c.seq",
            &[&webhook.id.parse::<Uuid>().unwrap()],
        )
        .await
        .unwrap();
    let got: Vec<ReplayCopy> = copies
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
            )
        })
        .collect();
    let expected = |account: &str, version, event: &str, replay| {
        (
            account.to_owned(),
            version,
            event.to_owned(),
            true,
            replay,
            "pending".to_owned(),
            true,
            0,
        )
    };
    assert_eq!(
        got,
        [
            expected(&a, 2, "account_updated", 2),
            expected(&b, 1, "account_updated", 1),
            expected(&a, 2, "balance_low", 1),
            expected(&a, 3, "account_updated", 1),
            expected(&b, 2, "account_updated", 1),
        ],
        "in the first order, the same message ids, each once, after earlier replays"
    );
    // b2 is still pending (due in an hour): its copy waits behind it, with
    // no time of its own until b2 is resolved.
    let behind: bool = client
        .query_one(
            "SELECT c.next_attempt_at IS NULL FROM webhook_deliveries c
             JOIN webhook_deliveries f ON f.id = $1
             WHERE c.webhook_id = f.webhook_id AND c.account_id = f.account_id
               AND c.account_version = f.account_version AND c.replay = 1",
            &[&firsts[4]],
        )
        .await
        .unwrap()
        .get(0);
    assert!(behind);

    // A cap cuts it, and says where the next call starts.
    let store_replay = app
        .store
        .webhooks()
        .replay_webhook(
            webhook.id.parse().unwrap(),
            chrono::Utc::now() - chrono::Duration::seconds(3_600),
            2,
        )
        .await
        .unwrap();
    assert_eq!(store_replay.replayed, 2);
    let next = store_replay.next_since.expect("truncated");
    let rest = app
        .store
        .webhooks()
        .replay_webhook(webhook.id.parse().unwrap(), next, 100)
        .await
        .unwrap();
    assert_eq!(rest.replayed, 3);
    assert!(rest.next_since.is_none());
    let rounds: i64 = client
        .query_one(
            "SELECT count(*) FROM webhook_deliveries WHERE webhook_id = $1 AND replay >= 1",
            &[&webhook.id.parse::<Uuid>().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rounds, 1 + 5 + 5);

    // A disabled webhook is not replayed.
    admin
        .update_webhook(pb::UpdateWebhookRequest {
            id: webhook.id.clone(),
            enabled: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = admin
        .replay_webhook(pb::ReplayWebhookRequest {
            webhook_id: webhook.id.clone(),
            since: Some(since),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "WEBHOOK_DISABLED");
    let err = admin
        .replay_webhook(pb::ReplayWebhookRequest {
            webhook_id: Uuid::now_v7().to_string(),
            since: Some(since),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, "WEBHOOK_NOT_FOUND");
}

/// Regression: two replays of one webhook at once both read the same next
/// replay number and the second insert hit the unique constraint, which
/// answered INTERNAL. Replays of one webhook now take turns: every one
/// succeeds and numbers its copies after the previous one's.
#[tokio::test]
async fn replays_of_one_webhook_at_once_each_succeed_with_their_own_replay_number() {
    let app = TestApp::spawn().await;
    let mut admin = app.client.clone();
    let customer = Uuid::new_v4();
    let account = account_of(&app, customer).await;
    let webhook = admin
        .create_webhook(create(customer, "https://hooks.example.com/"))
        .await
        .unwrap()
        .into_inner();
    for version in 1..=3 {
        insert_delivery(
            &app,
            &webhook.id,
            (&account, version, "account_updated"),
            "delivered",
            60.0,
        )
        .await;
    }
    let replays = (0..6).map(|_| {
        let mut client = app.client.clone();
        let webhook_id = webhook.id.clone();
        async move {
            client
                .replay_webhook(pb::ReplayWebhookRequest {
                    webhook_id,
                    since: Some(timestamp_ago(3_600)),
                })
                .await
        }
    });
    for reply in futures::future::join_all(replays).await {
        let reply = reply.expect("every replay succeeds").into_inner();
        assert_eq!(reply.replayed, 3);
    }
    // Each change has its first delivery and six copies, numbered 1 to 6.
    let numbers: Vec<(i64, Vec<i32>)> = app
        .db
        .client()
        .await
        .query(
            "SELECT account_version, array_agg(replay ORDER BY replay) FROM webhook_deliveries
             WHERE webhook_id = $1 GROUP BY account_version ORDER BY account_version",
            &[&webhook.id.parse::<Uuid>().unwrap()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let all: Vec<i32> = (0..=6).collect();
    assert_eq!(
        numbers,
        vec![(1, all.clone()), (2, all.clone()), (3, all)],
        "one copy per replay, each numbered after the last"
    );
}

/// Regression: a URI naming port 0 was registered (nothing listens there,
/// so every delivery would fail until the webhook was disabled). It is
/// INVALID_ARGUMENT naming `uri`, on a create and on an update, and
/// changes nothing; ports 1 to 65535 are fine, and past 65535 is refused
/// too.
#[tokio::test]
async fn a_uri_naming_port_0_is_invalid_argument_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let mut admin = app.client.clone();
    let customer = Uuid::new_v4();
    for uri in [
        "https://hooks.example.com:0/billing",
        "http://[::1]:0",
        "https://hooks.example.com:65536/",
        "https://hooks.example.com:99999/",
    ] {
        let err = admin
            .create_webhook(create(customer, uri))
            .await
            .unwrap_err();
        assert_eq!(invalid_field(&err), "uri", "{uri}: {err:?}");
    }
    assert_eq!(webhook_rows(&app).await, 0, "nothing was created");
    let webhook = admin
        .create_webhook(create(customer, "https://hooks.example.com:65535/"))
        .await
        .unwrap()
        .into_inner();
    let err = admin
        .update_webhook(pb::UpdateWebhookRequest {
            id: webhook.id.clone(),
            uri: Some("https://hooks.example.com:0/".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(invalid_field(&err), "uri");
    let after = admin
        .get_webhook(pb::GetWebhookRequest { id: webhook.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.uri, "https://hooks.example.com:65535/");
    assert_eq!(after.updated_at, webhook.updated_at);
}
