-- The commit that charged each call. A batch's settlement in Redis is remembered once per
-- commit (and account and day) instead of once per call; a redelivered call finds here which
-- commit charged it, and so whether that commit's settlement already counted it. Rows from
-- before this column are 0: settled call by call.
ALTER TABLE usage_ledger ADD COLUMN commit_id BIGINT NOT NULL DEFAULT 0;

-- Folding pending totals (0003) updates the rows of many keys, applications and accounts at
-- once: room on each page lets Postgres write the new row version beside the old one (a HOT
-- update, no index entry) instead of on another page.
ALTER TABLE key_totals SET (fillfactor = 50);
ALTER TABLE usage_totals SET (fillfactor = 50);
