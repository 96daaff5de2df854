//! One group-commit batch, decided: what each command answers and what the
//! batch writes. No I/O here; `writer.rs` loads the inputs, runs this, and
//! writes the result in one transaction.
//!
//! Commands are decided in arrival order with the pure domain, each against
//! the account as the commands before it in the batch left it. Within a
//! batch, a second use of an idempotency key replays the first's answer, and
//! a reservation resolved earlier in the batch is seen as resolved.

use std::collections::{BTreeMap, HashMap};

use billing_domain::{
    Account, Balances, Command, CommitOutcome, Context, CreateAccount, Event, Executed, Hold,
    Outcome, RateTable, Recorded, Rejection, ReservationStatus, ResolvedReservation,
};
use chrono::{DateTime, SubsecRound as _, Utc};
use uuid::Uuid;

use crate::chain::{self, ChainHash, Content};
use crate::document::Document;
use crate::views;
use crate::{Idempotency, RequestMeta, StoreError};

/// A command's answer: the outcome to reply with, or why it was refused.
pub type Answer = Result<Outcome, Rejection>;

/// What a command asks of the writer.
#[derive(Clone, Debug)]
pub(crate) enum Work {
    Create { id: Uuid, cmd: CreateAccount },
    Execute { account_id: Uuid, cmd: Command },
}

impl Work {
    /// The existing account the command runs on (creations have none).
    pub(crate) fn account_id(&self) -> Option<Uuid> {
        match self {
            Self::Create { .. } => None,
            Self::Execute { account_id, .. } => Some(*account_id),
        }
    }

    /// Whether the command is a reserve (which may name a new reservation).
    pub(crate) fn is_reserve(&self) -> bool {
        matches!(
            self,
            Self::Execute {
                cmd: Command::Reserve(_),
                ..
            }
        )
    }

    pub(crate) fn reservation_id(&self) -> Option<&str> {
        match self {
            Self::Create { .. } => None,
            Self::Execute { cmd, .. } => cmd.reservation_id(),
        }
    }
}

/// An idempotency record as stored.
#[derive(Clone, Debug)]
pub(crate) struct StoredKey {
    pub operation: String,
    pub request_hash: Vec<u8>,
    pub outcome: Outcome,
}

/// The loaded inputs of a batch.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// Every account the batch's commands name, as it stands under the lock
    /// (`None`: no such account).
    pub accounts: HashMap<Uuid, Option<Account>>,
    /// Stored idempotency records of the batch's keys.
    pub keys: HashMap<String, StoredKey>,
    /// Stored reservations the batch's commands name (any status).
    pub reservations: HashMap<String, ResolvedReservation>,
}

/// An event row to append, its documents serialized and its chain link
/// computed (`chain.rs`).
#[derive(Debug)]
pub(crate) struct EventRow {
    pub event_id: Uuid,
    pub account_id: Uuid,
    pub version: i64,
    pub event: Event,
    pub balances: Balances,
    /// The event's payload, as stored.
    pub payload: Document,
    /// The account view after the event, as stored: on the events that keep
    /// a snapshot of it only (`views.rs`).
    pub account_after: Option<Document>,
    /// To the microsecond, as PostgreSQL keeps it (and as it is hashed).
    pub occurred_at: DateTime<Utc>,
    pub principal: String,
    pub role: String,
    pub idempotency_key: Option<String>,
    pub trace_id: Option<String>,
    pub hash: ChainHash,
    pub span_id: Option<String>,
}

impl EventRow {
    /// What the chain hashes: the row as PostgreSQL will store it.
    pub fn content(&self) -> Content<'_> {
        let b = &self.balances;
        Content {
            event_id: self.event_id,
            account_id: self.account_id,
            version: self.version,
            event_type: self.event.event_type(),
            schema_version: billing_domain::EVENT_SCHEMA_VERSION,
            occurred_at_micros: self.occurred_at.timestamp_micros(),
            principal: &self.principal,
            role: &self.role,
            idempotency_key: self.idempotency_key.as_deref(),
            trace_id: self.trace_id.as_deref(),
            span_id: self.span_id.as_deref(),
            payload: &self.payload.0,
            balances: [
                b.balance_credit.get(),
                b.balance_token.get(),
                b.reserved_credit.get(),
                b.reserved_token.get(),
                b.available_credit.get(),
                b.available_token.get(),
            ],
            account_after: self.account_after.as_ref().map(|d| d.0.as_slice()),
        }
    }
}

