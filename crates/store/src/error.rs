//! Store errors, and the one place sqlx errors are classified.

/// What went wrong in a store call, in terms the services map to gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The resource does not exist (or is deleted).
    #[error("not found")]
    NotFound,
    /// A resource with this id already exists.
    #[error("already exists")]
    AlreadyExists,
    /// The row changed since it was read; the caller may re-read and retry.
    #[error("concurrent modification")]
    Conflict,
    /// The change is refused in the current state, e.g. deleting a group that keys use.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The database could not be reached or timed out; worth retrying.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else: a bug or corrupt data.
    #[error("database error: {0}")]
    Internal(String),
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        use sqlx::error::ErrorKind;
        match &error {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) => match db.kind() {
                ErrorKind::UniqueViolation => StoreError::AlreadyExists,
                ErrorKind::ForeignKeyViolation => StoreError::NotFound,
                // Postgres: serialization failure, deadlock, too many connections, shutdown.
                _ if matches!(db.code().as_deref(), Some("40001" | "40P01" | "53300" | "57P01" | "57P03")) => {
                    StoreError::Unavailable(error)
                }
                // SQLite: SQLITE_BUSY / SQLITE_LOCKED.
                _ if matches!(db.code().as_deref(), Some("5" | "6" | "517" | "262")) => StoreError::Unavailable(error),
                _ => StoreError::Internal(error.to_string()),
            },
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => StoreError::Unavailable(error),
            _ => StoreError::Internal(error.to_string()),
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(error: serde_json::Error) -> Self {
        StoreError::Internal(format!("corrupt stored list: {error}"))
    }
}
