-- Prompt APIs, PostgreSQL flavour. Keep in step with ../sqlite/0002_apis.sql.
-- JSON fields are TEXT holding JSON; timestamps are unix milliseconds.
-- Text keys use the "C" collation so ordering is bytewise, as on SQLite.
-- `row_version` is the `state_version` value of the last write to the row (the
-- column cannot be called `version` in `apis`, where `version` is the API's).

-- One row per version of an API.
CREATE TABLE apis (
    name          TEXT COLLATE "C" NOT NULL,
    version       TEXT COLLATE "C" NOT NULL,
    team_id       TEXT COLLATE "C" NOT NULL,    -- owner
    status        TEXT COLLATE "C" NOT NULL,    -- draft | published | deprecated | retired
    spec          TEXT NOT NULL,                -- JSON object: the definition, opaque to the store
    description   TEXT,
    auto_approve  BOOLEAN NOT NULL,
    deprecated_at BIGINT,
    sunset_at     BIGINT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    row_version   BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE INDEX apis_team ON apis (team_id);

-- A team's subscription to an API (by name: it covers every version).
CREATE TABLE api_subscriptions (
    id           TEXT COLLATE "C" PRIMARY KEY,  -- sub_ + 24 hex digits
    api          TEXT COLLATE "C" NOT NULL,
    team_id      TEXT COLLATE "C" NOT NULL,
    status       TEXT COLLATE "C" NOT NULL,     -- pending | approved | rejected | revoked
    requested_by TEXT NOT NULL,
    decided_by   TEXT,
    reason       TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    row_version  BIGINT NOT NULL,
    UNIQUE (api, team_id)
);
CREATE INDEX api_subscriptions_team ON api_subscriptions (team_id);
CREATE INDEX api_subscriptions_created ON api_subscriptions (created_at, id);

-- Audit log of API and subscription changes; append-only.
CREATE TABLE api_events (
    id          BIGSERIAL PRIMARY KEY,
    at_ms       BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    api         TEXT COLLATE "C" NOT NULL,      -- API name
    api_version TEXT COLLATE "C",
    action      TEXT NOT NULL,
    detail      TEXT NOT NULL                   -- JSON object
);
CREATE INDEX api_events_api ON api_events (api, id);

-- Requests made through a prompt API: `name/version`, e.g. `sentiment/v1`.
ALTER TABLE usage_ledger ADD COLUMN api TEXT COLLATE "C";
CREATE INDEX usage_ledger_api_ts ON usage_ledger (api, ts_ms);
