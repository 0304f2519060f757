-- What committed batches added to the running totals of keys, applications and accounts, not
-- yet folded into `key_totals` and `usage_totals`: one row per batch, a line per key or scope
-- (see crates/store/src/metering/totals.rs). A total is its row plus the lines here that name
-- it. A batch so writes no row another batch writes: workers never wait for each other.
CREATE TABLE totals_pending (
    id     BIGSERIAL PRIMARY KEY,
    deltas TEXT NOT NULL
);
-- Stored out of line without compression: pglz cost more CPU than the row's I/O saved.
ALTER TABLE totals_pending ALTER COLUMN deltas SET STORAGE EXTERNAL;
