//! The group-commit writers: the command path's I/O.
//!
//! Commands queue on one of a few writer tasks, chosen by account, so each
//! account always goes to the same writer. A writer drains what has queued
//! (up to [`MAX_BATCH`]) and runs the whole batch as one transaction in two
//! round trips:
//!
//! 1. `BEGIN`, the batch's account locks (advisory, in key order), the
//!    accounts' versions (and state, where the writer's cached copy is not at
//!    that version), the batch's idempotency records and the reservations it
//!    names, pipelined in that order;
//! 2. after deciding every command in order (`batch.rs`), the set-based
//!    writes (accounts, events, reservations, idempotency records) and
//!    `COMMIT`, pipelined.
//!
//! Replies go out only after the commit. While one batch commits, the next
//! fills. A batch that fails acknowledges none of its commands: it is retried
//! when it lost a race, answered UNAVAILABLE when the database went away,
//! and otherwise run again one command at a time, so that one bad command
//! cannot spoil the others.

use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use billing_domain::{Account, Hold, Outcome, RateTable, ResolvedReservation};
use futures::TryStreamExt;
use lru::LruCache;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::{Client, NoTls, Row, Statement};
use uuid::Uuid;

use crate::batch::{self, Answer, Decided, Loaded, StoredKey, Work, Writes};
use crate::{Clock, RequestMeta, StoreError, sql};

/// The most commands one transaction carries.
pub(crate) const MAX_BATCH: usize = 512;
/// Attempts of a batch that keeps losing races before it is split up.
const MAX_ATTEMPTS: u32 = 10;
/// Accounts each writer keeps in memory.
const CACHED_ACCOUNTS: usize = 16_384;
/// Reservation ids whose account is remembered, for routing.
const ROUTES: usize = 262_144;
/// Commands that may wait for each writer before callers wait to enqueue.
const QUEUE: usize = 4_096;

/// A queued command and where its answer goes.
#[derive(Debug)]
pub(crate) struct Job {
    pub work: Work,
    pub meta: RequestMeta,
    pub reply: oneshot::Sender<Result<Answer, StoreError>>,
}

/// What every writer needs from the store.
pub(crate) struct Shared {
    pub config: tokio_postgres::Config,
    pub rates: Arc<RateTable>,
    pub clock: Clock,
    pub routes: Arc<Routes>,
}

/// Which account holds each reservation id. A reservation never moves, so
/// an entry never goes stale; it only saves a lookup.
#[derive(Debug)]
pub(crate) struct Routes(Mutex<LruCache<String, Uuid>>);

impl Default for Routes {
    fn default() -> Self {
        Self(Mutex::new(LruCache::new(nonzero(ROUTES))))
    }
}

impl Routes {
    pub(crate) fn get(&self, reservation_id: &str) -> Option<Uuid> {
        self.lock().get(reservation_id).copied()
    }

