//! A health probe of the database, on a connection of its own: a pool busy
//! with commands must not make the service look down, and the probe must not
//! queue behind them for a connection.

use std::time::Duration;

use tokio_postgres::Client;

use crate::{Connector, StoreError};

/// Asks the database `SELECT 1`, reconnecting after any failure.
pub struct DatabaseProbe {
    connector: Connector,
    /// The probe's connection, opened on first use and after a failure.
    client: Option<Client>,
}

impl std::fmt::Debug for DatabaseProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseProbe")
            .field("connected", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl DatabaseProbe {
    pub(crate) fn new(connector: Connector) -> Self {
        Self {
            connector,
            client: None,
        }
    }

    /// Whether the database answers within `timeout`.
    pub async fn check(&mut self, timeout: Duration) -> Result<(), StoreError> {
        let result = match tokio::time::timeout(timeout, self.ask()).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "the database did not answer within {timeout:?}"
            ))),
        };
        if result.is_err() {
            // Whatever state the connection is in, the next check starts afresh.
            self.client = None;
        }
        result
    }

    async fn ask(&mut self) -> Result<(), StoreError> {
        let client = match self.client.take() {
            Some(client) if !client.is_closed() => client,
            _ => {
                let (client, connection) = self.connector.connect().await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                client
            }
        };
        client.simple_query("SELECT 1").await?;
        self.client = Some(client);
        Ok(())
    }
}
