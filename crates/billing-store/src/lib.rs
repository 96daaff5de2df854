//! The PostgreSQL event store and the command path. Only this crate contains
//! SQL.
//!
//! [`Store`] is made once ([`Store::connect`]) and shared: it holds the
//! connection pool, the [`Connector`] every other connection is made by,
//! the rate table and the clock, and it applies the migrations
//! ([`Store::migrate`]) and probes the database. Everything else is done
//! through a handle borrowed from it, one for each part of the system:
//!
//! - [`Store::commands`] ([`Commands`], `command.rs`): the command path with
//!   group commit. Commands queue on their account's writer, which locks a
//!   whole batch's accounts, checks idempotency records, decides each
//!   command in order with the pure domain, then appends the events,
//!   updates the accounts' state and reservation rows, and stores the
//!   idempotency records, all in one transaction.
//! - [`Store::accounts`] ([`Accounts`]): one account as it stands now,
//!   strongly consistent (`read.rs`), as it stood at an instant by a binary
//!   search over its versions (`as_of.rs`), and its views after each event
//!   (`watch.rs`, for `WatchAccount`).
//! - [`Store::feed`] ([`Feed`], `feed/`): the global event feed, with the
//!   `(xid, position)` cursor: a page of it read directly, one account's
//!   events, the checkpoints' leases and how far each reader is behind,
//!   and a reader's wake-ups ([`FeedWakeup`]). Readers that follow it run
//!   a [`Follower`] (or [`Sliced`], a share of the slices of a partitioned
//!   reader) with a [`FeedHandler`]: one query, one loop, a checkpoint
//!   moved after the handler succeeded, one active reader per checkpoint
//!   (a [`Lease`]).
//! - [`Store::read_models`] ([`ReadModels`], `projection/`): a batch of the
//!   feed folded into the read models (`rm_accounts`, `ledger_entries`)
//!   with a pure fold and committed with its checkpoint, their rebuild, and
//!   the queries that list accounts and read the ledger.
//! - [`Store::maintenance`] ([`Maintenance`]): admin and verification. The
//!   hash chains ([`chain`]: each event's hash links it to the account's
//!   previous one) walked for the first broken link and their heads
//!   digested (`verify.rs`), and the sweeper's work: the accounts time has
//!   made due (`read.rs`) and the retention of idempotency records and
//!   resolved reservations (`retention.rs`).
//! - [`Store::webhooks`] ([`Webhooks`], `webhooks.rs`): customer webhooks
//!   and their deliveries as the API reads and changes them, as plain rows
//!   (no events); [`Store::deliveries`] ([`Deliveries`], `deliveries.rs`):
//!   the dispatcher's queue.
//!
//! An event keeps the whole account view after it only on its account's
//! first event and every 32nd ([`Store::with_view_snapshots`]); every other
//! view is folded from the last kept one wherever one is read (`views.rs`:
//! the feed's events, the watch history, as-of reads, webhook payloads,
//! replayed outcomes), with a bounded cache of each account's last view.
//!
//! The handles are `Copy` and hold only a reference to the store:
//! `store.accounts().account(id)`. The store itself is cheap to clone (its
//! parts are shared).
//!
//! [`migrate`] applies the embedded migrations on a client of one's own.
//! [`connect`]: every connection (pool, writers, `LISTEN`, probes, leases)
//! is made by one [`Connector`], which reads libpq's TLS parameters
//! (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`...) from the database URL
//! and verifies the server as libpq does.

#![forbid(unsafe_code)]

mod as_of;
mod batch;
pub mod chain;
mod command;
pub mod connect;
mod deliveries;
mod document;
mod error;
mod feed;
mod migrate;
mod observe;
mod outcome;
mod pipeline;
mod probe;
mod projection;
mod read;
mod reservation;
mod retention;
mod routes;
mod sql;
mod verify;
mod views;
mod watch;
mod webhooks;
mod writer;

use std::sync::{Arc, OnceLock};

use billing_domain::RateTable;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

