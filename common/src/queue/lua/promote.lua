#!lua flags=allow-oom
-- allow-oom: it only moves or removes data, and must also run when Redis
-- is full (see the note on scripts in queue/mod.rs).
-- Moves retries whose due time has come back to the consuming end of the
-- ready list. Atomic, so with several deliver processes each retry moves
-- exactly once. Due times come from Redis' own clock (see settle.lua), so
-- clocks of different hosts do not matter.
-- KEYS[1] retry sorted set (postback:{q}:retry)
-- KEYS[2] ready list       (postback:{q}:ready)
-- ARGV[1] how many to move at most
-- Returns how many were moved.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, ARGV[1])
if #due == 0 then
  return 0
end
redis.call('ZREM', KEYS[1], unpack(due))
redis.call('RPUSH', KEYS[2], unpack(due))
return #due
