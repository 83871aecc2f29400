//! The store's queries, written once and compiled once per backend: this file is
//! the `ops` module of both `sqlite.rs` and `postgres.rs`, where `super::Db` is the
//! concrete sqlx database. Placeholders are `$N`, which SQLite accepts too (except
//! in the ledger's multi-row INSERT: see `sqlite::ANONYMOUS_PLACEHOLDERS`); text
//! columns compare bytewise on both (PostgreSQL columns use the "C" collation).

use std::collections::HashMap;

use sqlx::{Pool, Row, Transaction};

use super::{begin_write, Db, ANONYMOUS_PLACEHOLDERS};
use crate::validate::{from_json, to_json};
use crate::{
    now_ms, ApiEvent, ApiPatch, ApiRecord, KeyPatch, KeyRecord, LimitUsage, NewApi, NewKey,
    NewTeam, Spend, StatusChange, StoreError, Subscription, Team, TeamPatch, UsageQuery,
    UsageRecord, UsageRow,
};

type Tx = Transaction<'static, Db>;
type DbRow = <Db as sqlx::Database>::Row;

const TEAM_COLS: &str =
    "id, description, models, limits, budget, metadata, created_at, updated_at, version";

const KEY_COLS: &str = "id, name, hash, prefix, team_id, models, limits, budget, disabled, \
     expires_at, metadata, created_at, updated_at, rotated_at, version, deleted";

const API_COLS: &str = "name, version, team_id, status, spec, description, auto_approve, \
     deprecated_at, sunset_at, created_at, updated_at, row_version";

const SUB_COLS: &str = "id, api, team_id, status, requested_by, decided_by, reason, \
     created_at, updated_at, row_version";

const EVENT_COLS: &str = "id, at_ms, actor, api, api_version, action, detail";

const USAGE_COLS: &str = "request_id, ts_ms, key_id, key_name, team_id, model, provider, \
     operation, status, stream, input_tokens, output_tokens, cached_tokens, cost_usd, \
     latency_ms, ttft_ms, error, api";

/// Columns in `USAGE_COLS`, i.e. bind parameters per ledger row.
const USAGE_NCOLS: usize = 18;

/// Ledger rows per INSERT: 1000 × 18 = 18,000 bind parameters, under SQLite's
/// 32,766 and PostgreSQL's 65,535.
const USAGE_CHUNK: usize = 1000;

const _: () = assert!(USAGE_CHUNK * USAGE_NCOLS <= 32_766);

/// The aggregate columns of a usage row. Sums are cast so both backends return
/// BIGINT / DOUBLE PRECISION (PostgreSQL sums BIGINT into NUMERIC) and COALESCEd so
/// an empty range gives zeros.
const USAGE_AGGS: &str = "COUNT(*) AS requests, \
     CAST(COALESCE(SUM(CASE WHEN status >= 400 OR status = 0 THEN 1 ELSE 0 END), 0) AS BIGINT) \
     AS errors, \
     CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS input_tokens, \
     CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS output_tokens, \
     CAST(COALESCE(SUM(cached_tokens), 0) AS BIGINT) AS cached_tokens, \
     CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION) AS cost_usd";

pub(crate) async fn ping(pool: &Pool<Db>) -> Result<(), StoreError> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}

pub(crate) async fn version(pool: &Pool<Db>) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar::<Db, i64>("SELECT v FROM state_version WHERE id = 1")
            .fetch_one(pool)
            .await?,
    )
}

/// Bumps the change counter; the first statement of every team/key write.
async fn bump(tx: &mut Tx) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar::<Db, i64>(
            "UPDATE state_version SET v = v + 1 WHERE id = 1 RETURNING v",
        )
        .fetch_one(&mut **tx)
        .await?,
    )
}

fn opt_json<T: serde::de::DeserializeOwned>(
    column: &str,
    v: Option<String>,
) -> Result<Option<T>, StoreError> {
    v.map(|s| from_json(column, &s)).transpose()
}

fn opt_to_json<T: serde::Serialize>(v: &Option<T>) -> Result<Option<String>, StoreError> {
    v.as_ref().map(to_json).transpose()
}

// ---------------------------------------------------------------- teams

fn team_from_row(row: &DbRow) -> Result<Team, StoreError> {
    Ok(Team {
        id: row.try_get("id")?,
        description: row.try_get("description")?,
        models: opt_json("models", row.try_get("models")?)?,
        limits: from_json("limits", row.try_get::<&str, _>("limits")?)?,
        budget: from_json("budget", row.try_get::<&str, _>("budget")?)?,
        metadata: from_json("metadata", row.try_get::<&str, _>("metadata")?)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        version: row.try_get("version")?,
    })
}