pub use command::{Answer, Commands};
pub use connect::{Connector, SslMode};
pub use deliveries::{
    AttemptOutcome, AttemptRecord, Backlog, ClaimedDelivery, Deliveries, NewDelivery, WebhookTarget,
};
pub use error::StoreError;
pub use feed::{
    Cursor, Feed, FeedBatch, FeedHandler, FeedRead, FeedWakeup, Follower, Lag, Lease, MAX_CAUSES,
    Pace, SLICES, Slice, Sliced, Start, StoredEvent, causes, slice_of, span_context,
};
pub use migrate::{MIGRATIONS, migrate};
pub use probe::DatabaseProbe;
pub use projection::{
    BatchReport, Gap, LedgerEntry, LedgerQuery, READ_MODELS, ReadModels, RebuildProgress,
};
pub use read::Accounts;
pub use retention::{RETENTION_BATCH, Removed};
pub use verify::{ChainDigest, Maintenance, Verification};
pub use views::{DEFAULT_VIEW_EVERY, MAX_VIEW_EVERY};
pub use watch::{VersionedView, ViewPage};
pub use webhooks::{
    DeliveryStatus, MAX_REPLAY, MAX_WEBHOOKS_PER_CUSTOMER, NewWebhook, Replay, SECRET_PREFIX,
    WEBHOOK_EVENT_TYPES, Webhook, WebhookDelivery, WebhookError, WebhookPatch, WebhookRefusal,
    Webhooks, new_secret,
};

/// Who made a change: recorded on every event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub principal: String,
    pub role: String,
}

impl Actor {
    /// The service itself (the sweeper's housekeeping).
    pub fn system() -> Self {
        Self {
            principal: "billing-sweeper".to_owned(),
            role: "system".to_owned(),
        }
    }
}

/// An idempotency key and what it was first used for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    /// The RPC, so a key reused across RPCs is caught too.
    pub operation: &'static str,
    /// A hash of the request without its key: the same key with another
    /// request is refused.
    pub request_hash: Vec<u8>,
}

/// What a command carries besides its own fields.
#[derive(Clone, Debug)]
pub struct RequestMeta {
    pub actor: Actor,
    pub idempotency: Option<Idempotency>,
    pub trace_id: Option<String>,
    /// The request's span (W3C, 16 hex digits) when it is traced: stored on
    /// its events, so the work they cause later (projection, publishing)
    /// links back to it.
    pub span_id: Option<String>,
}

/// The time source; tests may pin it.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Group-commit writers a store starts unless told otherwise. One makes the
/// largest batches, so the least PostgreSQL work per change: on two cores it
/// beat two and four writers at every load `make bench` runs (BENCHMARKS.md).
/// More cores may want more.
pub const DEFAULT_WRITERS: usize = 1;

/// Accounts each group-commit writer keeps in memory, unless told
/// otherwise: about 2 KB each with their holds (more for accounts with many
/// live holds or promotional grants).
pub const DEFAULT_WRITER_CACHE: usize = 16_384;

/// Accounts whose last view the feed's readers remember, unless told
/// otherwise: about 1 KB each in memory.
pub const DEFAULT_VIEW_CACHE: usize = 16_384;

