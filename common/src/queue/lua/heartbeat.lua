#!lua flags=allow-oom
-- allow-oom: a worker must start and stay alive when Redis is full, or the
-- queue could not be drained and its in-flight jobs would be reclaimed (see
-- the note on scripts in queue/mod.rs). It adds a few bytes at most.
-- Marks a worker alive for a while and registers it as the possible owner
-- of an in-flight list.
-- KEYS[1] heartbeat key  (postback:{q}:heartbeat:<worker>)
-- KEYS[2] worker set     (postback:{q}:workers)
-- ARGV[1] TTL in ms
-- ARGV[2] the worker's id (also the heartbeat key's value, for operators)
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return 1
