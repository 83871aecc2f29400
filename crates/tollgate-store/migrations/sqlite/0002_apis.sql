-- Prompt APIs, SQLite flavour. Keep in step with ../postgres/0002_apis.sql.
-- JSON fields are TEXT holding JSON; timestamps are unix milliseconds.
-- `row_version` is the `state_version` value of the last write to the row (the
-- column cannot be called `version` in `apis`, where `version` is the API's).

-- One row per version of an API.
CREATE TABLE apis (
    name          TEXT NOT NULL,
    version       TEXT NOT NULL,
    team_id       TEXT NOT NULL,    -- owner
    status        TEXT NOT NULL,    -- draft | published | deprecated | retired
    spec          TEXT NOT NULL,    -- JSON object: the definition, opaque to the store
    description   TEXT,
    auto_approve  BOOLEAN NOT NULL,
    deprecated_at INTEGER,
    sunset_at     INTEGER,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    row_version   INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE INDEX apis_team ON apis (team_id);

-- A team's subscription to an API (by name: it covers every version).
CREATE TABLE api_subscriptions (
    id           TEXT PRIMARY KEY NOT NULL,   -- sub_ + 24 hex digits
    api          TEXT NOT NULL,
    team_id      TEXT NOT NULL,
    status       TEXT NOT NULL,               -- pending | approved | rejected | revoked
    requested_by TEXT NOT NULL,
    decided_by   TEXT,
    reason       TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    row_version  INTEGER NOT NULL,
    UNIQUE (api, team_id)
);
CREATE INDEX api_subscriptions_team ON api_subscriptions (team_id);
CREATE INDEX api_subscriptions_created ON api_subscriptions (created_at, id);

-- Audit log of API and subscription changes; append-only.
CREATE TABLE api_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms       INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    api         TEXT NOT NULL,    -- API name
    api_version TEXT,
    action      TEXT NOT NULL,
    detail      TEXT NOT NULL     -- JSON object
);
CREATE INDEX api_events_api ON api_events (api, id);

-- Requests made through a prompt API: `name/version`, e.g. `sentiment/v1`.
ALTER TABLE usage_ledger ADD COLUMN api TEXT;
CREATE INDEX usage_ledger_api_ts ON usage_ledger (api, ts_ms);
