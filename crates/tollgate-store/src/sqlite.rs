//! The SQLite backend: connection setup; the queries are in `ops.rs`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, SqlitePool, Transaction};

use crate::{migrations, redact_url, StoreError};

/// The database `ops.rs` is compiled for in this module.
pub(crate) type Db = sqlx::Sqlite;

/// The ledger's multi-row INSERT uses anonymous `?` placeholders here: sqlx
/// looks up every parameter's name when it binds (`sqlite3_bind_parameter_name`,
/// a linear scan over the statement's named parameters), so 17,000 `$N`
/// placeholders cost O(n²) per batch; anonymous ones have no name to scan for.
pub(crate) const ANONYMOUS_PLACEHOLDERS: bool = true;

// `ops.rs` is compiled once per backend on purpose.
#[allow(clippy::duplicate_mod)]
#[path = "ops.rs"]
pub(crate) mod ops;

/// How long a connection waits for another one's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the pool (creating the file and its directory if missing) and migrates.
pub(crate) async fn connect(url: &str, max_connections: u32) -> Result<SqlitePool, StoreError> {
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    let mut options = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::Invalid(format!("SQLite URL {:?}: {e}", redact_url(url))))?
        .create_if_missing(true)
        .foreign_keys(true)
        .busy_timeout(BUSY_TIMEOUT);
    let mut pool = SqlitePoolOptions::new().max_connections(max_connections);
    if in_memory {
        // The database lives as long as one connection does: keep one forever.
        pool = pool
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None);
    } else {
        options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        if let Some(dir) = options.get_filename().parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Invalid(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
        }
    }
    let pool = pool.connect_with(options).await?;
    migrations::migrator(migrations::SQLITE)
        .await?
        .run(&pool)
        .await?;
    Ok(pool)
}

/// A write transaction. `BEGIN IMMEDIATE` takes the write lock up front, waiting up
/// to the busy timeout, so a transaction never fails half-way on a lock upgrade.
pub(crate) async fn begin_write(pool: &Pool<Db>) -> Result<Transaction<'static, Db>, StoreError> {
    Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
}
