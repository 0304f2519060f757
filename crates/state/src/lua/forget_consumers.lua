-- Removes the consumers of a stream's group that are gone: nothing pending (what they left was
-- taken over) and idle past a bound. Checked and removed in one step, so a consumer cannot be
-- given entries between the check and its removal (XGROUP DELCONSUMER drops its pending
-- entries). A live consumer that found nothing to read for that long may be removed too
-- (before Redis 7.2 an empty read does not count as activity): it has nothing in hand, and its
-- next read makes it again.
--
-- KEYS[1]: the stream. ARGV[1]: the group. ARGV[2]: the idle bound in milliseconds.
-- Returns how many consumers were removed.
local removed = 0
local bound = tonumber(ARGV[2])
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local fields = {}
  for i = 1, #consumer, 2 do
    fields[consumer[i]] = consumer[i + 1]
  end
  if fields['pending'] == 0 and fields['idle'] > bound then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], fields['name'])
    removed = removed + 1
  end
end
return removed
