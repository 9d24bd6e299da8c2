# shellcheck shell=bash
# The benchmark's targets in one place, and how a run's figures are checked
# against them: one run at a time (scripts/bench's table) or on the median
# of several runs (`scripts/bench --runs N`), as the targets are stated
# ("median of 3 runs, each ratio within one run"). Sourced by scripts/bench.
#
# Both read a run's figures from the flat JSON object scripts/bench writes
# (target/bench/<time>.json), so a ratio is worked out the same way in
# both, and a ratio's median is of per-run ratios, never of raw rates.

# name|label|comparison|threshold. `errors` must be 0 in every run, so over
# several runs it is summed, not a median.
BENCH_TARGETS=(
  # #29 raised the 1-item rate's (from 0.35) and the drain's (from 0.45).
  "ingest1_ratio|ingest 1 item, req/s / nginx ceiling|>=|0.45"
  "ingest1_p99_ms|ingest 1 item, p99 ms|<|10"
  "errors|ingest errors (non-202), all runs|<|1"
  "ingest10_ratio|ingest 10 items, req/s / nginx ceiling|>=|0.25"
  "drain_ratio|drain, deliveries/s / sink ceiling|>=|0.6"
  "e2e_p99_ms|end to end at 2000/s, p99 ms|<|10"
  "ingest_peak_rss_mb|ingest peak RSS under load, MB|<|32"
  "deliver_peak_rss_mb|deliver peak RSS in the drain, MB|<|48"
  "redis_bytes_per_job|Redis memory per queued job, bytes|<|400"
  "dead_ratio|healthy jobs next to a dead endpoint / alone|>=|0.5"
  # #29's: the nginx hop near its floor, one producer's loop, idle latency.
  "nginx_proxy_ratio|nginx CPU per proxied request / per return 202|<|1.3"
  "loop_ratio|one producer loop, req/s / return 202 loop|>=|0.5"
  "idle_e2e_p50_ms|one postback when idle, p50 ms|<|1"
  # #29's: deliver's CPU near a lean client's (wrk's, same sink, same
  # run), and a steady flow near the drain's cost.
  "deliver_wrk_cpu_ratio|deliver CPU per delivery / wrk's per request|<=|2.0"
  "e2e_drain_cpu_ratio|deliver CPU per delivery, e2e phase / drain|<=|1.3"
)

# name|label of the figures reported beside the targets, with none of their
# own: CPU time per unit of work, read from /proc in the same run. wrk's
# figure is the reference, a lean HTTP/1.1 client doing the sink's requests.
BENCH_FIGURES=(
  "deliver_cpu_us_per_delivery|deliver CPU per delivery in the drain, us"
  "e2e_deliver_cpu_us_per_delivery|deliver CPU per delivery at e2e's rate, us"
  "wrk_cpu_us_per_request|wrk CPU per request to the sink, us"
  "ingest1_cpu_us_per_request|ingest CPU per 1-item request, us"
  "nginx1_cpu_us_per_request|nginx CPU per 1-item request, us"
)

# target_of NAME : the target as "OP THRESHOLD", e.g. ">= 0.35".
target_of() {
  local entry name label op threshold
  for entry in "${BENCH_TARGETS[@]}"; do
    IFS='|' read -r name label op threshold <<<"$entry"
    [ "$name" = "$1" ] && { echo "$op $threshold"; return 0; }
  done
  echo "no benchmark target named $1" >&2
  return 1
}

# meets NAME VALUE : "ok" or "MISSED" ("MISSED" for a value that is no
# number: a figure the run could not make).
meets() {
  local op threshold
  read -r op threshold <<<"$(target_of "$1")"
  awk -v v="$2" -v t="$threshold" -v op="$op" \
    'BEGIN { ok = v ~ /^-?[0-9.]+$/ && ((op == ">=" && v >= t) || (op == "<" && v < t) || (op == "<=" && v <= t))
             print ok ? "ok" : "MISSED" }'
}

# json_field FILE KEY : one value of the flat JSON object scripts/bench writes.
json_field() { sed -n "s/.*\"$2\":\"\{0,1\}\([^,\"}]*\).*/\1/p" "$1"; }

# run_pair FILE KEY_A KEY_B PROGRAM : awk PROGRAM run on two of a run's
# values, as a and b.
run_pair() { awk -v a="$(json_field "$1" "$2")" -v b="$(json_field "$1" "$3")" "BEGIN { $4 }"; }

