#!lua
-- No allow-oom flag: like a plain LPUSH, a push is refused when Redis is
-- full (ingest answers 503 redis_full).
-- Queues a request's jobs under an Idempotency-Key, in one atomic step:
-- the first request with the key pushes its jobs and keeps its answer; a
-- repeat pushes nothing and gets the first answer back.
-- KEYS[1] ready list         (postback:{q}:ready)
-- KEYS[2] the key's record   (postback:{q}:idem:<producer>:<sha256 of the key>)
-- ARGV[1] how long the record is kept, seconds
-- ARGV[2] the record: SHA-256 of the request body, a newline, the answer
-- ARGV[3..] the encoded jobs
-- Returns {1, ready length} when pushed, {0, the record} when it existed.
local kept = redis.call('GET', KEYS[2])
if kept then
  return {0, kept}
end
local n = 0
-- In slices: Lua's unpack cannot spread more than a few thousand values.
for first = 3, #ARGV, 1000 do
  n = redis.call('LPUSH', KEYS[1], unpack(ARGV, first, math.min(first + 999, #ARGV)))
end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[1])
return {1, n}
