//! The command path: one transaction per command that locks the account,
//! checks the idempotency record, decides with the pure domain, and appends.

use std::collections::BTreeMap;
use std::time::Duration;

use billing_domain::{
    Account, Command, Context, CreateAccount, EVENT_SCHEMA_VERSION, Event, Executed, Hold, Outcome,
    Rejection, ReservationStatus, ResolvedReservation,
};
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use serde_json::Value;
use uuid::Uuid;

use crate::{Idempotency, RequestMeta, Store, StoreError};

/// A command's answer: the outcome to reply with, or why it was refused.
pub type Answer = Result<Outcome, Rejection>;

/// Attempts before a command that keeps losing races gives up.
const MAX_ATTEMPTS: u32 = 10;

impl Store {
    /// Creates account `id`. With an idempotency key, a retry returns the
    /// first outcome (and the first account).
    pub async fn create_account(
        &self,
        id: Uuid,
        meta: &RequestMeta,
        cmd: &CreateAccount,
    ) -> Result<Answer, StoreError> {
        self.retrying(|| self.try_create(id, meta, cmd)).await
    }

    /// Runs `cmd` on account `account_id`.
    pub async fn execute(
        &self,
        account_id: Uuid,
        meta: &RequestMeta,
        cmd: &Command,
    ) -> Result<Answer, StoreError> {
        self.retrying(|| self.try_execute(account_id, meta, cmd))
            .await
    }

