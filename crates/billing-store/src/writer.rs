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
//! 2. after deciding every command in order (`batch.rs`), one call of
//!    `billing_write_batch` (the set-based writes of accounts, events,
//!    reservations and idempotency records) and `COMMIT`, pipelined
//!    (`pipeline.rs`).
//!
//! The fast path takes one: when every account is cached and every named
//! reservation is a live hold of it (or a new one), the batch is decided on
//! the cached copies and sent as one call of `billing_write_batch`, a
//! transaction of its own: the locks, then the writes, with a fence on the
//! version and chain head of each account it was decided from (an updated
//! account's in its UPDATE).
//! Anything it assumed that is not so (a stale copy, a key or reservation id
//! used before) aborts the transaction, and the batch runs again the long
//! way.
//!
//! Fast batches are pipelined: while one waits for its COMMIT, the next is
//! decided on the accounts as that one leaves them and sent behind it on the
//! same connection, so PostgreSQL starts it the moment the first commits,
//! with no round trip between. The batch behind gathers commands until it is
//! as large as the one ahead (or that one lands), so that batches stay even
//! rather than alternating one large and one of a single command. Its fence
//! names each account's chain head,
//! which only the events of the batch ahead can produce: if that batch
//! fails, so does this one wherever they share an account, and both run
//! again the long way, in order.
//!
//! Replies go out only after the commit. A batch that fails acknowledges
//! none of its commands: it is retried when it lost a race, answered
//! UNAVAILABLE when the database went away, and otherwise run again one
//! command at a time, so that one bad command cannot spoil the others.

mod fast;
mod long_way;

use std::num::NonZeroUsize;
use std::sync::Arc;

use billing_domain::{Account, RateTable};
use lru::LruCache;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::batch::{Answer, Work, Writes};
use crate::observe;
use crate::pipeline::{Connection, Failed};
use crate::routes::Routes;
use crate::{Clock, RequestMeta, StoreError};
use fast::InFlight;

/// The most commands one transaction carries.
pub(crate) const MAX_BATCH: usize = 512;
/// Attempts of a batch that keeps losing races before it is split up.
const MAX_ATTEMPTS: u32 = 10;
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
    pub connector: crate::Connector,
    pub rates: Arc<RateTable>,
    pub clock: Clock,
    pub routes: Arc<Routes>,
    /// Every how many versions an event keeps the account view after it.
    pub view_every: i64,
    /// Accounts each writer keeps in memory.
    pub cached_accounts: usize,
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
                    cache: LruCache::new(nonzero(shared.cached_accounts)),
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
    connection: Option<Arc<Connection>>,
    /// Accounts (with their live holds) as this writer's batches leave them:
    /// committed, or sent and not yet answered (the batch in flight). Every
    /// batch fences each one's version and chain head under the account's
    /// lock, so a copy another replica has moved past, or one a failed batch
    /// left, is never acted on.
    cache: LruCache<Uuid, Account>,
}

/// Sends `answers` to the commands of a finished batch.
fn reply(jobs: Vec<Job>, answers: Vec<Result<Answer, StoreError>>) {
    observe::record_batch(&jobs, &answers);
    for (job, answer) in jobs.into_iter().zip(answers) {
        // The caller may have gone away; its command stands.
        let _ = job.reply.send(answer);
    }
}

