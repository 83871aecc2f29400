//! Durable state of the gateway: teams, managed client keys (only the SHA-256 of
//! each secret, never the secret), prompt APIs with their subscriptions and audit
//! log, and the usage ledger.
//!
//! The store is SQLite embedded in the process by default (one file, WAL journal,
//! `synchronous=NORMAL`, a busy timeout), or PostgreSQL when a `postgres://` URL is
//! configured. The schema is created and upgraded by versioned migrations, one
//! directory per backend (`migrations/sqlite`, `migrations/postgres`), embedded in
//! the binary and run by [`Store::open`]. On PostgreSQL sqlx's migrator holds a
//! database-wide advisory lock while it runs, so several processes may open the
//! same database at once.
//!
//! Every team, key, API or subscription write bumps one counter
//! ([`Store::version`]) in the same transaction and stamps the written row with the
//! new value, so the data plane can poll cheaply for changes
//! ([`Store::changed_keys`]). Deleted keys stay as tombstones so pollers see the
//! deletion. API and subscription writes also append to an audit log
//! ([`Store::list_api_events`]).
//!
//! # Durability of the usage ledger
//!
//! [`Store::insert_usage`] commits a whole batch in **one transaction**: either every
//! new record of the batch is stored or none is, and inserting a record whose
//! `request_id` is already stored is a no-op, so a batch can be retried safely.
//! Once it returns `Ok`, the records are as durable as the backend's commit: on
//! SQLite (WAL + `synchronous=NORMAL`) they survive a crash of the process (a power
//! loss may lose the last commits, never corrupt the file); on PostgreSQL a
//! committed transaction survives a crash of the server.
//!
//! # Runtimes
//!
//! sqlx connections belong to the tokio runtime that created them, and the gateway
//! runs several runtimes. A [`Store`] therefore owns a small runtime of its own
//! (threads named `tollgate-store`); every method runs its database work there and
//! only awaits the result, so a `Store` may be used from any runtime, or from
//! none (any executor can await its futures). Dropping the last handle shuts that
//! runtime down in the background, which is allowed inside an async context.

mod error;
mod migrations;
mod postgres;
mod sqlite;
mod types;
mod validate;

#[cfg(feature = "test-util")]
pub mod testing;

use std::fmt;
use std::future::Future;
use std::sync::Arc;

pub use error::StoreError;
pub use types::{
    ApiEvent, ApiPatch, ApiRecord, BudgetSpec, GroupBy, KeyPatch, KeyRecord, LimitSpec, LimitUsage,
    NewApi, NewKey, NewTeam, ParseGroupByError, Spend, StatusChange, Subscription, Team, TeamPatch,
    UsageQuery, UsageRecord, UsageRow,
};

/// Which database a [`Store`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// An SQLite file (or an in-memory database in tests).
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Backend {
    /// The backend a store URL names, or [`StoreError::Invalid`].
    pub fn from_url(url: &str) -> Result<Backend, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::Invalid(format!(
                "store URL must start with sqlite:, postgres:// or postgresql:// (got {:?})",
                redact_url(url)
            )))
        }
    }

    /// `sqlite` or `postgres`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A URL with any password replaced by `***`, for messages.
pub(crate) fn redact_url(url: &str) -> String {
    // scheme://user:password@host/...
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            let userinfo = &rest[..at];
            if let Some(colon) = userinfo.find(':') {
                return format!(
                    "{}://{}:***{}",
                    &url[..scheme_end],
                    &userinfo[..colon],
                    &rest[at..]
                );
            }
        }
    }
    url.to_string()
}

enum DbPool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// Owns the store's runtime; dropping it never blocks, so it is safe in async code.
struct StoreRuntime(Option<tokio::runtime::Runtime>);

impl StoreRuntime {
    fn new() -> Result<StoreRuntime, StoreError> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tollgate-store")
            .enable_all()
            .build()
            .map(|rt| StoreRuntime(Some(rt)))
            .map_err(|e| StoreError::Runtime(format!("cannot start the store runtime: {e}")))
    }

    /// Runs `fut` on the store runtime and waits for its result from any context.
    async fn run<T, F>(&self, fut: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let rt = self
            .0
            .as_ref()
            .ok_or_else(|| StoreError::Runtime("the store runtime is gone".into()))?;
        rt.spawn(fut)
            .await
            .map_err(|e| StoreError::Runtime(format!("store task failed: {e}")))?
    }
}

