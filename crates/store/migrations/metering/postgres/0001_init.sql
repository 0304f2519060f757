-- The metering service's money. Times are microseconds since the Unix epoch; credits are
-- integers. The same SQL statements run on Postgres and SQLite; only these files differ.

-- One row per charged call; the unique (account, request id) makes charging exactly once.
CREATE TABLE usage_ledger (
    request_id          TEXT NOT NULL,
    account_id          TEXT NOT NULL,
    application_id      TEXT NOT NULL,
    key_id              TEXT NOT NULL,
    model               TEXT NOT NULL,
    input_tokens        BIGINT NOT NULL,
    output_tokens       BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL,
    credits             BIGINT NOT NULL,
    outcome             TEXT NOT NULL,
    start_time          BIGINT NOT NULL,
    end_time            BIGINT NOT NULL,
    -- The calendar windows the call counts in (by its end time), `YYYYMMDD` and `YYYYMM`.
    day                 TEXT NOT NULL,
    month               TEXT NOT NULL,
    apply_time          BIGINT NOT NULL,
    -- Request ids are unique per account, as Authorize's holds are.
    PRIMARY KEY (account_id, request_id)
);
CREATE INDEX usage_ledger_by_account ON usage_ledger (account_id, end_time, request_id);
CREATE INDEX usage_ledger_by_key ON usage_ledger (key_id, end_time);

-- Each key's running totals, with its spend in the latest day and month it was used in (one
-- row per key, so a batch upserts one row per key it touches). Older windows are in the
-- ledger.
CREATE TABLE key_totals (
    account_id          TEXT NOT NULL,
    key_id              TEXT NOT NULL,
    requests            BIGINT NOT NULL,
    input_tokens        BIGINT NOT NULL,
    output_tokens       BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL,
    credits             BIGINT NOT NULL,
    day                 TEXT NOT NULL,
    day_credits         BIGINT NOT NULL,
    month               TEXT NOT NULL,
    month_credits       BIGINT NOT NULL,
    PRIMARY KEY (account_id, key_id)
);

-- Running totals of applications, `a/{account}/{application}`, and accounts, `c/{account}`.
CREATE TABLE usage_totals (
    scope               TEXT PRIMARY KEY,
    requests            BIGINT NOT NULL,
    input_tokens        BIGINT NOT NULL,
    output_tokens       BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL,
    credits             BIGINT NOT NULL
);

-- Credits added per account; what it spent is the `c/{account}` running total, so charging
-- a batch writes no row here. Balance = credits added - credits spent.
CREATE TABLE account_balances (
    account_id    TEXT PRIMARY KEY,
    credits_added BIGINT NOT NULL
);

-- Every credit change an admin made; the idempotency id makes a retry add nothing.
CREATE TABLE credit_grants (
    account_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    credits    BIGINT NOT NULL,
    reason     TEXT NOT NULL,
    actor      TEXT NOT NULL,
    time       BIGINT NOT NULL,
    PRIMARY KEY (account_id, request_id)
);

-- `tollgate dev`'s usage queue (production uses a Redis Stream).
CREATE TABLE usage_inbox (
    id         BIGSERIAL PRIMARY KEY,
    payload    BYTEA NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    visible_at BIGINT NOT NULL
);

CREATE TABLE usage_dead_letters (
    id       BIGSERIAL PRIMARY KEY,
    payload  BYTEA NOT NULL,
    reason   TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    time     BIGINT NOT NULL
);