/// The accounts a batch's commands name, sorted, and their lock keys.
fn accounts_of(jobs: &[Job]) -> (Vec<Uuid>, Vec<i64>) {
    let mut ids: Vec<Uuid> = jobs.iter().filter_map(|j| j.work.account_id()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut lock_keys: Vec<i64> = ids.iter().map(|id| account_lock_key(*id)).collect();
    lock_keys.sort_unstable();
    lock_keys.dedup();
    (ids, lock_keys)
}

/// Takes what has queued into `jobs`, up to [`MAX_BATCH`].
fn drain(queue: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>) {
    while jobs.len() < MAX_BATCH {
        match queue.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
}

/// Gathers the batch to send behind `sent`: commands until there are as
/// many as `sent` carries, or until `sent` is answered (returned with them;
/// also when the queue has closed, so that what it held is still answered).
async fn gather_behind(
    sent: &mut InFlight,
    queue: &mut mpsc::Receiver<Job>,
) -> (Vec<Job>, Option<Result<Writes, Failed>>) {
    let enough = sent.jobs.len().clamp(1, MAX_BATCH);
    let mut jobs = Vec::new();
    loop {
        let arrived = tokio::select! {
            biased;
            result = &mut sent.flight => return (jobs, Some(result)),
            job = queue.recv() => job,
        };
        let Some(job) = arrived else {
            let result = (&mut sent.flight).await;
            return (jobs, Some(result));
        };
        jobs.push(job);
        drain(queue, &mut jobs);
        if jobs.len() >= enough {
            return (jobs, None);
        }
    }
}

impl Writer {
    /// Drains the queue into batches. A batch that can take the fast path
    /// is sent at once, even while the one before it waits for its COMMIT,
    /// decided on the accounts as that one leaves them: PostgreSQL runs it
    /// straight after that COMMIT, with no round trip between. At most two
    /// batches are in flight; anything else waits for the one ahead.
    ///
    /// The batch sent behind gathers commands until it is as large as the
    /// one ahead, or until that one lands. Sent at its first command, it was
    /// most often that one command alone (two batches in five at uniform
    /// load with 16 callers), each paying a whole transaction's cost, while
    /// the commands after it waited for the batch after that.
    async fn run(mut self, mut queue: mpsc::Receiver<Job>) {
        let mut in_flight: Option<InFlight> = None;
        loop {
            let (mut jobs, ahead) = match in_flight.take() {
                None => match queue.recv().await {
                    Some(first) => (vec![first], None),
                    // The store is gone and nothing is in flight.
                    None => return,
                },
                Some(mut sent) => {
                    let (jobs, landed) = gather_behind(&mut sent, &mut queue).await;
                    match landed {
                        None => (jobs, Some(sent)),
                        Some(result) => {
                            self.land(sent, result, None).await;
                            if jobs.is_empty() {
                                continue;
                            }
                            (jobs, None)
                        }
                    }
                }
            };
            drain(&mut queue, &mut jobs);
            let span = observe::batch_span(&jobs);
            if let Some(sent) = ahead {
                match self.send_fast(jobs, span.clone()).await {
                    Ok(next) => {
                        in_flight = self.wait(sent, Some(next)).await;
                        continue;
                    }
                    Err(unsent) => {
                        jobs = unsent;
                        self.wait(sent, None).await;
                    }
                }
            }
            match self.send_fast(jobs, span.clone()).await {
                Ok(next) => in_flight = Some(next),
                Err(jobs) => {
                    // The long way reads the database: nothing is in flight.
                    let answers = self.process(&jobs, None).instrument(span).await;
                    reply(jobs, answers);
                }
            }
        }
    }

    /// Waits for `sent` to be answered and lands it (see `land`).
    async fn wait(&mut self, mut sent: InFlight, next: Option<InFlight>) -> Option<InFlight> {
        let result = (&mut sent.flight).await;
        self.land(sent, result, next).await
    }

    /// Answers a batch whose COMMIT PostgreSQL has answered; returns the
    /// batch sent behind it (`next`) if that one is still in flight.
    ///
    /// A batch that failed acknowledges none of its commands. `next` was
    /// decided on what it would have left, so where they share an account
    /// `next` fails its fence; `next` is waited for first (it holds the
    /// connection), then the failed batch runs again the long way, and then
    /// `next` too if it failed: per account, commands still apply in the
    /// order they came.
    async fn land(
        &mut self,
        sent: InFlight,
        result: Result<Writes, Failed>,
        next: Option<InFlight>,
    ) -> Option<InFlight> {
        let failed = match result {
            Ok(writes) => {
                self.committed(sent, &writes);
                return next;
            }
            Err(failed) => failed,
        };
        sent.timer.finish(Err(&failed.error));
        self.forget(&sent.jobs);
        let mut behind = None;
        if let Some(mut next) = next {
            match (&mut next.flight).await {
                Ok(writes) => self.committed(next, &writes),
                Err(next_failed) => {
                    next.timer.finish(Err(&next_failed.error));
                    self.forget(&next.jobs);
                    behind = Some((next, next_failed));
                }
            }
        }
        for (batch, failed) in std::iter::once((sent, failed)).chain(behind) {
            let answers = self
                .process(&batch.jobs, Some(failed))
                .instrument(batch.span)
                .await;
            reply(batch.jobs, answers);
        }
        None
    }

    /// Answers a batch that committed, and keeps where its new reservations
    /// live (its accounts are in the cache since it was sent).
    fn committed(&mut self, sent: InFlight, writes: &Writes) {
        sent.timer.finish(Ok(()));
        observe::record_events(&writes.events);
        for (reservation_id, account_id) in sent.new_reservations {
            self.shared.routes.insert(reservation_id, account_id);
        }
        reply(sent.jobs, sent.answers);
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
            self.connection = Some(Arc::new(Connection::open(&self.shared.connector).await?));
        }
        Ok(())
    }
}
