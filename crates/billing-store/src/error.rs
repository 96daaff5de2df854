//! Store failures, as distinct from rejected commands.

/// The database failed or is unreachable; the command's outcome is unknown to
/// the caller only if the failure came at commit.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(#[source] tokio_postgres::Error),
    #[error("stored data does not decode: {0}")]
    Corrupt(String),
    #[error("invalid database configuration: {0}")]
    Config(String),
    #[error("gave up after {0} conflicting attempts")]
    Contention(usize),
    /// The account moved on between load and append; the command is retried.
    #[error("the account changed concurrently")]
    Conflict,
    /// A feed reader's checkpoint was not where its batch began (`billing
    /// rebuild` moved it): the batch is read again from there.
    #[error(
        "checkpoint {name} moved from {expected:?} to {found:?} (a rebuild?); reading again from it"
    )]
    CheckpointMoved {
        name: String,
        expected: crate::Cursor,
        found: crate::Cursor,
    },
    /// A feed reader's checkpoint row is locked (`billing rebuild` is
    /// running): the batch is tried again after a back-off.
    #[error("checkpoint {0} is locked (a rebuild is running); trying again")]
    CheckpointBusy(String),
}

impl StoreError {
    /// Whether running the command again may succeed: a concurrent writer
    /// won a race (unique violation, serialization failure, deadlock).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Conflict)
            || matches!(self.sqlstate(), Some("23505" | "40001" | "40P01"))
    }

    /// The SQLSTATE of a database error, if any.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Self::Database(e) => e.code().map(|c| c.code()),
            _ => None,
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        let unavailable = e.is_closed()
            || e.code().is_some_and(|c| {
                let code = c.code();
                // Connection exceptions, operator intervention (shutdown),
                // insufficient resources.
                code.starts_with("08") || code.starts_with("57") || code.starts_with("53")
            })
            || (e.code().is_none()
                && std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>()));
        if unavailable {
            // With its causes: tokio-postgres's own message is only the
            // kind of failure ("error connecting to server").
            Self::Unavailable(crate::connect::describe(&e))
        } else {
            Self::Database(e)
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        Self::Corrupt(e.to_string())
    }
}