    pub(crate) fn insert(&self, reservation_id: String, account_id: Uuid) {
        self.lock().put(reservation_id, account_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, Uuid>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn nonzero(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

/// The writer tasks' queues.
#[derive(Debug)]
pub(crate) struct Writers {
    queues: Vec<mpsc::Sender<Job>>,
}

impl Writers {
    /// Starts `count` writers on the current tokio runtime.
    pub(crate) fn start(count: usize, shared: Arc<Shared>) -> Self {
        let queues = (0..count.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let writer = Writer {
                    shared: shared.clone(),
                    connection: None,
                    cache: LruCache::new(nonzero(CACHED_ACCOUNTS)),
                };
                tokio::spawn(writer.run(rx));
                tx
            })
            .collect();
        Self { queues }
    }

    /// Queues `work` on its account's writer and waits for the answer.
    pub(crate) async fn submit(&self, work: Work, meta: RequestMeta) -> Result<Answer, StoreError> {
        let account = match &work {
            Work::Create { id, .. } => *id,
            Work::Execute { account_id, .. } => *account_id,
        };
        let (high, low) = account.as_u64_pair();
        let n = self.queues.len() as u64;
        let queue = &self.queues[usize::try_from((high ^ low) % n).unwrap_or(0)];
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the command writer stopped".into());
        queue
            .send(Job { work, meta, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// The advisory lock key that serializes one account's commands.
pub(crate) fn account_lock_key(account_id: Uuid) -> i64 {
    let (high, low) = account_id.as_u64_pair();
    i64::from_ne_bytes((high ^ low).to_ne_bytes())
}

struct Writer {
    shared: Arc<Shared>,
    connection: Option<Connection>,
    /// Accounts (with their live holds) as this writer last committed them.
    /// Every batch checks each one's version under the account's lock, so a
    /// copy another replica has moved past is reloaded, never acted on.
    cache: LruCache<Uuid, Account>,
}

/// Why an attempt failed, and whether its COMMIT had been sent (then its
/// outcome is unknown and it must not be retried blindly).
struct Failed {
    error: StoreError,
    commit_sent: bool,
}

impl<E: Into<StoreError>> From<E> for Failed {
    fn from(error: E) -> Self {
        Self {
            error: error.into(),
            commit_sent: false,
        }
    }
}

impl Writer {
    async fn run(mut self, mut queue: mpsc::Receiver<Job>) {
        let mut jobs = Vec::new();
        while let Some(first) = queue.recv().await {
            jobs.push(first);
            while jobs.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let answers = self.process(&jobs).await;
            for (job, answer) in jobs.drain(..).zip(answers) {
                // The caller may have gone away; its command stands.
                let _ = job.reply.send(answer);
            }
        }
    }

    /// Runs `jobs` as one batch, retrying lost races; an answer per job.
    async fn process(&mut self, jobs: &[Job]) -> Vec<Result<Answer, StoreError>> {
        let mut attempt = 0;
        let mut reconnected = false;
        loop {
            attempt += 1;
            let fresh = self.connection.is_none();
            // Only a first try may take the fast path: a retry reads
            // everything (the key, reservation or version that failed it).
            let failed = match self.attempt(jobs, attempt == 1 && !reconnected).await {
                Ok(answers) => return answers,
                Err(failed) => failed,
            };
            self.forget(jobs);
            let error = failed.error;
            tracing::debug!(attempt, jobs = jobs.len(), %error, "command batch failed");
            if matches!(error, StoreError::Unavailable(_)) {
                self.connection = None;
                // A connection that died while idle (a database restart) is
                // replaced once, when nothing of the batch can have committed.
                if !failed.commit_sent && !fresh && !reconnected {
                    reconnected = true;
                    continue;
                }
                return jobs.iter().map(|_| Err(error.duplicate())).collect();
            }
            self.rollback().await;
            if error.is_retryable() && attempt < MAX_ATTEMPTS {
                tokio::time::sleep(Duration::from_millis(u64::from(attempt * attempt))).await;
                continue;
            }
            if jobs.len() > 1 {
                // Each command alone, so the one at fault fails by itself.
                let mut answers = Vec::with_capacity(jobs.len());
                for job in jobs {
                    answers.extend(Box::pin(self.process(std::slice::from_ref(job))).await);
                }
                return answers;
            }
            let error = if error.is_retryable() {
                StoreError::Contention(attempt as usize)
            } else {
                error
            };
            return vec![Err(error)];
        }
    }

    /// Drops the cached copies of the batch's accounts: after a failure, what
    /// the database holds is not known without reading it.
    fn forget(&mut self, jobs: &[Job]) {
        for id in jobs.iter().filter_map(|j| j.work.account_id()) {
            self.cache.pop(&id);
        }
    }

    async fn rollback(&mut self) {
        if let Some(connection) = &self.connection
            && connection.client.batch_execute("ROLLBACK").await.is_err()
        {
            self.connection = None;
        }
    }

    async fn connect(&mut self) -> Result<(), StoreError> {
        if self
            .connection
            .as_ref()
            .is_some_and(|c| c.client.is_closed())
        {
            self.connection = None;
        }
        if self.connection.is_none() {
            self.connection = Some(Connection::open(&self.shared.config).await?);
        }
        Ok(())
    }

    /// One try at the whole batch: an answer per job once it has committed.
    async fn attempt(
        &mut self,
        jobs: &[Job],
        may_be_fast: bool,
    ) -> Result<Vec<Result<Answer, StoreError>>, Failed> {
        let now = crate::micros(&self.shared.clock);
        let mut ids: Vec<Uuid> = jobs.iter().filter_map(|j| j.work.account_id()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut lock_keys: Vec<i64> = ids.iter().map(|id| account_lock_key(*id)).collect();
        lock_keys.sort_unstable();
        lock_keys.dedup();
        // -1 is no version: a cached copy is only trusted at the stored one.
        let cached: Vec<i64> = ids
            .iter()
            .map(|id| self.cache.peek(id).map_or(-1, |a| a.version))
            .collect();
        let mut keys: Vec<&str> = jobs
            .iter()
            .filter_map(|j| j.meta.idempotency.as_ref().map(|i| i.key.as_str()))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        // A reservation live in the cached account needs no row: the account
        // carries its hold.
        let mut reservation_ids: Vec<&str> = jobs
            .iter()
            .filter_map(|j| {
                let id = j.work.reservation_id()?;
                let live = j
                    .work
                    .account_id()
                    .and_then(|a| self.cache.peek(&a))
                    .is_some_and(|a| a.holds.contains_key(id));
                (!live).then_some(id)
            })
            .collect();
        reservation_ids.sort_unstable();
        reservation_ids.dedup();

        // The fast path: every account is cached, and every reservation a
        // command names is a live hold of its cached account or a new one.
        // Nothing needs reading then: the batch is decided on the cached
        // copies and sent in one round trip (BEGIN, the locks, a fence on the
        // versions decided from, the writes, COMMIT). A stale copy fails the
        // fence, and a key or reservation id used before fails its insert;
        // either aborts the transaction (its COMMIT rolls back), the batch's
        // accounts leave the cache, and the batch runs again the long way.
        let fast = may_be_fast
            && ids.iter().all(|id| self.cache.contains(id))
            && jobs.iter().all(|j| match j.work.reservation_id() {
                None => true,
                Some(_) if j.work.is_reserve() => true,
                Some(id) => j
                    .work
                    .account_id()
                    .and_then(|a| self.cache.peek(&a))
                    .is_some_and(|a| a.holds.contains_key(id)),
            });
        if fast {
            return self.fast(jobs, now, &ids, &lock_keys, &cached).await;
        }

        self.connect().await?;
        let Some(connection) = self.connection.as_ref() else {
            return Err(StoreError::Unavailable("no connection".into()).into());
        };
        let client = &connection.client;
        let s = &connection.statements;
        let mut steps: Vec<Step<'_>> = vec![Box::pin(async {
            client.batch_execute("BEGIN").await?;
            Ok(Vec::new())
        })];
        if !lock_keys.is_empty() {
            steps.push(query(client, &s.lock, vec![&lock_keys]));
            steps.push(query(client, &s.load_accounts, vec![&ids, &cached]));
        }
        if !keys.is_empty() {
            steps.push(query(client, &s.load_keys, vec![&keys]));
        }
        if !reservation_ids.is_empty() {
            steps.push(query(client, &s.load_reservations, vec![&reservation_ids]));
        }
        let mut results = futures::future::join_all(steps).await.into_iter();
        let mut next = || results.next().unwrap_or_else(|| Ok(Vec::new()));
        next()?;
        let mut loaded = Loaded::default();
        let mut account_rows = Vec::new();
        if !lock_keys.is_empty() {
            next()?;
            account_rows = next()?;
        }
        if !keys.is_empty() {
            for row in next()? {
                let Json(outcome): Json<Outcome> = row.try_get(3)?;
                loaded.keys.insert(
                    row.try_get(0)?,
                    StoredKey {
                        operation: row.try_get(1)?,
                        request_hash: row.try_get(2)?,
                        outcome,
                    },
                );
            }
        }
        if !reservation_ids.is_empty() {
            for row in next()? {
                let (id, reservation) = reservation_from_row(&row)?;
                loaded.reservations.insert(id, reservation);
            }
        }
        for row in account_rows {
            let id: Uuid = row.try_get(0)?;
            let version: Option<i64> = row.try_get(1)?;
            let state: Option<Json<Account>> = row.try_get(2)?;
            let account = match (version, state) {
                (None, _) => None,
                (Some(_), Some(Json(mut account))) => {
                    let Json(holds): Json<Vec<Hold>> = row.try_get(3)?;
                    account.holds = holds
                        .into_iter()
                        .map(|h| (h.reservation_id.clone(), h))
                        .collect();
                    Some(account)
                }
                (Some(version), None) => match self.cache.pop(&id) {
                    Some(account) if account.version == version => Some(account),
                    _ => return Err(StoreError::Conflict.into()),
                },
            };
            loaded.accounts.insert(id, account);
        }
        // A reservation the cached copy held live may have been resolved by
        // another replica: its row is needed after all (rare).
        let missing: Vec<&str> = jobs
            .iter()
            .filter_map(|j| {
                let id = j.work.reservation_id()?;
                let account = loaded.accounts.get(&j.work.account_id()?)?.as_ref()?;
                (!account.holds.contains_key(id) && !reservation_ids.contains(&id)).then_some(id)
            })
            .collect();
        if !missing.is_empty() {
            let rows = query(
                &connection.client,
                &connection.statements.load_reservations,
                vec![&missing],
            )
            .await?;
            for row in rows {
                let (id, reservation) = reservation_from_row(&row)?;
                loaded.reservations.insert(id, reservation);
            }
        }

        let decided = batch::decide(
            jobs.iter().map(|j| (&j.work, &j.meta)),
            loaded,
            now,
            &self.shared.rates,
        );
        write(connection, &decided.writes, None).await?;
        Ok(self.finish(decided))
    }

    /// The fast path (see `attempt`): decided on the cached accounts, written
    /// in one round trip behind the locks and a fence on their versions.
    async fn fast(
        &mut self,
        jobs: &[Job],
        now: chrono::DateTime<chrono::Utc>,
        ids: &[Uuid],
        lock_keys: &[i64],
        versions: &[i64],
    ) -> Result<Vec<Result<Answer, StoreError>>, Failed> {
        self.connect().await?;
        let mut loaded = Loaded::default();
        for id in ids {
            loaded.accounts.insert(*id, self.cache.pop(id));
        }
        let decided = batch::decide(
            jobs.iter().map(|j| (&j.work, &j.meta)),
            loaded,
            now,
            &self.shared.rates,
        );
        let Some(connection) = self.connection.as_ref() else {
            return Err(StoreError::Unavailable("no connection".into()).into());
        };
        let fence = Fence {
            lock_keys,
            ids,
            versions,
        };
        write(connection, &decided.writes, Some(&fence)).await?;
        Ok(self.finish(decided))
    }

    /// Keeps what a committed batch leaves: its accounts, and where its new
    /// reservations live.
    fn finish(&mut self, decided: Decided) -> Vec<Result<Answer, StoreError>> {
        let Decided {
            answers,
            accounts,
            new_reservations,
            ..
        } = decided;
        for (id, account) in accounts {
            self.cache.put(id, account);
        }
        for (reservation_id, account_id) in new_reservations {
            self.shared.routes.insert(reservation_id, account_id);
        }
        answers
    }
}

/// What the fast path sends ahead of its writes: the accounts' locks and the
/// versions it decided from.
struct Fence<'a> {
    lock_keys: &'a [i64],
    ids: &'a [Uuid],
    versions: &'a [i64],
}

fn reservation_from_row(row: &Row) -> Result<(String, ResolvedReservation), StoreError> {
    let status: &str = row.try_get(2)?;
    let Json(hold): Json<Hold> = row.try_get(1)?;
    let commit: Option<Json<billing_domain::CommitOutcome>> = row.try_get(3)?;
    Ok((
        row.try_get(0)?,
        ResolvedReservation {
            hold,
            status: status
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("reservation status `{status}`")))?,
            commit: commit.map(|Json(c)| c),
            account_version: row.try_get(4)?,
        },
    ))
}

type Step<'a> = Pin<Box<dyn Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a>>;
type Param<'a> = &'a (dyn ToSql + Sync);

/// A statement as a pipeline step: it is sent when first polled, so steps
/// polled in order (`join_all`) reach the server in order.
fn query<'a>(client: &'a Client, statement: &'a Statement, params: Vec<Param<'a>>) -> Step<'a> {
    Box::pin(async move {
        client
            .query_raw(statement, params)
            .await?
            .try_collect()
            .await
    })
}

