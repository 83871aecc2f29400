//! Limit state shared by every gateway node, in Redis.
//!
//! The same limits as `tollgate-limits` — requests and tokens per minute,
//! tokens per day, concurrent requests, per key, team, model and globally —
//! decided for all nodes at once: one Lua script per decision takes one
//! request and its token reservation from every layer, or nothing, in one
//! round trip; a second one settles the reservation with the real usage and
//! frees the concurrency slot. Both read the clock from Redis (`TIME`), so
//! nodes with skewed clocks agree.
//!
//! A scope's token buckets share one hash (`rl`/`rt`: requests per minute,
//! `tl`/`tt`: tokens per minute, `dl`/`dt`: tokens per day — level and last
//! update in ms), so a decision reads and writes each scope once; it expires
//! after two periods of its longest bucket. A concurrency slot is a member of a sorted set
//! scored by its lease's end, so the slots of a node that died are freed when
//! their lease runs out instead of leaking forever.
//!
//! This crate only talks to Redis; what to do when Redis does not answer
//! (fail open on local buckets, or fail closed) is the gateway's policy.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;
use tollgate_limits::{Admission, Layer, LimitKind, Limits, Refusal, Rejection, Status};

/// Redis did not give an answer in time.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Connection or protocol error.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer within the configured timeout.
    #[error("redis: no answer within {0:?}")]
    Timeout(Duration),
    /// An answer the scripts never give.
    #[error("redis: unexpected reply {0:?}")]
    Reply(Vec<i64>),
    /// The backend's runtime could not start or is gone.
    #[error("redis: the limits runtime is gone")]
    Gone,
}

/// One layer of a decision: whose limits, and which.
#[derive(Clone, Copy, Debug)]
pub struct LayerRef<'a> {
    /// The layer, for headers and messages.
    pub layer: Layer,
    /// The scope (`key:<id>`, `team:<id>`, `model:<name>`, `global`).
    pub scope: &'a str,
    /// Its limits.
    pub limits: Limits,
}

/// Settings of the shared backend.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// `redis://host:port/db`.
    pub url: String,
    /// Multiplexed connections, used in turn.
    pub pool_size: usize,
    /// Prefix of every key, so several gateways can share one Redis.
    pub key_prefix: String,
    /// The longest a decision may wait for Redis.
    pub timeout: Duration,
    /// How long a concurrency slot is held if its request never ends (a node died).
    pub lease: Duration,
}

/// The shared limit state.
///
/// Redis connections belong to the tokio runtime that made them, and the
/// gateway runs several (one per Pingora service, plus the one it starts on):
/// so, as the store does, this owns a small runtime of its own that holds the
/// connections and runs every script; callers on any runtime await the result.
pub struct RedisLimits {
    inner: Arc<Inner>,
    rt: OwnRuntime,
}

struct Inner {
    conns: Vec<ConnectionManager>,
    next: AtomicUsize,
    settings: RedisSettings,
    admit: Script,
    finish: Script,
    reserve: Script,
    settle: Script,
}

/// Dropping it never blocks, so a `RedisLimits` may be dropped in async code.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl OwnRuntime {
    async fn run<T, F>(&self, fut: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, BackendError>> + Send + 'static,
    {
        let rt = self.0.as_ref().ok_or(BackendError::Gone)?;
        rt.spawn(fut).await.map_err(|_| BackendError::Gone)?
    }
}

const ADMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n, tokens, rid, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local periods = {60000, 60000, 86400000}
local fields = {{'rl', 'rt'}, {'tl', 'tt'}, {'dl', 'dt'}}
local writes, out = {}, {1}
for i = 0, n - 1 do
  local a = 5 + i * 6
  local key = KEYS[i * 2 + 1]
  local specs = {
    {tonumber(ARGV[a]), tonumber(ARGV[a + 1]), 1},
    {tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tokens},
    {tonumber(ARGV[a + 4]), tonumber(ARGV[a + 4]), tokens},
  }
  local status = {-1, 0, -1, 0, -1}
  local v = nil
  local w = {}
  for j = 1, 3 do
    local limit, cap, cost = specs[j][1], specs[j][2], specs[j][3]
    if limit > 0 then
      if not v then v = redis.call('HMGET', key, 'rl', 'rt', 'tl', 'tt', 'dl', 'dt') end
      local rate = limit / periods[j]
      local level = cap
      if v[j * 2 - 1] then
        level = math.min(cap, tonumber(v[j * 2 - 1]) + math.max(0, now - tonumber(v[j * 2])) * rate)
      end
      if cost > cap then return {0, i, j, -1, limit} end
      if level < cost then
        return {0, i, j, math.ceil((cost - level) / rate), limit}
      end
      local left = level - cost
      table.insert(w, fields[j][1])
      table.insert(w, tostring(left))
      table.insert(w, fields[j][2])
      table.insert(w, now)
      local reset = math.ceil((cap - left) / rate)
      if j == 1 then
        status[1], status[2] = math.floor(left), reset
      elseif status[3] < 0 or math.floor(left) < status[3] then
        status[3], status[4], status[5] = math.floor(left), reset, limit
      end
    end
  end
  if #w > 0 then
    local ttl = (specs[3][1] > 0) and 172800000 or 120000
    table.insert(writes, {key, w, ttl})
  end
  local conc = tonumber(ARGV[a + 5])
  if conc > 0 then
    local ckey = KEYS[i * 2 + 2]
    redis.call('ZREMRANGEBYSCORE', ckey, '-inf', now)
    if redis.call('ZCARD', ckey) >= conc then return {0, i, 4, 1000, conc} end
  end
  for _, x in ipairs(status) do table.insert(out, x) end
