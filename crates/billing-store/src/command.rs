//! The command path's entry points. Each command is queued on its account's
//! group-commit writer (`writer.rs`), decided in order with the pure domain
//! within a batch (`batch.rs`), and answered once its batch has committed.

use billing_domain::{Command, CreateAccount, Rejection};
use uuid::Uuid;

pub use crate::batch::Answer;
use crate::batch::Work;
use crate::{RequestMeta, Store, StoreError};

/// The command path: commands queued on their account's group-commit writer
/// and answered once their batch has committed ([`Store::commands`]).
#[derive(Clone, Copy, Debug)]
pub struct Commands<'a> {
    pub(crate) store: &'a Store,
}

impl Commands<'_> {
    /// Creates account `id`. With an idempotency key, a retry returns the
    /// first outcome (and the first account).
    pub async fn create_account(
        self,
        id: Uuid,
        meta: &RequestMeta,
        cmd: &CreateAccount,
    ) -> Result<Answer, StoreError> {
        let work = Work::Create {
            id,
            cmd: cmd.clone(),
        };
        self.store.writers().submit(work, meta.clone()).await
    }

    /// Runs `cmd` on account `account_id`.
    pub async fn execute(
        self,
        account_id: Uuid,
        meta: &RequestMeta,
        cmd: &Command,
    ) -> Result<Answer, StoreError> {
        let work = Work::Execute {
            account_id,
            cmd: cmd.clone(),
        };
        self.store.writers().submit(work, meta.clone()).await
    }

    /// Runs a reservation command (extend, commit, release) on the account
    /// that holds the reservation. The account of a reservation made through
    /// this process is remembered; only others cost a lookup.
    pub async fn execute_on_reservation(
        self,
        meta: &RequestMeta,
        cmd: &Command,
    ) -> Result<Answer, StoreError> {
        let Some(reservation_id) = cmd.reservation_id() else {
            return Ok(Err(Rejection::ReservationNotFound));
        };
        let account_id = match self.store.routes.get(reservation_id) {
            Some(account_id) => account_id,
            None => {
                let client = self.store.pool.get().await?;
                let row = client
                    .query_opt(
                        "SELECT account_id FROM reservations WHERE reservation_id = $1",
                        &[&reservation_id],
                    )
                    .await?;
                let Some(row) = row else {
                    return Ok(Err(Rejection::ReservationNotFound));
                };
                let account_id: Uuid = row.try_get(0)?;
                self.store
                    .routes
                    .insert(reservation_id.to_owned(), account_id);
                account_id
            }
        };
        self.execute(account_id, meta, cmd).await
    }
}