    /// Runs a reservation command (extend, commit, release) on the account
    /// that holds the reservation.
    pub async fn execute_on_reservation(
        &self,
        meta: &RequestMeta,
        cmd: &Command,
    ) -> Result<Answer, StoreError> {
        let Some(reservation_id) = cmd.reservation_id() else {
            return Ok(Err(Rejection::ReservationNotFound));
        };
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT account_id FROM reservations WHERE reservation_id = $1",
                &[&reservation_id],
            )
            .await?;
        drop(client);
        match row {
            Some(row) => self.execute(row.get(0), meta, cmd).await,
            None => Ok(Err(Rejection::ReservationNotFound)),
        }
    }

    async fn retrying<F, Fut>(&self, mut attempt: F) -> Result<Answer, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Answer, StoreError>>,
    {
        for n in 1..=MAX_ATTEMPTS {
            match attempt().await {
                Err(e) if e.is_retryable() => {
                    tracing::debug!(attempt = n, error = %e, "command lost a race; retrying");
                    tokio::time::sleep(Duration::from_millis(u64::from(n * n))).await;
                }
                other => return other,
            }
        }
        Err(StoreError::Contention(MAX_ATTEMPTS as usize))
    }

    async fn try_create(
        &self,
        id: Uuid,
        meta: &RequestMeta,
        cmd: &CreateAccount,
    ) -> Result<Answer, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        if let Some(answer) = replay(&tx, meta.idempotency.as_ref()).await? {
            return Ok(answer);
        }
        let now = self.now();
        let executed = match billing_domain::create(id, cmd, now) {
            Ok(executed) => executed,
            Err(rejection) => return Ok(Err(rejection)),
        };
        let state = serde_json::to_value(&executed.account)?;
        // Pipelined: one round trip for the three writes.
        tokio::try_join!(
            async {
                let sql = tx
                    .prepare_cached(
                        "INSERT INTO accounts (account_id, customer_id, version, state, next_topup, created_at, updated_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $6)",
                    )
                    .await?;
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
                    &id,
                    &executed.account.customer_id,
                    &executed.account.version,
                    &state,
                    &executed.account.tm_next_topup,
                    &now,
                ];
                Ok::<_, StoreError>(tx.execute(&sql, &params).await?)
            },
            append_events(&tx, id, meta, now, &executed),
            save_idempotency(
                &tx,
                meta.idempotency.as_ref(),
                Some(id),
                &executed.outcome,
                now
            ),
        )?;
        tx.commit().await?;
        Ok(Ok(executed.outcome))
    }

    async fn try_execute(
        &self,
        account_id: Uuid,
        meta: &RequestMeta,
        cmd: &Command,
    ) -> Result<Answer, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // The account's lock comes first and alone. It is an advisory lock
        // because that assigns no transaction id: this transaction's xid is
        // then assigned at its first write, after the previous holder of the
        // lock committed, so per account the feed's (xid, position) order is
        // version order. (`FOR UPDATE` assigns the xid when it asks for the
        // row, before waiting, and waiters are not granted in xid order.)
        // The reads come after the lock, so their snapshots see what the
        // previous holder committed; they are pipelined among themselves.
        let lock = tx
            .prepare_cached("SELECT pg_advisory_xact_lock($1)")
            .await?;
        tx.execute(&lock, &[&account_lock_key(account_id)]).await?;
        let reservation_id = cmd.reservation_id();
        let (locked, replayed, holds, reservation) = tokio::try_join!(
            async {
                let sql = tx
                    .prepare_cached("SELECT state FROM accounts WHERE account_id = $1")
                    .await?;
                Ok::<_, StoreError>(tx.query_opt(&sql, &[&account_id]).await?)
            },
            replay(&tx, meta.idempotency.as_ref()),
            async {
                let sql = tx
                    .prepare_cached(
                        "SELECT hold FROM reservations WHERE account_id = $1 AND status = 'active'",
                    )
                    .await?;
                Ok::<_, StoreError>(tx.query(&sql, &[&account_id]).await?)
            },
            load_reservation(&tx, reservation_id),
        )?;
        let Some(locked) = locked else {
            return Ok(Err(Rejection::AccountNotFound));
        };
        if let Some(answer) = replayed {
            return Ok(answer);
        }
        let mut account: Account = serde_json::from_value(locked.get(0))?;
        for row in holds {
            let hold: Hold = serde_json::from_value(row.get(0))?;
            account.holds.insert(hold.reservation_id.clone(), hold);
        }
        // A live hold of this account is in `holds`; anything else under the
        // id (resolved, or another account's) is context for the decision.
        let resolved = reservation.filter(|r| {
            !(r.status == ReservationStatus::Active && r.hold.account_id == account_id)
        });
        // Time never runs backwards within one account's stream.
        let now = self.now().max(account.tm_update);
        let ctx = Context {
            now,
            rates: &self.rates,
            resolved: resolved.as_ref(),
        };
        let executed = match billing_domain::execute(&account, cmd, &ctx) {
            Ok(executed) => executed,
            Err(rejection) => return Ok(Err(rejection)),
        };
        // The writes are pipelined (one round trip while the lock is held);
        // their order does not matter, they all come after the reads.
        let idempotency = save_idempotency(
            &tx,
            meta.idempotency.as_ref(),
            Some(account_id),
            &executed.outcome,
            now,
        );
        if executed.events.is_empty() {
            idempotency.await?;
        } else {
            let state = serde_json::to_value(&executed.account)?;
            let reservations = reservation_rows(&account, &executed)?;
            let (updated, (), (), ()) = tokio::try_join!(
                async {
                    let sql = tx
                        .prepare_cached(
                            "UPDATE accounts
                             SET state = $2, version = $3, next_topup = $4, updated_at = $5
                             WHERE account_id = $1 AND version = $6",
                        )
                        .await?;
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
                        &account_id,
                        &state,
                        &executed.account.version,
                        &executed.account.tm_next_topup,
                        &now,
                        &account.version,
                    ];
                    Ok::<_, StoreError>(tx.execute(&sql, &params).await?)
                },
                append_events(&tx, account_id, meta, now, &executed),
                write_reservations(&tx, account_id, now, &reservations),
                idempotency,
            )?;
            if updated != 1 {
                return Err(StoreError::Conflict);
            }
        }
        tx.commit().await?;
        Ok(Ok(executed.outcome))
    }
}

/// The advisory lock key that serializes one account's commands.
fn account_lock_key(account_id: Uuid) -> i64 {
    let (high, low) = account_id.as_u64_pair();
    i64::from_ne_bytes((high ^ low).to_ne_bytes())
}

