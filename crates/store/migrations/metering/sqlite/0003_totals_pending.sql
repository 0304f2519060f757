-- What committed batches added to the running totals of keys, applications and accounts, not
-- yet folded into `key_totals` and `usage_totals`: one row per batch, a line per key or scope
-- (see crates/store/src/metering/totals.rs). A total is its row plus the lines here that name
-- it. A batch so writes no row another batch writes: workers never wait for each other.
CREATE TABLE totals_pending (
    id     INTEGER PRIMARY KEY,
    deltas TEXT NOT NULL
);
