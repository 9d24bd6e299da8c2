-- wrk script: plain GETs; report the summary in the same form as post.lua.
function done(summary, latency, requests)
  io.write(string.format("BENCH requests=%d non202=0 socket_errors=%d p50_us=%d p99_us=%d duration_us=%d\n",
    summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), summary.duration))
end