async fn fetch_team(tx: &mut Tx, id: &str) -> Result<Option<Team>, StoreError> {
    let sql = format!("SELECT {TEAM_COLS} FROM teams WHERE id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(&mut **tx).await?;
    row.as_ref().map(team_from_row).transpose()
}

pub(crate) async fn create_team(pool: &Pool<Db>, t: &NewTeam) -> Result<Team, StoreError> {
    let mut tx = begin_write(pool).await?;
    let version = bump(&mut tx).await?;
    let now = now_ms();
    let team = Team {
        id: t.id.clone(),
        description: t.description.clone(),
        models: t.models.clone(),
        limits: t.limits.clone(),
        budget: t.budget.clone(),
        metadata: t.metadata.clone(),
        created_at: now,
        updated_at: now,
        version,
    };
    let sql = format!(
        "INSERT INTO teams ({TEAM_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (id) DO NOTHING"
    );
    let inserted = sqlx::query(&sql)
        .bind(&team.id)
        .bind(&team.description)
        .bind(opt_to_json(&team.models)?)
        .bind(to_json(&team.limits)?)
        .bind(to_json(&team.budget)?)
        .bind(to_json(&team.metadata)?)
        .bind(team.created_at)
        .bind(team.updated_at)
        .bind(team.version)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if inserted == 0 {
        tx.rollback().await?;
        return Err(StoreError::Conflict(format!(
            "team {:?} already exists",
            team.id
        )));
    }
    tx.commit().await?;
    Ok(team)
}

pub(crate) async fn list_teams(pool: &Pool<Db>) -> Result<Vec<Team>, StoreError> {
    let sql = format!("SELECT {TEAM_COLS} FROM teams ORDER BY id");
    let rows = sqlx::query(&sql).fetch_all(pool).await?;
    rows.iter().map(team_from_row).collect()
}

pub(crate) async fn get_team(pool: &Pool<Db>, id: &str) -> Result<Option<Team>, StoreError> {
    let sql = format!("SELECT {TEAM_COLS} FROM teams WHERE id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await?;
    row.as_ref().map(team_from_row).transpose()
}

pub(crate) async fn update_team(
    pool: &Pool<Db>,
    id: &str,
    p: &TeamPatch,
) -> Result<Option<Team>, StoreError> {
    let mut tx = begin_write(pool).await?;
    let version = bump(&mut tx).await?;
    let Some(mut team) = fetch_team(&mut tx, id).await? else {
        tx.rollback().await?;
        return Ok(None);
    };
    if let Some(d) = &p.description {
        team.description = d.clone();
    }
    if let Some(m) = &p.models {
        team.models = m.clone();
    }
    if let Some(l) = &p.limits {
        team.limits = l.clone();
    }
    if let Some(b) = &p.budget {
        team.budget = b.clone();
    }
    if let Some(m) = &p.metadata {
        team.metadata = m.clone();
    }
    team.updated_at = now_ms();
    team.version = version;
    sqlx::query(
        "UPDATE teams SET description = $2, models = $3, limits = $4, budget = $5, \
         metadata = $6, updated_at = $7, version = $8 WHERE id = $1",
    )
    .bind(&team.id)
    .bind(&team.description)
    .bind(opt_to_json(&team.models)?)
    .bind(to_json(&team.limits)?)
    .bind(to_json(&team.budget)?)
    .bind(to_json(&team.metadata)?)
    .bind(team.updated_at)
    .bind(team.version)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(team))
}

pub(crate) async fn delete_team(pool: &Pool<Db>, id: &str) -> Result<bool, StoreError> {
    let mut tx = begin_write(pool).await?;
    bump(&mut tx).await?;
    let live = sqlx::query_scalar::<Db, i64>(
        "SELECT COUNT(*) FROM client_keys WHERE team_id = $1 AND deleted = $2",
    )
    .bind(id)
    .bind(false)
    .fetch_one(&mut *tx)
    .await?;
    if live > 0 {
        tx.rollback().await?;
        return Err(StoreError::Conflict(format!(
            "team {id:?} still has {live} live key(s)"
        )));
    }
    // Tombstoned keys keep the team id they had: history, not a reference.
    let deleted = sqlx::query("DELETE FROM teams WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if deleted == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    tx.commit().await?;
    Ok(true)
}

// ---------------------------------------------------------------- keys

fn key_from_row(row: &DbRow) -> Result<KeyRecord, StoreError> {
    Ok(KeyRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        hash: row.try_get("hash")?,
        prefix: row.try_get("prefix")?,
        team_id: row.try_get("team_id")?,
        models: opt_json("models", row.try_get("models")?)?,
        limits: from_json("limits", row.try_get::<&str, _>("limits")?)?,
        budget: from_json("budget", row.try_get::<&str, _>("budget")?)?,
        disabled: row.try_get("disabled")?,
        expires_at: row.try_get("expires_at")?,
        metadata: from_json("metadata", row.try_get::<&str, _>("metadata")?)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        rotated_at: row.try_get("rotated_at")?,
        version: row.try_get("version")?,
        deleted: row.try_get("deleted")?,
    })
}

/// A live (non-deleted) key, inside a write transaction.
async fn fetch_live_key(tx: &mut Tx, id: &str) -> Result<Option<KeyRecord>, StoreError> {
    let sql = format!("SELECT {KEY_COLS} FROM client_keys WHERE id = $1 AND deleted = $2");
    let row = sqlx::query(&sql)
        .bind(id)
        .bind(false)
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref().map(key_from_row).transpose()
}

/// The id of the key (deleted or not) holding `hash`, if any.
async fn key_with_hash(tx: &mut Tx, hash: &str) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar::<Db, String>("SELECT id FROM client_keys WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&mut **tx)
            .await?,
    )
}