# run_figure FILE NAME : one figure of a run, as the targets define it.
# Ratios have three decimals and are compared as printed (a rounded 0.346
# must not pass 0.35).
run_figure() {
  local f=$1 ratio='if (b > 0) printf "%.3f", a / b; else print "n/a"'
  case "$2" in
    ingest1_ratio) run_pair "$f" ingest1_rps nginx_ceiling_rps "$ratio" ;;
    ingest10_ratio) run_pair "$f" ingest10_rps nginx_ceiling_rps "$ratio" ;;
    drain_ratio) run_pair "$f" drain_per_s sink_ceiling_rps "$ratio" ;;
    dead_ratio) run_pair "$f" healthy_next_to_dead_per_s healthy_alone_per_s "$ratio" ;;
    nginx_proxy_ratio) run_pair "$f" nginx1_cpu_us_per_request nginx_ceiling_cpu_us_per_request "$ratio" ;;
    loop_ratio) run_pair "$f" loop_rps loop_ceiling_rps "$ratio" ;;
    deliver_wrk_cpu_ratio) run_pair "$f" deliver_cpu_us_per_delivery wrk_cpu_us_per_request "$ratio" ;;
    e2e_drain_cpu_ratio) run_pair "$f" e2e_deliver_cpu_us_per_delivery deliver_cpu_us_per_delivery "$ratio" ;;
    ingest_peak_rss_mb) run_pair "$f" ingest1_peak_rss_mb ingest10_peak_rss_mb 'print (a > b ? a : b)' ;;
    errors) echo $(($(json_field "$f" ingest1_errors) + $(json_field "$f" ingest10_errors))) ;;
    *) json_field "$f" "$2" ;;
  esac
}

# median : the median of the numbers on stdin (the mean of the middle two
# for an even count), without trailing zeros.
median() {
  sort -g | awk '{ v[NR] = $1 } END {
    m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    x = sprintf("%.3f", m); sub(/\.?0+$/, "", x); printf "%s", x }'
}

# bench_medians DIR N MODE OUT : the table of medians of the runs
# DIR/1.json .. DIR/N.json, printed and written as JSON to OUT.
bench_medians() {
  local dir=$1 runs=$2 mode=$3 out=$4 i entry name label op threshold values summary
  printf '{"mode":"%s","date":"%s","runs":%s' "$mode" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$runs" >"$out"
  echo "postback benchmark, $runs runs: each target on the median of its $runs values"
  printf '%-46s %-40s %9s %8s  %s\n' "figure" "runs" "median" "target" ""
  for entry in "${BENCH_TARGETS[@]}"; do
    IFS='|' read -r name label op threshold <<<"$entry"
    values=$(for ((i = 1; i <= runs; i++)); do printf '%s\n' "$(run_figure "$dir/$i.json" "$name")"; done)
    if [ "$name" = errors ]; then
      summary=$(awk '{ s += $1 } END { print s + 0 }' <<<"$values")
    else
      summary=$(median <<<"$values")
    fi
    printf '%-46s %-40s %9s %8s  %s\n' "$label" "$(paste -sd/ <<<"$values")" "$summary" "$op $threshold" "$(meets "$name" "$summary")"
    printf ',"%s":%s' "$name" "$summary" >>"$out"
  done
  for entry in "${BENCH_FIGURES[@]}"; do
    IFS='|' read -r name label <<<"$entry"
    values=$(for ((i = 1; i <= runs; i++)); do printf '%s\n' "$(run_figure "$dir/$i.json" "$name")"; done)
    summary=$(median <<<"$values")
    printf '%-46s %-40s %9s\n' "$label" "$(paste -sd/ <<<"$values")" "$summary"
    printf ',"%s":%s' "$name" "$summary" >>"$out"
  done
  printf '}\n' >>"$out"
}

# bench_runs N QUICK : N runs of scripts/bench, then the table of medians
# (also target/bench/median-<time>.json). Fails if a run fails (a run fails
# on its own self-checks). Needs $repo, the repository's root.
bench_runs() {
  local runs=$1 quick=$2 i dir out flag=()
  : "${repo:?bench_runs needs repo}"
  [ "$quick" = 1 ] && flag=(--quick)
  dir=$(mktemp -d /tmp/postback-bench-runs.XXXXXX)
  # shellcheck disable=SC2064 # the folder is known now
  trap "rm -rf '$dir'" EXIT
  for ((i = 1; i <= runs; i++)); do
    echo "=== run $i of $runs" >&2
    "$repo/scripts/bench" "${flag[@]}" || { echo "error: run $i of $runs failed (see above); no medians" >&2; return 1; }
    cp "$repo/target/bench/latest.json" "$dir/$i.json"
  done
  out="$repo/target/bench/median-$(date -u +%Y%m%dT%H%M%SZ).json"
  bench_medians "$dir" "$runs" "$([ "$quick" = 1 ] && echo quick || echo full)" "$out"
  echo "medians: $out" >&2
}
