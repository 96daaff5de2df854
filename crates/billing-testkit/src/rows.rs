//! Rows read straight from the tables, for tests' assertions: reads the
//! store itself has no call for. Each panics, saying what, when the read
//! fails.

use billing_domain::{Account, Balances, Hold, Micros, ReservationStatus, ReservationView, Tokens};
use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;
use uuid::Uuid;

/// Reservation `id` as stored, its status as recorded, but a live hold past
/// its expiry at `now` reads as expired. `None` when there is no such row.
pub async fn reservation(
    client: &impl GenericClient,
    id: &str,
    now: DateTime<Utc>,
) -> Option<ReservationView> {
    let row = client
        .query_opt(
            "SELECT r.hold, r.status, coalesce(r.resolved_version, a.version)
             FROM reservations r JOIN accounts a USING (account_id)
             WHERE r.reservation_id = $1",
            &[&id],
        )
        .await
        .unwrap_or_else(|e| panic!("read reservation {id}: {e}"))?;
    let hold: Hold = serde_json::from_value(row.get(0))
        .unwrap_or_else(|e| panic!("reservation {id}'s hold: {e}"));
    let status: &str = row.get(1);
    let mut status: ReservationStatus = status
        .parse()
        .unwrap_or_else(|_| panic!("reservation {id}'s status `{status}`"));
    if status == ReservationStatus::Active && !hold.is_live(now) {
        status = ReservationStatus::Expired;
    }
    Some(hold.view(status, row.get(2)))
}

/// Account `account_id` in the read model (`rm_accounts`): its folded state
/// (without holds) and the balances of its last projected event. `None`
/// when it is not projected.
pub async fn read_model_account(
    client: &impl GenericClient,
    account_id: Uuid,
) -> Option<(Account, Balances)> {
    let row = client
        .query_opt(
            "SELECT state, balance_credit, balance_token, reserved_credit, reserved_token,
                    available_credit, available_token
             FROM rm_accounts WHERE account_id = $1",
            &[&account_id],
        )
        .await
        .unwrap_or_else(|e| panic!("read account {account_id} of the read model: {e}"))?;
    let account: Account = serde_json::from_value(row.get(0))
        .unwrap_or_else(|e| panic!("account {account_id}'s projected state: {e}"));
    let balances = Balances {
        balance_credit: Micros(row.get(1)),
        balance_token: Tokens(row.get(2)),
        reserved_credit: Micros(row.get(3)),
        reserved_token: Tokens(row.get(4)),
        available_credit: Micros(row.get(5)),
        available_token: Tokens(row.get(6)),
    };
    Some((account, balances))
}
