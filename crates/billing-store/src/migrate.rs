//! Schema migrations: the SQL files of `migrations/`, embedded and applied in
//! order, each once, under an advisory lock.
//!
//! A migration runs in a transaction of its own, with its record in
//! `schema_migrations`, unless its first line is [`NO_TRANSACTION`]: then
//! its statements (each ending with `;` at the end of a line) run one at a
//! time outside any transaction, which `CREATE INDEX CONCURRENTLY` needs on
//! a populated table, and its record is written after the last. Such a
//! migration must be safe to run again from the start (`IF NOT EXISTS`):
//! one interrupted midway runs again whole at the next start, after the
//! invalid indexes an interrupted concurrent build leaves are dropped.

use tokio_postgres::Client;

use crate::StoreError;

/// Every migration, in order: (version, name, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "0001_event_store",
        include_str!("../../../migrations/0001_event_store.sql"),
    ),
    (
        2,
        "0002_read_models",
        include_str!("../../../migrations/0002_read_models.sql"),
    ),
    (
        3,
        "0003_event_account_after",
        include_str!("../../../migrations/0003_event_account_after.sql"),
    ),
    (
        4,
        "0004_group_commit",
        include_str!("../../../migrations/0004_group_commit.sql"),
    ),
    (
        5,
        "0005_json_documents",
        include_str!("../../../migrations/0005_json_documents.sql"),
    ),
    (
        6,
        "0006_reservations_without_fk",
        include_str!("../../../migrations/0006_reservations_without_fk.sql"),
    ),
    (
        7,
        "0007_event_span_id",
        include_str!("../../../migrations/0007_event_span_id.sql"),
    ),
    (
        8,
        "0008_event_chain",
        include_str!("../../../migrations/0008_event_chain.sql"),
    ),
    (
        9,
        "0009_promotional_credit",
        include_str!("../../../migrations/0009_promotional_credit.sql"),
    ),
    (
        10,
        "0010_write_batch",
        include_str!("../../../migrations/0010_write_batch.sql"),
    ),
    (
        11,
        "0011_write_batch_fenced_updates",
        include_str!("../../../migrations/0011_write_batch_fenced_updates.sql"),
    ),
    (
        12,
        "0012_drop_write_batch_0010",
        include_str!("../../../migrations/0012_drop_write_batch_0010.sql"),
    ),
    (
        13,
        "0013_webhooks",
        include_str!("../../../migrations/0013_webhooks.sql"),
    ),
    (
        14,
        "0014_retention",
        include_str!("../../../migrations/0014_retention.sql"),
    ),
    (
        15,
        "0015_feed_slices",
        include_str!("../../../migrations/0015_feed_slices.sql"),
    ),
    (
        16,
        "0016_drop_event_id_index",
        include_str!("../../../migrations/0016_drop_event_id_index.sql"),
    ),
];

/// The first line of a migration that runs outside a transaction.
pub const NO_TRANSACTION: &str = "-- billing: no transaction";

/// Serializes concurrent migrators (several replicas starting at once).
const MIGRATION_LOCK: i64 = 0x6269_6c6c_696e_6701;

/// Applies the migrations not yet applied. Returns how many it applied.
pub async fn migrate(client: &mut Client) -> Result<usize, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    integer     PRIMARY KEY,
                 name       text        NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = apply_pending(client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    result
}

async fn apply_pending(client: &mut Client) -> Result<usize, StoreError> {
    let mut applied = 0;
    for (version, name, sql) in MIGRATIONS {
        if sql.starts_with(NO_TRANSACTION) {
            if apply_outside_transaction(client, *version, name, sql).await? {
                applied += 1;
            }
            continue;
        }
        let tx = client.transaction().await?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await?
            .is_some();
        if done {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, name, "applied migration");
        applied += 1;
    }
    Ok(applied)
}

/// Applies one migration marked [`NO_TRANSACTION`], unless it is recorded
/// as applied: a statement at a time, then its record. Whether it applied.
async fn apply_outside_transaction(
    client: &Client,
    version: i32,
    name: &str,
    sql: &str,
) -> Result<bool, StoreError> {
    let done = client
        .query_opt(
            "SELECT 1 FROM schema_migrations WHERE version = $1",
            &[&version],
        )
        .await?
        .is_some();
    if done {
        return Ok(false);
    }
    // A concurrent build that was interrupted (this migration, cut short)
    // leaves its index invalid: present, so `IF NOT EXISTS` would skip it,
    // yet never used. Only such builds leave invalid indexes, and only one
    // migrator runs at a time (the advisory lock), so these are ours.
    let invalid = client
        .query(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
             FROM pg_index i
             JOIN pg_class c ON c.oid = i.indexrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE NOT i.indisvalid AND n.nspname = current_schema()",
            &[],
        )
        .await?;
    for row in invalid {
        let index: String = row.get(0);
        tracing::warn!(%index, "dropping an index an interrupted build left invalid");
        client
            .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {index}"))
            .await?;
    }
    for statement in statements(sql) {
        client.batch_execute(statement).await?;
    }
    client
        .execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await?;
    tracing::info!(version, name, "applied migration (outside a transaction)");
    Ok(true)
}

/// The statements of a migration that runs outside a transaction: each
/// ends with `;` at the end of a line (comments before it belong to it).
/// What follows the last holds no statement.
fn statements(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (at, _) in sql.match_indices(";\n") {
        out.push(sql[start..=at].trim());
        start = at + 2;
    }
    let rest = sql[start..].trim();
    if rest.lines().any(|l| {
        let l = l.trim();
        !l.is_empty() && !l.starts_with("--")
    }) {
        out.push(rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_migration_outside_a_transaction_runs_each_statement_alone() {
        let sql = "-- billing: no transaction\n-- why\nCREATE INDEX CONCURRENTLY a\n    ON t (x);\n\n-- b\nCREATE INDEX CONCURRENTLY b ON t (y);\n-- trailing\n";
        let got = statements(sql);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].ends_with("ON t (x);"));
        assert!(got[1].starts_with("-- b\nCREATE INDEX CONCURRENTLY b"));
    }

    #[test]
    fn every_migration_outside_a_transaction_has_one_concurrent_statement_per_run() {
        for (_, name, sql) in MIGRATIONS {
            if sql.starts_with(NO_TRANSACTION) {
                for statement in statements(sql) {
                    assert!(
                        statement.contains("IF NOT EXISTS") || statement.contains("IF EXISTS"),
                        "{name}: a statement that cannot run twice: {statement}"
                    );
                }
            }
        }
    }
}
