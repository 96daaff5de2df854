//! The projection's fold, pure: the projected state of the accounts a batch
//! touches and the batch's events in; the writes out (the `rm_accounts` rows
//! to upsert, the ledger entries to insert) and how far the batch got. No
//! I/O: tested without PostgreSQL, as the command side's `batch::decide` is.
//!
//! Each event is folded into its account with the domain's own `evolve`
//! (`Account::apply`). An event at or below an account's projected version
//! was applied already and is skipped (a batch given again changes
//! nothing); one beyond the next version is a gap and stops the batch there
//! rather than being applied out of order.

use std::collections::BTreeMap;

use billing_domain::{Account, Balances, Event, LedgerLine, ledger_line};
use uuid::Uuid;

use super::{BatchReport, Gap};
use crate::StoreError;
use crate::feed::{Cursor, StoredEvent};

/// An account row of the read model, as a batch leaves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AccountRow {
    /// The folded account (its holds included; the row's `state`).
    pub account: Account,
    /// The balances recorded on its last event.
    pub balances: Balances,
    /// Promotional credit that counted when its last event happened.
    pub promotional: i64,
}

/// A ledger entry to insert: one per event that moves money.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LedgerRow<'e> {
    pub event: &'e StoredEvent,
    pub line: LedgerLine,
    /// Promotional credit after it, as recorded.
    pub promotional_after: i64,
}

/// What a batch writes.
#[derive(Debug, Default)]
pub(crate) struct Writes<'e> {
    /// The touched accounts' rows, by account id.
    pub accounts: Vec<AccountRow>,
    /// In feed order.
    pub ledger: Vec<LedgerRow<'e>>,
    pub report: BatchReport,
}

