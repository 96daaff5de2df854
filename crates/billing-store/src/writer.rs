//! The group-commit writers: the command path's I/O.
//!
//! Commands queue on one of a few writer tasks (one by default), chosen by
//! account, so each account always goes to the same writer. A writer drains
//! what has queued (up to [`MAX_BATCH`]) and runs the whole batch as one
//! transaction. The long way takes two round trips:
//!
//! 1. `BEGIN`, the batch's account locks (advisory, in key order), the
//!    accounts' versions (and state, where the writer's cached copy is not at
//!    that version), the batch's idempotency records and the reservations it
//!    names, pipelined in that order;
//! 2. after deciding every command in order (`batch.rs`), the set-based
//!    writes (accounts, events, reservations, idempotency records) and
//!    `COMMIT`, pipelined (`pipeline.rs`).
//!
//! The fast path takes one: when every account is cached and every named
//! reservation is a live hold of it (or a new one), the batch is decided on
//! the cached copies and sent as `BEGIN`, locks, a fence on the versions it
//! was decided from, writes and `COMMIT`. Anything it assumed that is not so
//! (a stale copy, a key or reservation id used before) aborts the
//! transaction, and the batch runs again the long way.
//!
//! Replies go out only after the commit. While one batch commits, the next
//! fills. A batch that fails acknowledges none of its commands: it is retried
//! when it lost a race, answered UNAVAILABLE when the database went away,
//! and otherwise run again one command at a time, so that one bad command
//! cannot spoil the others.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use billing_domain::{Account, Hold, RateTable};
use lru::LruCache;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::Json;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::batch::{self, Answer, Decided, Loaded, StoredKey, Work};
use crate::observe;
use crate::outcome::outcome_from;
use crate::pipeline::{Connection, Failed, Fence, Step, query, write};
use crate::reservation::reservation_from_row;
use crate::{Clock, RequestMeta, StoreError};

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
    /// The command's span in its caller's trace (disabled unless traced):
    /// the batch that runs it links to it.
    pub span: tracing::Span,
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
        let span = observe::command_span(&work);
        let job = Job {
            work,
            meta,
            reply,
            span: span.clone(),
        };
        async {
            queue.send(job).await.map_err(|_| stopped())?;
            answer.await.map_err(|_| stopped())?
        }
        .instrument(span)
        .await
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
            let span = observe::batch_span(&jobs);
            let answers = self.process(&jobs).instrument(span).await;
            observe::record_batch(&jobs, &answers);
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
            let mut timer = observe::Attempt::start();
            let result = self
                .attempt(jobs, attempt == 1 && !reconnected, &mut timer)
                .await;
            timer.finish(result.as_ref().map(|_| ()).map_err(|f| &f.error));
            let failed = match result {
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
        timer: &mut observe::Attempt,
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
            timer.took_fast_path();
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
        let read = observe::read_span(steps.len());
        let mut results = futures::future::join_all(steps)
            .instrument(read)
            .await
            .into_iter();
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
                let key: String = row.try_get(0)?;
                let outcome = outcome_from(row.try_get(3)?, row.try_get(4)?, &key)?;
                loaded.keys.insert(
                    key,
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
        write(connection, &decided.writes, None)
            .instrument(observe::write_span(false, decided.writes.events.len()))
            .await?;
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
        write(connection, &decided.writes, Some(&fence))
            .instrument(observe::write_span(true, decided.writes.events.len()))
            .await?;
        Ok(self.finish(decided))
    }

    /// Keeps what a committed batch leaves: its accounts, and where its new
    /// reservations live.
    fn finish(&mut self, decided: Decided) -> Vec<Result<Answer, StoreError>> {
        observe::record_events(&decided.writes.events);
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
