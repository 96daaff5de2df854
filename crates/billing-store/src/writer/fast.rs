//! The fast path, pipelined: a batch decided on the writer's cached
//! accounts and sent in one pipeline without waiting for its answer (see the
//! parent module).

use std::future::Future;
use std::pin::Pin;

use tracing::Instrument as _;
use uuid::Uuid;

use super::{Job, Writer, accounts_of};
use crate::StoreError;
use crate::batch::{self, Answer, Decided, Loaded, Writes};
use crate::observe;
use crate::pipeline::{Failed, Fence, write};

/// A batch sent the fast way that PostgreSQL has not answered yet (its
/// commit).
pub(super) struct InFlight {
    pub(super) jobs: Vec<Job>,
    /// The call, sent: ready once PostgreSQL has answered it (committed).
    pub(super) flight: Flight,
    /// What each command answers once the batch has committed.
    pub(super) answers: Vec<Result<Answer, StoreError>>,
    pub(super) new_reservations: Vec<(String, Uuid)>,
    pub(super) timer: observe::Attempt,
    pub(super) span: tracing::Span,
}

pub(super) type Flight = Pin<Box<dyn Future<Output = Result<Writes, Failed>> + Send>>;

impl Writer {
    /// The fast path: when every account is cached, and every reservation a
    /// command names is a live hold of its cached account or a new one,
    /// nothing needs reading. The batch is decided on the cached copies, its
    /// accounts as it leaves them go into the cache, and it is sent as one
    /// call, a transaction of its own (the locks, a fence on the version and
    /// chain head of each account it was decided from, the writes), without
    /// waiting for the answer. A stale copy fails the fence, and a key or
    /// reservation id used before fails its insert; either aborts the
    /// transaction, and `land` runs it again the long way. Gives the jobs
    /// back when the batch cannot go this way.
    pub(super) async fn send_fast(
        &mut self,
        jobs: Vec<Job>,
        span: tracing::Span,
    ) -> Result<InFlight, Vec<Job>> {
        let (ids, lock_keys) = accounts_of(&jobs);
        let fast = ids.iter().all(|id| self.cache.contains(id))
            && jobs.iter().all(|j| match j.work.reservation_id() {
                None => true,
                Some(_) if j.work.is_reserve() => true,
                Some(id) => j
                    .work
                    .account_id()
                    .and_then(|a| self.cache.peek(&a))
                    .is_some_and(|a| a.holds.contains_key(id)),
            });
        if !fast || self.connect().await.is_err() {
            return Err(jobs);
        }
        let Some(connection) = self.connection.clone() else {
            return Err(jobs);
        };
        let mut timer = observe::Attempt::start();
        timer.took_fast_path();
        let mut loaded = Loaded::default();
        let mut versions = Vec::with_capacity(ids.len());
        let mut heads = Vec::with_capacity(ids.len());
        for id in &ids {
            let account = self.cache.pop(id);
            let account = account.as_ref();
            versions.push(account.map_or(-1, |a| a.version));
            heads.push(
                account
                    .and_then(|a| a.chain_head.as_deref())
                    .and_then(crate::chain::from_hex)
                    .map(|h| h.to_vec()),
            );
            loaded.accounts.insert(*id, account.cloned());
        }
        let now = crate::micros(&self.shared.clock);
        let decided = batch::decide(
            jobs.iter().map(|j| (&j.work, &j.meta)),
            loaded,
            now,
            &self.shared.rates,
            self.shared.view_every,
        );
        let Decided {
            answers,
            writes,
            accounts,
            new_reservations,
        } = decided;
        for (id, account) in accounts {
            self.cache.put(id, account);
        }
        let write_span = span.in_scope(|| observe::write_span(true, writes.events.len()));
        let mut flight: Flight = Box::pin(
            async move {
                let fence = Fence {
                    lock_keys: &lock_keys,
                    ids: &ids,
                    versions: &versions,
                    heads: &heads,
                };
                write(&connection, &writes, Some(&fence)).await?;
                Ok(writes)
            }
            .instrument(write_span),
        );
        // One poll sends the whole pipeline; the answer is awaited later.
        if let std::task::Poll::Ready(result) = futures::poll!(&mut flight) {
            flight = Box::pin(std::future::ready(result));
        }
        Ok(InFlight {
            jobs,
            flight,
            answers,
            new_reservations,
            timer,
            span,
        })
    }
}
