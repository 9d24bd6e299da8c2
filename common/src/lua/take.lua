-- Takes up to ARGV[1] jobs from the consuming end of the ready list and
-- records them in the worker's in-flight list, atomically, so that a job is
-- never only in a worker's memory.
-- KEYS[1] ready list       (postback:{q}:ready)
-- KEYS[2] in-flight list   (postback:{q}:inflight:<worker>)
-- ARGV[1] how many to take at most (kept well below Lua's unpack limit)
-- Returns the jobs taken, oldest first (possibly none).
local jobs = redis.call('RPOP', KEYS[1], ARGV[1])
if not jobs then
  return {}
end
redis.call('RPUSH', KEYS[2], unpack(jobs))
return jobs
