-- Adds a credit grant to an account's balance once: a marker per grant id makes a repeated
-- call (a retry after a crash between the database commit and this step) a no-op.
-- KEYS[1] account balance  KEYS[2] marker of this grant  KEYS[3] present while a
-- reconciliation rewrites the account's counters (same hash tag)  KEYS[4] the rebuilt marker
-- of the account's slot (see rebuild.rs)
-- ARGV[1] credits (negative takes)  ARGV[2] how long to remember the grant (ms)
-- Returns 1 when applied, 0 when it had been applied before; -1 (nothing done) while a
-- reconciliation runs, -2 while the counters wait for one (their marker is gone).
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
if redis.call('EXISTS', KEYS[4]) == 0 then return -2 end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) == false then
  return 0
end
redis.call('INCRBY', KEYS[1], ARGV[1])
return 1