end
for _, x in ipairs(writes) do
  redis.call('HSET', x[1], unpack(x[2]))
  redis.call('PEXPIRE', x[1], x[3])
end
for i = 0, n - 1 do
  if tonumber(ARGV[5 + i * 6 + 5]) > 0 then
    local ckey = KEYS[i * 2 + 2]
    redis.call('ZADD', ckey, now + lease, rid)
    redis.call('PEXPIRE', ckey, lease * 2)
  end
end
return out
"#;

/// ARGV: n, reserved − actual, request id; per layer: tpm, tpm burst, tpd,
/// concurrency cap. KEYS per layer: bucket hash, slot set.
const FINISH: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n, delta, rid = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
for i = 0, n - 1 do
  local a = 4 + i * 4
  local tpm, tcap, tpd = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local key = KEYS[i * 2 + 1]
  if delta ~= 0 and (tpm > 0 or tpd > 0) then
    local v = redis.call('HMGET', key, 'tl', 'tt', 'dl', 'dt')
    local w = {}
    for j, spec in ipairs({{tpm, tcap, 60000, 'tl', 'tt'}, {tpd, tpd, 86400000, 'dl', 'dt'}}) do
      local limit, cap = spec[1], spec[2]
      if limit > 0 and v[j * 2 - 1] then
        local level = math.min(cap, tonumber(v[j * 2 - 1]) + math.max(0, now - tonumber(v[j * 2])) * limit / spec[3])
        table.insert(w, spec[4])
        table.insert(w, tostring(math.min(cap, level + delta)))
        table.insert(w, spec[5])
        table.insert(w, now)
      end
    end
    if #w > 0 then redis.call('HSET', key, unpack(w)) end
  end
  if tonumber(ARGV[a + 3]) > 0 then
    redis.call('ZREM', KEYS[i * 2 + 2], rid)
  end
end
return {1}
"#;

/// Budgets in USD per UTC day and month. Per scope and period, a hash holds
/// `spent` and `held` (reserved by requests in flight), a hash `amounts` what
/// each request in flight reserved, and a sorted set `leases` when each
/// reservation lapses, so a node that died does not hold budget forever.
/// ARGV: n, estimate, request id, lease ms; per scope: daily limit, monthly
/// limit (-1: none), daily seed, monthly seed (spend the ledger knew, used
/// when no node has written the period yet). Leases run on Redis's clock.
/// KEYS per scope: day hash, month hash, day leases, month leases.
const BUDGET_RESERVE: &str = r#"
local n, est, rid, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {1}
for i = 0, n - 1 do
  for d = 0, 1 do
    local key, leases = KEYS[i * 4 + 1 + d], KEYS[i * 4 + 3 + d]
    redis.call('HSETNX', key, 'spent', ARGV[5 + i * 4 + 2 + d])
    -- Reservations whose node never settled them lapse.
    local gone = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
    for _, r in ipairs(gone) do
      local amt = tonumber(redis.call('HGET', key, 'r:' .. r) or '0')
      redis.call('HINCRBYFLOAT', key, 'held', -amt)
      redis.call('HDEL', key, 'r:' .. r)
      redis.call('ZREM', leases, r)
    end
    local limit = tonumber(ARGV[5 + i * 4 + d])
    local spent = tonumber(redis.call('HGET', key, 'spent') or '0')
    local held = math.max(0, tonumber(redis.call('HGET', key, 'held') or '0'))
    if limit >= 0 and spent + held >= limit then
      return {0, i, d, tostring(spent)}
    end
    table.insert(out, tostring(spent))
  end
