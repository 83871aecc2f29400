//! The migrations of `migrations/<backend>/`, embedded in the binary.
//!
//! This is what `sqlx::migrate!` generates (same versions, descriptions and SHA-384
//! checksums, so `sqlx migrate` on the same directory agrees), without pulling
//! sqlx's proc-macro crate, which would compile both database drivers (and SQLite's
//! C sources) a second time for the host.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

/// `(version, description, sql)` of each migration file `<version>_<description>.sql`.
pub(crate) type Embedded = &'static [(i64, &'static str, &'static str)];

pub(crate) const SQLITE: Embedded = &[
    (
        1,
        "init",
        include_str!("../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "apis",
        include_str!("../migrations/sqlite/0002_apis.sql"),
    ),
];

pub(crate) const POSTGRES: Embedded = &[
    (
        1,
        "init",
        include_str!("../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "apis",
        include_str!("../migrations/postgres/0002_apis.sql"),
    ),
];

#[derive(Debug)]
struct Source(Embedded);

impl MigrationSource<'static> for Source {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        let migrations = self
            .0
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    Cow::Borrowed(sql),
                    false,
                )
            })
            .collect();
        Box::pin(async move { Ok(migrations) })
    }
}

/// The migrator for one backend's embedded migrations (locking on, as by default).
pub(crate) async fn migrator(m: Embedded) -> Result<Migrator, sqlx::migrate::MigrateError> {
    Migrator::new(Source(m)).await
}
