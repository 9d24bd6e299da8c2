#!lua flags=allow-oom
-- Records the shards (hash tags) a process pushes to or consumes, and
-- returns every shard the queue has had, so that consumers and operators
-- still cover a shard after POSTBACK_SHARDS changed (a shard no longer in
-- use may still hold jobs).
-- KEYS[1]  the queue's shard set (postback:{q}:shards)
-- ARGV     this process's shard tags
-- Returns the set's members.
if #ARGV > 0 then
  redis.call('SADD', KEYS[1], unpack(ARGV))
end
return redis.call('SMEMBERS', KEYS[1])
