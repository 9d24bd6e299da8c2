#!lua flags=allow-oom
-- allow-oom: a full Redis must still learn that a partner is down, or every
-- held job would be attempted against it (see the note on scripts in
-- queue/mod.rs). It writes a few small hash fields at most.
-- One deliver process's report of the last second, per destination: its
-- attempts and failures (counted into a sliding window; the breaker opens
-- when the window holds enough failures), a pause a partner asked for
-- (Retry-After), and the outcome of a probe this worker made. Destinations
-- that are disabled only count nothing. A probe that succeeds closes the
-- breaker through a ramp ('ramping' for ARGV[10] ms: the held jobs go at a
-- rate that doubles every second, not all at once).
-- It also keeps what the dashboard shows: each destination's attempts,
-- deliveries and failures per minute for the last five minutes, and which
-- destinations were seen in them.
-- KEYS[1]     the state hash   (postback:{destinations}:state): host -> JSON
-- KEYS[2]     the version      (postback:{destinations}:version), moved on at every change
-- KEYS[3]     the destinations seen, scored by when (postback:{destinations}:seen)
-- KEYS[2+2i]  the i-th destination's breaker window (postback:{destinations}:counts:<host>)
-- KEYS[3+2i]  its last minutes (postback:{destinations}:recent:<host>)
-- ARGV[1] now (ms)          ARGV[2] window (ms)       ARGV[3] bucket (ms)
-- ARGV[4] min attempts      ARGV[5] failure percent (0: no breaker)
-- ARGV[6] first cooldown    ARGV[7] longest cooldown  ARGV[8] disable after (ms)
-- ARGV[9] this worker's id  ARGV[10] how long a ramp lasts (ms)
-- then 19 values per destination, in KEYS order: host, attempts, failures,
-- pause until (ms, 0: none), probe (0: none, 1: succeeded, 2: failed),
-- deliveries, and the answered attempts in each of the 13 response-time
-- buckets (common/src/stats.rs)
-- Returns {version, host, state, host, state, ...}: the changes it made.
local now = tonumber(ARGV[1])
local window, bucket_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local min_attempts, failure_pct = tonumber(ARGV[4]), tonumber(ARGV[5])
local cooldown_first, cooldown_max = tonumber(ARGV[6]), tonumber(ARGV[7])
local disable_after = tonumber(ARGV[8])
local worker = ARGV[9]
local ramp = tonumber(ARGV[10])
local changes = {}

local function set(host, state)
  redis.call('HSET', KEYS[1], host, cjson.encode(state))
  changes[#changes + 1] = host
  changes[#changes + 1] = state.state
end

local function open(host, cooldown, opened_at)
  if now - opened_at >= disable_after then
    set(host, {state = 'disabled', since = now, by = 'breaker'})
  else
    set(host, {state = 'open', since = now, ['until'] = now + cooldown, cooldown_ms = cooldown, opened_at = opened_at})
  end
end

-- How long the dashboard's minutes are kept.
local RECENT_MS = 300000
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - RECENT_MS)
for i = 1, (#KEYS - 3) / 2 do
  local at = 11 + (i - 1) * 19
  local host = ARGV[at]
  local attempts, failures = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  local pause_until, probe = tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4])
  local delivered = tonumber(ARGV[at + 5])
  local counts, recent = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  if attempts > 0 then
    local minute = math.floor(now / 60000)
    redis.call('HINCRBY', recent, minute .. ':a', attempts)
    redis.call('HINCRBY', recent, minute .. ':d', delivered)
    redis.call('HINCRBY', recent, minute .. ':f', failures)
    for b = 0, 12 do
      local n = tonumber(ARGV[at + 6 + b])
      if n > 0 then redis.call('HINCRBY', recent, minute .. ':b' .. b, n) end
    end
    redis.call('PEXPIRE', recent, RECENT_MS + 60000)
    redis.call('ZADD', KEYS[3], now, host)
  end
  -- HGET answers false, not nil, for a missing field.
  local raw = redis.call('HGET', KEYS[1], host)
  local st = nil
  if raw then st = cjson.decode(raw) end
  -- A pause or a ramp that is over is closed.
  if st and ((st.state == 'paused' and tonumber(st['until']) <= now)
      or (st.state == 'ramping' and now - tonumber(st.since) >= ramp)) then
    redis.call('HDEL', KEYS[1], host)
    st = nil
  end
  if not (st and st.state == 'disabled') then
    local bucket = math.floor(now / bucket_ms)
    if attempts > 0 then
      redis.call('HINCRBY', counts, bucket .. ':a', attempts)
      redis.call('HINCRBY', counts, bucket .. ':f', failures)
      redis.call('PEXPIRE', counts, window * 2)
    end
    if probe ~= 0 and st and st.state == 'half_open' and st.probe == worker then
      if probe == 1 then
        redis.call('DEL', counts)
        set(host, {state = 'ramping', since = now})
        st = {state = 'ramping'}
      else
        open(host, math.min(tonumber(st.cooldown_ms) * 2, cooldown_max), tonumber(st.opened_at))
      end
    elseif (st == nil or st.state == 'paused' or st.state == 'ramping') and failure_pct > 0 and failures > 0 then
      -- Only a report with failures can tip the window over.
      local first = bucket - math.floor(window / bucket_ms) + 1
      local total, failed = 0, 0
      local fields = redis.call('HGETALL', counts)
      for f = 1, #fields, 2 do
        local b, kind = string.match(fields[f], '^(%d+):(%a)$')
        if b and tonumber(b) >= first then
          if kind == 'a' then total = total + tonumber(fields[f + 1]) else failed = failed + tonumber(fields[f + 1]) end
        else
          redis.call('HDEL', counts, fields[f])
        end
      end
      if total >= min_attempts and failed * 100 >= failure_pct * total then
        open(host, cooldown_first, now)
        st = {state = 'open'}
      end
    end
    if pause_until > now and (st == nil or st.state == 'ramping'
        or (st.state == 'paused' and tonumber(st['until']) < pause_until)) then
      set(host, {state = 'paused', since = now, ['until'] = pause_until})
    end
  end
end
local version = redis.call('GET', KEYS[2]) or '0'
if #changes > 0 then
  version = redis.call('INCR', KEYS[2])
end
local out = {tostring(version)}
for _, v in ipairs(changes) do out[#out + 1] = v end
return out
