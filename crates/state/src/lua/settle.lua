-- Settles calls of one account once metering has charged them: releases each call's hold and
-- adds its cost to its key's lifetime, daily and monthly spend, and takes the sum from the
-- account balance. A marker per request id makes a repeated settlement (a retry after a
-- crash) a no-op. One call settles a whole batch of the account's calls in one window pair,
-- so spend is added once per key, not once per call.
-- KEYS[1] held credits (hash)  KEYS[2] holds (hash)  KEYS[3] hold expiries (zset)
-- KEYS[4] account balance
-- KEYS[4 + i] the settled marker of call i (i = 1..n)
-- KEYS[4 + n + j] key j's counters (hash: used, and d/ds, m/ms: the day and month of its
--                 latest spend and the spend in them)
-- ARGV[1] n calls  ARGV[2] m keys  ARGV[3] the calls' day (YYYYMMDD)  ARGV[4] their month (YYYYMM)
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
-- A newer window starts afresh; spend in an older one (a late call) is past and only adds to
-- the key's life. YYYYMMDD and YYYYMM compare as strings.
local function window(current, spent, day, cost)
  if current == false or day > current then return day, cost end
  if day == current then return current, tonumber(spent or '0') + cost end
  return current, tonumber(spent or '0')
end
for j = 1, m do
  local cost = key_cost[j]
  if cost and cost ~= 0 then
    local key = KEYS[4 + n + j]
    local now = redis.call('HMGET', key, 'used', 'd', 'ds', 'm', 'ms')
    local d, ds = window(now[2], now[3], ARGV[3], cost)
    local mo, ms = window(now[4], now[5], ARGV[4], cost)
    -- Whole numbers written as such: Lua would print a large one in exponent notation.
    local function int(x) return string.format('%d', x) end
    redis.call('HSET', key, 'used', int(tonumber(now[1] or '0') + cost), 'd', d, 'ds', int(ds), 'm', mo, 'ms', int(ms))
  end
end
if total ~= 0 then redis.call('DECRBY', KEYS[4], total) end
return table.concat(applied)
