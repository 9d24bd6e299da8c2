#!lua flags=allow-oom
-- allow-oom: a worker must start and stay alive when Redis is full, or the
-- queue could not be drained and its in-flight jobs would be reclaimed (see
-- the note on scripts at the top of queue/protocol.rs). It adds a few bytes at most.
-- Marks a worker alive for a while and registers it as the possible owner
-- of an in-flight list.
-- KEYS[1] heartbeat key  (postback:{q}:heartbeat:<worker>)
-- KEYS[2] worker set     (postback:{q}:workers)
-- ARGV[1] what to store in the heartbeat key (the worker's description)
-- ARGV[2] TTL in ms
-- ARGV[3] the worker's id
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return 1