/// A reservation row as the batch leaves it.
#[derive(Debug)]
pub(crate) struct ReservationRow {
    /// Created in this batch: inserted, so that an id another account already
    /// uses is a unique violation rather than a silent overwrite.
    pub new: bool,
    pub account_id: Uuid,
    pub status: ReservationStatus,
    pub hold: Hold,
    /// The hold differs from the stored one (made or extended in this
    /// batch). A resolution alone leaves the stored hold as it is.
    pub hold_changed: bool,
    pub commit_outcome: Option<CommitOutcome>,
    pub resolved_version: Option<i64>,
    pub updated_at: DateTime<Utc>,
}

/// An idempotency record to store.
#[derive(Debug)]
pub(crate) struct KeyRow {
    pub key: String,
    pub operation: &'static str,
    pub request_hash: Vec<u8>,
    pub account_id: Uuid,
    pub outcome: Outcome,
    /// The outcome's account view is the account view of an event this
    /// batch writes (at the view's version), so the record may leave it out.
    pub slim: bool,
    pub created_at: DateTime<Utc>,
}

/// An account row to write: inserted (created in this batch) or updated
/// from `expected_version`.
#[derive(Debug)]
pub(crate) struct AccountRow {
    pub account: Account,
    pub expected_version: Option<i64>,
    pub updated_at: DateTime<Utc>,
}

/// Everything a batch writes, in one transaction.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    pub accounts: Vec<AccountRow>,
    pub events: Vec<EventRow>,
    pub reservations: Vec<ReservationRow>,
    pub keys: Vec<KeyRow>,
}

/// A decided batch: an answer per command (in order), the writes, and the
/// accounts as the batch leaves them (for the writer's cache).
#[derive(Debug)]
pub(crate) struct Decided {
    pub answers: Vec<Result<Answer, StoreError>>,
    pub writes: Writes,
    pub accounts: HashMap<Uuid, Account>,
    /// Reservations created by the batch, for routing later commands.
    pub new_reservations: Vec<(String, Uuid)>,
}

/// Decides `jobs` in order against `loaded` at time `now`.
pub(crate) fn decide<'a>(
    jobs: impl IntoIterator<Item = (&'a Work, &'a RequestMeta)>,
    mut loaded: Loaded,
    now: DateTime<Utc>,
    rates: &RateTable,
    view_every: i64,
) -> Decided {
    let initial: HashMap<Uuid, i64> = loaded
        .accounts
        .iter()
        .filter_map(|(id, a)| a.as_ref().map(|a| (*id, a.version)))
        .collect();
    let mut batch = Batch {
        loaded: &mut loaded,
        rates,
        view_every,
        now,
        overlay: HashMap::new(),
        reservations: BTreeMap::new(),
        dirty: BTreeMap::new(),
        created: Vec::new(),
        events: Vec::new(),
        keys: Vec::new(),
    };
    let answers = jobs
        .into_iter()
        .map(|(work, meta)| batch.run(work, meta))
        .collect();
    let Batch {
        reservations,
        dirty,
        created,
        events,
        keys,
        ..
    } = batch;
    let accounts: HashMap<Uuid, Account> = loaded
        .accounts
        .into_iter()
        .filter_map(|(id, a)| a.map(|a| (id, a)))
        .collect();
    let mut rows = Vec::with_capacity(dirty.len() + created.len());
    for id in created {
        if let Some(account) = accounts.get(&id) {
            rows.push(AccountRow {
                account: account.clone(),
                expected_version: None,
                updated_at: dirty.get(&id).copied().unwrap_or(now),
            });
        }
    }
    for (id, updated_at) in &dirty {
        if let (Some(account), Some(expected)) = (accounts.get(id), initial.get(id)) {
            rows.push(AccountRow {
                account: account.clone(),
                expected_version: Some(*expected),
                updated_at: *updated_at,
            });
        }
    }
    let new_reservations = reservations
        .iter()
        .filter(|(_, r)| r.new)
        .map(|(id, r)| (id.clone(), r.account_id))
        .collect();
    Decided {
        answers,
        writes: Writes {
            accounts: rows,
            events,
            reservations: reservations.into_values().collect(),
            keys,
        },
        accounts,
        new_reservations,
    }
}