/// Writes every mutable column of `k` (the row must exist).
async fn write_key(tx: &mut Tx, k: &KeyRecord) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE client_keys SET name = $2, hash = $3, prefix = $4, team_id = $5, models = $6, \
         limits = $7, budget = $8, disabled = $9, expires_at = $10, metadata = $11, \
         updated_at = $12, rotated_at = $13, version = $14, deleted = $15 WHERE id = $1",
    )
    .bind(&k.id)
    .bind(&k.name)
    .bind(&k.hash)
    .bind(&k.prefix)
    .bind(&k.team_id)
    .bind(opt_to_json(&k.models)?)
    .bind(to_json(&k.limits)?)
    .bind(to_json(&k.budget)?)
    .bind(k.disabled)
    .bind(k.expires_at)
    .bind(to_json(&k.metadata)?)
    .bind(k.updated_at)
    .bind(k.rotated_at)
    .bind(k.version)
    .bind(k.deleted)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(crate) async fn create_key(pool: &Pool<Db>, k: &NewKey) -> Result<KeyRecord, StoreError> {
    let mut tx = begin_write(pool).await?;
    let version = bump(&mut tx).await?;
    // Writers are serialised from here on (bump), so these checks cannot race.
    // `team_id` is not checked here: a key may belong to a team defined in the
    // gateway's config file, which the store never sees (the admin API checks both).
    let id_taken = sqlx::query_scalar::<Db, i64>("SELECT COUNT(*) FROM client_keys WHERE id = $1")
        .bind(&k.id)
        .fetch_one(&mut *tx)
        .await?
        > 0;
    if id_taken {
        tx.rollback().await?;
        return Err(StoreError::Conflict(format!(
            "key id {:?} already exists",
            k.id
        )));
    }
    if key_with_hash(&mut tx, &k.hash).await?.is_some() {
        tx.rollback().await?;
        return Err(StoreError::Conflict(
            "another key already has this hash".into(),
        ));
    }
    let now = now_ms();
    let key = KeyRecord {
        id: k.id.clone(),
        name: k.name.clone(),
        hash: k.hash.clone(),
        prefix: k.prefix.clone(),
        team_id: k.team_id.clone(),
        models: k.models.clone(),
        limits: k.limits.clone(),
        budget: k.budget.clone(),
        disabled: k.disabled,
        expires_at: k.expires_at,
        metadata: k.metadata.clone(),
        created_at: now,
        updated_at: now,
        rotated_at: None,
        version,
        deleted: false,
    };
    let sql = format!(
        "INSERT INTO client_keys ({KEY_COLS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
    );
    sqlx::query(&sql)
        .bind(&key.id)
        .bind(&key.name)
        .bind(&key.hash)
        .bind(&key.prefix)
        .bind(&key.team_id)
        .bind(opt_to_json(&key.models)?)
        .bind(to_json(&key.limits)?)
        .bind(to_json(&key.budget)?)
        .bind(key.disabled)
        .bind(key.expires_at)
        .bind(to_json(&key.metadata)?)
        .bind(key.created_at)
        .bind(key.updated_at)
        .bind(key.rotated_at)
        .bind(key.version)
        .bind(key.deleted)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(key)
}

pub(crate) async fn list_keys(
    pool: &Pool<Db>,
    team_id: Option<&str>,
) -> Result<Vec<KeyRecord>, StoreError> {
    let rows = match team_id {
        Some(team) => {
            let sql = format!(
                "SELECT {KEY_COLS} FROM client_keys WHERE deleted = $1 AND team_id = $2 \
                 ORDER BY created_at, id"
            );
            sqlx::query(&sql)
                .bind(false)
                .bind(team)
                .fetch_all(pool)
                .await?
        }
        None => {
            let sql = format!(
                "SELECT {KEY_COLS} FROM client_keys WHERE deleted = $1 ORDER BY created_at, id"
            );
            sqlx::query(&sql).bind(false).fetch_all(pool).await?
        }
    };
    rows.iter().map(key_from_row).collect()
}

pub(crate) async fn get_key(pool: &Pool<Db>, id: &str) -> Result<Option<KeyRecord>, StoreError> {
    let sql = format!("SELECT {KEY_COLS} FROM client_keys WHERE id = $1 AND deleted = $2");
    let row = sqlx::query(&sql)
        .bind(id)
        .bind(false)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(key_from_row).transpose()
}

pub(crate) async fn update_key(
    pool: &Pool<Db>,
    id: &str,
    p: &KeyPatch,
) -> Result<Option<KeyRecord>, StoreError> {
    let mut tx = begin_write(pool).await?;
    let version = bump(&mut tx).await?;
    let Some(mut key) = fetch_live_key(&mut tx, id).await? else {
        tx.rollback().await?;
        return Ok(None);
    };
    if let Some(n) = &p.name {
        key.name = n.clone();
    }
    if let Some(t) = &p.team_id {
        key.team_id = t.clone();
    }
    if let Some(m) = &p.models {
        key.models = m.clone();
    }
    if let Some(l) = &p.limits {
        key.limits = l.clone();
    }
    if let Some(b) = &p.budget {
        key.budget = b.clone();
    }
    if let Some(d) = p.disabled {
        key.disabled = d;
    }
    if let Some(e) = p.expires_at {
        key.expires_at = e;
    }
    if let Some(m) = &p.metadata {
        key.metadata = m.clone();
    }
    key.updated_at = now_ms();
    key.version = version;
    write_key(&mut tx, &key).await?;
    tx.commit().await?;
    Ok(Some(key))
}

pub(crate) async fn rotate_key(
    pool: &Pool<Db>,
    id: &str,
    new_hash: &str,
    new_prefix: &str,
) -> Result<Option<KeyRecord>, StoreError> {
    let mut tx = begin_write(pool).await?;
    let version = bump(&mut tx).await?;
    let Some(mut key) = fetch_live_key(&mut tx, id).await? else {
        tx.rollback().await?;
        return Ok(None);
    };
    if let Some(holder) = key_with_hash(&mut tx, new_hash).await? {
        if holder != key.id {
            tx.rollback().await?;
            return Err(StoreError::Conflict(
                "another key already has this hash".into(),
            ));
        }
    }
    let now = now_ms();
    key.hash = new_hash.to_string();
    key.prefix = new_prefix.to_string();
    key.rotated_at = Some(now);
    key.updated_at = now;
    key.version = version;
    write_key(&mut tx, &key).await?;
    tx.commit().await?;
    Ok(Some(key))
}

pub(crate) async fn delete_key(pool: &Pool<Db>, id: &str) -> Result<bool, StoreError> {
    let mut tx = begin_write(pool).await?;
    let version = bump(&mut tx).await?;
    let n = sqlx::query(
        "UPDATE client_keys SET deleted = $1, version = $2, updated_at = $3 \
         WHERE id = $4 AND deleted = $5",
    )
    .bind(true)
    .bind(version)
    .bind(now_ms())
    .bind(id)
    .bind(false)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    tx.commit().await?;
    Ok(true)
}

