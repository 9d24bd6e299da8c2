# shellcheck shell=bash
# Several runs of scripts/bench, and every target checked on the median of
# its values, as the targets are stated ("median of 3 runs, each ratio
# within one run"). Sourced by scripts/bench for `--runs N`.
#
# Each run is a whole scripts/bench run (its own stack, ceilings and
# self-checks, its own target/bench/<time>.json). The medians are of the
# per-run figures, so a ratio's median is of ratios, never of raw rates.

# json_field FILE KEY : one value of the flat JSON object scripts/bench writes.
json_field() { sed -n "s/.*\"$2\":\"\{0,1\}\([^,\"}]*\).*/\1/p" "$1"; }

# run_figure FILE NAME : one figure of a run, as the targets define it.
run_figure() {
  local f=$1
  case "$2" in
    ingest1_ratio) awk -v a="$(json_field "$f" ingest1_rps)" -v b="$(json_field "$f" nginx_ceiling_rps)" 'BEGIN { printf "%.3f", a / b }' ;;
    ingest10_ratio) awk -v a="$(json_field "$f" ingest10_rps)" -v b="$(json_field "$f" nginx_ceiling_rps)" 'BEGIN { printf "%.3f", a / b }' ;;
    drain_ratio) awk -v a="$(json_field "$f" drain_per_s)" -v b="$(json_field "$f" sink_ceiling_rps)" 'BEGIN { printf "%.3f", a / b }' ;;
    dead_ratio) awk -v a="$(json_field "$f" healthy_next_to_dead_per_s)" -v b="$(json_field "$f" healthy_alone_per_s)" 'BEGIN { printf "%.3f", a / b }' ;;
    ingest_peak_rss_mb) awk -v a="$(json_field "$f" ingest1_peak_rss_mb)" -v b="$(json_field "$f" ingest10_peak_rss_mb)" 'BEGIN { print (a > b ? a : b) }' ;;
    errors) echo $(($(json_field "$f" ingest1_errors) + $(json_field "$f" ingest10_errors))) ;;
    *) json_field "$f" "$2" ;;
  esac
}

# median : the median of the numbers on stdin (the mean of the middle two
# for an even count).
median() {
  sort -g | awk '{ v[NR] = $1 } END {
    m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    x = sprintf("%.3f", m); sub(/\.?0+$/, "", x); printf "%s", x }'
}

# bench_runs N QUICK : N runs of scripts/bench, then the table of medians;
# writes target/bench/median-<time>.json. Fails if a run fails (a run fails
# on its own self-checks). Needs $repo, the repository's root.
bench_runs() {
  local runs=$1 quick=$2 i dir flag=()
  : "${repo:?bench_runs needs repo}"
  [ "$quick" = 1 ] && flag=(--quick)
  dir=$(mktemp -d /tmp/postback-bench-runs.XXXXXX)
  # shellcheck disable=SC2064 # the folder is known now
  trap "rm -rf '$dir'" EXIT
  for ((i = 1; i <= runs; i++)); do
    say "=== run $i of $runs"
    "$repo/scripts/bench" "${flag[@]}" || die "run $i of $runs failed (see above); no medians"
    cp "$repo/target/bench/latest.json" "$dir/$i.json"
  done

  # name, label, comparison, target. Errors must be 0 in every run, so
  # they are summed, not a median.
  local figures=(
    "ingest1_ratio|ingest 1 item, req/s / nginx ceiling|>=|0.35"
    "ingest1_p99_ms|ingest 1 item, p99 ms|<|10"
    "errors|ingest errors (non-202), all runs|<|1"
    "ingest10_ratio|ingest 10 items, req/s / nginx ceiling|>=|0.25"
    "drain_ratio|drain, deliveries/s / sink ceiling|>=|0.45"
    "e2e_p99_ms|end to end at 2000/s, p99 ms|<|10"
    "ingest_peak_rss_mb|ingest peak RSS under load, MB|<|32"
    "deliver_peak_rss_mb|deliver peak RSS in the drain, MB|<|48"
    "redis_bytes_per_job|Redis memory per queued job, bytes|<|400"
    "dead_ratio|healthy jobs next to a dead endpoint / alone|>=|0.5"
  )
  local entry name label op target values summary verdict json_out
  json_out="$repo/target/bench/median-$(date -u +%Y%m%dT%H%M%SZ).json"
  printf '{"mode":"%s","date":"%s","runs":%s' "$([ "$quick" = 1 ] && echo quick || echo full)" \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$runs" >"$json_out"
  {
    echo "postback benchmark, $runs runs: each target on the median of its $runs values"
    printf '%-46s %-40s %9s %8s  %s\n' "figure" "runs" "median" "target" ""
    for entry in "${figures[@]}"; do
      IFS='|' read -r name label op target <<<"$entry"
      values=$(for ((i = 1; i <= runs; i++)); do printf '%s\n' "$(run_figure "$dir/$i.json" "$name")"; done)
      if [ "$name" = errors ]; then
        summary=$(awk '{ s += $1 } END { print s + 0 }' <<<"$values")
      else
        summary=$(median <<<"$values")
      fi
      verdict=$(awk -v v="$summary" -v t="$target" -v op="$op" \
        'BEGIN { print ((op == ">=" && v >= t) || (op == "<" && v < t)) ? "ok" : "MISSED" }')
      printf '%-46s %-40s %9s %8s  %s\n' "$label" "$(paste -sd/ <<<"$values")" "$summary" "$op $target" "$verdict"
      printf ',"%s":%s' "$name" "$summary" >>"$json_out"
    done
  } | tee "$dir/table.txt"
  printf '}\n' >>"$json_out"
  say "medians: $json_out"
}
