#!lua flags=allow-oom
-- allow-oom: it only moves or removes data, and must also run when Redis
-- is full (see the note on scripts in queue/mod.rs).
-- Requeues dead letters: each one leaves the dead-letter list and its job
-- (with a fresh attempt count) joins the ready list, atomically, so a
-- replay run twice or by two operators at once requeues each letter once.
-- KEYS[1] dead-letter list (postback:{q}:dead)
-- KEYS[2] ready list       (postback:{q}:ready)
-- KEYS[3] dead letters' header values (postback:{q}:dead-headers), by id
-- ARGV    triples: the dead letter exactly as stored, the job to queue
--         (its header values put back by the caller), the job's id
-- Returns how many were requeued.
local requeued = 0
for i = 1, #ARGV, 3 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    redis.call('LPUSH', KEYS[2], ARGV[i + 1])
    redis.call('HDEL', KEYS[3], ARGV[i + 2])
    requeued = requeued + 1
  end
end
return requeued
