//! A projection batch's I/O: it reads the projected state of the accounts
//! the batch touches, folds (pure, [`fold`]) and writes what the fold
//! returns, one set-based statement per table.

use std::collections::BTreeMap;

use billing_domain::Account;
use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::BatchReport;
use super::fold::{AccountRow, LedgerRow, fold};
use crate::StoreError;
use crate::feed::{Cursor, StoredEvent};

/// The projected state of the accounts `events` touch (those not projected
/// yet absent).
pub(super) async fn read_state(
    client: &impl GenericClient,
    events: &[StoredEvent],
) -> Result<BTreeMap<Uuid, Account>, StoreError> {
    if events.is_empty() {
        return Ok(BTreeMap::new());
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.account_id).collect();
    let rows = client
        .query(
            "SELECT account_id, state FROM rm_accounts WHERE account_id = ANY($1)",
            &[&ids],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.get(0), serde_json::from_value(row.get(1))?)))
        .collect()
}

/// Folds `events` (read after `start`) into the read models within `tx`.
pub(super) async fn apply(
    tx: &impl GenericClient,
    start: Cursor,
    events: &[StoredEvent],
) -> Result<BatchReport, StoreError> {
    let state = read_state(tx, events).await?;
    let writes = fold(start, state, events)?;
    write(tx, &writes.accounts, &writes.ledger).await?;
    Ok(writes.report)
}

/// Writes the fold's rows.
pub(super) async fn write(
    tx: &impl GenericClient,
    accounts: &[AccountRow],
    ledger: &[LedgerRow<'_>],
) -> Result<(), StoreError> {
    write_accounts(tx, accounts).await?;
    write_ledger(tx, ledger).await
}

async fn write_accounts(
    tx: &impl GenericClient,
    accounts: &[AccountRow],
) -> Result<(), StoreError> {
    let mut ids = Vec::new();
    let mut customers = Vec::new();
    let mut versions = Vec::new();
    let mut states = Vec::new();
    let mut columns: [Vec<i64>; 6] = Default::default();
    let mut created = Vec::new();
    let mut updated = Vec::new();
    let mut promotional = Vec::new();
    for p in accounts {
        promotional.push(p.promotional);
        let a = &p.account;
        ids.push(a.id);
        customers.push(a.customer_id);
        versions.push(a.version);
        states.push(crate::document::Document::of(a)?);
        let b = &p.balances;
        for (column, value) in columns.iter_mut().zip([
            b.balance_credit.get(),
            b.balance_token.get(),
            b.reserved_credit.get(),
            b.reserved_token.get(),
            b.available_credit.get(),
            b.available_token.get(),
        ]) {
            column.push(value);
        }
        created.push(a.tm_create);
        updated.push(a.tm_update);
    }
    if ids.is_empty() {
        return Ok(());
    }
    let [bc, bt, rc, rt, ac, at] = &columns;
    tx.execute(
        "INSERT INTO rm_accounts (account_id, customer_id, version, state, balance_credit, balance_token,
                                  reserved_credit, reserved_token, available_credit, available_token,
                                  tm_create, tm_update, balance_promotional)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::bigint[], $4::json[], $5::bigint[], $6::bigint[],
                              $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[],
                              $11::timestamptz[], $12::timestamptz[], $13::bigint[])
         ON CONFLICT (account_id) DO UPDATE SET
             version = EXCLUDED.version, state = EXCLUDED.state,
             balance_credit = EXCLUDED.balance_credit, balance_token = EXCLUDED.balance_token,
             reserved_credit = EXCLUDED.reserved_credit, reserved_token = EXCLUDED.reserved_token,
             available_credit = EXCLUDED.available_credit, available_token = EXCLUDED.available_token,
             tm_update = EXCLUDED.tm_update, balance_promotional = EXCLUDED.balance_promotional",
        &[
            &ids,
            &customers,
            &versions,
            &states,
            bc,
            bt,
            rc,
            rt,
            ac,
            at,
            &created,
            &updated,
            &promotional,
        ],
    )
    .await?;
    Ok(())
}

async fn write_ledger(tx: &impl GenericClient, lines: &[LedgerRow<'_>]) -> Result<(), StoreError> {
    if lines.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = lines.iter().map(|r| r.event.event_id).collect();
    let accounts: Vec<Uuid> = lines.iter().map(|r| r.event.account_id).collect();
    let versions: Vec<i64> = lines.iter().map(|r| r.event.version).collect();
    let kinds: Vec<&str> = lines
        .iter()
        .map(|r| r.line.transaction_type.as_str())
        .collect();
    let references: Vec<&str> = lines
        .iter()
        .map(|r| r.line.reference_type.as_str())
        .collect();
    let reference_ids: Vec<&str> = lines.iter().map(|r| r.line.reference_id.as_str()).collect();
    let services: Vec<Option<&str>> = lines
        .iter()
        .map(|r| r.line.service_type.map(|s| s.as_str()))
        .collect();
    let units: Vec<Option<i64>> = lines.iter().map(|r| r.line.billable_units).collect();
    let rate_tokens: Vec<Option<i64>> = lines
        .iter()
        .map(|r| r.line.rate.map(|r| r.tokens_per_unit.get()))
        .collect();
    let rate_credit: Vec<Option<i64>> = lines
        .iter()
        .map(|r| r.line.rate.map(|r| r.credit_per_unit.get()))
        .collect();
    let amount_token: Vec<i64> = lines.iter().map(|r| r.line.amount_token.get()).collect();
    let amount_credit: Vec<i64> = lines.iter().map(|r| r.line.amount_credit.get()).collect();
    let amount_promotional: Vec<i64> = lines
        .iter()
        .map(|r| r.line.amount_promotional.get())
        .collect();
    let promotional_after: Vec<i64> = lines.iter().map(|r| r.promotional_after).collect();
    let token_after: Vec<i64> = lines
        .iter()
        .map(|r| r.event.balances.balance_token.get())
        .collect();
    let credit_after: Vec<i64> = lines
        .iter()
        .map(|r| r.event.balances.balance_credit.get())
        .collect();
    let principals: Vec<&str> = lines
        .iter()
        .map(|r| r.event.actor.principal.as_str())
        .collect();
    let roles: Vec<&str> = lines.iter().map(|r| r.event.actor.role.as_str()).collect();
    let times: Vec<DateTime<Utc>> = lines.iter().map(|r| r.event.occurred_at).collect();
    tx.execute(
        "INSERT INTO ledger_entries (id, account_id, version, transaction_type, reference_type, reference_id,
                                     service_type, billable_units, rate_token_per_unit, rate_credit_per_unit,
                                     amount_token, amount_credit, balance_token_after, balance_credit_after,
                                     actor_principal, actor_role, tm_create, amount_promotional,
                                     balance_promotional_after)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                              $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[],
                              $13::bigint[], $14::bigint[], $15::text[], $16::text[], $17::timestamptz[],
                              $18::bigint[], $19::bigint[])
         ON CONFLICT (id) DO NOTHING",
        &[
            &ids,
            &accounts,
            &versions,
            &kinds,
            &references,
            &reference_ids,
            &services,
            &units,
            &rate_tokens,
            &rate_credit,
            &amount_token,
            &amount_credit,
            &token_after,
            &credit_after,
            &principals,
            &roles,
            &times,
            &amount_promotional,
            &promotional_after,
        ],
    )
    .await?;
    Ok(())
}
