//! Migration 0012 drops 0010's `billing_write_batch` and leaves 0011's, which
//! the release before calls by position and this one by name: a database
//! migrated to 0011 (as the release before left it) is upgraded, and the
//! release before's call still resolves afterwards, so a rolling deploy
//! keeps its old pods working.

use billing_store::{MIGRATIONS, migrate};
use billing_testkit::TestDb;
use tokio_postgres::Client;

/// The release before's statement: 0011's function, its 59 arguments by
/// position.
fn positional(arguments: usize) -> String {
    let params: Vec<String> = (1..=arguments).map(|n| format!("${n}")).collect();
    format!("SELECT billing_write_batch({})", params.join(", "))
}

async fn overloads(client: &Client) -> Vec<i16> {
    client
        .query(
            "SELECT pronargs FROM pg_proc WHERE proname = 'billing_write_batch' ORDER BY pronargs",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn a_database_at_0011_loses_0010s_function_and_keeps_the_one_the_release_before_calls() {
    let db = TestDb::new().await;
    let mut client = db.client().await;

    // Back to an empty schema, then migrated as far as 0011, as the release
    // before left it.
    client
        .batch_execute(
            "DROP SCHEMA public CASCADE; CREATE SCHEMA public;
             CREATE TABLE schema_migrations (
                 version    integer     PRIMARY KEY,
                 name       text        NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .unwrap();
    let (through_0011, after): (Vec<&(i32, &str, &str)>, Vec<_>) =
        MIGRATIONS.iter().partition(|m| m.0 <= 11);
    assert_eq!(
        after.first().map(|m| m.1),
        Some("0012_drop_write_batch_0010")
    );
    for (version, name, sql) in through_0011 {
        client.batch_execute(sql).await.unwrap();
        client
            .execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await
            .unwrap();
    }
    assert_eq!(overloads(&client).await, vec![58, 59]);
    client.prepare(&positional(58)).await.unwrap();
    client.prepare(&positional(59)).await.unwrap();

    let applied = migrate(&mut client).await.unwrap();
    assert_eq!(applied, after.len());

    assert_eq!(
        overloads(&client).await,
        vec![59],
        "0010's function is gone"
    );
    client
        .prepare(&positional(59))
        .await
        .expect("the release before's call still resolves to 0011's function");
    let gone = client.prepare(&positional(58)).await.unwrap_err();
    assert_eq!(
        gone.code(),
        Some(&tokio_postgres::error::SqlState::UNDEFINED_FUNCTION),
        "{gone}"
    );
}
