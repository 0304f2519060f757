-- `tollgate dev` rebuilds its counters at start-up from, among others, the commits of the
-- last minutes. (Postgres uses a BRIN index.)
CREATE INDEX usage_ledger_by_apply_time ON usage_ledger (apply_time);
