#!lua flags=allow-oom
-- allow-oom: it only moves or removes data, and must also run when Redis
-- is full (see the note on scripts in queue/mod.rs).
-- Settles a batch of attempts that did not deliver: each job leaves the
-- worker's in-flight list and goes to the retry set, the dead-letter list or
-- its host's parked list, in one atomic step so that a crash can neither
-- lose it nor duplicate it. (A delivered job is acknowledged with a plain
-- LREM instead; see `settle` in queue/settle.rs.)
-- KEYS[1] in-flight list    (postback:{q}:inflight:<worker>)
-- KEYS[2] retry sorted set  (postback:{q}:retry), scored by due time in ms
-- KEYS[3] dead-letter list  (postback:{q}:dead)
-- KEYS[4] parked hosts      (postback:{q}:parked), sorted set: host -> jobs
-- KEYS[5] dead letters' header values (postback:{q}:dead-headers), by id
-- KEYS[6…] parked lists     (postback:{q}:parked:<host>), one per host
--                           parked by this batch
-- ARGV    groups of four: op, taken, payload, delay_ms
--           op "r": retry: add payload to the retry set, due in delay_ms
--           op "d": dead letter: push payload onto the dead-letter list
--           op "p": not attempted (its host is busy): park it, unchanged,
--                   at the end of its host's list; here payload is the
--                   index in KEYS of that list and delay_ms the host
--           op "h": the header values of the dead letter just before it:
--                   kept in KEYS[5] if that letter was kept; here taken is
--                   the job id and payload the values (a JSON object)
--         taken is the exact string the worker took from the queue.
-- A job no longer in the in-flight list was handed to another worker (this
-- one was presumed dead); its outcome is then dropped here, since the other
-- worker now owns it.
-- Returns how many jobs were settled.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local settled = 0
-- Whether the last job looked for was still this worker's.
local kept = false
for i = 1, #ARGV, 4 do
  local op, taken, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if op == 'h' then
    if kept then
      redis.call('HSET', KEYS[5], taken, payload)
    end
  else
    -- LREM scans from one end. A failed job is usually among the oldest
    -- taken, so it is looked for from the oldest end. A job is parked right
    -- after it was taken: it is looked for from the newest end, or every
    -- park would first scan past a hung host's jobs, which stay at the
    -- oldest end until their requests time out.
    local from = 1
    if op == 'p' then
      from = -1
    end
    kept = redis.call('LREM', KEYS[1], from, taken) == 1
    if kept then
      settled = settled + 1
      if op == 'r' then
        redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[i + 3]), payload)
      elseif op == 'd' then
        redis.call('LPUSH', KEYS[3], payload)
      elseif op == 'p' then
        local parked = redis.call('RPUSH', KEYS[tonumber(payload)], taken)
        redis.call('ZADD', KEYS[4], parked, ARGV[i + 3])
      end
    end
  end
end
return settled
