-- Settles a call once metering has charged it: releases its hold and adds its cost to the
-- key's lifetime, daily and monthly spend and takes it from the account balance. A marker per
-- request id makes a repeated settlement (a retry after a crash) a no-op.
-- KEYS[1] the key's counters (hash)  KEYS[2] its spend that day  KEYS[3] its spend that month
-- KEYS[4] held credits (hash)  KEYS[5] holds (hash)  KEYS[6] hold expiries (zset)
-- KEYS[7] account balance      KEYS[8] settled marker of this request id
-- ARGV[1] request id  ARGV[2] cost  ARGV[3] day window end (ms)  ARGV[4] month window end (ms)
-- ARGV[5] how long to remember the settlement (ms)
-- Returns 1 when applied, 0 when it had been applied before.
if redis.call('SET', KEYS[8], '1', 'NX', 'PX', ARGV[5]) == false then
  return 0
end
local hold = redis.call('HGET', KEYS[5], ARGV[1])
if hold then
  local sep = string.find(hold, '|', 1, true)
  local amount = tonumber(string.sub(hold, sep + 1))
  redis.call('HINCRBY', KEYS[4], string.sub(hold, 1, sep - 1), -amount)
  redis.call('HINCRBY', KEYS[4], '*', -amount)
  redis.call('HDEL', KEYS[5], ARGV[1])
end
redis.call('ZREM', KEYS[6], ARGV[1])
local cost = tonumber(ARGV[2])
if cost ~= 0 then
  redis.call('HINCRBY', KEYS[1], 'used', cost)
  redis.call('INCRBY', KEYS[2], cost)
  -- A window's spend is kept a day past its end, for late reads; then it is dead weight.
  redis.call('PEXPIREAT', KEYS[2], tonumber(ARGV[3]) + 86400000)
  redis.call('INCRBY', KEYS[3], cost)
  redis.call('PEXPIREAT', KEYS[3], tonumber(ARGV[4]) + 86400000)
  redis.call('DECRBY', KEYS[7], cost)
end
return 1