pub(crate) async fn changed_keys(
    pool: &Pool<Db>,
    since: i64,
) -> Result<Vec<KeyRecord>, StoreError> {
    let sql = format!("SELECT {KEY_COLS} FROM client_keys WHERE version > $1 ORDER BY version");
    let rows = sqlx::query(&sql).bind(since).fetch_all(pool).await?;
    rows.iter().map(key_from_row).collect()
}

// ---------------------------------------------------------------- usage ledger

/// Token counts are stored as BIGINT; counts beyond `i64::MAX` saturate.
fn tokens_to_db(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn tokens_from_db(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn insert_usage_sql(rows: usize) -> String {
    let mut sql = String::with_capacity(64 + rows * USAGE_NCOLS * 7);
    sql.push_str("INSERT INTO usage_ledger (");
    sql.push_str(USAGE_COLS);
    sql.push_str(") VALUES ");
    let mut n = 0;
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..USAGE_NCOLS {
            if c > 0 {
                sql.push_str(", ");
            }
            n += 1;
            if ANONYMOUS_PLACEHOLDERS {
                // Bound in order, like `$n`; see `sqlite::ANONYMOUS_PLACEHOLDERS`.
                sql.push('?');
            } else {
                sql.push('$');
                sql.push_str(&n.to_string());
            }
        }
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT (request_id) DO NOTHING");
    sql
}

/// Statement sizes a batch is cut into, largest first. Every size is a
/// persistent (cached) prepared statement, so no batch re-prepares: preparing a
/// statement with thousands of placeholders costs more than the insert itself.
const USAGE_SIZES: [usize; 4] = [USAGE_CHUNK, 128, 16, 1];

pub(crate) async fn insert_usage(
    pool: &Pool<Db>,
    batch: &[UsageRecord],
) -> Result<u64, StoreError> {
    let mut tx = begin_write(pool).await?;
    let mut inserted = 0;
    let mut rest = batch;
    while !rest.is_empty() {
        let n = USAGE_SIZES
            .into_iter()
            .find(|&n| n <= rest.len())
            .unwrap_or(1);
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let sql = usage_insert_sql(n);
        let mut q = sqlx::query(sql).persistent(true);
        for r in chunk {
            q = q
                .bind(r.request_id.as_str())
                .bind(r.ts_ms)
                .bind(r.key_id.as_str())
                .bind(r.key_name.as_str())
                .bind(r.team_id.as_deref())
                .bind(r.model.as_str())
                .bind(r.provider.as_str())
                .bind(r.operation.as_str())
                .bind(i32::from(r.status))
                .bind(r.stream)
                .bind(tokens_to_db(r.input_tokens))
                .bind(tokens_to_db(r.output_tokens))
                .bind(tokens_to_db(r.cached_tokens))
                .bind(r.cost_usd)
                .bind(r.latency_ms)
                .bind(r.ttft_ms)
                .bind(r.error.as_deref())
                .bind(r.api.as_deref());
        }
        inserted += q.execute(&mut *tx).await?.rows_affected();
    }
    tx.commit().await?;
    Ok(inserted)
}

/// The INSERT text for `n` rows, built once per size.
fn usage_insert_sql(n: usize) -> &'static str {
    use std::sync::OnceLock;
    static SQL: [OnceLock<String>; 4] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    let i = USAGE_SIZES.iter().position(|&s| s == n).unwrap_or(3);
    SQL[i].get_or_init(|| insert_usage_sql(USAGE_SIZES[i]))
}

/// ` WHERE …` for `q`'s range and filters, with placeholders from `$first`, and the
/// string values to bind after `from_ms` and `to_ms`, in order.
fn usage_where(q: &UsageQuery, first: usize) -> (String, Vec<String>) {
    let mut sql = format!(" WHERE ts_ms >= ${} AND ts_ms < ${}", first, first + 1);
    let mut binds = Vec::new();
    let mut n = first + 2;
    for (col, v) in [
        ("key_id", &q.key_id),
        ("team_id", &q.team_id),
        ("model", &q.model),
        ("provider", &q.provider),
        ("api", &q.api),
    ] {
        if let Some(v) = v {
            sql.push_str(&format!(" AND {col} = ${n}"));
            binds.push(v.clone());
            n += 1;
        }
    }
    (sql, binds)
}

fn usage_row_from_row(row: &DbRow, bucket: bool, group: bool) -> Result<UsageRow, StoreError> {
    Ok(UsageRow {
        bucket_ms: if bucket {
            Some(row.try_get("bucket")?)
        } else {
            None
        },
        group: if group { row.try_get("grp")? } else { None },
        requests: row.try_get("requests")?,
        errors: row.try_get("errors")?,
        input_tokens: row.try_get("input_tokens")?,
        output_tokens: row.try_get("output_tokens")?,
        cached_tokens: row.try_get("cached_tokens")?,
        cost_usd: row.try_get("cost_usd")?,
    })
}

/// Orders rows by bucket, then group (`None` first, then bytewise), the same on
/// both backends.
fn sort_rows(rows: &mut [UsageRow]) {
    rows.sort_by(|a, b| (a.bucket_ms, &a.group).cmp(&(b.bucket_ms, &b.group)));
}

pub(crate) async fn usage_totals(
    pool: &Pool<Db>,
    q: &UsageQuery,
) -> Result<Vec<UsageRow>, StoreError> {
    let (filter, binds) = usage_where(q, 1);
    let sql = match q.group_by {
        Some(g) => format!(
            "SELECT {col} AS grp, {USAGE_AGGS} FROM usage_ledger{filter} GROUP BY {col}",
            col = g.column()
        ),
        None => format!("SELECT {USAGE_AGGS} FROM usage_ledger{filter}"),
    };
    let mut query = sqlx::query(&sql).bind(q.from_ms).bind(q.to_ms);
    for b in &binds {
        query = query.bind(b.as_str());
    }
    let rows = query.fetch_all(pool).await?;
    let mut out = rows
        .iter()
        .map(|r| usage_row_from_row(r, false, q.group_by.is_some()))
        .collect::<Result<Vec<_>, _>>()?;
    sort_rows(&mut out);
    Ok(out)
}

pub(crate) async fn usage_series(
    pool: &Pool<Db>,
    q: &UsageQuery,
    bucket_ms: i64,
) -> Result<Vec<UsageRow>, StoreError> {
    // floor(ts / b) * b, also for negative ts (SQL's % truncates toward zero).
    let bucket = "(ts_ms - (((ts_ms % CAST($1 AS BIGINT)) + CAST($1 AS BIGINT)) \
                  % CAST($1 AS BIGINT)))";
    let (filter, binds) = usage_where(q, 2);
    let sql = match q.group_by {
        Some(g) => format!(
            "SELECT {bucket} AS bucket, {col} AS grp, {USAGE_AGGS} FROM usage_ledger{filter} \
             GROUP BY 1, 2",
            col = g.column()
        ),
        None => {
            format!("SELECT {bucket} AS bucket, {USAGE_AGGS} FROM usage_ledger{filter} GROUP BY 1")
        }
    };
    let mut query = sqlx::query(&sql)
        .bind(bucket_ms)
        .bind(q.from_ms)
        .bind(q.to_ms);
    for b in &binds {
        query = query.bind(b.as_str());
    }
    let rows = query.fetch_all(pool).await?;
    let mut out = rows
        .iter()
        .map(|r| usage_row_from_row(r, true, q.group_by.is_some()))
        .collect::<Result<Vec<_>, _>>()?;
    sort_rows(&mut out);
    Ok(out)
}

fn usage_from_row(row: &DbRow) -> Result<UsageRecord, StoreError> {
    Ok(UsageRecord {
        ts_ms: row.try_get("ts_ms")?,
        request_id: row.try_get("request_id")?,
        key_id: row.try_get("key_id")?,
        key_name: row.try_get("key_name")?,
        team_id: row.try_get("team_id")?,
        model: row.try_get("model")?,
        provider: row.try_get("provider")?,
        operation: row.try_get("operation")?,
        status: u16::try_from(row.try_get::<i32, _>("status")?).unwrap_or(0),
        stream: row.try_get("stream")?,
        input_tokens: tokens_from_db(row.try_get("input_tokens")?),
        output_tokens: tokens_from_db(row.try_get("output_tokens")?),
        cached_tokens: tokens_from_db(row.try_get("cached_tokens")?),
        cost_usd: row.try_get("cost_usd")?,
        latency_ms: row.try_get("latency_ms")?,
        ttft_ms: row.try_get("ttft_ms")?,
        error: row.try_get("error")?,
        api: row.try_get("api")?,
    })
}

pub(crate) async fn usage_records(
    pool: &Pool<Db>,
    q: &UsageQuery,
    limit: i64,
    after: Option<(i64, String)>,
) -> Result<Vec<UsageRecord>, StoreError> {
    let (mut sql, binds) = usage_where(q, 1);
    let mut n = 3 + binds.len();
    if after.is_some() {
        sql.push_str(&format!(
            " AND (ts_ms > ${n} OR (ts_ms = ${n} AND request_id > ${}))",
            n + 1
        ));
        n += 2;
    }
    let sql =
        format!("SELECT {USAGE_COLS} FROM usage_ledger{sql} ORDER BY ts_ms, request_id LIMIT ${n}");
    let mut query = sqlx::query(&sql).bind(q.from_ms).bind(q.to_ms);
    for b in &binds {
        query = query.bind(b.as_str());
    }
    if let Some((ts, id)) = &after {
        query = query.bind(*ts).bind(id.as_str());
    }
    let rows = query.bind(limit).fetch_all(pool).await?;
    rows.iter().map(usage_from_row).collect()
}

pub(crate) async fn spend_since(pool: &Pool<Db>, since_ms: i64) -> Result<Spend, StoreError> {
    let rows = sqlx::query(
        "SELECT key_id, team_id, CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION) AS cost \
         FROM usage_ledger WHERE ts_ms >= $1 GROUP BY key_id, team_id",
    )
    .bind(since_ms)
    .fetch_all(pool)
    .await?;
    let mut by_key: HashMap<String, f64> = HashMap::new();
    let mut by_team: HashMap<String, f64> = HashMap::new();
    for row in &rows {
        let key: String = row.try_get("key_id")?;
        let team: Option<String> = row.try_get("team_id")?;
        let cost: f64 = row.try_get("cost")?;
        *by_key.entry(key).or_default() += cost;
        if let Some(team) = team {
            *by_team.entry(team).or_default() += cost;
        }
    }
    Ok(Spend { by_key, by_team })
}

pub(crate) async fn limit_usage(
    pool: &Pool<Db>,
    now_ms: i64,
    window_ms: i64,
    bin_ms: i64,
) -> Result<Vec<LimitUsage>, StoreError> {
    // Requests the gateway itself refused for a limit or budget (429 before
    // any provider) took nothing from the buckets.
    let rows = sqlx::query(
        "SELECT key_id, team_id, model, CAST(($1 - ts_ms) / $3 AS BIGINT) AS bin, \
         CAST(COUNT(*) AS BIGINT) AS requests, \
         CAST(COALESCE(SUM(input_tokens + output_tokens), 0) AS BIGINT) AS tokens \
         FROM usage_ledger WHERE ts_ms > $1 - $2 AND ts_ms <= $1 \
         AND NOT (status = 429 AND provider = '') \
         GROUP BY key_id, team_id, model, bin",
    )
    .bind(now_ms)
    .bind(window_ms)
    .bind(bin_ms.max(1))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(LimitUsage {
                key_id: row.try_get("key_id")?,
                team_id: row.try_get("team_id")?,
                model: row.try_get("model")?,
                bin: usize::try_from(row.try_get::<i64, _>("bin")?).unwrap_or(0),
                requests: row.try_get::<i64, _>("requests")?.max(0) as u64,
                tokens: row.try_get::<i64, _>("tokens")?.max(0) as u64,
            })
        })
        .collect()
}

