//! The store's error type.

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed (connection, SQL, decoding a stored value).
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A migration could not be applied.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A record the operation depends on does not exist (e.g. a key's team).
    #[error("not found: {0}")]
    NotFound(String),
    /// Duplicate id or hash, or deleting a team that still has live keys.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Bad input: URL, hash, budget, metadata...
    #[error("invalid: {0}")]
    Invalid(String),
    /// The store's own runtime could not start or a task on it failed.
    #[error("store runtime: {0}")]
    Runtime(String),
}

impl StoreError {
    /// A stored JSON column that does not parse.
    pub(crate) fn decode(column: &str, e: serde_json::Error) -> StoreError {
        StoreError::Db(sqlx::Error::ColumnDecode {
            index: column.to_string(),
            source: Box::new(e),
        })
    }
}
