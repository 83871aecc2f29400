//! Throwaway stores for tests (feature `test-util`).
//!
//! [`fresh_sqlite`] makes a file database in a new temporary directory;
//! [`fresh_postgres`] makes a new database on the PostgreSQL server named by
//! `TOLLGATE_TEST_PG_URL` (default [`DEFAULT_PG_URL`]). Both guards delete their
//! database when dropped, so bind them to a named variable (`_guard`, not `_`).
//! PostgreSQL not being reachable is a test failure, not a skip.
//!
//! [`store_test!`](crate::store_test) runs one test body against both backends.

use std::future::Future;
use std::path::Path;

use sqlx::{Connection, Executor, PgConnection};

use crate::Store;

/// The server the PostgreSQL tests use unless `TOLLGATE_TEST_PG_URL` says otherwise.
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Pool size of the stores made here.
const TEST_POOL: u32 = 3;

/// Keeps a test SQLite database's directory alive; removes it when dropped.
#[derive(Debug)]
pub struct TempDirGuard {
    dir: tempfile::TempDir,
    url: String,
}

impl TempDirGuard {
    /// The `sqlite://` URL of the database, to open it again.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The temporary directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A store on a new SQLite file in a fresh temporary directory.
pub async fn fresh_sqlite() -> (Store, TempDirGuard) {
    let dir = match tempfile::Builder::new().prefix("tollgate-store-").tempdir() {
        Ok(dir) => dir,
        Err(e) => panic!("cannot create a temporary directory: {e}"),
    };
    let url = format!("sqlite://{}", dir.path().join("tollgate.db").display());
    let store = match Store::open(&url, TEST_POOL).await {
        Ok(store) => store,
        Err(e) => panic!("cannot open {url}: {e}"),
    };
    (store, TempDirGuard { dir, url })
}

/// Keeps a test PostgreSQL database alive; drops it (`WITH (FORCE)`) when dropped.
#[derive(Debug)]
pub struct PgGuard {
    admin_url: String,
    name: String,
    url: String,
}

impl PgGuard {
    /// The URL of the database, for other stores or processes.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name (`tollgate_test_<hex>`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for PgGuard {
    fn drop(&mut self) {
        // Best effort, on a thread of its own with a runtime of its own, so this works
        // inside or outside an async context.
        let admin_url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let dropper = std::thread::Builder::new()
            .name("tollgate-test-pg-drop".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    if let Ok(mut conn) = PgConnection::connect(&admin_url).await {
                        let _ = conn.execute(sql.as_str()).await;
                        let _ = conn.close().await;
                    }
                });
            });
        if let Ok(handle) = dropper {
            let _ = handle.join();
        }
    }
}

/// The admin URL of the test server.
pub fn pg_admin_url() -> String {
    std::env::var("TOLLGATE_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_string())
}

/// `url` with its database name replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.find('?') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, ""),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    format!("{}/{db}{query}", &base[..path_start])
}

/// A new, empty (unmigrated) PostgreSQL database. Panics, telling how to start
/// PostgreSQL, when the server is not reachable.
pub async fn empty_postgres() -> PgGuard {
    let admin_url = pg_admin_url();
    let mut conn = match PgConnection::connect(&admin_url).await {
        Ok(conn) => conn,
        Err(e) => panic!(
            "PostgreSQL is not reachable at {admin_url} ({e}). The store tests need it: \
             start it (e.g. `service postgresql start` or `pg_ctlcluster 15 main start`), \
             or set TOLLGATE_TEST_PG_URL to a server where the user may CREATE DATABASE."
        ),
    };
    let name = format!("tollgate_test_{:016x}", rand::random::<u64>());
    if let Err(e) = conn
        .execute(format!("CREATE DATABASE \"{name}\"").as_str())
        .await
    {
        panic!("cannot CREATE DATABASE {name} on {admin_url}: {e}");
    }
    let _ = conn.close().await;
    let url = with_database(&admin_url, &name);
    PgGuard {
        admin_url,
        name,
        url,
    }
}

/// A store on a new PostgreSQL database (see [`empty_postgres`]).
pub async fn fresh_postgres() -> (Store, PgGuard) {
    let guard = empty_postgres().await;
    let store = match Store::open(guard.url(), TEST_POOL).await {
        Ok(store) => store,
        Err(e) => panic!("cannot open {}: {e}", guard.url()),
    };
    (store, guard)
}

/// Awaits a test body (used by [`store_test!`](crate::store_test)).
pub async fn run<Fut: Future<Output = ()>>(body: Fut) {
    body.await
}

/// Defines a test module that runs one async body against a fresh SQLite store
/// (`sqlite`) and a fresh PostgreSQL store (`postgres`):
///
/// ```ignore
/// store_test!(creates_teams, |store| async move {
///     assert!(store.list_teams().await.unwrap().is_empty());
/// });
/// // With the database URL too (to open a second store on the same database):
/// store_test!(reopens, |store, url| async move { /* … */ });
/// ```
///
/// The calling crate needs `tokio` (with `macros`) as a dev-dependency. The store is
/// dropped inside the test's runtime when the body ends.
#[macro_export]
macro_rules! store_test {
    ($name:ident, |$store:ident| $body:expr) => {
        $crate::store_test!($name, |$store, _url| $body);
    };
    ($name:ident, |$store:ident, $url:ident| $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                let (store, guard) = $crate::testing::fresh_sqlite().await;
                #[allow(unused_variables)]
                let $url: ::std::string::String = guard.url().to_string();
                let $store: $crate::Store = store;
                $crate::testing::run($body).await;
                drop(guard);
            }

            #[tokio::test]
            async fn postgres() {
                let (store, guard) = $crate::testing::fresh_postgres().await;
                #[allow(unused_variables)]
                let $url: ::std::string::String = guard.url().to_string();
                let $store: $crate::Store = store;
                $crate::testing::run($body).await;
                drop(guard);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_database() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/postgres?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
    }
}
