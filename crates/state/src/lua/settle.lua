-- Settles calls of one account and one day once metering has charged them: releases each
-- call's hold and adds its cost to its key's lifetime, daily and monthly spend, and takes the
-- sum from the account balance. Spend is added once per key, holds released in one call each.
--
-- A repeated settlement (a redelivery after a crash) must change nothing. The committing
-- worker settles all the calls its commit charged to the account that day in one call
-- ('commit'): one marker for the commit says they are done. A redelivered call ('calls')
-- is settled only if that marker is missing, and then under a marker of its own; the commit
-- marker then says 'part', and a late 'commit' call is answered 'calls' (resend call by call).
--
-- KEYS[1] held credits (hash)  KEYS[2] holds (hash)  KEYS[3] hold expiries (zset)
-- KEYS[4] account balance      KEYS[5] the commit's marker for this account and day
-- KEYS[5 + j] key j's counters (hash: used, and d/ds, m/ms: the day and month of its latest
--             spend and the spend in them), j = 1..m
-- KEYS[5 + m + i] call i's marker, i = 1..n (mode 'calls' only)
-- KEYS[#KEYS - 1] the rebuilt marker of the account's slot (see rebuild.rs)
-- KEYS[#KEYS]  present while a reconciliation rewrites the account's counters
-- ARGV[1] mode: 'commit' or 'calls'  ARGV[2] n calls  ARGV[3] m keys
-- ARGV[4] the calls' day (YYYYMMDD)  ARGV[5] their month (YYYYMM)
-- ARGV[6] how long to remember a settlement (ms)
-- 'commit': ARGV[6 + i] call i's request id; ARGV[6 + n + j] what key j's calls cost in all
-- 'calls':  ARGV[6 + 3i - 2 .. 6 + 3i] call i's request id, cost, key index j (1..m)
-- Returns n characters, '1' where the call was settled now and '0' where before; or 'calls';
-- or 'paused' (nothing done) while a reconciliation runs, or 'lost' while the counters wait for
-- one (their marker is gone with Redis's data).
if redis.call('EXISTS', KEYS[#KEYS]) == 1 then return 'paused' end
if redis.call('EXISTS', KEYS[#KEYS - 1]) == 0 then return 'lost' end
local mode, n, m = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local memory = ARGV[6]
local rids, key_cost, total = {}, {}, 0
local flags = {}
if mode == 'commit' then
  if not redis.call('SET', KEYS[5], 'all', 'NX', 'PX', memory) then
    if redis.call('GET', KEYS[5]) == 'all' then return string.rep('0', n) end
    return 'calls'
  end
  for i = 1, n do rids[i] = ARGV[6 + i] end
  for j = 1, m do
    key_cost[j] = tonumber(ARGV[6 + n + j])
    total = total + key_cost[j]
  end
else
  if redis.call('GET', KEYS[5]) == 'all' then return string.rep('0', n) end
  redis.call('SET', KEYS[5], 'part', 'PX', memory)
  for i = 1, n do
    if redis.call('SET', KEYS[5 + m + i], '1', 'NX', 'PX', memory) then
      flags[i] = '1'
      rids[#rids + 1] = ARGV[6 + 3 * i - 2]
      local cost = tonumber(ARGV[6 + 3 * i - 1])
      local j = tonumber(ARGV[6 + 3 * i])
      key_cost[j] = (key_cost[j] or 0) + cost
      total = total + cost
    else
      flags[i] = '0'
    end
  end
end

-- Holds: `request id -> key id|credits`; found ones are released per key and for the account.
local held, held_total = {}, 0
for first = 1, #rids, 500 do
  local chunk = { unpack(rids, first, math.min(first + 499, #rids)) }
  local holds = redis.call('HMGET', KEYS[2], unpack(chunk))
  local found = {}
  for h = 1, #chunk do
    local hold = holds[h]
    if hold then
      local sep = string.find(hold, '|', 1, true)
      local key, amount = string.sub(hold, 1, sep - 1), tonumber(string.sub(hold, sep + 1))
      held[key] = (held[key] or 0) + amount
      held_total = held_total + amount
      found[#found + 1] = chunk[h]
    end
  end
  if #found > 0 then
    redis.call('HDEL', KEYS[2], unpack(found))
    redis.call('ZREM', KEYS[3], unpack(found))
  end
end
-- Whole numbers written as such: Lua would print a large one in exponent notation.
local function int(x) return string.format('%d', x) end

-- What the released holds held, per key and for the account ('*'): one HMGET and one HSET
-- per 500 fields rather than an HINCRBY each.
if held_total ~= 0 then
  local fields, amounts = { '*' }, { held_total }
  for key, amount in pairs(held) do
    fields[#fields + 1] = key
    amounts[#amounts + 1] = amount
  end
  for first = 1, #fields, 500 do
    local last = math.min(first + 499, #fields)
    local now = redis.call('HMGET', KEYS[1], unpack(fields, first, last))
    local values = {}
    for f = first, last do
      values[#values + 1] = fields[f]
      values[#values + 1] = int(tonumber(now[f - first + 1] or '0') - amounts[f])
    end
    redis.call('HSET', KEYS[1], unpack(values))
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
    local key = KEYS[5 + j]
    local now = redis.call('HMGET', key, 'used', 'd', 'ds', 'm', 'ms')
    local d, ds = window(now[2], now[3], ARGV[4], cost)
    local mo, ms = window(now[4], now[5], ARGV[5], cost)
    redis.call('HSET', key, 'used', int(tonumber(now[1] or '0') + cost), 'd', d, 'ds', int(ds), 'm', mo, 'ms', int(ms))
  end
end
if total ~= 0 then redis.call('DECRBY', KEYS[4], total) end

if mode == 'commit' then return string.rep('1', n) end
return table.concat(flags)
