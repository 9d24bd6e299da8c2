-- Revokes a producer key: it stays listed (with when it was revoked) but
-- no ingest process accepts it once it has reloaded the store, which the
-- version change tells it to do.
-- KEYS[1] the key's hash     (postback:{producers}:key:<id>)
-- KEYS[2] the store version  (postback:{producers}:version)
-- ARGV[1] now, ms since the epoch
-- Returns 1, 2 if it was revoked already, or 0 for an unknown key.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if tonumber(redis.call('HGET', KEYS[1], 'revoked_ms') or '0') > 0 then
  return 2
end
redis.call('HSET', KEYS[1], 'revoked_ms', ARGV[1])
redis.call('INCR', KEYS[2])
return 1