end
for i = 0, n - 1 do
  for d = 0, 1 do
    local key, leases = KEYS[i * 4 + 1 + d], KEYS[i * 4 + 3 + d]
    redis.call('HINCRBYFLOAT', key, 'held', est)
    redis.call('HSET', key, 'r:' .. rid, tostring(est))
    redis.call('ZADD', leases, now + lease, rid)
    local ttl = (d == 0) and 172800000 or 3456000000
    redis.call('PEXPIRE', key, ttl)
    redis.call('PEXPIRE', leases, ttl)
  end
end
return out
"#;

/// Settle: ARGV: n, request id, actual cost; per scope: daily seed, monthly
/// seed. KEYS as for the reservation.
const BUDGET_SETTLE: &str = r#"
local n, rid, actual = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local out = {1}
for i = 0, n - 1 do
  for d = 0, 1 do
    local key, leases = KEYS[i * 4 + 1 + d], KEYS[i * 4 + 3 + d]
    redis.call('HSETNX', key, 'spent', ARGV[4 + i * 2 + d])
    local amt = redis.call('HGET', key, 'r:' .. rid)
    if amt then
      redis.call('HINCRBYFLOAT', key, 'held', -tonumber(amt))
      redis.call('HDEL', key, 'r:' .. rid)
      redis.call('ZREM', leases, rid)
    end
    table.insert(out, redis.call('HINCRBYFLOAT', key, 'spent', actual))
  end
end
return out
"#;

/// One scope's budget in a decision.
#[derive(Clone, Copy, Debug)]
pub struct BudgetRef<'a> {
    /// `key:<id>` or `team:<id>`.
    pub scope: &'a str,
    /// Daily budget in USD, if any.
    pub daily_usd: Option<f64>,
    /// Monthly budget in USD, if any.
    pub monthly_usd: Option<f64>,
    /// Spent today according to the ledger, used if no node wrote today yet.
    pub day_seed: f64,
    /// Spent this month according to the ledger, likewise.
    pub month_seed: f64,
}

/// A budget refused: which scope (index), which period, spent so far.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetRefused {
    /// Index into the scopes given.
    pub index: usize,
    /// `false`: the day; `true`: the month.
    pub monthly: bool,
    /// Spent in that period, in USD.
    pub spent: f64,
}

fn n(v: Option<u64>) -> u64 {
    v.unwrap_or(0)
}