impl Drop for StoreRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

struct Inner {
    // Declared before `rt`, so the pool is dropped while the runtime still exists.
    pool: DbPool,
    rt: StoreRuntime,
}

/// Handle to the durable state. Cheap to clone; all clones share one pool and one
/// runtime, which are released when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

/// Runs `$op` of the backend module on the store runtime with a clone of the pool.
/// Arguments are evaluated inside the spawned task, so they must name owned values.
macro_rules! on_store {
    ($self:ident, $op:ident ( $($arg:expr),* )) => {
        match &$self.inner.pool {
            DbPool::Sqlite(pool) => {
                let pool = pool.clone();
                $self
                    .inner
                    .rt
                    .run(async move { sqlite::ops::$op(&pool, $($arg),*).await })
                    .await
            }
            DbPool::Postgres(pool) => {
                let pool = pool.clone();
                $self
                    .inner
                    .rt
                    .run(async move { postgres::ops::$op(&pool, $($arg),*).await })
                    .await
            }
        }
    };
}

impl Store {
    /// Opens (and migrates) the store at `url`:
    /// `sqlite:///abs/path.db`, `sqlite://relative.db`, `sqlite::memory:` (tests), or
    /// `postgres://…` / `postgresql://…`.
    ///
    /// Creates the SQLite file (and its directory) if missing, then runs the pending
    /// migrations. The pool holds at most `max_connections` connections.
    pub async fn open(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        let backend = Backend::from_url(url)?;
        if max_connections == 0 {
            return Err(StoreError::Invalid(
                "max_connections must be at least 1".into(),
            ));
        }
        let rt = StoreRuntime::new()?;
        let url = url.to_string();
        let pool = rt
            .run(async move {
                Ok(match backend {
                    Backend::Sqlite => {
                        DbPool::Sqlite(sqlite::connect(&url, max_connections).await?)
                    }
                    Backend::Postgres => {
                        DbPool::Postgres(postgres::connect(&url, max_connections).await?)
                    }
                })
            })
            .await?;
        Ok(Store {
            inner: Arc::new(Inner { pool, rt }),
        })
    }

    /// Which database this store runs on.
    pub fn backend(&self) -> Backend {
        match self.inner.pool {
            DbPool::Sqlite(_) => Backend::Sqlite,
            DbPool::Postgres(_) => Backend::Postgres,
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_store!(self, ping())
    }

    /// Closes the pool gracefully (for every clone of this handle): waits for
    /// connections in use to be returned, then closes them all. Later calls fail.
    pub async fn close(&self) -> Result<(), StoreError> {
        match &self.inner.pool {
            DbPool::Sqlite(pool) => {
                let pool = pool.clone();
                self.inner
                    .rt
                    .run(async move {
                        pool.close().await;
                        Ok(())
                    })
                    .await
            }
            DbPool::Postgres(pool) => {
                let pool = pool.clone();
                self.inner
                    .rt
                    .run(async move {
                        pool.close().await;
                        Ok(())
                    })
                    .await
            }
        }
    }

    /// The change counter: bumped in the same transaction as every team, key, API or
    /// subscription write.
    pub async fn version(&self) -> Result<i64, StoreError> {
        on_store!(self, version())
    }

    /// Creates a team. [`StoreError::Conflict`] if the id is taken.
    pub async fn create_team(&self, t: &NewTeam) -> Result<Team, StoreError> {
        let mut t = t.clone();
        validate::new_team(&mut t)?;
        on_store!(self, create_team(&t))
    }

    /// Every team, ordered by id.
    pub async fn list_teams(&self) -> Result<Vec<Team>, StoreError> {
        on_store!(self, list_teams())
    }

    /// One team.
    pub async fn get_team(&self, id: &str) -> Result<Option<Team>, StoreError> {
        let id = id.to_string();
        on_store!(self, get_team(&id))
    }

    /// Applies `p` to a team; `None` if there is no such team.
    pub async fn update_team(&self, id: &str, p: &TeamPatch) -> Result<Option<Team>, StoreError> {
        let id = id.to_string();
        let mut p = p.clone();
        validate::team_patch(&mut p)?;
        on_store!(self, update_team(&id, &p))
    }

    /// Deletes a team; `false` if there was none. [`StoreError::Conflict`] while live
    /// (non-deleted) keys belong to it.
    pub async fn delete_team(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        on_store!(self, delete_team(&id))
    }

    /// Creates a key. [`StoreError::Conflict`] on a duplicate id or hash,
    /// [`StoreError::NotFound`] if `team_id` names no team, [`StoreError::Invalid`] if
    /// the hash is not 64 lowercase hex digits.
    pub async fn create_key(&self, k: &NewKey) -> Result<KeyRecord, StoreError> {
        let mut k = k.clone();
        validate::new_key(&mut k)?;
        on_store!(self, create_key(&k))
    }

    /// Live keys (of one team, if given), ordered by `created_at`, then id.
    pub async fn list_keys(&self, team_id: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        let team_id = team_id.map(str::to_string);
        on_store!(self, list_keys(team_id.as_deref()))
    }

    /// One live key (deleted keys are `None`).
    pub async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let id = id.to_string();
        on_store!(self, get_key(&id))
    }

