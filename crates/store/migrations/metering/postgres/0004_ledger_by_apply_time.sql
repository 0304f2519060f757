-- `tollgate metering reconcile` reads the commits of the last minutes. Rows are appended in
-- about apply-time order, so a BRIN index finds them for almost nothing per insert.
CREATE INDEX usage_ledger_by_apply_time ON usage_ledger USING brin (apply_time);
