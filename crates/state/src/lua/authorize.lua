-- Authorize's counter step: checks quota, account balance, daily and monthly budgets, RPM and
-- TPM in that order and, when all pass and ARGV[4] is '1', takes the call's rate units and
-- holds its estimated cost. A Lua port of tollgate_core::counters::evaluate; keep them equal
-- (the conformance suite runs the same cases on this script and on the Rust function).
-- Only what the call's limits need is read, in as few commands as the layout allows.
--
-- Every key shares the account's hash tag, so the script runs on Redis Cluster.
-- KEYS[1] the key's counters (hash: used, rpm, tpm, and d/ds, m/ms: the day and month of its
--         latest spend and the spend in them)
-- KEYS[2] held credits (hash: key id -> held, '*' -> account)
-- KEYS[3] holds (hash: request id -> "key id|credits")   KEYS[4] hold expiries (zset)
-- KEYS[5] account balance
-- KEYS[6] the rebuilt marker of the account's slot (see rebuild.rs): without it the counters
--         were lost with Redis's data and nothing is counted
-- ARGV[1] now (Unix ms)  ARGV[2] key id  ARGV[3] request id  ARGV[4] '1' take, '0' only look
-- ARGV[5] quota  ARGV[6] account floor  ARGV[7] daily  ARGV[8] monthly  ARGV[9] rpm  ARGV[10] tpm
--         ('' where no such limit)
-- ARGV[11] estimated tokens  ARGV[12] estimated cost  ARGV[13] hold lifetime (ms)
-- ARGV[14] today (YYYYMMDD)  ARGV[15] this month (YYYYMM)
-- Returns {failures, quota left, account left, day left, month left, hold,
--          rpm remaining, rpm reset ms, rpm retry ms, tpm remaining, tpm reset ms, tpm retry ms}
-- where failures is a string of check codes in order and '' marks an absent value; or
-- {'lost'} when the rebuilt marker is missing.
if redis.call('EXISTS', KEYS[6]) == 0 then return {'lost'} end
local PERIOD, EPSILON = 60000, 0.01
local now = tonumber(ARGV[1])
local key_id, request_id, take = ARGV[2], ARGV[3], ARGV[4] == '1'

local function limit(i)
  if ARGV[i] == '' then return nil end
  return tonumber(ARGV[i])
end

local function release(rid)
  local hold = redis.call('HGET', KEYS[3], rid)
  if hold then
    local sep = string.find(hold, '|', 1, true)
    local amount = tonumber(string.sub(hold, sep + 1))
    redis.call('HINCRBY', KEYS[2], string.sub(hold, 1, sep - 1), -amount)
    redis.call('HINCRBY', KEYS[2], '*', -amount)
    redis.call('HDEL', KEYS[3], rid)
    redis.call('ZREM', KEYS[4], rid)
  end
end

-- Holds whose usage never arrived, released together: a few per call keeps every call's cost
-- bounded, and one HMGET, HDEL and ZREM for all of them (an HINCRBY per key) keeps it small.
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 16)
if #expired > 0 then
  local holds = redis.call('HMGET', KEYS[3], unpack(expired))
  local per_key, total = {}, 0
  for i = 1, #expired do
    local hold = holds[i]
    if hold then
      local sep = string.find(hold, '|', 1, true)
      local key, amount = string.sub(hold, 1, sep - 1), tonumber(string.sub(hold, sep + 1))
      per_key[key] = (per_key[key] or 0) + amount
      total = total + amount
    end
  end
  for key, amount in pairs(per_key) do redis.call('HINCRBY', KEYS[2], key, -amount) end
  if total ~= 0 then redis.call('HINCRBY', KEYS[2], '*', -total) end
  redis.call('HDEL', KEYS[3], unpack(expired))
  redis.call('ZREM', KEYS[4], unpack(expired))
end
-- A retried call replaces its own hold rather than adding a second.
if take then release(request_id) end