pub(crate) async fn usage_count(pool: &Pool<Db>) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar::<Db, i64>("SELECT COUNT(*) FROM usage_ledger")
            .fetch_one(pool)
            .await?,
    )
}

// ---------------------------------------------------------------- prompt APIs

fn api_from_row(row: &DbRow) -> Result<ApiRecord, StoreError> {
    Ok(ApiRecord {
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        team_id: row.try_get("team_id")?,
        status: row.try_get("status")?,
        spec: from_json("spec", row.try_get::<&str, _>("spec")?)?,
        description: row.try_get("description")?,
        auto_approve: row.try_get("auto_approve")?,
        deprecated_at: row.try_get("deprecated_at")?,
        sunset_at: row.try_get("sunset_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        row_version: row.try_get("row_version")?,
    })
}

fn sub_from_row(row: &DbRow) -> Result<Subscription, StoreError> {
    Ok(Subscription {
        id: row.try_get("id")?,
        api: row.try_get("api")?,
        team_id: row.try_get("team_id")?,
        status: row.try_get("status")?,
        requested_by: row.try_get("requested_by")?,
        decided_by: row.try_get("decided_by")?,
        reason: row.try_get("reason")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        row_version: row.try_get("row_version")?,
    })
}

fn event_from_row(row: &DbRow) -> Result<ApiEvent, StoreError> {
    Ok(ApiEvent {
        id: row.try_get("id")?,
        at_ms: row.try_get("at_ms")?,
        actor: row.try_get("actor")?,
        api: row.try_get("api")?,
        api_version: row.try_get("api_version")?,
        action: row.try_get("action")?,
        detail: from_json("detail", row.try_get::<&str, _>("detail")?)?,
    })
}

/// Sort key of an API version: `v<N>` versions by N (numerically), before any
/// other version; then bytewise.
fn version_key(v: &str) -> (u8, u64, &str) {
    match v.strip_prefix('v').map(str::parse::<u64>) {
        Some(Ok(n)) if v[1..].bytes().all(|b| b.is_ascii_digit()) => (0, n, v),
        _ => (1, 0, v),
    }
}

/// Orders API versions by name (bytewise), then version (see [`version_key`]).
fn sort_apis(apis: &mut [ApiRecord]) {
    apis.sort_by(|a, b| {
        (a.name.as_str(), version_key(&a.version)).cmp(&(b.name.as_str(), version_key(&b.version)))
    });
}

/// A new subscription id: `sub_` and 24 random hex digits.
fn subscription_id() -> String {
    let bytes: [u8; 12] = rand::random();
    let mut id = String::with_capacity(28);
    id.push_str("sub_");
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// Appends an entry to the API audit log.
async fn api_event(
    tx: &mut Tx,
    at_ms: i64,
    actor: &str,
    api: &str,
    api_version: Option<&str>,
    action: &str,
    detail: &serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO api_events (at_ms, actor, api, api_version, action, detail) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(at_ms)
    .bind(actor)
    .bind(api)
    .bind(api_version)
    .bind(action)
    .bind(to_json(detail)?)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn fetch_api(
    tx: &mut Tx,
    name: &str,
    version: &str,
) -> Result<Option<ApiRecord>, StoreError> {
    let sql = format!("SELECT {API_COLS} FROM apis WHERE name = $1 AND version = $2");
    let row = sqlx::query(&sql)
        .bind(name)
        .bind(version)
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref().map(api_from_row).transpose()
}

/// Writes every mutable column of `a` (the row must exist).
async fn write_api(tx: &mut Tx, a: &ApiRecord) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE apis SET team_id = $3, status = $4, spec = $5, description = $6, \
         auto_approve = $7, deprecated_at = $8, sunset_at = $9, updated_at = $10, \
         row_version = $11 WHERE name = $1 AND version = $2",
    )
    .bind(&a.name)
    .bind(&a.version)
    .bind(&a.team_id)
    .bind(&a.status)
    .bind(to_json(&a.spec)?)
    .bind(&a.description)
    .bind(a.auto_approve)
    .bind(a.deprecated_at)
    .bind(a.sunset_at)
    .bind(a.updated_at)
    .bind(a.row_version)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(crate) async fn create_api(
    pool: &Pool<Db>,
    a: &NewApi,
    actor: &str,
) -> Result<ApiRecord, StoreError> {
    let mut tx = begin_write(pool).await?;
    let row_version = bump(&mut tx).await?;
    let now = now_ms();
    let api = ApiRecord {
        name: a.name.clone(),
        version: a.version.clone(),
        team_id: a.team_id.clone(),
        status: a.status.clone(),
        spec: a.spec.clone(),
        description: a.description.clone(),
        auto_approve: a.auto_approve,
        deprecated_at: a.deprecated_at,
        sunset_at: a.sunset_at,
        created_at: now,
        updated_at: now,
        row_version,
    };
    let sql = format!(
        "INSERT INTO apis ({API_COLS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (name, version) DO NOTHING"
    );
    let inserted = sqlx::query(&sql)
        .bind(&api.name)
        .bind(&api.version)
        .bind(&api.team_id)
        .bind(&api.status)
        .bind(to_json(&api.spec)?)
        .bind(&api.description)
        .bind(api.auto_approve)
        .bind(api.deprecated_at)
        .bind(api.sunset_at)
        .bind(api.created_at)
        .bind(api.updated_at)
        .bind(api.row_version)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if inserted == 0 {
        tx.rollback().await?;
        return Err(StoreError::Conflict(format!(
            "API {}/{} already exists",
            api.name, api.version
        )));
    }
    api_event(
        &mut tx,
        now,
        actor,
        &api.name,
        Some(&api.version),
        "created",
        &serde_json::json!({ "status": api.status }),
    )
    .await?;
    tx.commit().await?;
    Ok(api)
}

pub(crate) async fn list_apis(pool: &Pool<Db>) -> Result<Vec<ApiRecord>, StoreError> {
    let sql = format!("SELECT {API_COLS} FROM apis");
    let rows = sqlx::query(&sql).fetch_all(pool).await?;
    let mut apis = rows
        .iter()
        .map(api_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    sort_apis(&mut apis);
    Ok(apis)
}

pub(crate) async fn get_api(
    pool: &Pool<Db>,
    name: &str,
    version: &str,
) -> Result<Option<ApiRecord>, StoreError> {
    let sql = format!("SELECT {API_COLS} FROM apis WHERE name = $1 AND version = $2");
    let row = sqlx::query(&sql)
        .bind(name)
        .bind(version)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(api_from_row).transpose()
}

pub(crate) async fn update_api(
    pool: &Pool<Db>,
    name: &str,
    version: &str,
    p: &ApiPatch,
    actor: &str,
) -> Result<Option<ApiRecord>, StoreError> {
    let mut tx = begin_write(pool).await?;
    let row_version = bump(&mut tx).await?;
    let Some(mut api) = fetch_api(&mut tx, name, version).await? else {
        tx.rollback().await?;
        return Ok(None);
    };
    let mut fields = Vec::new();
    if let Some(spec) = &p.spec {
        api.spec = spec.clone();
        fields.push("spec");
    }
    if let Some(d) = &p.description {
        api.description = d.clone();
        fields.push("description");
    }
    if let Some(a) = p.auto_approve {
        api.auto_approve = a;
        fields.push("auto_approve");
    }
    let now = now_ms();
    api.updated_at = now;
    api.row_version = row_version;
    write_api(&mut tx, &api).await?;
    api_event(
        &mut tx,
        now,
        actor,
        &api.name,
        Some(&api.version),
        "updated",
        &serde_json::json!({ "fields": fields }),
    )
    .await?;
    tx.commit().await?;
    Ok(Some(api))
}

pub(crate) async fn set_api_status(
    pool: &Pool<Db>,
    name: &str,
    version: &str,
    c: &StatusChange,
    actor: &str,
) -> Result<Option<ApiRecord>, StoreError> {
    let mut tx = begin_write(pool).await?;
    let row_version = bump(&mut tx).await?;
    let Some(mut api) = fetch_api(&mut tx, name, version).await? else {
        tx.rollback().await?;
        return Ok(None);
    };
    if !c.allowed_from.contains(&api.status) {
        tx.rollback().await?;
        return Err(StoreError::Conflict(format!(
            "API {}/{} is {}; it cannot become {}",
            api.name, api.version, api.status, c.to
        )));
    }
    let from = std::mem::replace(&mut api.status, c.to.clone());
    if let Some(at) = c.deprecated_at {
        api.deprecated_at = Some(at);
    }
    if let Some(at) = c.sunset_at {
        api.sunset_at = Some(at);
    }
    let now = now_ms();
    api.updated_at = now;
    api.row_version = row_version;
    write_api(&mut tx, &api).await?;
    api_event(
        &mut tx,
        now,
        actor,
        &api.name,
        Some(&api.version),
        "status",
        &serde_json::json!({ "from": from, "to": api.status, "sunset_at": api.sunset_at }),
    )
    .await?;
    tx.commit().await?;
    Ok(Some(api))
}

async fn fetch_subscription(tx: &mut Tx, id: &str) -> Result<Option<Subscription>, StoreError> {
    let sql = format!("SELECT {SUB_COLS} FROM api_subscriptions WHERE id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(&mut **tx).await?;
    row.as_ref().map(sub_from_row).transpose()
}

/// Writes every mutable column of `s` (the row must exist).
async fn write_subscription(tx: &mut Tx, s: &Subscription) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE api_subscriptions SET status = $2, requested_by = $3, decided_by = $4, \
         reason = $5, updated_at = $6, row_version = $7 WHERE id = $1",
    )
    .bind(&s.id)
    .bind(&s.status)
    .bind(&s.requested_by)
    .bind(&s.decided_by)
    .bind(&s.reason)
    .bind(s.updated_at)
    .bind(s.row_version)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Who decides an automatically approved subscription.
const AUTO_APPROVAL: &str = "auto-approval";

pub(crate) async fn request_subscription(
    pool: &Pool<Db>,
    api: &str,
    team_id: &str,
    actor: &str,
    auto_approve: bool,
) -> Result<Subscription, StoreError> {
    let mut tx = begin_write(pool).await?;
    // Bumped first so that concurrent requests for the same (api, team) take turns;
    // rolled back when the request changes nothing.
    let row_version = bump(&mut tx).await?;
    let sql = format!("SELECT {SUB_COLS} FROM api_subscriptions WHERE api = $1 AND team_id = $2");
    let existing = sqlx::query(&sql)
        .bind(api)
        .bind(team_id)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(sub_from_row)
        .transpose()?;
    let now = now_ms();
    let (status, decided_by) = if auto_approve {
        ("approved", Some(AUTO_APPROVAL.to_string()))
    } else {
        ("pending", None)
    };
    let sub = match existing {
        Some(s) if s.status == "pending" || s.status == "approved" => {
            tx.rollback().await?;
            return Ok(s);
        }
        Some(mut s) => {
            s.status = status.to_string();
            s.requested_by = actor.to_string();
            s.decided_by = decided_by;
            s.reason = None;
            s.updated_at = now;
            s.row_version = row_version;
            write_subscription(&mut tx, &s).await?;
            s
        }
        None => {
            let s = Subscription {
                id: subscription_id(),
                api: api.to_string(),
                team_id: team_id.to_string(),
                status: status.to_string(),
                requested_by: actor.to_string(),
                decided_by,
                reason: None,
                created_at: now,
                updated_at: now,
                row_version,
            };
            let sql = format!(
                "INSERT INTO api_subscriptions ({SUB_COLS}) VALUES \
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            );
            sqlx::query(&sql)
                .bind(&s.id)
                .bind(&s.api)
                .bind(&s.team_id)
                .bind(&s.status)
                .bind(&s.requested_by)
                .bind(&s.decided_by)
                .bind(&s.reason)
                .bind(s.created_at)
                .bind(s.updated_at)
                .bind(s.row_version)
                .execute(&mut *tx)
                .await?;
            s
        }
    };
    api_event(
        &mut tx,
        now,
        actor,
        &sub.api,
        None,
        "subscription_requested",
        &serde_json::json!({ "subscription": sub.id, "team": sub.team_id }),
    )
    .await?;
    if auto_approve {
        api_event(
            &mut tx,
            now,
            actor,
            &sub.api,
            None,
            "subscription_approved",
            &serde_json::json!({
                "subscription": sub.id,
                "team": sub.team_id,
                "reason": serde_json::Value::Null,
                "decided_by": AUTO_APPROVAL,
            }),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(sub)
}

pub(crate) async fn decide_subscription(
    pool: &Pool<Db>,
    id: &str,
    to: &str,
    allowed_from: &[String],
    actor: &str,
    reason: Option<String>,
) -> Result<Option<Subscription>, StoreError> {
    let mut tx = begin_write(pool).await?;
    let row_version = bump(&mut tx).await?;
    let Some(mut sub) = fetch_subscription(&mut tx, id).await? else {
        tx.rollback().await?;
        return Ok(None);
    };
    if !allowed_from.contains(&sub.status) {
        tx.rollback().await?;
        return Err(StoreError::Conflict(format!(
            "subscription {} is {}; it cannot become {to}",
            sub.id, sub.status
        )));
    }
    let now = now_ms();
    sub.status = to.to_string();
    sub.decided_by = Some(actor.to_string());
    sub.reason = reason;
    sub.updated_at = now;
    sub.row_version = row_version;
    write_subscription(&mut tx, &sub).await?;
    api_event(
        &mut tx,
        now,
        actor,
        &sub.api,
        None,
        &format!("subscription_{to}"),
        &serde_json::json!({ "subscription": sub.id, "team": sub.team_id, "reason": sub.reason }),
    )
    .await?;
    tx.commit().await?;
    Ok(Some(sub))
}

pub(crate) async fn get_subscription(
    pool: &Pool<Db>,
    id: &str,
) -> Result<Option<Subscription>, StoreError> {
    let sql = format!("SELECT {SUB_COLS} FROM api_subscriptions WHERE id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await?;
    row.as_ref().map(sub_from_row).transpose()
}

pub(crate) async fn list_subscriptions(
    pool: &Pool<Db>,
    api: Option<&str>,
    team_id: Option<&str>,
    status: Option<&str>,
) -> Result<Vec<Subscription>, StoreError> {
    let mut sql = format!("SELECT {SUB_COLS} FROM api_subscriptions WHERE 1 = 1");
    let mut binds = Vec::new();
    for (col, v) in [("api", api), ("team_id", team_id), ("status", status)] {
        if let Some(v) = v {
            binds.push(v);
            sql.push_str(&format!(" AND {col} = ${}", binds.len()));
        }
    }
    sql.push_str(" ORDER BY created_at, id");
    let mut query = sqlx::query(&sql);
    for b in binds {
        query = query.bind(b);
    }
    let rows = query.fetch_all(pool).await?;
    rows.iter().map(sub_from_row).collect()
}

pub(crate) async fn list_api_events(
    pool: &Pool<Db>,
    api: Option<&str>,
    limit: i64,
) -> Result<Vec<ApiEvent>, StoreError> {
    let rows = match api {
        Some(api) => {
            let sql = format!(
                "SELECT {EVENT_COLS} FROM api_events WHERE api = $1 ORDER BY id DESC LIMIT $2"
            );
            sqlx::query(&sql)
                .bind(api)
                .bind(limit)
                .fetch_all(pool)
                .await?
        }
        None => {
            let sql = format!("SELECT {EVENT_COLS} FROM api_events ORDER BY id DESC LIMIT $1");
            sqlx::query(&sql).bind(limit).fetch_all(pool).await?
        }
    };
    let mut events = rows
        .iter()
        .map(event_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    events.reverse();
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_cols_match_their_count() {
        assert_eq!(USAGE_COLS.split(',').count(), USAGE_NCOLS);
    }

    #[test]
    fn subscription_ids() {
        let id = subscription_id();
        assert_eq!(id.len(), 28);
        assert!(id.starts_with("sub_"));
        assert!(id[4..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(id, subscription_id());
    }

    #[test]
    fn versions_order_numerically() {
        let mut v = ["v10", "beta", "v2", "v1", "2024-01", "v02"];
        v.sort_by_key(|s| version_key(s));
        assert_eq!(v, ["v1", "v02", "v2", "v10", "2024-01", "beta"]);
    }
}