/// The batch's writes and its COMMIT, pipelined. Every write either does
/// exactly what it says or fails (counts are asserted in SQL), and a failed
/// statement aborts the transaction, so the pipelined COMMIT then rolls back.
///
/// With a `fence` (the fast path), BEGIN, the locks and the fence go first,
/// in the same pipeline.
async fn write(
    connection: &Connection,
    writes: &Writes,
    fence: Option<&Fence<'_>>,
) -> Result<(), Failed> {
    let client = &connection.client;
    let s = &connection.statements;

    let created: Vec<_> = writes
        .accounts
        .iter()
        .filter(|r| r.expected_version.is_none())
        .collect();
    let created_ids: Vec<Uuid> = created.iter().map(|r| r.account.id).collect();
    let created_customers: Vec<Uuid> = created.iter().map(|r| r.account.customer_id).collect();
    let created_versions: Vec<i64> = created.iter().map(|r| r.account.version).collect();
    let created_states = documents(created.iter().map(|r| &r.account))?;
    let created_topups: Vec<_> = created.iter().map(|r| r.account.tm_next_topup).collect();
    let created_at: Vec<_> = created.iter().map(|r| r.updated_at).collect();

    let updated: Vec<_> = writes
        .accounts
        .iter()
        .filter_map(|r| r.expected_version.map(|v| (r, v)))
        .collect();
    let updated_ids: Vec<Uuid> = updated.iter().map(|(r, _)| r.account.id).collect();
    let updated_states = documents(updated.iter().map(|(r, _)| &r.account))?;
    let updated_versions: Vec<i64> = updated.iter().map(|(r, _)| r.account.version).collect();
    let updated_topups: Vec<_> = updated
        .iter()
        .map(|(r, _)| r.account.tm_next_topup)
        .collect();
    let updated_at: Vec<_> = updated.iter().map(|(r, _)| r.updated_at).collect();
    let expected: Vec<i64> = updated.iter().map(|(_, v)| *v).collect();

    let e = &writes.events;
    let event_ids: Vec<Uuid> = e.iter().map(|_| Uuid::now_v7()).collect();
    let event_accounts: Vec<Uuid> = e.iter().map(|r| r.account_id).collect();
    let event_versions: Vec<i64> = e.iter().map(|r| r.version).collect();
    let event_types: Vec<&str> = e.iter().map(|r| r.event.event_type()).collect();
    let event_times: Vec<_> = e.iter().map(|r| r.occurred_at).collect();
    let principals: Vec<&str> = e.iter().map(|r| r.principal.as_str()).collect();
    let roles: Vec<&str> = e.iter().map(|r| r.role.as_str()).collect();
    let event_keys: Vec<Option<&str>> = e.iter().map(|r| r.idempotency_key.as_deref()).collect();
    let traces: Vec<Option<&str>> = e.iter().map(|r| r.trace_id.as_deref()).collect();
    let payloads = documents(e.iter().map(|r| &r.event))?;
    let column = |f: fn(&billing_domain::Balances) -> i64| -> Vec<i64> {
        e.iter().map(|r| f(&r.balances)).collect()
    };
    let balance_credit = column(|b| b.balance_credit.get());
    let balance_token = column(|b| b.balance_token.get());
    let reserved_credit = column(|b| b.reserved_credit.get());
    let reserved_token = column(|b| b.reserved_token.get());
    let available_credit = column(|b| b.available_credit.get());
    let available_token = column(|b| b.available_token.get());
    let accounts_after = documents(e.iter().map(|r| &r.account_after))?;

    let reservation_columns = |new: bool| -> Result<ReservationColumns<'_>, StoreError> {
        let rows: Vec<_> = writes
            .reservations
            .iter()
            .filter(|r| r.new == new)
            .collect();
        Ok(ReservationColumns {
            ids: rows
                .iter()
                .map(|r| r.hold.reservation_id.as_str())
                .collect(),
            accounts: rows.iter().map(|r| r.account_id).collect(),
            statuses: rows.iter().map(|r| r.status.as_str()).collect(),
            holds: documents(rows.iter().map(|r| &r.hold))?,
            expires_at: rows.iter().map(|r| r.hold.expires_at).collect(),
            commits: rows
                .iter()
                .map(|r| r.commit_outcome.as_ref().map(Document::of).transpose())
                .collect::<Result<_, _>>()?,
            resolved: rows.iter().map(|r| r.resolved_version).collect(),
            updated_at: rows.iter().map(|r| r.updated_at).collect(),
        })
    };
    let new_reservations = reservation_columns(true)?;
    let changed_reservations = reservation_columns(false)?;

    let k = &writes.keys;
    let keys: Vec<&str> = k.iter().map(|r| r.key.as_str()).collect();
    let operations: Vec<&str> = k.iter().map(|r| r.operation).collect();
    let hashes: Vec<&[u8]> = k.iter().map(|r| r.request_hash.as_slice()).collect();
    let key_accounts: Vec<Uuid> = k.iter().map(|r| r.account_id).collect();
    let outcomes = documents(k.iter().map(|r| &r.outcome))?;
    let key_times: Vec<_> = k.iter().map(|r| r.created_at).collect();

    let mut steps: Vec<Step<'_>> = Vec::new();
    if let Some(fence) = fence {
        steps.push(Box::pin(async {
            client.batch_execute("BEGIN").await?;
            Ok(Vec::new())
        }));
        if !fence.lock_keys.is_empty() {
            steps.push(query(client, &s.lock, vec![&fence.lock_keys]));
            steps.push(query(client, &s.fence, vec![&fence.ids, &fence.versions]));
        }
    }
    if !created.is_empty() {
        steps.push(query(
            client,
            &s.insert_accounts,
            vec![
                &created_ids,
                &created_customers,
                &created_versions,
                &created_states,
                &created_topups,
                &created_at,
            ],
        ));
    }
    if !updated.is_empty() {
        steps.push(query(
            client,
            &s.update_accounts,
            vec![
                &updated_ids,
                &updated_states,
                &updated_versions,
                &updated_topups,
                &updated_at,
                &expected,
            ],
        ));
    }
    if !e.is_empty() {
        steps.push(query(
            client,
            &s.insert_events,
            vec![
                &billing_domain::EVENT_SCHEMA_VERSION,
                &event_ids,
                &event_accounts,
                &event_versions,
                &event_types,
                &event_times,
                &principals,
                &roles,
                &event_keys,
                &traces,
                &payloads,
                &balance_credit,
                &balance_token,
                &reserved_credit,
                &reserved_token,
                &available_credit,
                &available_token,
                &accounts_after,
            ],
        ));
    }
    for (columns, statement) in [
        (&new_reservations, &s.insert_reservations),
        (&changed_reservations, &s.update_reservations),
    ] {
        if !columns.ids.is_empty() {
            steps.push(query(client, statement, columns.params()));
        }
    }
    if !k.is_empty() {
        steps.push(query(
            client,
            &s.insert_keys,
            vec![
                &keys,
                &operations,
                &hashes,
                &key_accounts,
                &outcomes,
                &key_times,
            ],
        ));
    }
    let writes_sent = steps.len();
    steps.push(Box::pin(async {
        client.batch_execute("COMMIT").await?;
        Ok(Vec::new())
    }));
    let mut results = futures::future::join_all(steps).await;
    let commit = results.pop().unwrap_or_else(|| Ok(Vec::new()));
    debug_assert_eq!(results.len(), writes_sent);
    // A failed write aborted the transaction: the COMMIT rolled it back.
    if let Some(error) = results.into_iter().find_map(Result::err) {
        return Err(Failed {
            error: error.into(),
            commit_sent: false,
        });
    }
    commit.map_err(|error| Failed {
        error: error.into(),
        commit_sent: true,
    })?;
    Ok(())
}