impl RedisLimits {
    /// Connect (each connection reconnects by itself after a failure).
    pub async fn connect(settings: RedisSettings) -> Result<RedisLimits, BackendError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tollgate-redis")
            .enable_all()
            .build()
            .map_err(|_| BackendError::Gone)?;
        let rt = OwnRuntime(Some(rt));
        let s = settings.clone();
        let conns = rt
            .run(async move {
                let client = redis::Client::open(s.url.as_str())?;
                let mut conns = Vec::with_capacity(s.pool_size.max(1));
                for _ in 0..s.pool_size.max(1) {
                    let config = redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(s.timeout)
                        .set_response_timeout(s.timeout)
                        .set_number_of_retries(1);
                    let conn = tokio::time::timeout(
                        s.timeout.max(Duration::from_secs(1)),
                        ConnectionManager::new_with_config(client.clone(), config),
                    )
                    .await
                    .map_err(|_| BackendError::Timeout(s.timeout))??;
                    conns.push(conn);
                }
                Ok(conns)
            })
            .await?;
        Ok(RedisLimits {
            inner: Arc::new(Inner {
                conns,
                next: AtomicUsize::new(0),
                settings,
                admit: Script::new(ADMIT),
                finish: Script::new(FINISH),
                reserve: Script::new(BUDGET_RESERVE),
                settle: Script::new(BUDGET_SETTLE),
            }),
            rt,
        })
    }

    fn key(&self, scope: &str, what: &str) -> String {
        format!("{}:{scope}:{what}", self.inner.settings.key_prefix)
    }

    /// One script, on the backend's runtime, within the timeout.
    async fn run(
        &self,
        finish: bool,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<i64>, BackendError> {
        self.run_script(
            if finish { Which::Finish } else { Which::Admit },
            keys,
            args,
        )
        .await
    }

    async fn run_script<T: redis::FromRedisValue + Send + 'static>(
        &self,
        which: Which,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<T, BackendError> {
        let inner = self.inner.clone();
        let timeout = inner.settings.timeout;
        self.rt
            .run(async move {
                let i = inner.next.fetch_add(1, Ordering::Relaxed) % inner.conns.len();
                let mut conn = inner.conns[i].clone();
                let script = match which {
                    Which::Admit => &inner.admit,
                    Which::Finish => &inner.finish,
                    Which::Reserve => &inner.reserve,
                    Which::Settle => &inner.settle,
                };
                let mut inv = script.prepare_invoke();
                for k in &keys {
                    inv.key(k);
                }
                for a in &args {
                    inv.arg(a);
                }
                tokio::time::timeout(timeout, inv.invoke_async(&mut conn))
                    .await
                    .map_err(|_| BackendError::Timeout(timeout))?
                    .map_err(BackendError::from)
            })
            .await
    }

    /// Take one request and `tokens` from every layer, or nothing.
    /// `request_id` names the concurrency slot that [`Self::finish`] frees.
    pub async fn admit(
        &self,
        layers: &[LayerRef<'_>],
        tokens: u64,
        request_id: &str,
    ) -> Result<Result<Admission, Rejection>, BackendError> {
        let mut keys = Vec::with_capacity(layers.len() * 2);
        for l in layers {
            keys.push(self.key(l.scope, "b"));
            keys.push(self.key(l.scope, "conc"));
        }
        let mut args = Vec::with_capacity(4 + layers.len() * 6);
        args.push(layers.len().to_string());
        args.push(tokens.to_string());
        args.push(request_id.to_string());
        args.push(self.inner.settings.lease.as_millis().to_string());
        for l in layers {
            let m = l.limits;
            for v in [
                n(m.rpm),
                n(m.rpm_burst.or(m.rpm)),
                n(m.tpm),
                n(m.tpm_burst.or(m.tpm)),
                n(m.tpd),
                n(m.concurrent),
            ] {
                args.push(v.to_string());
            }
        }
        let reply = self.run(false, keys, args).await?;
        decode_admit(&reply, layers, tokens).ok_or(BackendError::Reply(reply))
    }

    /// The request ended: replace its reservation with `actual` tokens
    /// (`None` keeps it) and free its concurrency slot.
    pub async fn finish(
        &self,
        layers: &[LayerRef<'_>],
        reserved: u64,
        actual: Option<u64>,
        request_id: &str,
    ) -> Result<(), BackendError> {
        let mut keys = Vec::with_capacity(layers.len() * 2);
        for l in layers {
            keys.push(self.key(l.scope, "b"));
            keys.push(self.key(l.scope, "conc"));
        }
        let delta = actual.map_or(0, |a| reserved as i64 - a as i64);
        let mut args = vec![
            layers.len().to_string(),
            delta.to_string(),
            request_id.to_string(),
        ];
        for l in layers {
            let m = l.limits;
            for v in [
                n(m.tpm),
                n(m.tpm_burst.or(m.tpm)),
                n(m.tpd),
                n(m.concurrent),
            ] {
                args.push(v.to_string());
            }
        }
        self.run(true, keys, args).await.map(|_| ())
    }
}

#[derive(Clone, Copy)]
enum Which {
    Admit,
    Finish,
    Reserve,
    Settle,
}

fn budget_keys(prefix: &str, scopes: &[BudgetRef<'_>], day: i64, month: i64) -> Vec<String> {
    let mut keys = Vec::with_capacity(scopes.len() * 4);
    for b in scopes {
        keys.push(format!("{prefix}:budget:{}:d:{day}", b.scope));
        keys.push(format!("{prefix}:budget:{}:m:{month}", b.scope));
        keys.push(format!("{prefix}:budget:{}:d:{day}:leases", b.scope));
        keys.push(format!("{prefix}:budget:{}:m:{month}:leases", b.scope));
    }
    keys
}

impl RedisLimits {
    /// Reserve `estimate` USD in every scope's daily and monthly budget, or
    /// nothing: refused once what is spent plus what requests in flight hold
    /// reaches a budget (as in this process, so the overspend is bounded by one
    /// request beyond its estimate). `day` and `month` index the UTC periods.
    /// On success, the spend of each scope: `[day, month]`.
    pub async fn reserve_budget(
        &self,
        scopes: &[BudgetRef<'_>],
        estimate: f64,
        request_id: &str,
        (day, month): (i64, i64),
    ) -> Result<Result<Vec<[f64; 2]>, BudgetRefused>, BackendError> {
        let keys = budget_keys(&self.inner.settings.key_prefix, scopes, day, month);
        let mut args = vec![
            scopes.len().to_string(),
            estimate.to_string(),
            request_id.to_string(),
            self.inner.settings.lease.as_millis().to_string(),
        ];
        for b in scopes {
            args.push(b.daily_usd.map_or("-1".into(), |v| v.to_string()));
            args.push(b.monthly_usd.map_or("-1".into(), |v| v.to_string()));
            args.push(b.day_seed.to_string());
            args.push(b.month_seed.to_string());
        }
        let reply: Vec<redis::Value> = self.run_script(Which::Reserve, keys, args).await?;
        let num = |v: &redis::Value| -> Option<f64> {
            match v {
                redis::Value::Int(i) => Some(*i as f64),
                redis::Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
                redis::Value::SimpleString(s) => s.parse().ok(),
                _ => None,
            }
        };
        let bad = || BackendError::Reply(Vec::new());
        match reply.first().and_then(num) {
            Some(0.0) => {
                let index = reply.get(1).and_then(num).ok_or_else(bad)? as usize;
                let monthly = reply.get(2).and_then(num).ok_or_else(bad)? != 0.0;
                let spent = reply.get(3).and_then(num).ok_or_else(bad)?;
                Ok(Err(BudgetRefused {
                    index,
                    monthly,
                    spent,
                }))
            }
            Some(_) => {
                let v: Vec<f64> = reply
                    .get(1..)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(num)
                    .collect();
                if v.len() != scopes.len() * 2 {
                    return Err(bad());
                }
                Ok(Ok(v.chunks(2).map(|c| [c[0], c[1]]).collect()))
            }
            None => Err(bad()),
        }
    }

    /// Replace a reservation with the real cost. Returns each scope's spend
    /// `[day, month]` after it.
    pub async fn settle_budget(
        &self,
        scopes: &[BudgetRef<'_>],
        actual: f64,
        request_id: &str,
        (day, month): (i64, i64),
    ) -> Result<Vec<[f64; 2]>, BackendError> {
        let keys = budget_keys(&self.inner.settings.key_prefix, scopes, day, month);
        let mut args = vec![
            scopes.len().to_string(),
            request_id.to_string(),
            actual.to_string(),
        ];
        for b in scopes {
            args.push(b.day_seed.to_string());
            args.push(b.month_seed.to_string());
        }
        let reply: Vec<String> = self.run_script(Which::Settle, keys, args).await?;
        let v: Vec<f64> = reply
            .get(1..)
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        if v.len() != scopes.len() * 2 {
            return Err(BackendError::Reply(Vec::new()));
        }
        Ok(v.chunks(2).map(|c| [c[0], c[1]]).collect())
    }
}

fn ms(v: i64) -> Duration {
    Duration::from_millis(v.max(0) as u64)
}

fn decode_admit(
    r: &[i64],
    layers: &[LayerRef<'_>],
    tokens: u64,
) -> Option<Result<Admission, Rejection>> {
    match r.first()? {
        0 => {
            let (i, j, wait, limit) = (*r.get(1)?, *r.get(2)?, *r.get(3)?, *r.get(4)?);
            let layer = layers.get(usize::try_from(i).ok()?)?.layer;
            let (kind, requested) = match j {
                1 => (LimitKind::Requests, 1),
                2 => (LimitKind::Tokens, tokens),
                3 => (LimitKind::TokensPerDay, tokens),
                4 => (LimitKind::Concurrency, 1),
                _ => return None,
            };
            let refusal = if wait < 0 {
                Refusal::TooLarge
            } else {
                Refusal::Wait(ms(wait))
            };
            Some(Err(Rejection {
                layer,
                kind,
                refusal,
                limit: limit.max(0) as u64,
                requested,
            }))
        }
        1 => {
            let mut adm = Admission {
                reserved: tokens,
                ..Admission::default()
            };
            for (k, l) in layers.iter().enumerate() {
                let s = r.get(1 + k * 5..6 + k * 5)?;
                if s[0] >= 0 {
                    let st = Status {
                        limit: n(l.limits.rpm),
                        remaining: s[0] as u64,
                        reset: ms(s[1]),
                    };
                    if adm.requests.is_none_or(|(_, a)| st.remaining < a.remaining) {
                        adm.requests = Some((l.layer, st));
                    }
                }
                if s[2] >= 0 {
                    let st = Status {
                        limit: s[4].max(0) as u64,
                        remaining: s[2] as u64,
                        reset: ms(s[3]),
                    };
                    if adm.tokens.is_none_or(|(_, a)| st.remaining < a.remaining) {
                        adm.tokens = Some((l.layer, st));
                    }
                }
            }
            Some(Ok(adm))
        }
        _ => None,
    }
}
