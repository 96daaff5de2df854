//! Shared set-up for the store's tests against PostgreSQL.

#![allow(dead_code)]

use billing_domain::*;
use tokio_postgres::GenericClient;
use uuid::Uuid;

/// An admin's request without an idempotency key or a trace.
pub fn meta() -> billing_store::RequestMeta {
    billing_store::RequestMeta {
        actor: billing_store::Actor {
            principal: "tester".into(),
            role: "project_super_admin".into(),
        },
        idempotency: None,
        trace_id: None,
        span_id: None,
    }
}

/// A prepaid account on `plan` with a zero hard limit.
pub fn new_account(plan: PlanType) -> CreateAccount {
    CreateAccount {
        customer_id: Uuid::new_v4(),
        name: "Primary Account".into(),
        detail: String::new(),
        plan_type: plan,
        currency: Currency::usd(),
        credit_limit: Micros::ZERO,
        credit_limit_type: CreditLimitType::Hard,
        is_postpaid: false,
        low_balance_threshold: Micros::ZERO,
        payment_type: String::new(),
        payment_method: String::new(),
    }
}

/// A payment of `credit` micros.
pub fn add(credit: i64) -> Command {
    Command::AddBalance(BalanceChange {
        amount_credit: Micros(credit),
        amount_token: Tokens(0),
        reference_type: ReferenceType::Payment,
        reference_id: String::new(),
        note: String::new(),
        bucket: Default::default(),
        expires_at: None,
    })
}

/// Appends an event by hand, bypassing the command path: a slow writer (in
/// a transaction left open), a version that clashes, or a gap. Its balance
/// and available credit are `credit`, everything else zero.
pub async fn insert_raw_event(
    client: &impl GenericClient,
    account_id: Uuid,
    version: i64,
    event_type: &str,
    payload: &str,
    credit: i64,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO events (event_id, account_id, version, event_type, schema_version, occurred_at,
                                 actor_principal, actor_role, payload, balance_credit, balance_token,
                                 reserved_credit, reserved_token, available_credit, available_token)
             VALUES ($1, $2, $3, $4, 1, now(), 'test', 'test', $5::text::json, $6, 0, 0, 0, $6, 0)",
            &[&Uuid::new_v4(), &account_id, &version, &event_type, &payload, &credit],
        )
        .await
}

/// How many rows `table` holds.
pub async fn rows(db: &billing_testkit::TestDb, table: &str) -> i64 {
    db.client()
        .await
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}
