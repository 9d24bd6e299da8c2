#!lua flags=allow-oom
-- allow-oom: it only moves or removes data, and must also run when Redis
-- is full (see the note on scripts in queue/mod.rs).
-- Hands every job of a running worker's in-flight list back to the
-- consuming end of the ready list, oldest last so it is taken first. The
-- worker calls it on itself when a take failed after it may have been
-- carried out (its answer lost with a dying Redis or a broken connection)
-- and it holds no job in memory any more: whatever its list still has was
-- moved there by that take and is in no one's hands. Unlike reclaim.lua it
-- leaves the heartbeat and the registration alone: the worker goes on.
-- KEYS[1] in-flight list  (postback:{q}:inflight:<worker>)
-- KEYS[2] ready list      (postback:{q}:ready)
-- Returns the number of jobs returned.
local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'RIGHT') do
  moved = moved + 1
end
return moved