/// A document serialized up front and sent as the `json` type's text (its
/// binary form). `Json<T>` serializes into the statement's buffer a few
/// bytes at a time, which cost more than the serializing itself.
#[derive(Debug)]
struct Document(Vec<u8>);

impl Document {
    fn of(value: &impl serde::Serialize) -> Result<Self, StoreError> {
        Ok(Self(serde_json::to_vec(value)?))
    }
}

impl ToSql for Document {
    fn to_sql(
        &self,
        _: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.0);
        Ok(tokio_postgres::types::IsNull::No)
    }

    tokio_postgres::types::accepts!(JSON);
    tokio_postgres::types::to_sql_checked!();
}

fn documents<'a, T: serde::Serialize + 'a>(
    values: impl Iterator<Item = &'a T>,
) -> Result<Vec<Document>, StoreError> {
    values.map(Document::of).collect()
}

struct ReservationColumns<'a> {
    ids: Vec<&'a str>,
    accounts: Vec<Uuid>,
    statuses: Vec<&'static str>,
    holds: Vec<Document>,
    expires_at: Vec<chrono::DateTime<chrono::Utc>>,
    commits: Vec<Option<Document>>,
    resolved: Vec<Option<i64>>,
    updated_at: Vec<chrono::DateTime<chrono::Utc>>,
}