/// Folds `events` (read after `start`, in feed order) into `accounts`, the
/// projected state of the accounts they touch (those not projected yet
/// absent).
pub(crate) fn fold(
    start: Cursor,
    mut accounts: BTreeMap<Uuid, Account>,
    events: &[StoredEvent],
) -> Result<Writes<'_>, StoreError> {
    let mut writes = Writes {
        report: BatchReport {
            cursor: start,
            ..BatchReport::default()
        },
        ..Writes::default()
    };
    let mut touched: BTreeMap<Uuid, (Balances, i64)> = BTreeMap::new();
    for e in events {
        let current = accounts.get(&e.account_id).map_or(0, |a| a.version);
        if e.version <= current {
            writes.report.skipped += 1;
            writes.report.cursor = e.cursor;
            continue;
        }
        if e.version != current + 1 {
            writes.report.gap = Some(Gap {
                account_id: e.account_id,
                expected: current + 1,
                found: e.version,
            });
            break;
        }
        let account = match (&e.event, accounts.remove(&e.account_id)) {
            (Event::AccountCreated(created), None) => {
                Account::created(e.account_id, created, e.occurred_at)
            }
            (event, Some(mut account)) => {
                account
                    .apply(event, e.occurred_at)
                    .map_err(|_| StoreError::Corrupt(format!("event {} overflows", e.event_id)))?;
                account
            }
            (_, None) => {
                return Err(StoreError::Corrupt(format!(
                    "account {} starts with {}",
                    e.account_id, e.event_type
                )));
            }
        };
        if account.version != e.version {
            return Err(StoreError::Corrupt(format!(
                "account {} folded to version {} at event version {}",
                e.account_id, account.version, e.version
            )));
        }
        let overflow = || StoreError::Corrupt(format!("account {} overflows", e.account_id));
        if let Some(line) = ledger_line(&e.event) {
            let promotional_after = account.promotional_recorded().map_err(|_| overflow())?;
            writes.ledger.push(LedgerRow {
                event: e,
                line,
                promotional_after: promotional_after.get(),
            });
        }
        let promotional = account.promotional(e.occurred_at).map_err(|_| overflow())?;
        touched.insert(e.account_id, (e.balances, promotional.get()));
        accounts.insert(e.account_id, account);
        writes.report.applied += 1;
        writes.report.cursor = e.cursor;
    }
    writes.accounts = touched
        .into_iter()
        .filter_map(|(id, (balances, promotional))| {
            let account = accounts.remove(&id)?;
            Some(AccountRow {
                account,
                balances,
                promotional,
            })
        })
        .collect();
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use billing_domain::*;
    use chrono::{DateTime, Duration, TimeZone, Utc};
    use proptest::prelude::*;

    use super::*;
    use crate::Actor;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 20, 0, 0, 0).unwrap()
    }

    fn new_account(plan: PlanType) -> CreateAccount {
        CreateAccount {
            customer_id: Uuid::nil(),
            name: String::new(),
            detail: String::new(),
            plan_type: plan,
            currency: Currency::usd(),
            credit_limit: Micros(10_000),
            credit_limit_type: CreditLimitType::Hard,
            is_postpaid: false,
            low_balance_threshold: Micros::ZERO,
            payment_type: String::new(),
            payment_method: String::new(),
        }
    }

    /// An event as the feed would give it: `n` is its place in the feed.
    fn stored(account_id: Uuid, n: i64, recorded: &Recorded, at: DateTime<Utc>) -> StoredEvent {
        StoredEvent {
            cursor: Cursor {
                xid: 1_000 + n as u64,
                position: n,
            },
            event_id: Uuid::from_u128((account_id.as_u128() << 32) + recorded.version as u128),
            account_id,
            version: recorded.version,
            event_type: "test".into(),
            schema_version: EVENT_SCHEMA_VERSION,
            occurred_at: at,
            actor: Actor::system(),
            idempotency_key: None,
            trace_id: None,
            span_id: None,
            event: recorded.event.clone(),
            balances: recorded.balances,
            account_after: None,
        }
    }

    fn change(credit: i64, tokens: i64) -> BalanceChange {
        BalanceChange {
            amount_credit: Micros(credit),
            amount_token: Tokens(tokens),
            reference_type: ReferenceType::ManualAdjustment,
            reference_id: String::new(),
            note: String::new(),
            bucket: Default::default(),
            expires_at: None,
        }
    }

    fn command() -> impl Strategy<Value = Command> {
        let service = prop::sample::select(ServiceType::ALL.to_vec());
        let reservation = (0..4u8).prop_map(|n| format!("call-{n}"));
        prop_oneof![
            (0..200_000i64, 0..50i64).prop_map(|(c, t)| Command::AddBalance(change(c, t))),
            (0..200_000i64, 0..50i64).prop_map(|(c, t)| Command::SubtractBalance(change(c, t))),
            (1..150_000i64, prop::option::of(1..6_000_000i64)).prop_map(|(c, ms)| {
                Command::AddBalance(BalanceChange {
                    bucket: Bucket::Promotional,
                    reference_type: ReferenceType::Promotion,
                    expires_at: ms.map(|ms| t0() + Duration::milliseconds(ms)),
                    ..change(c, 0)
                })
            }),
            (service.clone(), 0..600_000i64, 0..20i64).prop_map(|(s, ms, q)| {
                Command::Debit(Debit {
                    service_type: s,
                    usage: if s.unit() == Unit::Minute {
                        Usage::DurationMs(ms)
                    } else {
                        Usage::Quantity(q)
                    },
                    reference_type: s.reference_type(),
                    reference_id: String::new(),
                })
            }),
            (reservation.clone(), service, 1..30i64, 0..3_600i64).prop_map(
                |(id, s, units, ttl)| Command::Reserve(Reserve {
                    reservation_id: id,
                    service_type: s,
                    requested_units: units,
                    allow_partial: true,
                    ttl_seconds: ttl,
                })
            ),
            (reservation.clone(), 0..1_800_000i64, 0..20i64).prop_map(|(id, ms, q)| {
                Command::Commit(Commit {
                    reservation_id: id,
                    used_duration_ms: ms,
                    used_quantity: q,
                })
            }),
            reservation.prop_map(|id| Command::Release { reservation_id: id }),
            Just(Command::Housekeep),
        ]
    }

    /// The feed of a random history of a few accounts: every event decided
    /// by the domain, interleaved across accounts as commits would be.
    fn feed(
        steps: Vec<(usize, Command, i64)>,
        plans: &[PlanType],
    ) -> (Vec<StoredEvent>, Vec<(Uuid, Account)>) {
        let rates = RateTable::default();
        let mut feed = Vec::new();
        let mut accounts: Vec<(Uuid, Account)> = Vec::new();
        for (i, plan) in plans.iter().enumerate() {
            let id = Uuid::from_u128(i as u128 + 1);
            let created = create(id, &new_account(*plan), t0()).unwrap();
            for recorded in &created.events {
                let n = feed.len() as i64 + 1;
                feed.push(stored(id, n, recorded, t0()));
            }
            accounts.push((id, created.account));
        }
        let mut now = t0();
        for (which, command, advance_ms) in steps {
            now += Duration::milliseconds(advance_ms);
            let (id, account) = &mut accounts[which % plans.len()];
            let context = Context {
                now,
                rates: &rates,
                resolved: None,
            };
            let Ok(done) = execute(account, &command, &context) else {
                continue;
            };
            for recorded in &done.events {
                let n = feed.len() as i64 + 1;
                feed.push(stored(*id, n, recorded, now));
            }
            *account = done.account;
        }
        (feed, accounts)
    }

    /// Folds `feed` in batches of the given sizes, as the projector does:
    /// each batch against the accounts as the batches before left them, a
    /// batch sometimes given again (a crash before its checkpoint moved).
    fn project(
        feed: &[StoredEvent],
        sizes: &[usize],
        again: &[bool],
    ) -> (BTreeMap<Uuid, AccountRow>, Vec<(Uuid, i64)>) {
        let mut rows: BTreeMap<Uuid, AccountRow> = BTreeMap::new();
        let mut ledger: Vec<(Uuid, i64)> = Vec::new();
        let mut cursor = Cursor::START;
        let mut from = 0;
        let mut i = 0;
        while from < feed.len() {
            let size = sizes[i % sizes.len()].max(1);
            let to = (from + size).min(feed.len());
            let batch = &feed[from..to];
            let times = if again[i % again.len()] { 2 } else { 1 };
            for _ in 0..times {
                let state = batch
                    .iter()
                    .filter_map(|e| rows.get(&e.account_id))
                    .map(|row| (row.account.id, row.account.clone()))
                    .collect();
                let writes = fold(cursor, state, batch).unwrap();
                assert_eq!(writes.report.gap, None);
                for row in writes.accounts {
                    rows.insert(row.account.id, row);
                }
                for entry in writes.ledger {
                    let key = (entry.event.account_id, entry.event.version);
                    // `ON CONFLICT (id) DO NOTHING`.
                    if !ledger.contains(&key) {
                        ledger.push(key);
                    }
                }
                assert_eq!(writes.report.cursor, batch.last().unwrap().cursor);
            }
            cursor = batch.last().unwrap().cursor;
            from = to;
            i += 1;
        }
        (rows, ledger)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The read model of any event sequence, folded in any batches (some
        /// given twice), equals the fold of each account's events: the
        /// command side's state, its last event's balances, one ledger entry
        /// per money movement.
        #[test]
        fn the_read_model_of_any_feed_is_the_fold_of_each_accounts_events(
            steps in prop::collection::vec((0..3usize, command(), 0..400_000i64), 0..60),
            sizes in prop::collection::vec(1..12usize, 1..6),
            again in prop::collection::vec(any::<bool>(), 1..6),
        ) {
            let plans = [PlanType::Free, PlanType::Basic, PlanType::Unlimited];
            let (feed, decided) = feed(steps, &plans);
            let (rows, ledger) = project(&feed, &sizes, &again);
            for (id, account) in &decided {
                let events: Vec<&StoredEvent> =
                    feed.iter().filter(|e| e.account_id == *id).collect();
                let folded = Account::fold(*id, events.iter().map(|e| (&e.event, e.occurred_at)))
                    .unwrap()
                    .unwrap();
                let row = &rows[id];
                prop_assert_eq!(&row.account, &folded, "the row is the fold of the events");
                prop_assert_eq!(&row.account, account, "and the command side's state");
                let last = events.last().unwrap();
                prop_assert_eq!(row.balances, last.balances);
                prop_assert_eq!(
                    row.promotional,
                    folded.promotional(last.occurred_at).unwrap().get()
                );
                let movements: Vec<(Uuid, i64)> = events
                    .iter()
                    .filter(|e| ledger_line(&e.event).is_some())
                    .map(|e| (e.account_id, e.version))
                    .collect();
                let entries: Vec<(Uuid, i64)> =
                    ledger.iter().copied().filter(|(a, _)| a == id).collect();
                prop_assert_eq!(entries, movements, "one entry per movement, in order");
            }
        }
    }

    #[test]
    fn events_at_or_below_the_projected_version_are_skipped() {
        let id = Uuid::from_u128(7);
        let created = create(id, &new_account(PlanType::Free), t0()).unwrap();
        let feed: Vec<StoredEvent> = created
            .events
            .iter()
            .enumerate()
            .map(|(n, r)| stored(id, n as i64 + 1, r, t0()))
            .collect();
        let state = BTreeMap::from([(id, created.account.clone())]);
        let writes = fold(Cursor::START, state, &feed).unwrap();
        assert_eq!(
            (writes.report.applied, writes.report.skipped),
            (0, feed.len())
        );
        assert!(writes.accounts.is_empty() && writes.ledger.is_empty());
        assert_eq!(writes.report.cursor, feed.last().unwrap().cursor);
    }

    #[test]
    fn an_event_past_the_next_version_stops_the_batch_before_it() {
        let rates = RateTable::default();
        let id = Uuid::from_u128(9);
        let created = create(id, &new_account(PlanType::Free), t0()).unwrap();
        let context = Context {
            now: t0(),
            rates: &rates,
            resolved: None,
        };
        let added = execute(
            &created.account,
            &Command::AddBalance(change(5, 0)),
            &context,
        )
        .unwrap();
        let again = execute(&added.account, &Command::AddBalance(change(7, 0)), &context).unwrap();
        let versions = created.account.version;
        // The next event is missing from the feed: the one after it waits.
        let feed = vec![stored(id, 1, &again.events[0], t0())];
        let state = BTreeMap::from([(id, created.account.clone())]);
        let writes = fold(Cursor::START, state, &feed).unwrap();
        assert_eq!(
            writes.report.gap,
            Some(Gap {
                account_id: id,
                expected: versions + 1,
                found: versions + 2,
            })
        );
        assert_eq!(
            writes.report.cursor,
            Cursor::START,
            "the cursor stays before it"
        );
        assert!(writes.accounts.is_empty() && writes.ledger.is_empty());
    }

    #[test]
    fn an_account_that_does_not_start_with_its_creation_is_corrupt() {
        let rates = RateTable::default();
        let id = Uuid::from_u128(11);
        let created = create(id, &new_account(PlanType::Free), t0()).unwrap();
        let context = Context {
            now: t0(),
            rates: &rates,
            resolved: None,
        };
        let added = execute(
            &created.account,
            &Command::AddBalance(change(5, 0)),
            &context,
        )
        .unwrap();
        // As if the account were projected at version 1 and its creation
        // never seen: its next event alone.
        let mut recorded = added.events[0].clone();
        recorded.version = 1;
        let feed = vec![stored(id, 1, &recorded, t0())];
        assert!(matches!(
            fold(Cursor::START, BTreeMap::new(), &feed),
            Err(StoreError::Corrupt(_))
        ));
    }
}