struct Batch<'a> {
    loaded: &'a mut Loaded,
    rates: &'a RateTable,
    /// Every how many versions an event keeps the account view after it
    /// (`views.rs`).
    view_every: i64,
    now: DateTime<Utc>,
    /// Reservations as earlier commands of this batch left them; they take
    /// precedence over the stored rows.
    overlay: HashMap<String, ResolvedReservation>,
    /// Reservation rows to write, by id.
    reservations: BTreeMap<String, ReservationRow>,
    /// Accounts changed by the batch (not created by it), with the time of
    /// their last change.
    dirty: BTreeMap<Uuid, DateTime<Utc>>,
    /// Accounts created by the batch, in order.
    created: Vec<Uuid>,
    events: Vec<EventRow>,
    keys: Vec<KeyRow>,
}

impl Batch<'_> {
    /// Queues `events` of `account` for appending, each linked to the one
    /// before it in the account's hash chain; returns the new chain head.
    fn append_events(
        &mut self,
        account_id: Uuid,
        account: &Account,
        events: Vec<Recorded>,
        now: DateTime<Utc>,
        meta: &RequestMeta,
    ) -> Result<ChainHash, StoreError> {
        let mut head = account
            .chain_head
            .as_deref()
            .and_then(chain::from_hex)
            .unwrap_or(chain::GENESIS);
        let occurred_at = now.trunc_subsecs(6);
        let idempotency_key = meta.idempotency.as_ref().map(|i| i.key.clone());
        for r in events {
            let row = EventRow {
                event_id: Uuid::now_v7(),
                account_id,
                version: r.version,
                payload: Document::of(&r.event)?,
                account_after: views::keeps_view(r.version, self.view_every)
                    .then(|| Document::of(&r.account))
                    .transpose()?,
                event: r.event,
                balances: r.balances,
                occurred_at,
                principal: meta.actor.principal.clone(),
                role: meta.actor.role.clone(),
                idempotency_key: idempotency_key.clone(),
                trace_id: meta.trace_id.clone(),
                span_id: meta.span_id.clone(),
                hash: chain::GENESIS,
            };
            head = chain::link(&head, &row.content());
            self.events.push(EventRow { hash: head, ..row });
        }
        Ok(head)
    }

    fn run(&mut self, work: &Work, meta: &RequestMeta) -> Result<Answer, StoreError> {
        if let Some(replayed) = meta.idempotency.as_ref().and_then(|i| self.replay(i)) {
            return Ok(replayed);
        }
        let (account_id, executed, now, before) = match work {
            Work::Create { id, cmd } => {
                if self.loaded.accounts.contains_key(id) {
                    return Err(StoreError::Conflict);
                }
                let executed = match billing_domain::create(*id, cmd, self.now) {
                    Ok(executed) => executed,
                    Err(rejection) => return Ok(Err(rejection)),
                };
                self.created.push(*id);
                (*id, executed, self.now, None)
            }
            Work::Execute { account_id, cmd } => {
                let Some(Some(account)) = self.loaded.accounts.get(account_id) else {
                    return Ok(Err(Rejection::AccountNotFound));
                };
                // A live hold of this account is in its holds; anything else
                // under the id (resolved, or another account's) is context.
                let resolved = cmd
                    .reservation_id()
                    .and_then(|r| {
                        self.overlay
                            .get(r)
                            .or_else(|| self.loaded.reservations.get(r))
                    })
                    .filter(|r| {
                        !(r.status == ReservationStatus::Active && r.hold.account_id == *account_id)
                    });
                // Time never runs backwards within one account's stream.
                let now = self.now.max(account.tm_update);
                let ctx = Context {
                    now,
                    rates: self.rates,
                    resolved,
                };
                let executed = match billing_domain::execute(account, cmd, &ctx) {
                    Ok(executed) => executed,
                    Err(rejection) => return Ok(Err(rejection)),
                };
                if !executed.events.is_empty() {
                    self.dirty.insert(*account_id, now);
                }
                (*account_id, executed, now, Some(account))
            }
        };
        let rows = match before {
            Some(before) => reservation_rows(before, &executed, now)?,
            None => Vec::new(),
        };
        let Executed {
            events,
            mut account,
            outcome,
        } = executed;
        for row in rows {
            self.record_reservation(row);
        }
        let last_version = events.last().map(|r| r.version);
        if !events.is_empty() {
            let head = self.append_events(account_id, &account, events, now, meta)?;
            account.chain_head = Some(chain::to_hex(&head));
        }
        self.loaded.accounts.insert(account_id, Some(account));
        if let Some(idempotency) = &meta.idempotency {
            self.loaded.keys.insert(
                idempotency.key.clone(),
                StoredKey {
                    operation: idempotency.operation.to_owned(),
                    request_hash: idempotency.request_hash.clone(),
                    outcome: outcome.clone(),
                },
            );
            self.keys.push(KeyRow {
                key: idempotency.key.clone(),
                operation: idempotency.operation,
                request_hash: idempotency.request_hash.clone(),
                account_id,
                slim: last_version.is_some() && last_version == view_version(&outcome),
                outcome: outcome.clone(),
                created_at: now,
            });
        }
        Ok(Ok(outcome))
    }

    /// The answer stored (or decided earlier in this batch) under the key:
    /// the first outcome for the same request, a refusal for another.
    fn replay(&self, idempotency: &Idempotency) -> Option<Answer> {
        let stored = self.loaded.keys.get(&idempotency.key)?;
        if stored.operation != idempotency.operation
            || stored.request_hash != idempotency.request_hash
        {
            return Some(Err(Rejection::IdempotencyKeyReused));
        }
        Some(Ok(stored.outcome.clone()))
    }

    fn record_reservation(&mut self, row: ReservationRow) {
        let id = row.hold.reservation_id.clone();
        self.overlay.insert(
            id.clone(),
            ResolvedReservation {
                hold: row.hold.clone(),
                status: row.status,
                commit: row.commit_outcome.clone(),
                account_version: row.resolved_version.unwrap_or(0),
            },
        );
        let earlier = self.reservations.get(&id);
        let new = row.new || earlier.is_some_and(|r| r.new);
        let hold_changed = row.hold_changed || earlier.is_some_and(|r| r.hold_changed);
        self.reservations.insert(
            id,
            ReservationRow {
                new,
                hold_changed,
                ..row
            },
        );
    }
}