/// The stored answer for `idempotency`'s key: the first outcome when the
/// request is the same, a refusal when it differs, `None` when the key is new.
async fn replay(
    tx: &Transaction<'_>,
    idempotency: Option<&Idempotency>,
) -> Result<Option<Answer>, StoreError> {
    let Some(idempotency) = idempotency else {
        return Ok(None);
    };
    let sql = tx
        .prepare_cached("SELECT operation, request_hash, outcome FROM idempotency_keys WHERE idempotency_key = $1")
        .await?;
    let row = tx.query_opt(&sql, &[&idempotency.key]).await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let operation: &str = row.get(0);
    let request_hash: &[u8] = row.get(1);
    if operation != idempotency.operation || request_hash != idempotency.request_hash.as_slice() {
        return Ok(Some(Err(Rejection::IdempotencyKeyReused)));
    }
    Ok(Some(Ok(serde_json::from_value(row.get(2))?)))
}

async fn save_idempotency(
    tx: &Transaction<'_>,
    idempotency: Option<&Idempotency>,
    account_id: Option<Uuid>,
    outcome: &Outcome,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let Some(idempotency) = idempotency else {
        return Ok(());
    };
    // A concurrent first use of the key makes this a unique violation: the
    // command is retried and then replays that first outcome.
    let sql = tx
        .prepare_cached(
            "INSERT INTO idempotency_keys (idempotency_key, operation, request_hash, account_id, outcome, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await?;
    tx.execute(
        &sql,
        &[
            &idempotency.key,
            &idempotency.operation,
            &idempotency.request_hash,
            &account_id,
            &serde_json::to_value(outcome)?,
            &now,
        ],
    )
    .await?;
    Ok(())
}

/// The reservation stored under `id`, whatever its status.
async fn load_reservation(
    tx: &Transaction<'_>,
    id: Option<&str>,
) -> Result<Option<ResolvedReservation>, StoreError> {
    let Some(id) = id else {
        return Ok(None);
    };
    let sql = tx
        .prepare_cached(
            "SELECT hold, status, commit_outcome, coalesce(resolved_version, 0)
             FROM reservations WHERE reservation_id = $1",
        )
        .await?;
    let row = tx.query_opt(&sql, &[&id]).await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let status: &str = row.get(1);
    let commit: Option<Value> = row.get(2);
    Ok(Some(ResolvedReservation {
        hold: serde_json::from_value(row.get(0))?,
        status: status
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("reservation status `{status}`")))?,
        commit: commit.map(serde_json::from_value).transpose()?,
        account_version: row.get(3),
    }))
}

/// Appends the decided events in one statement; the unique (account_id,
/// version) key turns a concurrent append into a retried conflict.
async fn append_events(
    tx: &Transaction<'_>,
    account_id: Uuid,
    meta: &RequestMeta,
    now: DateTime<Utc>,
    executed: &Executed,
) -> Result<(), StoreError> {
    let events = &executed.events;
    let ids: Vec<Uuid> = events.iter().map(|_| Uuid::now_v7()).collect();
    let versions: Vec<i64> = events.iter().map(|r| r.version).collect();
    let types: Vec<&str> = events.iter().map(|r| r.event.event_type()).collect();
    let payloads = events
        .iter()
        .map(|r| serde_json::to_value(&r.event))
        .collect::<Result<Vec<Value>, _>>()?;
    let accounts_after = events
        .iter()
        .map(|r| serde_json::to_value(&r.account))
        .collect::<Result<Vec<Value>, _>>()?;
    let column = |f: fn(&billing_domain::Balances) -> i64| -> Vec<i64> {
        events.iter().map(|r| f(&r.balances)).collect()
    };
    let idempotency_key = meta.idempotency.as_ref().map(|i| i.key.as_str());
    let sql = tx
        .prepare_cached(
        "INSERT INTO events (event_id, account_id, version, event_type, schema_version, occurred_at,
                             actor_principal, actor_role, idempotency_key, trace_id, payload,
                             balance_credit, balance_token, reserved_credit, reserved_token,
                             available_credit, available_token, account_after)
         SELECT e.event_id, $2, e.version, e.event_type, $3, $4, $5, $6, $7, $8, e.payload,
                e.bc, e.bt, e.rc, e.rt, e.ac, e.at, e.account_after
         FROM UNNEST($1::uuid[], $9::bigint[], $10::text[], $11::jsonb[], $12::bigint[],
                     $13::bigint[], $14::bigint[], $15::bigint[], $16::bigint[], $17::bigint[],
                     $18::jsonb[])
              AS e(event_id, version, event_type, payload, bc, bt, rc, rt, ac, at, account_after)
         ORDER BY e.version",
        )
        .await?;
    tx.execute(
        &sql,
        &[
            &ids,
            &account_id,
            &EVENT_SCHEMA_VERSION,
            &now,
            &meta.actor.principal,
            &meta.actor.role,
            &idempotency_key,
            &meta.trace_id,
            &versions,
            &types,
            &payloads,
            &column(|b| b.balance_credit.get()),
            &column(|b| b.balance_token.get()),
            &column(|b| b.reserved_credit.get()),
            &column(|b| b.reserved_token.get()),
            &column(|b| b.available_credit.get()),
            &column(|b| b.available_token.get()),
            &accounts_after,
        ],
    )
    .await?;
    Ok(())
}

