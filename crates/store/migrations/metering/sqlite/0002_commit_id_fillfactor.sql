-- The commit that charged each call. A batch's settlement in Redis is remembered once per
-- commit (and account and day) instead of once per call; a redelivered call finds here which
-- commit charged it, and so whether that commit's settlement already counted it. Rows from
-- before this column are 0: settled call by call.
ALTER TABLE usage_ledger ADD COLUMN commit_id BIGINT NOT NULL DEFAULT 0;

-- (Postgres also gives the totals tables room for in-place updates; SQLite has no such
-- setting.)