/// `clock`'s time to the microsecond.
fn micros(clock: &Clock) -> DateTime<Utc> {
    let now = clock();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// The PostgreSQL store: what is shared (the pool, the connector, the
/// rates, the clock, the writers), and a handle for each part (the crate's
/// comment). Cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// Connections for commands and reads.
    pool: Pool,
    /// For connections of their own (LISTEN, writers, probes, leases): the
    /// same configuration and TLS connector as the pool's.
    connector: Connector,
    /// Rates for new charges; each charge records the rate it used.
    rates: Arc<RateTable>,
    /// Where "now" comes from.
    clock: Clock,
    /// How many group-commit writers to start.
    writer_count: usize,
    /// The group-commit writers, started on first use (on the runtime of
    /// that use) and stopped when the last clone of the store is dropped.
    writers: Arc<OnceLock<writer::Writers>>,
    /// Which account holds each reservation id, for routing.
    routes: Arc<routes::Routes>,
    /// Every how many versions an event keeps the account view after it
    /// (`views.rs`).
    view_every: i64,
    /// The last view the feed's readers saw of each account.
    view_cache: Arc<views::ViewCache>,
    /// Accounts each group-commit writer keeps in memory.
    writer_cache: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("pool", &self.pool.status())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A store over a pool of at most `pool_size` connections to
    /// `database_url`, a libpq connection string whose TLS parameters
    /// (`sslmode`, `sslrootcert`...) are honoured as libpq does (see
    /// [`connect`]). Connects lazily; reads the certificate files now.
    pub fn connect(
        database_url: &str,
        pool_size: usize,
        rates: RateTable,
    ) -> Result<Self, StoreError> {
        Self::with_connector(Connector::new(database_url)?, pool_size, rates)
    }

    /// A store over a pool of at most `pool_size` connections made by
    /// `connector`. Connects lazily.
    pub fn with_connector(
        connector: Connector,
        pool_size: usize,
        rates: RateTable,
    ) -> Result<Self, StoreError> {
        let manager = Manager::from_config(
            connector.config().clone(),
            connector.tls().clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .wait_timeout(Some(std::time::Duration::from_secs(5)))
            .create_timeout(Some(std::time::Duration::from_secs(5)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Config(e.to_string()))?;
        Ok(Self {
            pool,
            connector,
            rates: Arc::new(rates),
            clock: Arc::new(Utc::now),
            writer_count: DEFAULT_WRITERS,
            writers: Arc::default(),
            routes: Arc::default(),
            view_every: views::DEFAULT_VIEW_EVERY,
            view_cache: Arc::new(views::ViewCache::new(DEFAULT_VIEW_CACHE)),
            writer_cache: DEFAULT_WRITER_CACHE,
        })
    }

    /// The same store with another clock (and writers of its own).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self.writers = Arc::default();
        self
    }

    /// The same store with `count` group-commit writers (and writers of its
    /// own). Each has one database connection of its own, besides the pool.
    pub fn with_writers(mut self, count: usize) -> Self {
        self.writer_count = count.max(1);
        self.writers = Arc::default();
        self
    }

    /// The same store keeping the account view on every `every`-th event
    /// of an account (and its first), 1 to [`MAX_VIEW_EVERY`]: 1 keeps it
    /// on every event, as releases before views were folded did (and still
    /// read). Its writers are its own.
    pub fn with_view_snapshots(mut self, every: i64) -> Self {
        self.view_every = every.clamp(1, MAX_VIEW_EVERY);
        self.writers = Arc::default();
        self
    }

    /// The same store whose writers each keep at most `accounts` accounts
    /// in memory (at least 1; and writers of its own). A command on an
    /// account in its writer's memory skips the account's read and lock
    /// (the fast way, `writer/fast.rs`); the others take the long way.
    pub fn with_writer_cache(mut self, accounts: usize) -> Self {
        self.writer_cache = accounts.max(1);
        self.writers = Arc::default();
        self
    }

    /// The same store remembering the last view of at most `accounts`
    /// accounts for the feed's readers (0: none; see `views.rs`).
    pub fn with_view_cache(mut self, accounts: usize) -> Self {
        self.view_cache = Arc::new(views::ViewCache::new(accounts));
        self
    }

    fn writers(&self) -> &writer::Writers {
        self.writers.get_or_init(|| {
            writer::Writers::start(
                self.writer_count,
                Arc::new(writer::Shared {
                    connector: self.connector.clone(),
                    rates: self.rates.clone(),
                    clock: self.clock.clone(),
                    routes: self.routes.clone(),
                    view_every: self.view_every,
                    cached_accounts: self.writer_cache,
                }),
            )
        })
    }

    pub fn rates(&self) -> &RateTable {
        &self.rates
    }

    /// The clock's time, to the microsecond: what PostgreSQL keeps, so a
    /// state folded from stored events equals the stored state.
    pub fn now(&self) -> DateTime<Utc> {
        micros(&self.clock)
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let mut client = self.pool.get().await?;
        migrate(&mut client).await
    }

    /// A health probe on a connection of its own (see [`DatabaseProbe`]).
    pub fn database_probe(&self) -> DatabaseProbe {
        DatabaseProbe::new(self.connector.clone())
    }

    /// The command path: create accounts and run commands.
    pub fn commands(&self) -> Commands<'_> {
        Commands { store: self }
    }

    /// Reads of accounts: now (strongly consistent), at an instant, and
    /// their views after each event.
    pub fn accounts(&self) -> Accounts<'_> {
        Accounts { store: self }
    }

    /// The event feed: read directly, its leases and lag, wake-ups.
    pub fn feed(&self) -> Feed<'_> {
        Feed { store: self }
    }

    /// The read models: projection, rebuild, account lists and the ledger.
    pub fn read_models(&self) -> ReadModels<'_> {
        ReadModels { store: self }
    }

    /// Admin and verification: hash chains and their digests, housekeeping
    /// and retention.
    pub fn maintenance(&self) -> Maintenance<'_> {
        Maintenance { store: self }
    }

    /// Customers' webhooks and their deliveries (the webhook API).
    pub fn webhooks(&self) -> Webhooks<'_> {
        Webhooks { store: self }
    }

    /// The webhook dispatcher's queue of deliveries.
    pub fn deliveries(&self) -> Deliveries<'_> {
        Deliveries { store: self }
    }

    /// The connection pool's state now, for metrics.
    pub fn pool_status(&self) -> PoolStatus {
        let status = self.pool.status();
        PoolStatus {
            max_size: status.max_size,
            size: status.size,
            available: status.available,
            waiting: status.waiting,
        }
    }
}

/// The connection pool's state (the command writers' own connections
/// aside).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStatus {
    /// The most connections the pool opens.
    pub max_size: usize,
    /// Connections open now.
    pub size: usize,
    /// Open connections not in use.
    pub available: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}
