-- Rotates a producer key's signing secret: the current one becomes the
-- previous one (deliver signs with both for DELIVER_SECRET_OVERLAP), the
-- new one becomes current, and the store's version moves on so that every
-- process reloads. Nothing happens for an unknown key.
-- KEYS[1] the key's hash     (postback:{producers}:key:<id>)
-- KEYS[2] the store version  (postback:{producers}:version)
-- ARGV[1] the new signing secret
-- ARGV[2] now, ms since the epoch
-- Returns 1, or 0 for an unknown key.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local current = redis.call('HGET', KEYS[1], 'signing_secret')
redis.call('HSET', KEYS[1], 'previous_secret', current, 'signing_secret', ARGV[1], 'rotated_ms', ARGV[2])
redis.call('INCR', KEYS[2])
return 1
