-- Tollgate durable state, SQLite flavour. Keep in step with ../postgres/0001_init.sql.
-- JSON fields are TEXT holding JSON; timestamps are unix milliseconds unless noted.

-- One-row change counter: bumped in the same transaction as every team or key write.
CREATE TABLE state_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    v  INTEGER NOT NULL
);
INSERT INTO state_version (id, v) VALUES (1, 0);

CREATE TABLE teams (
    id          TEXT PRIMARY KEY NOT NULL,
    description TEXT,
    models      TEXT,             -- JSON array of model names; NULL = every model
    limits      TEXT NOT NULL,    -- JSON LimitSpec
    budget      TEXT NOT NULL,    -- JSON BudgetSpec
    metadata    TEXT NOT NULL,    -- JSON object
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    version     INTEGER NOT NULL
);

-- Managed client keys: only the SHA-256 of the secret is stored.
CREATE TABLE client_keys (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    team_id     TEXT,
    models      TEXT,
    limits      TEXT NOT NULL,
    budget      TEXT NOT NULL,
    disabled    BOOLEAN NOT NULL DEFAULT FALSE,
    expires_at  INTEGER,          -- unix seconds
    metadata    TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    rotated_at  INTEGER,
    version     INTEGER NOT NULL,
    deleted     BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX client_keys_version ON client_keys (version);
CREATE INDEX client_keys_team ON client_keys (team_id);
CREATE INDEX client_keys_created ON client_keys (created_at, id);

-- The usage ledger: one row per request, idempotent on request_id.
CREATE TABLE usage_ledger (
    request_id    TEXT PRIMARY KEY NOT NULL,
    ts_ms         INTEGER NOT NULL,
    key_id        TEXT NOT NULL,
    key_name      TEXT NOT NULL,
    team_id       TEXT,
    model         TEXT NOT NULL,
    provider      TEXT NOT NULL,
    operation     TEXT NOT NULL,
    status        INTEGER NOT NULL,
    stream        BOOLEAN NOT NULL,
    input_tokens  INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    cost_usd      REAL NOT NULL,
    latency_ms    REAL NOT NULL,
    ttft_ms       REAL,
    error         TEXT
);
CREATE INDEX usage_ledger_ts ON usage_ledger (ts_ms);
CREATE INDEX usage_ledger_key_ts ON usage_ledger (key_id, ts_ms);
CREATE INDEX usage_ledger_team_ts ON usage_ledger (team_id, ts_ms);