local quota, floor, daily, monthly = limit(5), limit(6), limit(7), limit(8)
local rpm, tpm = limit(9), limit(10)
local tokens, cost = tonumber(ARGV[11]), tonumber(ARGV[12])
local failures = ''
local money_floor = nil

local counters = redis.call('HMGET', KEYS[1], 'used', 'rpm', 'tpm', 'd', 'ds', 'm', 'ms')
local key_held, account_held = 0, 0
if quota or floor or daily or monthly then
  local held = redis.call('HMGET', KEYS[2], key_id, '*')
  key_held, account_held = tonumber(held[1] or '0'), tonumber(held[2] or '0')
end
-- Spend in a window counts only while it is the current one.
local function spent_in(window, field_window, field_spent)
  if counters[field_window] == window then return tonumber(counters[field_spent] or '0') end
  return 0
end

local function money(code, remaining)
  if remaining <= 0 then failures = failures .. code end
  if money_floor == nil or remaining < money_floor then money_floor = remaining end
  return remaining
end

local quota_left = quota and money('1', quota - tonumber(counters[1] or '0') - key_held)
local account_left = floor and money('2', tonumber(redis.call('GET', KEYS[5]) or '0') + floor - account_held)
local day_left = daily and money('3', daily - spent_in(ARGV[14], 4, 5) - key_held)
local month_left = monthly and money('4', monthly - spent_in(ARGV[15], 6, 7) - key_held)

-- GCRA over PERIOD ms; returns passed, remaining, reset at, retry after (or nil), new arrival time.
local function gcra(code, stored, lim, units)
  local interval = PERIOD / lim
  local tat = tonumber(stored or now)
  if tat < now then tat = now end
  local new_tat = tat + units * interval
  local allow_at = new_tat - PERIOD
  if units > lim or allow_at > now + EPSILON then
    failures = failures .. code
    local remaining = math.max(0, math.floor((now + PERIOD - tat) / interval + 1e-9))
    local retry = nil
    if units <= lim then retry = allow_at - now end
    return false, remaining, tat, retry, tat
  end
  return true, math.floor((now - allow_at) / interval + 1e-9), new_tat, nil, new_tat
end

local rpm_ok, rpm_left, rpm_reset, rpm_retry, rpm_tat
if rpm then rpm_ok, rpm_left, rpm_reset, rpm_retry, rpm_tat = gcra('5', counters[2], rpm, 1) end
local tpm_ok, tpm_left, tpm_reset, tpm_retry, tpm_tat
if tpm then tpm_ok, tpm_left, tpm_reset, tpm_retry, tpm_tat = gcra('6', counters[3], tpm, tokens) end

local hold = 0
if money_floor ~= nil then hold = math.max(0, math.min(math.max(cost, 0), money_floor)) end

if take and failures == '' then
  if hold > 0 then
    redis.call('HSET', KEYS[3], request_id, key_id .. '|' .. string.format('%d', hold))
    redis.call('ZADD', KEYS[4], now + tonumber(ARGV[13]), request_id)
    redis.call('HINCRBY', KEYS[2], key_id, hold)
    redis.call('HINCRBY', KEYS[2], '*', hold)
  end
  if rpm and tpm then
    redis.call('HSET', KEYS[1], 'rpm', string.format('%.4f', rpm_tat), 'tpm', string.format('%.4f', tpm_tat))
  elseif rpm then
    redis.call('HSET', KEYS[1], 'rpm', string.format('%.4f', rpm_tat))
  elseif tpm then
    redis.call('HSET', KEYS[1], 'tpm', string.format('%.4f', tpm_tat))
  end
end

local function opt(x)
  if x == nil then return '' end
  return string.format('%d', x)
end
local function ms(x)
  if x == nil then return '' end
  return string.format('%d', math.ceil(x))
end
return {failures, opt(quota_left), opt(account_left), opt(day_left), opt(month_left), opt(hold),
        opt(rpm_left), ms(rpm_reset), ms(rpm_retry), opt(tpm_left), ms(tpm_reset), ms(tpm_retry)}
