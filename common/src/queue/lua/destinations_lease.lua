#!lua flags=allow-oom
-- allow-oom: see the note on scripts in queue/mod.rs; it rewrites one key.
-- Leases up to n requests of a rate-limited destination to one process:
-- GCRA (the generic cell rate algorithm) over every process together.
-- Each request moves the destination's theoretical arrival time (TAT) on
-- by one emission interval; a request is allowed while the TAT stays
-- within the burst tolerance of now. So over any span of time the
-- destination gets at most span / interval + burst requests, however the
-- leases are spread over processes.
-- KEYS[1] the destination's TAT (postback:{destinations}:tat:<host>), ms
-- ARGV[1] now (ms)   ARGV[2] emission interval (ms, may be fractional)
-- ARGV[3] burst (requests)   ARGV[4] n, the most wanted
-- Returns the number leased (0 to n).
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local wanted = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
-- Allowed while tat + interval - now <= burst * interval.
local room = math.floor((now + burst * interval - tat) / interval)
local granted = math.max(0, math.min(wanted, room))
if granted > 0 then
  tat = tat + granted * interval
  redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now + burst * interval) + 1000)
end
return granted
