#!lua flags=no-writes
-- no-writes: it only reads, so Redis runs it even when full or read-only.
-- How many jobs wait in each part of a queue, in one round trip.
-- KEYS[1] ready list        (postback:{q}:ready)
-- KEYS[2] retry sorted set  (postback:{q}:retry)
-- KEYS[3] dead-letter list  (postback:{q}:dead)
-- KEYS[4] parked hosts      (postback:{q}:parked), sorted set: host -> jobs
-- Returns {ready, retry, dead, parked}.
local parked = 0
local counts = redis.call('ZRANGE', KEYS[4], 0, -1, 'WITHSCORES')
for i = 2, #counts, 2 do
  parked = parked + tonumber(counts[i])
end
return {redis.call('LLEN', KEYS[1]), redis.call('ZCARD', KEYS[2]), redis.call('LLEN', KEYS[3]), parked}
