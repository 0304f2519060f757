-- Stores a key-state snapshot unless a newer version is already stored, so that two writers
-- racing with different versions of one key always leave the newest.
-- KEYS[1]: the snapshot's key.
-- ARGV[1]: version; ARGV[2]: encoded snapshot; ARGV[3]: expire-at in Unix ms, or 0 to keep.
local stored = tonumber(redis.call('HGET', KEYS[1], 'v') or '-1')
if stored > tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 's', ARGV[2])
if ARGV[3] ~= '0' then
  redis.call('PEXPIREAT', KEYS[1], ARGV[3])
else
  redis.call('PERSIST', KEYS[1])
end
return 1
