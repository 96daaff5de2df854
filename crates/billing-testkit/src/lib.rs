//! Test support: [`TestDb`] gives each test a fresh PostgreSQL database,
//! cloned from a template that is migrated once per schema; [`rows`] reads
//! rows straight from its tables for assertions (test SQL the store has no
//! call for); [`pki`] makes certificates for TLS tests.
//!
//! The server to create databases on comes from `BILLING_TEST_DATABASE_URL`
//! (a URL to its maintenance database). `make test` starts a throwaway
//! PostgreSQL and sets it; without it, tests that need a database fail with
//! a message saying so rather than silently passing.

#![forbid(unsafe_code)]

pub mod pki;
pub mod rows;

use billing_store::Connector;
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

/// The environment variable naming the test server's maintenance database.
pub const DATABASE_URL_VAR: &str = "BILLING_TEST_DATABASE_URL";

/// Serializes template creation across concurrently running test binaries.
const TEMPLATE_LOCK: i64 = 0x6269_6c6c_7465_6d70;

/// A fresh database, migrated, dropped (with `FORCE`) when this is dropped.
#[derive(Debug)]
pub struct TestDb {
    /// A URL to the fresh database.
    pub url: String,
    /// The database's name.
    pub name: String,
    /// The maintenance database's URL, to drop the fresh one afterwards.
    admin_url: String,
}

/// The maintenance URL; panics with instructions when it is not set.
pub fn admin_url() -> String {
    std::env::var(DATABASE_URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{DATABASE_URL_VAR} is not set: run the tests with `make test`, which starts a \
             PostgreSQL server for them, or point it at a server's maintenance database"
        )
    })
}

/// `url` with its database name replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let base = match base.rfind('/') {
        Some(slash) if base[..slash].contains("//") && slash > base.find("//").unwrap_or(0) + 1 => {
            &base[..slash]
        }
        _ => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// A connection to `url`, with the TLS its parameters ask for (the store's
/// own [`Connector`]).
async fn connect(url: &str) -> Client {
    let (client, connection) = async { Connector::new(url)?.connect().await.map_err(Into::into) }
        .await
        .unwrap_or_else(|e: billing_store::StoreError| {
            panic!(
                "cannot connect to the test PostgreSQL at {}: {e}",
                billing_store::connect::redact(url)
            )
        });
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The template's name: it changes whenever a migration changes.
fn template_name() -> String {
    let mut hash = Sha256::new();
    for (version, name, sql) in billing_store::MIGRATIONS {
        hash.update(version.to_be_bytes());
        hash.update(name.as_bytes());
        hash.update(sql.as_bytes());
    }
    let digest = hash.finalize();
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("billing_template_{hex}")
}

/// Creates and migrates the template once; later calls find it.
async fn ensure_template(admin: &Client, admin_url: &str) -> String {
    let template = template_name();
    admin
        .execute("SELECT pg_advisory_lock($1)", &[&TEMPLATE_LOCK])
        .await
        .expect("lock the template");
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&template])
        .await
        .expect("look up the template")
        .is_some();
    if !exists {
        admin
            .batch_execute(&format!("CREATE DATABASE {template}"))
            .await
            .expect("create the template database");
        let mut client = connect(&with_database(admin_url, &template)).await;
        billing_store::migrate(&mut client)
            .await
            .expect("migrate the template");
        drop(client);
        // The template must have no connections left to be cloned.
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&template],
            )
            .await
            .expect("close template connections");
    }
    admin
        .execute("SELECT pg_advisory_unlock($1)", &[&TEMPLATE_LOCK])
        .await
        .expect("unlock the template");
    template
}

impl TestDb {
    /// A fresh database cloned from the migrated template.
    pub async fn new() -> Self {
        let admin_url = admin_url();
        let admin = connect(&admin_url).await;
        let template = ensure_template(&admin, &admin_url).await;
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut attempts = 0;
        loop {
            // Cloning fails while another session briefly touches the
            // template (another binary creating it); try again.
            match admin
                .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
                .await
            {
                Ok(()) => break,
                Err(e) if attempts < 50 => {
                    attempts += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("create test database {name}: {e}"),
            }
        }
        Self {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        }
    }

    /// A connection to the fresh database, for tests that poke at SQL.
    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime; drop the database from a
        // thread of its own with a small runtime of its own.
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let Ok(connector) = Connector::new(&admin_url) else {
                    return;
                };
                if let Ok((client, connection)) = connector.connect().await {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        });
        let _ = dropper.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_only_the_database_name() {
        assert_eq!(
            with_database("postgres://u@127.0.0.1:5433/postgres", "x"),
            "postgres://u@127.0.0.1:5433/x"
        );
        assert_eq!(
            with_database("postgres://u@h:1/postgres?host=/tmp", "x"),
            "postgres://u@h:1/x?host=/tmp"
        );
        assert_eq!(with_database("postgres://u@h:1", "x"), "postgres://u@h:1/x");
    }
}
