#!lua flags=allow-oom
-- allow-oom: it only moves or removes data, and must also run when Redis
-- is full (see the note on scripts in queue/mod.rs).
-- Empties the dead-letter list and says how many letters it held, in one
-- step so the count is exactly what was removed.
-- KEYS[1] dead-letter list (postback:{q}:dead)
-- KEYS[2] dead letters' header values (postback:{q}:dead-headers)
-- Returns the number removed.
local n = redis.call('LLEN', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
return n