/// A reservation row as a command leaves it.
#[derive(Debug)]
struct ReservationRow {
    /// True for a new reservation: inserted, so that an id another account
    /// already uses is a unique violation rather than a silent overwrite.
    new: bool,
    status: ReservationStatus,
    hold: Hold,
    commit_outcome: Option<Value>,
    resolved_version: Option<i64>,
}

/// The reservation rows `executed` touches, last event winning.
fn reservation_rows(
    before: &Account,
    executed: &Executed,
) -> Result<Vec<ReservationRow>, StoreError> {
    let mut rows: BTreeMap<&str, ReservationRow> = BTreeMap::new();
    for recorded in &executed.events {
        let Some(id) = recorded.event.reservation_id() else {
            continue;
        };
        let status = match recorded.event {
            Event::Committed(_) => ReservationStatus::Committed,
            Event::Released(_) => ReservationStatus::Released,
            Event::ReservationExpired(_) => ReservationStatus::Expired,
            _ => ReservationStatus::Active,
        };
        let Some(hold) = executed
            .account
            .holds
            .get(id)
            .or_else(|| before.holds.get(id))
        else {
            return Err(StoreError::Corrupt(format!(
                "no hold for reservation `{id}`"
            )));
        };
        let commit_outcome = match &executed.outcome {
            Outcome::Commit(c)
                if status == ReservationStatus::Committed && c.reservation_id == id =>
            {
                Some(serde_json::to_value(c)?)
            }
            _ => None,
        };
        let new = matches!(recorded.event, Event::Reserved(_));
        rows.insert(
            id,
            ReservationRow {
                new,
                status,
                hold: hold.clone(),
                commit_outcome,
                resolved_version: (status != ReservationStatus::Active).then_some(recorded.version),
            },
        );
    }
    Ok(rows.into_values().collect())
}

async fn write_reservations(
    tx: &Transaction<'_>,
    account_id: Uuid,
    now: DateTime<Utc>,
    rows: &[ReservationRow],
) -> Result<(), StoreError> {
    let writes = rows.iter().map(|row| async move {
        let hold = serde_json::to_value(&row.hold)?;
        let status = row.status.as_str();
        let sql = if row.new {
            "INSERT INTO reservations (reservation_id, account_id, status, hold, expires_at,
                                       commit_outcome, resolved_version, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        } else {
            "UPDATE reservations SET status = $3, hold = $4, expires_at = $5, commit_outcome = $6,
                                     resolved_version = $7, updated_at = $8
             WHERE reservation_id = $1 AND account_id = $2"
        };
        let sql = tx.prepare_cached(sql).await?;
        let n = tx
            .execute(
                &sql,
                &[
                    &row.hold.reservation_id,
                    &account_id,
                    &status,
                    &hold,
                    &row.hold.expires_at,
                    &row.commit_outcome,
                    &row.resolved_version,
                    &now,
                ],
            )
            .await?;
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict)
        }
    });
    futures::future::try_join_all(writes).await?;
    Ok(())
}