    /// Applies `p` to a live key; `None` if there is none. [`StoreError::NotFound`] if
    /// `p.team_id` names no team.
    pub async fn update_key(
        &self,
        id: &str,
        p: &KeyPatch,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let id = id.to_string();
        let mut p = p.clone();
        validate::key_patch(&mut p)?;
        on_store!(self, update_key(&id, &p))
    }

    /// Replaces a live key's hash and prefix and sets `rotated_at`; `None` if there is
    /// no such key. [`StoreError::Conflict`] if another key has `new_hash`.
    pub async fn rotate_key(
        &self,
        id: &str,
        new_hash: &str,
        new_prefix: &str,
    ) -> Result<Option<KeyRecord>, StoreError> {
        validate::hash(new_hash)?;
        let id = id.to_string();
        let new_hash = new_hash.to_string();
        let new_prefix = new_prefix.to_string();
        on_store!(self, rotate_key(&id, &new_hash, &new_prefix))
    }

    /// Deletes a key, leaving a tombstone (`deleted = true`, new version) that
    /// [`Store::changed_keys`] returns; `false` if there was no live key.
    pub async fn delete_key(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        on_store!(self, delete_key(&id))
    }

    /// Every key (deleted ones too) whose version is greater than `since`, ordered by
    /// version. `since = 0` = all.
    pub async fn changed_keys(&self, since: i64) -> Result<Vec<KeyRecord>, StoreError> {
        on_store!(self, changed_keys(since))
    }

    /// Inserts a batch in ONE transaction, idempotent on `request_id` (records already
    /// stored are skipped), with multi-row INSERTs chunked to stay under the backends'
    /// bind-parameter limits. Returns the number of rows inserted. Once this returns
    /// `Ok`, the records are durable (see the crate documentation).
    pub async fn insert_usage(&self, batch: &[UsageRecord]) -> Result<u64, StoreError> {
        if batch.is_empty() {
            return Ok(0);
        }
        let batch = batch.to_vec();
        on_store!(self, insert_usage(&batch))
    }

    /// Summed usage in `q`'s range: one row per group, ordered by group (`None`
    /// first), or exactly one row when `q.group_by` is `None` (zeros for an empty
    /// range).
    pub async fn usage_totals(&self, q: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let q = q.clone();
        on_store!(self, usage_totals(&q))
    }

    /// Summed usage per (bucket, group), with `bucket_ms = floor(ts_ms / bucket_ms) *
    /// bucket_ms`, ordered by bucket then group. Empty buckets are absent.
    pub async fn usage_series(
        &self,
        q: &UsageQuery,
        bucket_ms: i64,
    ) -> Result<Vec<UsageRow>, StoreError> {
        if bucket_ms <= 0 {
            return Err(StoreError::Invalid("bucket_ms must be positive".into()));
        }
        let q = q.clone();
        on_store!(self, usage_series(&q, bucket_ms))
    }

    /// At most `limit` records in `q`'s range, ordered by `(ts_ms, request_id)`,
    /// strictly after the cursor `after` (the last record of the previous page).
    /// `q.group_by` is ignored.
    pub async fn usage_records(
        &self,
        q: &UsageQuery,
        limit: i64,
        after: Option<(i64, String)>,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        if limit < 0 {
            return Err(StoreError::Invalid("limit must not be negative".into()));
        }
        if limit == 0 {
            return Ok(Vec::new());
        }
        let q = q.clone();
        on_store!(self, usage_records(&q, limit, after))
    }

