#!lua flags=allow-oom
-- allow-oom: it only moves or removes data, and must also run when Redis
-- is full (see the note on scripts in queue/mod.rs).
-- Moves parked jobs of hosts that have room again into the worker's
-- in-flight list, oldest first, atomically (a job is never only in a
-- worker's memory), and keeps each host's count in the parked set exact.
-- KEYS[1]  in-flight list   (postback:{q}:inflight:<worker>)
-- KEYS[2]  worker set       (postback:{q}:workers)
-- KEYS[3]  heartbeat key    (postback:{q}:heartbeat:<worker>)
-- KEYS[4]  parked hosts     (postback:{q}:parked), sorted set: host -> jobs
-- KEYS[5…] one parked list per host (postback:{q}:parked:<host>)
-- ARGV[1]  the worker's id
-- ARGV[2]  heartbeat TTL in ms
-- ARGV[1 + 2k], ARGV[2 + 2k]  for KEYS[4 + k]: its host, and how many of
--          its jobs to move at most (kept well below Lua's unpack limit)
-- Returns the jobs moved (possibly none).
local moved = {}
for k = 1, #KEYS - 4 do
  local list, host, want = KEYS[4 + k], ARGV[1 + 2 * k], tonumber(ARGV[2 + 2 * k])
  local jobs = redis.call('LPOP', list, want)
  if jobs then
    redis.call('RPUSH', KEYS[1], unpack(jobs))
    for _, job in ipairs(jobs) do
      moved[#moved + 1] = job
    end
  end
  local left = redis.call('LLEN', list)
  if left == 0 then
    redis.call('ZREM', KEYS[4], host)
  else
    redis.call('ZADD', KEYS[4], left, host)
  end
end
if #moved > 0 then
  -- As in take.lua: an in-flight list is never orphaned.
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2], 'NX')
end
return moved