impl ReservationColumns<'_> {
    fn params(&self) -> Vec<Param<'_>> {
        vec![
            &self.ids,
            &self.accounts,
            &self.statuses,
            &self.holds,
            &self.expires_at,
            &self.commits,
            &self.resolved,
            &self.updated_at,
        ]
    }
}

/// A writer's own connection and its prepared statements.
struct Connection {
    client: Client,
    statements: Statements,
}

struct Statements {
    lock: Statement,
    fence: Statement,
    load_accounts: Statement,
    load_keys: Statement,
    load_reservations: Statement,
    insert_accounts: Statement,
    update_accounts: Statement,
    insert_events: Statement,
    insert_reservations: Statement,
    update_reservations: Statement,
    insert_keys: Statement,
}

impl Connection {
    async fn open(config: &tokio_postgres::Config) -> Result<Self, StoreError> {
        let connect = config.connect(NoTls);
        let (client, connection) = tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .map_err(|_| {
                StoreError::Unavailable("connecting to the database timed out".into())
            })??;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "command writer connection closed");
            }
        });
        // Every statement of the command path finds rows by key. Prepared
        // statements soon run on a generic plan, made while a table was
        // small and before any ANALYZE: a sequential scan then stays the
        // plan as the table grows (seen: 1.5 ms lookups of one reservation).
        // Key lookups are the only right plan here, so say so.
        client
            .batch_execute(
                "SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off",
            )
            .await?;
        let (
            lock,
            fence,
            load_accounts,
            load_keys,
            load_reservations,
            insert_accounts,
            update_accounts,
            insert_events,
            insert_reservations,
            update_reservations,
            insert_keys,
        ) = futures::try_join!(
            client.prepare(sql::LOCK),
            client.prepare(sql::FENCE),
            client.prepare(sql::LOAD_ACCOUNTS),
            client.prepare(sql::LOAD_KEYS),
            client.prepare(sql::LOAD_RESERVATIONS),
            client.prepare(sql::INSERT_ACCOUNTS),
            client.prepare(sql::UPDATE_ACCOUNTS),
            client.prepare(sql::INSERT_EVENTS),
            client.prepare(sql::INSERT_RESERVATIONS),
            client.prepare(sql::UPDATE_RESERVATIONS),
            client.prepare(sql::INSERT_KEYS),
        )?;
        let statements = Statements {
            lock,
            fence,
            load_accounts,
            load_keys,
            load_reservations,
            insert_accounts,
            update_accounts,
            insert_events,
            insert_reservations,
            update_reservations,
            insert_keys,
        };
        Ok(Self { client, statements })
    }
}

impl StoreError {
    /// The same failure, for each command of a batch that shares it.
    fn duplicate(&self) -> Self {
        match self {
            Self::Unavailable(s) => Self::Unavailable(s.clone()),
            Self::Corrupt(s) => Self::Corrupt(s.clone()),
            Self::Config(s) => Self::Config(s.clone()),
            Self::Contention(n) => Self::Contention(*n),
            Self::Conflict => Self::Conflict,
            Self::Database(e) => Self::Corrupt(e.to_string()),
        }
    }
}