    /// Summed cost since `since_ms` (inclusive), per key id and per team id (records
    /// without a team are not in `by_team`).
    pub async fn spend_since(&self, since_ms: i64) -> Result<Spend, StoreError> {
        on_store!(self, spend_since(since_ms))
    }

    /// Requests and tokens per (key, team, model) in the `window_ms` before
    /// `now_ms`, in bins of `bin_ms` (bin 0 the newest): what the limit
    /// buckets of a starting process are charged with.
    pub async fn limit_usage(
        &self,
        now_ms: i64,
        window_ms: i64,
        bin_ms: i64,
    ) -> Result<Vec<LimitUsage>, StoreError> {
        on_store!(self, limit_usage(now_ms, window_ms, bin_ms))
    }

    /// Number of records in the ledger.
    pub async fn usage_count(&self) -> Result<i64, StoreError> {
        on_store!(self, usage_count())
    }

    // ------------------------------------------------------------ prompt APIs
    //
    // Every write below bumps the change counter, stamps the written row's
    // `row_version` and appends an entry to the API audit log (with `actor`), all in
    // one transaction. The store checks only its own invariants (non-empty names,
    // known statuses); who may do what is the caller's business.

    /// Creates one version of an API. [`StoreError::Conflict`] if `(name, version)`
    /// exists. Logs `created` with `{"status"}`.
    pub async fn create_api(&self, a: &NewApi, actor: &str) -> Result<ApiRecord, StoreError> {
        validate::new_api(a)?;
        let a = a.clone();
        let actor = actor.to_string();
        on_store!(self, create_api(&a, &actor))
    }

    /// Every API version, ordered by name, then version (`v<N>` numerically, so
    /// `v2` < `v10`, before any other version; then bytewise).
    pub async fn list_apis(&self) -> Result<Vec<ApiRecord>, StoreError> {
        on_store!(self, list_apis())
    }

    /// One API version.
    pub async fn get_api(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<ApiRecord>, StoreError> {
        let name = name.to_string();
        let version = version.to_string();
        on_store!(self, get_api(&name, &version))
    }

    /// Applies `p` to an API version; `None` if there is none. Logs `updated` with
    /// `{"fields": [...]}` (the fields `p` gives).
    pub async fn update_api(
        &self,
        name: &str,
        version: &str,
        p: &ApiPatch,
        actor: &str,
    ) -> Result<Option<ApiRecord>, StoreError> {
        let name = name.to_string();
        let version = version.to_string();
        let p = p.clone();
        let actor = actor.to_string();
        on_store!(self, update_api(&name, &version, &p, &actor))
    }

    /// Moves an API version to `c.to` if its current status is in
    /// `c.allowed_from` (checked in the transaction), setting `deprecated_at` and
    /// `sunset_at` when `c` gives them; `None` if there is no such version,
    /// [`StoreError::Conflict`] if the current status is not allowed. Logs `status`
    /// with `{"from", "to", "sunset_at"}`.
    pub async fn set_api_status(
        &self,
        name: &str,
        version: &str,
        c: &StatusChange,
        actor: &str,
    ) -> Result<Option<ApiRecord>, StoreError> {
        validate::status_change(c)?;
        let name = name.to_string();
        let version = version.to_string();
        let c = c.clone();
        let actor = actor.to_string();
        on_store!(self, set_api_status(&name, &version, &c, &actor))
    }

    /// Requests a subscription of `team_id` to the API named `api` (every version).
    /// One subscription per (api, team): a new one is `pending`, or `approved` (by
    /// `auto-approval`) when `auto_approve`; a `pending` or `approved` one is
    /// returned as it is (no write); a `rejected` or `revoked` one is requested
    /// again (its reason cleared). Logs `subscription_requested`, and
    /// `subscription_approved` when auto-approved, with `{"subscription", "team"}`.
    pub async fn request_subscription(
        &self,
        api: &str,
        team_id: &str,
        actor: &str,
        auto_approve: bool,
    ) -> Result<Subscription, StoreError> {
        validate::api_name(api)?;
        validate::team_id(team_id)?;
        let api = api.to_string();
        let team_id = team_id.to_string();
        let actor = actor.to_string();
        on_store!(
            self,
            request_subscription(&api, &team_id, &actor, auto_approve)
        )
    }

    /// Moves a subscription to `to` (`approved`, `rejected` or `revoked`) if its
    /// current status is in `allowed_from`, recording `actor` as `decided_by` and
    /// `reason`; `None` if there is no such subscription, [`StoreError::Conflict`]
    /// if the current status is not allowed. Logs `subscription_<to>` with
    /// `{"subscription", "team", "reason"}`.
    pub async fn decide_subscription(
        &self,
        id: &str,
        to: &str,
        allowed_from: &[&str],
        actor: &str,
        reason: Option<String>,
    ) -> Result<Option<Subscription>, StoreError> {
        let allowed_from: Vec<String> = allowed_from.iter().map(|s| s.to_string()).collect();
        validate::subscription_decision(to, &allowed_from)?;
        let id = id.to_string();
        let to = to.to_string();
        let actor = actor.to_string();
        on_store!(
            self,
            decide_subscription(&id, &to, &allowed_from, &actor, reason)
        )
    }

    /// One subscription.
    pub async fn get_subscription(&self, id: &str) -> Result<Option<Subscription>, StoreError> {
        let id = id.to_string();
        on_store!(self, get_subscription(&id))
    }

    /// Subscriptions matching every filter given (exact matches), ordered by
    /// `created_at`, then id.
    pub async fn list_subscriptions(
        &self,
        api: Option<String>,
        team_id: Option<String>,
        status: Option<String>,
    ) -> Result<Vec<Subscription>, StoreError> {
        on_store!(
            self,
            list_subscriptions(api.as_deref(), team_id.as_deref(), status.as_deref())
        )
    }

    /// The newest `limit` entries of the API audit log (of one API name, if given),
    /// oldest first.
    pub async fn list_api_events(
        &self,
        api: Option<String>,
        limit: i64,
    ) -> Result<Vec<ApiEvent>, StoreError> {
        if limit < 0 {
            return Err(StoreError::Invalid("limit must not be negative".into()));
        }
        if limit == 0 {
            return Ok(Vec::new());
        }
        on_store!(self, list_api_events(api.as_deref(), limit))
    }
}

/// Current time in unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}

