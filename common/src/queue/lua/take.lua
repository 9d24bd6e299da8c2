#!lua flags=allow-oom
-- allow-oom: it only moves or removes data, and must also run when Redis
-- is full (see the note on scripts in queue/mod.rs).
-- Takes up to ARGV[1] jobs from the consuming end of the ready list and
-- records them in the worker's in-flight list, atomically, so that a job is
-- never only in a worker's memory.
-- KEYS[1] ready list       (postback:{q}:ready)
-- KEYS[2] in-flight list   (postback:{q}:inflight:<worker>)
-- KEYS[3] worker set       (postback:{q}:workers)
-- KEYS[4] heartbeat key    (postback:{q}:heartbeat:<worker>)
-- ARGV[1] how many to take at most (kept well below Lua's unpack limit)
-- ARGV[2] the worker's id
-- ARGV[3] heartbeat TTL in ms
-- Returns the jobs taken, oldest first (possibly none).
local jobs = redis.call('RPOP', KEYS[1], ARGV[1])
if not jobs then
  return {}
end
redis.call('RPUSH', KEYS[2], unpack(jobs))
-- Registering here too means an in-flight list is never orphaned, nor
-- presumed dead, even right after a Redis that lost its data came back and
-- before the worker's next heartbeat.
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('SET', KEYS[4], ARGV[2], 'PX', ARGV[3], 'NX')
return jobs
