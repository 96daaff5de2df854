//! The long way: a batch that reads what it needs under its locks, then
//! writes; retried when it loses a race, and split up when one of its
//! commands fails (see the parent module).

use std::time::Duration;

use billing_domain::{Account, Hold};
use tokio_postgres::types::Json;
use tracing::Instrument as _;
use uuid::Uuid;

use super::{Job, MAX_ATTEMPTS, Writer, accounts_of};
use crate::StoreError;
use crate::batch::{self, Answer, Decided, Loaded, StoredKey};
use crate::observe;
use crate::outcome::outcome_from;
use crate::pipeline::{Failed, Step, query, write};
use crate::reservation::{folded_views, joined_view, reservation_from_row};

impl Writer {
    /// Runs `jobs` the long way, retrying lost races; an answer per job.
    /// `failure` is how the batch failed when sent the fast way.
    pub(super) async fn process(
        &mut self,
        jobs: &[Job],
        mut failure: Option<Failed>,
    ) -> Vec<Result<Answer, StoreError>> {
        let mut attempt = 0;
        let mut reconnected = false;
        loop {
            attempt += 1;
            let (failed, fresh) = match failure.take() {
                // Sent on an open connection.
                Some(failed) => (failed, false),
                None => {
                    let fresh = self.connection.is_none();
                    let timer = observe::Attempt::start();
                    let result = self.attempt(jobs).await;
                    timer.finish(result.as_ref().map(|_| ()).map_err(|f| &f.error));
                    match result {
                        Ok(answers) => return answers,
                        Err(failed) => (failed, fresh),
                    }
                }
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
                    answers.extend(Box::pin(self.process(std::slice::from_ref(job), None)).await);
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

    /// One try at the whole batch the long way (two round trips, see the
    /// module's doc): an answer per job once it has committed.
    async fn attempt(&mut self, jobs: &[Job]) -> Result<Vec<Result<Answer, StoreError>>, Failed> {
        let now = crate::micros(&self.shared.clock);
        let (ids, lock_keys) = accounts_of(jobs);
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
            let rows = next()?;
            let folded = folded_views(client, &rows, 4).await?;
            for row in rows {
                let key: String = row.try_get(0)?;
                let account = joined_view(&row, 4, &folded)?;
                let outcome = outcome_from(row.try_get(3)?, account, &key)?;
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
            let rows = next()?;
            let folded = folded_views(client, &rows, 5).await?;
            for row in rows {
                let (id, reservation) = reservation_from_row(&row, &folded)?;
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
            let folded = folded_views(&connection.client, &rows, 5).await?;
            for row in rows {
                let (id, reservation) = reservation_from_row(&row, &folded)?;
                loaded.reservations.insert(id, reservation);
            }
        }

        let decided = batch::decide(
            jobs.iter().map(|j| (&j.work, &j.meta)),
            loaded,
            now,
            &self.shared.rates,
            self.shared.view_every,
        );
        write(connection, &decided.writes, None)
            .instrument(observe::write_span(false, decided.writes.events.len()))
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
            Self::CheckpointMoved {
                name,
                expected,
                found,
            } => Self::CheckpointMoved {
                name: name.clone(),
                expected: *expected,
                found: *found,
            },
            Self::CheckpointBusy(name) => Self::CheckpointBusy(name.clone()),
            Self::Database(e) => Self::Corrupt(e.to_string()),
        }
    }
}
