-- Tollgate durable state, PostgreSQL flavour. Keep in step with ../sqlite/0001_init.sql.
-- JSON fields are TEXT holding JSON; timestamps are unix milliseconds unless noted.
-- Text keys use the "C" collation so ordering is bytewise, as on SQLite.

-- One-row change counter: bumped in the same transaction as every team or key write
-- (its row lock also serialises those writes).
CREATE TABLE state_version (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    v  BIGINT NOT NULL
);
INSERT INTO state_version (id, v) VALUES (1, 0);

CREATE TABLE teams (
    id          TEXT COLLATE "C" PRIMARY KEY,
    description TEXT,
    models      TEXT,             -- JSON array of model names; NULL = every model
    limits      TEXT NOT NULL,    -- JSON LimitSpec
    budget      TEXT NOT NULL,    -- JSON BudgetSpec
    metadata    TEXT NOT NULL,    -- JSON object
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    version     BIGINT NOT NULL
);

-- Managed client keys: only the SHA-256 of the secret is stored.
CREATE TABLE client_keys (
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT NOT NULL,
    hash        TEXT COLLATE "C" NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    team_id     TEXT COLLATE "C",
    models      TEXT,
    limits      TEXT NOT NULL,
    budget      TEXT NOT NULL,
    disabled    BOOLEAN NOT NULL DEFAULT FALSE,
    expires_at  BIGINT,           -- unix seconds
    metadata    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    rotated_at  BIGINT,
    version     BIGINT NOT NULL,
    deleted     BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX client_keys_version ON client_keys (version);
CREATE INDEX client_keys_team ON client_keys (team_id);
CREATE INDEX client_keys_created ON client_keys (created_at, id);

-- The usage ledger: one row per request, idempotent on request_id.
CREATE TABLE usage_ledger (
    request_id    TEXT COLLATE "C" PRIMARY KEY,
    ts_ms         BIGINT NOT NULL,
    key_id        TEXT COLLATE "C" NOT NULL,
    key_name      TEXT NOT NULL,
    team_id       TEXT COLLATE "C",
    model         TEXT COLLATE "C" NOT NULL,
    provider      TEXT COLLATE "C" NOT NULL,
    operation     TEXT NOT NULL,
    status        INTEGER NOT NULL,
    stream        BOOLEAN NOT NULL,
    input_tokens  BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    cost_usd      DOUBLE PRECISION NOT NULL,
    latency_ms    DOUBLE PRECISION NOT NULL,
    ttft_ms       DOUBLE PRECISION,
    error         TEXT
);
CREATE INDEX usage_ledger_ts ON usage_ledger (ts_ms);
CREATE INDEX usage_ledger_key_ts ON usage_ledger (key_id, ts_ms);
CREATE INDEX usage_ledger_team_ts ON usage_ledger (team_id, ts_ms);
