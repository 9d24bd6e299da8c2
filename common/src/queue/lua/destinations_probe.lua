#!lua flags=allow-oom
-- allow-oom: see the note on scripts in queue/mod.rs; it rewrites one field.
-- Claims the one probe of an open destination whose cooldown has passed:
-- the breaker turns half-open, and only the claiming worker may send one
-- job there. A probe claimed longer ago than the probe timeout (its worker
-- died, or never sent it) may be claimed again.
-- KEYS[1] the state hash (postback:{destinations}:state)
-- KEYS[2] the version    (postback:{destinations}:version)
-- ARGV[1] host   ARGV[2] now (ms)   ARGV[3] worker id   ARGV[4] probe timeout (ms)
-- Returns 1 if this worker now holds the probe, else 0.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local st = cjson.decode(raw)
local now = tonumber(ARGV[2])
local due = (st.state == 'open' and now >= tonumber(st['until']))
  or (st.state == 'half_open' and now - tonumber(st.probe_at) >= tonumber(ARGV[4]))
if not due then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode({
  state = 'half_open', since = now, cooldown_ms = st.cooldown_ms, opened_at = st.opened_at,
  probe = ARGV[3], probe_at = now,
}))
redis.call('INCR', KEYS[2])
return 1
