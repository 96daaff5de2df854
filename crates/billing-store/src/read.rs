//! Strongly consistent reads of the command side's state: an account now
//! and a customer's accounts (the [`Accounts`] handle's), and the accounts
//! the sweeper has work on ([`Maintenance`]'s).

use billing_domain::{Account, Hold};
use uuid::Uuid;

use crate::{Maintenance, Store, StoreError};

/// Reads of accounts from the command side, strongly consistent, or as they
/// stood at an instant ([`Store::accounts`]).
#[derive(Clone, Copy, Debug)]
pub struct Accounts<'a> {
    pub(crate) store: &'a Store,
}

impl Accounts<'_> {
    /// Account `id` as it stands now: its state and live holds, read in one
    /// statement (one snapshot), with due housekeeping applied as the next
    /// command would record it. Expired holds are already excluded.
    pub async fn account(self, id: Uuid) -> Result<Option<Account>, StoreError> {
        let client = self.store.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT a.state,
                        (SELECT coalesce(json_agg(r.hold), '[]'::json) FROM reservations r
                         WHERE r.account_id = a.account_id AND r.status = 'active')
                 FROM accounts a WHERE a.account_id = $1",
                &[&id],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut account: Account = serde_json::from_value(row.get(0))?;
        let holds: Vec<Hold> = serde_json::from_value(row.get(1))?;
        account.holds = holds
            .into_iter()
            .map(|h| (h.reservation_id.clone(), h))
            .collect();
        let now = self.store.now().max(account.tm_update);
        billing_domain::as_of(&account, now)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("account {id} does not fold: {e}")))
    }

    /// The accounts of one customer, oldest first.
    pub async fn accounts_of_customer(self, customer_id: Uuid) -> Result<Vec<Uuid>, StoreError> {
        let client = self.store.pool.get().await?;
        let rows = client
            .query(
                "SELECT account_id FROM accounts WHERE customer_id = $1 ORDER BY created_at, account_id",
                &[&customer_id],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

impl Maintenance<'_> {
    /// Accounts with something time has made due (an expired hold or a
    /// monthly token reset), for the sweeper.
    pub async fn accounts_due_for_housekeeping(self, limit: i64) -> Result<Vec<Uuid>, StoreError> {
        let client = self.store.pool.get().await?;
        let now = self.store.now();
        let rows = client
            .query(
                "(SELECT DISTINCT account_id FROM reservations
                  WHERE status = 'active' AND expires_at <= $1 LIMIT $2)
                 UNION
                 (SELECT account_id FROM accounts WHERE next_due <= $1 LIMIT $2)",
                &[&now, &limit],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