    #[test]
    fn store_is_send_sync_clone() {
        assert_send_sync::<Store>();
    }

    #[test]
    fn backend_from_url() {
        assert_eq!(
            Backend::from_url("sqlite::memory:").unwrap(),
            Backend::Sqlite
        );
        assert_eq!(
            Backend::from_url("sqlite:///x/y.db").unwrap(),
            Backend::Sqlite
        );
        assert_eq!(
            Backend::from_url("postgres://a@b/c").unwrap(),
            Backend::Postgres
        );
        assert_eq!(
            Backend::from_url("postgresql://a@b/c").unwrap(),
            Backend::Postgres
        );
        assert!(matches!(
            Backend::from_url("mysql://u:secret@h/db"),
            Err(StoreError::Invalid(m)) if !m.contains("secret")
        ));
    }

    #[test]
    fn redacts_password() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite:///a/b.db"), "sqlite:///a/b.db");
    }

    #[test]
    fn group_by_round_trips() {
        for g in [
            GroupBy::Key,
            GroupBy::Team,
            GroupBy::Model,
            GroupBy::Provider,
            GroupBy::Api,
        ] {
            assert_eq!(g.as_str().parse::<GroupBy>().unwrap(), g);
            assert_eq!(
                serde_json::to_string(&g).unwrap(),
                format!("\"{}\"", g.as_str())
            );
        }
        assert!("nope".parse::<GroupBy>().is_err());
    }

    #[test]
    fn open_rejects_bad_input() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(matches!(
                Store::open("mysql://x", 1).await,
                Err(StoreError::Invalid(_))
            ));
            assert!(matches!(
                Store::open("sqlite::memory:", 0).await,
                Err(StoreError::Invalid(_))
            ));
            assert!(matches!(
                Store::open("postgres://u@127.0.0.1:5432/db?sslmode=bogus", 1).await,
                Err(StoreError::Invalid(_))
            ));
        });
    }

    #[test]
    fn usable_without_any_runtime_and_from_several() {
        // Opened with one runtime, used from another and from a plain thread.
        let rt1 = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = rt1.block_on(Store::open("sqlite::memory:", 2)).unwrap();
        drop(rt1);
        let rt2 = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(rt2.block_on(store.version()).unwrap(), 0);
        let s2 = store.clone();
        std::thread::spawn(move || {
            let rt3 = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt3.block_on(s2.ping()).unwrap();
        })
        .join()
        .unwrap();
        drop(store);
    }
}
