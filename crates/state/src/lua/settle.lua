-- Settles calls of one account once metering has charged them: releases each call's hold and
-- adds its cost to its key's lifetime, daily and monthly spend, and takes the sum from the
-- account balance. A marker per request id makes a repeated settlement (a retry after a
-- crash) a no-op. One call settles a whole batch of the account's calls in one window pair,
-- so spend is added once per key, not once per call.
-- KEYS[1] held credits (hash)  KEYS[2] holds (hash)  KEYS[3] hold expiries (zset)
-- KEYS[4] account balance
-- KEYS[4 + i] the settled marker of call i (i = 1..n)
-- KEYS[4 + n + 3j - 2 .. 4 + n + 3j] key j's counters (hash), spend that day, spend that month
-- ARGV[1] n calls  ARGV[2] m keys  ARGV[3] day window end (ms)  ARGV[4] month window end (ms)
-- ARGV[5] how long to remember a settlement (ms)
-- ARGV[5 + 3i - 2 .. 5 + 3i] call i's request id, cost, key index j (1..m)
-- Returns a string of n characters: '1' where the call was settled now, '0' where before.
local n, m = tonumber(ARGV[1]), tonumber(ARGV[2])
local memory = ARGV[5]
local applied = {}
local key_cost = {}
local total = 0
for i = 1, n do
  local rid = ARGV[5 + 3 * i - 2]
  if redis.call('SET', KEYS[4 + i], '1', 'NX', 'PX', memory) == false then
    applied[i] = '0'
  else
    applied[i] = '1'
    local hold = redis.call('HGET', KEYS[2], rid)
    if hold then
      local sep = string.find(hold, '|', 1, true)
      local amount = tonumber(string.sub(hold, sep + 1))
      redis.call('HINCRBY', KEYS[1], string.sub(hold, 1, sep - 1), -amount)
      redis.call('HINCRBY', KEYS[1], '*', -amount)
      redis.call('HDEL', KEYS[2], rid)
      redis.call('ZREM', KEYS[3], rid)
    end
    local cost = tonumber(ARGV[5 + 3 * i - 1])
    local j = tonumber(ARGV[5 + 3 * i])
    key_cost[j] = (key_cost[j] or 0) + cost
    total = total + cost
  end
end
for j = 1, m do
  local cost = key_cost[j]
  if cost and cost ~= 0 then
    local base = 4 + n + 3 * (j - 1)
    redis.call('HINCRBY', KEYS[base + 1], 'used', cost)
    redis.call('INCRBY', KEYS[base + 2], cost)
    -- A window's spend is kept a day past its end, for late reads; then it is dead weight.
    redis.call('PEXPIREAT', KEYS[base + 2], tonumber(ARGV[3]) + 86400000)
    redis.call('INCRBY', KEYS[base + 3], cost)
    redis.call('PEXPIREAT', KEYS[base + 3], tonumber(ARGV[4]) + 86400000)
  end
end
if total ~= 0 then redis.call('DECRBY', KEYS[4], total) end
return table.concat(applied)