/// The version of the account view an outcome carries, if it has one.
fn view_version(outcome: &Outcome) -> Option<i64> {
    match outcome {
        Outcome::Account(view) => Some(view.version),
        Outcome::Charge(c) => Some(c.account.version),
        Outcome::Commit(c) => Some(c.account.version),
        Outcome::Reservation(_) => None,
    }
}

/// The reservation rows `executed` touches, last event winning.
fn reservation_rows(
    before: &Account,
    executed: &Executed,
    now: DateTime<Utc>,
) -> Result<Vec<ReservationRow>, StoreError> {
    let mut rows: BTreeMap<&str, ReservationRow> = BTreeMap::new();
    for recorded in &executed.events {
        let Some(id) = recorded.event.reservation_id() else {
            continue;
        };
        let status = match recorded.event {
            Event::Committed(_) => ReservationStatus::Committed,
            Event::Released(_) => ReservationStatus::Released,
            Event::ReservationExpired(_) => ReservationStatus::Expired,
            _ => ReservationStatus::Active,
        };
        let Some(hold) = executed
            .account
            .holds
            .get(id)
            .or_else(|| before.holds.get(id))
        else {
            return Err(StoreError::Corrupt(format!(
                "no hold for reservation `{id}`"
            )));
        };
        let commit_outcome = match &executed.outcome {
            Outcome::Commit(c)
                if status == ReservationStatus::Committed && c.reservation_id == id =>
            {
                Some(c.clone())
            }
            _ => None,
        };
        let new = matches!(recorded.event, Event::Reserved(_));
        let hold_changed = new
            || matches!(recorded.event, Event::ReservationExtended(_))
            || rows.get(id).is_some_and(|r| r.hold_changed);
        rows.insert(
            id,
            ReservationRow {
                new,
                account_id: before.id,
                status,
                hold: hold.clone(),
                hold_changed,
                commit_outcome,
                resolved_version: (status != ReservationStatus::Active).then_some(recorded.version),
                updated_at: now,
            },
        );
    }
    Ok(rows.into_values().collect())
}

#[cfg(test)]
mod tests {
    use billing_domain::{
        AccountStatus, Commit, CreditLimitType, Currency, Micros, PlanType, Reserve, ServiceType,
    };

