-- The keys service's configuration. Times are microseconds since the Unix epoch; lists are
-- JSON arrays in TEXT, so the same SQL runs on Postgres and SQLite.

CREATE TABLE accounts (
    id               TEXT PRIMARY KEY,
    display_name     TEXT NOT NULL,
    credit_limit     BIGINT NOT NULL DEFAULT 0,
    unlimited_credit BOOLEAN NOT NULL DEFAULT FALSE,
    revision         BIGINT NOT NULL,
    create_time      BIGINT NOT NULL,
    update_time      BIGINT NOT NULL
);

CREATE TABLE applications (
    account_id   TEXT NOT NULL REFERENCES accounts (id),
    id           TEXT NOT NULL,
    display_name TEXT NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    revision     BIGINT NOT NULL,
    create_time  BIGINT NOT NULL,
    update_time  BIGINT NOT NULL,
    delete_time  BIGINT,
    PRIMARY KEY (account_id, id)
);

CREATE TABLE key_groups (
    id                TEXT PRIMARY KEY,
    display_name      TEXT NOT NULL,
    price_multiplier  TEXT NOT NULL,
    allowed_models    TEXT NOT NULL,
    default_rpm_limit BIGINT,
    default_tpm_limit BIGINT,
    revision          BIGINT NOT NULL,
    create_time       BIGINT NOT NULL,
    update_time       BIGINT NOT NULL,
    -- Deleted groups stay as tombstones: deleted keys still name them.
    delete_time       BIGINT
);

CREATE TABLE models (
    id                 TEXT PRIMARY KEY,
    display_name       TEXT NOT NULL,
    capability         TEXT NOT NULL,
    input_price        BIGINT NOT NULL,
    output_price       BIGINT NOT NULL,
    cached_input_price BIGINT,
    revision           BIGINT NOT NULL,
    create_time        BIGINT NOT NULL,
    update_time        BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id                          TEXT PRIMARY KEY,
    account_id                  TEXT NOT NULL REFERENCES accounts (id),
    application_id              TEXT NOT NULL,
    group_id                    TEXT NOT NULL REFERENCES key_groups (id),
    display_name                TEXT NOT NULL,
    expire_time                 BIGINT,
    quota                       BIGINT,
    daily_budget                BIGINT,
    monthly_budget              BIGINT,
    rpm_limit                   BIGINT,
    tpm_limit                   BIGINT,
    allowed_models              TEXT NOT NULL,
    capabilities                TEXT NOT NULL,
    ip_allowlist                TEXT NOT NULL,
    enabled                     BOOLEAN NOT NULL,
    hint                        TEXT NOT NULL,
    previous_secret_expire_time BIGINT,
    revision                    BIGINT NOT NULL,
    create_time                 BIGINT NOT NULL,
    update_time                 BIGINT NOT NULL,
    delete_time                 BIGINT,
    FOREIGN KEY (account_id, application_id) REFERENCES applications (account_id, id)
);
CREATE INDEX api_keys_by_account ON api_keys (account_id, id);
CREATE INDEX api_keys_by_group ON api_keys (group_id);

-- Only keyed hashes (HMAC-SHA256 under the server pepper) of secrets, never the secrets.
CREATE TABLE key_secrets (
    secret_hash TEXT PRIMARY KEY,
    key_id      TEXT NOT NULL REFERENCES api_keys (id),
    expire_time BIGINT,
    create_time BIGINT NOT NULL
);
CREATE INDEX key_secrets_by_key ON key_secrets (key_id);

CREATE TABLE create_requests (
    account_id     TEXT NOT NULL,
    request_id     TEXT NOT NULL,
    fingerprint    TEXT NOT NULL,
    key_ids        TEXT NOT NULL,
    sealed_secrets TEXT NOT NULL,
    create_time    BIGINT NOT NULL,
    PRIMARY KEY (account_id, request_id)
);
CREATE INDEX create_requests_by_time ON create_requests (create_time);

CREATE TABLE audit_events (
    id             BIGSERIAL PRIMARY KEY,
    actor          TEXT NOT NULL,
    action         TEXT NOT NULL,
    resource       TEXT NOT NULL,
    account_id     TEXT,
    changed_fields TEXT NOT NULL,
    time           BIGINT NOT NULL
);
CREATE INDEX audit_events_by_account ON audit_events (account_id, id);
CREATE INDEX audit_events_by_resource ON audit_events (resource, id);

CREATE TABLE state_outbox (
    id     BIGSERIAL PRIMARY KEY,
    kind   TEXT NOT NULL,
    ref_id TEXT NOT NULL
);

CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
