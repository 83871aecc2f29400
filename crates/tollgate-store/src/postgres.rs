//! The PostgreSQL backend: connection setup; the queries are in `ops.rs`.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Pool, Transaction};

use crate::{migrations, redact_url, StoreError};

/// The database `ops.rs` is compiled for in this module.
pub(crate) type Db = sqlx::Postgres;

/// PostgreSQL takes only `$N` placeholders.
pub(crate) const ANONYMOUS_PLACEHOLDERS: bool = false;

// `ops.rs` is compiled once per backend on purpose.
#[allow(clippy::duplicate_mod)]
#[path = "ops.rs"]
pub(crate) mod ops;

/// Opens the pool and migrates. sqlx's PostgreSQL migrator takes a session advisory
/// lock (`pg_advisory_lock`, keyed on the database name) before it even creates its
/// bookkeeping table, so processes opening the same database at once take turns.
pub(crate) async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::Invalid(format!("PostgreSQL URL {:?}: {e}", redact_url(url))))?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .connect_with(options)
        .await?;
    migrations::migrator(migrations::POSTGRES)
        .await?
        .run(&pool)
        .await?;
    Ok(pool)
}

/// A write transaction. Every team/key write starts by updating the one
/// `state_version` row, whose row lock serialises those writers.
pub(crate) async fn begin_write(pool: &Pool<Db>) -> Result<Transaction<'static, Db>, StoreError> {
    Ok(pool.begin().await?)
}
