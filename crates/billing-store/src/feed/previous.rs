//! Each event's predecessor's available credit (`None` for an account's
//! first event), for the alerts that fire when a balance crosses a threshold
//! (the publisher, the webhook dispatcher).
//!
//! Per account the feed is in version order, so most predecessors are
//! earlier in the same batch; only each account's first event in it needs
//! its predecessor read, and those are read in one statement (a lookup per
//! event cost the publisher's feed read twice the projector's).

use std::collections::HashMap;

use uuid::Uuid;

use crate::StoreError;
use crate::feed::StoredEvent;

/// The available credit before each of `events` (in feed order).
pub(crate) async fn available_before(
    client: &impl tokio_postgres::GenericClient,
    events: &[StoredEvent],
) -> Result<Vec<Option<i64>>, StoreError> {
    let (mut previous, wanted) = previous_in_batch(
        events
            .iter()
            .map(|e| (e.account_id, e.version, e.balances.available_credit.get())),
    );
    if wanted.is_empty() {
        return Ok(previous);
    }
    let (accounts, versions): (Vec<Uuid>, Vec<i64>) = wanted
        .iter()
        .map(|&i| (events[i].account_id, events[i].version - 1))
        .unzip();
    let found = client
        .query(
            "SELECT e.account_id, e.version, e.available_credit
             FROM unnest($1::uuid[], $2::bigint[]) AS w (account_id, version)
             JOIN events e USING (account_id, version)",
            &[&accounts, &versions],
        )
        .await?;
    let found: HashMap<(Uuid, i64), i64> = found
        .iter()
        .map(|row| ((row.get(0), row.get(1)), row.get(2)))
        .collect();
    for i in wanted {
        let key = (events[i].account_id, events[i].version - 1);
        previous[i] = found.get(&key).copied();
    }
    Ok(previous)
}

/// Each event's predecessor's available credit where the predecessor is
/// earlier in the batch, and the indices of the events (past version 1)
/// whose predecessor is not. Events are given as (account, version,
/// available credit), in feed order.
fn previous_in_batch(
    events: impl ExactSizeIterator<Item = (Uuid, i64, i64)>,
) -> (Vec<Option<i64>>, Vec<usize>) {
    let mut last: HashMap<Uuid, (i64, i64)> = HashMap::new();
    let mut previous = Vec::with_capacity(events.len());
    let mut wanted = Vec::new();
    for (i, (account, version, credit)) in events.enumerate() {
        match last.insert(account, (version, credit)) {
            Some((before, credit)) if before + 1 == version => previous.push(Some(credit)),
            _ => {
                if version > 1 {
                    wanted.push(i);
                }
                previous.push(None);
            }
        }
    }
    (previous, wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_accounts_first_event_in_a_batch_needs_its_predecessor_read() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let batch = [
            (a, 4, 100), // a's predecessor (3) is before the batch
            (b, 1, 7),   // b's first event: no predecessor at all
            (a, 5, 90),
            (b, 2, 6),
            (a, 7, 80), // not a's next version: read, never guessed
        ];
        let (previous, wanted) = previous_in_batch(batch.into_iter());
        assert_eq!(previous, [None, None, Some(100), Some(7), None]);
        assert_eq!(wanted, [0, 4]);
    }
}
