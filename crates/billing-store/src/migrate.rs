//! Schema migrations: the SQL files of `migrations/`, embedded and applied in
//! order, each once, under an advisory lock.

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
];

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