    use super::*;
    use crate::Actor;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000, 0).unwrap_or_default()
    }

    fn account(credit: i64) -> Account {
        let cmd = CreateAccount {
            customer_id: Uuid::new_v4(),
            name: "a".into(),
            detail: String::new(),
            plan_type: PlanType::Free,
            currency: Currency::usd(),
            credit_limit: Micros::ZERO,
            credit_limit_type: CreditLimitType::Hard,
            is_postpaid: false,
            low_balance_threshold: Micros::ZERO,
            payment_type: String::new(),
            payment_method: String::new(),
        };
        let mut account = billing_domain::create(Uuid::new_v4(), &cmd, now())
            .map(|e| e.account)
            .unwrap_or_else(|r| panic!("{r}"));
        account.balance_credit = Micros(credit);
        assert_eq!(account.status, AccountStatus::Active);
        account
    }

    fn meta() -> RequestMeta {
        RequestMeta {
            actor: Actor::system(),
            idempotency: None,
            trace_id: None,
            span_id: None,
        }
    }

    fn reserve(account_id: Uuid, id: &str) -> Work {
        Work::Execute {
            account_id,
            cmd: Command::Reserve(Reserve {
                reservation_id: id.into(),
                service_type: ServiceType::CallPstnOutgoing,
                requested_units: 2,
                allow_partial: false,
                ttl_seconds: 600,
            }),
        }
    }

    fn commit(account_id: Uuid, id: &str, seconds: i64) -> Work {
        Work::Execute {
            account_id,
            cmd: Command::Commit(Commit {
                reservation_id: id.into(),
                used_duration_ms: seconds * 1_000,
                used_quantity: 0,
            }),
        }
    }

    fn run(accounts: &[&Account], jobs: &[Work]) -> Decided {
        let loaded = Loaded {
            accounts: accounts
                .iter()
                .map(|a| (a.id, Some((*a).clone())))
                .collect(),
            ..Loaded::default()
        };
        let meta = meta();
        decide(
            jobs.iter().map(|w| (w, &meta)),
            loaded,
            now(),
            &RateTable::default(),
            views::DEFAULT_VIEW_EVERY,
        )
    }

    fn answer(decided: &Decided, n: usize) -> &Answer {
        decided.answers[n]
            .as_ref()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_reservation_committed_earlier_in_the_batch_replays_its_first_commit() {
        let a = account(100_000);
        let decided = run(
            &[&a],
            &[
                reserve(a.id, "r"),
                commit(a.id, "r", 61),
                commit(a.id, "r", 5),
            ],
        );
        let (Ok(Outcome::Commit(first)), Ok(Outcome::Commit(again))) =
            (answer(&decided, 1), answer(&decided, 2))
        else {
            panic!("{:?}", decided.answers);
        };
        assert_eq!(first, again, "the second commit gets the first result");
        assert_eq!(first.charged_credit, Micros(20_000));
        let committed = decided
            .writes
            .events
            .iter()
            .filter(|e| matches!(e.event, Event::Committed(_)))
            .count();
        assert_eq!(committed, 1, "charged once");
        let [row] = decided.writes.reservations.as_slice() else {
            panic!("{:?}", decided.writes.reservations);
        };
        assert!(row.new, "made in this batch: inserted");
        assert_eq!(row.status, ReservationStatus::Committed);
        assert_eq!(decided.accounts[&a.id].balance_credit, Micros(80_000));
    }

    #[test]
    fn a_reservation_id_taken_earlier_in_the_batch_by_another_account_is_refused() {
        let (a, b) = (account(100_000), account(100_000));
        let decided = run(&[&a, &b], &[reserve(a.id, "r"), reserve(b.id, "r")]);
        assert!(matches!(answer(&decided, 0), Ok(Outcome::Reservation(_))));
        assert_eq!(answer(&decided, 1), &Err(Rejection::ReservationIdReused));
        assert_eq!(decided.writes.events.len(), 1);
        assert_eq!(decided.writes.accounts.len(), 1, "b is not written");
    }

    #[test]
    fn each_command_sees_the_account_as_the_ones_before_it_left_it() {
        let a = account(30_000);
        // Three 2-minute holds of 20,000 micros: only the first fits.
        let decided = run(
            &[&a],
            &[
                reserve(a.id, "r1"),
                reserve(a.id, "r2"),
                reserve(a.id, "r1"),
            ],
        );
        assert!(matches!(answer(&decided, 0), Ok(Outcome::Reservation(_))));
        assert!(matches!(
            answer(&decided, 1),
            Err(Rejection::InsufficientBalance { .. })
        ));
        assert_eq!(
            answer(&decided, 2),
            answer(&decided, 0),
            "a retried reserve returns the hold it made"
        );
        let [row] = decided.writes.accounts.as_slice() else {
            panic!("one account row");
        };
        assert_eq!(row.expected_version, Some(a.version));
        assert_eq!(row.account.version, a.version + 1);
    }
}
