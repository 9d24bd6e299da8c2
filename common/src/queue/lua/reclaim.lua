#!lua flags=allow-oom
-- allow-oom: it only moves or removes data, and must also run when Redis
-- is full (see the note on scripts in queue/mod.rs).
-- Returns the in-flight jobs of a worker whose heartbeat has expired to the
-- consuming end of the ready list, oldest last so it is taken first, and
-- forgets the worker. Does nothing while the heartbeat is alive: recovery
-- is driven by the owner's liveness, never by how long a delivery takes,
-- so a slow endpoint cannot cause a second concurrent delivery.
-- A worker shutting down deletes its own heartbeat and then calls this on
-- itself to hand back what it did not finish.
-- KEYS[1] heartbeat key   (postback:{q}:heartbeat:<worker>)
-- KEYS[2] in-flight list  (postback:{q}:inflight:<worker>)
-- KEYS[3] ready list      (postback:{q}:ready)
-- KEYS[4] worker set      (postback:{q}:workers)
-- ARGV[1] worker id
-- Returns the number of jobs returned, or -1 if the worker is alive.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
end
local moved = 0
while redis.call('LMOVE', KEYS[2], KEYS[3], 'RIGHT', 'RIGHT') do
  moved = moved + 1
end
redis.call('SREM', KEYS[4], ARGV[1])
return moved
