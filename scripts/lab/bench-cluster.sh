#!/usr/bin/env bash
# scripts/bench --cluster [--quick]: one queue sharded over a local Redis
# Cluster of three masters (POSTBACK_SHARDS=6), against the same work on
# one Redis in the same run. ingest (INGEST_AUTH=off: this bench is about
# Redis) queues JOBS jobs, 1000 a request, with postback-load; then two
# deliver processes drain them to postback-sink, started first and waiting
# on empty queues, as in scripts/bench. It reports each master's share of
# the jobs (balance: max/min), each Redis' CPU per job (INFO cpu, user +
# system) and the drains' rates. On one machine the cluster cannot be
# faster (the masters share its cores); the figure that shows the scale-out
# is Redis CPU per job per master, which falls as 1/N. A third case runs
# the cluster's sharded work (the same POSTBACK_SHARDS) on the one Redis:
# sharding alone makes each call move fewer jobs, and that case separates
# what the shards cost from how the masters share them, and each node's
# read events per job (INFO stats) says how many wake-ups its work came
# in. BENCH_SHARDS=N sets
# POSTBACK_SHARDS (default 6). Everything it starts
# is stopped by PID on exit. Writes target/bench/cluster-<time>.json.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$repo/scripts/lib/common.sh"
# shellcheck source=scripts/lab/lab.sh
. "$repo/scripts/lab/lab.sh"

quick=${1:-0}
jobs=100000
[ "$quick" = 1 ] && jobs=30000
masters=3 shards=${BENCH_SHARDS:-6}

ensure_packages redis-server redis-tools curl
ensure_rust
say "building release binaries..."
cargo build --release --quiet --manifest-path "$repo/Cargo.toml" -p ingest -p deliver -p bench
bin=$repo/target/release

tmp=$(mktemp -d /tmp/postback-bench-cluster.XXXXXX)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
  rm -f "$POSTBACK_PORTS_TAKEN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

sink_port=$(free_port)
"$bin/postback-sink" --listen "127.0.0.1:$sink_port" >"$tmp/sink.out" 2>&1 &
pids+=($!)
sink=http://127.0.0.1:$sink_port
wait_for 10 "the sink" curl -fsS -o /dev/null "$sink/_sink/count" || die "the sink did not start"

# redis_node DIR PORT ARGS... : a redis-server of this bench's own.
redis_node() {
  local dir=$1 port=$2
  shift 2
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --logfile "$dir/redis.log" "$@" &
  pids+=($!)
  wait_for 10 "redis on $port" redis-cli -p "$port" ping || die "redis on $port did not start"
}
cpu_seconds() { # cpu_seconds PORT : the node's user + system CPU so far
  redis-cli -p "$1" INFO cpu | awk -F: '/^used_cpu_(user|sys):/ { s += $2 } END { printf "%.6f", s }'
}
# events PORT : "reads commands" so far: the read events the node handled
# (each costs it a wake-up and a system call, whatever it carries) and the
# commands they carried.
events() {
  redis-cli -p "$1" INFO stats | tr -d '\r' | awk -F: '/^total_reads_processed:/ { r = $2 } /^total_commands_processed:/ { c = $2 } END { print r, c }'
}

# run_case NAME URL PORTS... : queue, drain, measure. Sets queue_per_s,
# drain_per_s and, per port, share[port], cpu_us[port] (per job of all),
# reads[port] (read events per 1,000 jobs of all) and per_read[port]
# (commands per read event), the last two over the drain.
declare -A share cpu_us reads per_read
run_case() {
  local name=$1 url=$2 n
  shift 2
  local ports=("$@") case_shards=1
  [ "$name" = single ] || case_shards=$shards
  local ingest_port admin_port
  ingest_port=$(free_port) admin_port=$(free_port 2)
  say "== $name: queueing $jobs jobs"
  POSTBACK_ALLOW_DESTINATIONS=127.0.0.1:$sink_port INGEST_AUTH=off INGEST_ACCESS_LOG=off POSTBACK_SHARDS=$case_shards \
    INGEST_BIND=127.0.0.1:$ingest_port REDIS_URL=$url "$bin/ingest" >"$tmp/$name-ingest.log" 2>&1 &
  local ingest=$!
  pids+=("$ingest")
  wait_for 20 "ingest" curl -fsS -o /dev/null "http://127.0.0.1:$ingest_port/health" || die "ingest did not start ($tmp/$name-ingest.log)"
  local started finished
  started=$(date +%s%6N)
  "$bin/postback-load" --url "http://127.0.0.1:$ingest_port/ingest" --jobs "$jobs" --items 1000 --connections 4 \
    --target "$sink/$name?n={n}" >"$tmp/$name-load.out" 2>&1 || die "queueing failed: $(tail -n 3 "$tmp/$name-load.out")"
  finished=$(date +%s%6N)
  queue_per_s=$(awk -v n="$jobs" -v a="$started" -v b="$finished" 'BEGIN { printf "%.0f", n / ((b - a) / 1e6) }')
  kill "$ingest"
  wait "$ingest" 2>/dev/null || true

  # Each node's share of the jobs: the ready lists it holds.
  local port total=0 key len
  declare -A held
  for port in "${ports[@]}"; do
    held[$port]=0
    while read -r key; do
      [ -n "$key" ] || continue
      len=$(redis-cli -p "$port" LLEN "$key")
      held[$port]=$((held[$port] + len))
    done < <(redis-cli -p "$port" --scan --pattern 'postback:*:ready')
    total=$((total + held[$port]))
  done
  [ "$total" -eq "$jobs" ] || die "$total of $jobs jobs queued"
  for port in "${ports[@]}"; do share[$port]=$(awk -v h="${held[$port]}" -v t="$total" 'BEGIN { printf "%.3f", h / t }'); done

  # The jobs wait under another key of their own shard (same slot) while
  # deliver starts, then appear at once.
  local tags
  tags=$(redis-cli -c -p "${ports[0]}" SMEMBERS 'postback:{default}:shards')
  rename_all() { # rename_all FROM TO
    local tag
    for tag in $tags; do redis-cli -c -p "${ports[0]}" RENAME "postback:{$tag}:$1" "postback:{$tag}:$2" >/dev/null; done
  }
  rename_all ready bench-staging
  local deliver_pids=()
  for n in 0 1; do
    POSTBACK_ALLOW_DESTINATIONS=127.0.0.1:$sink_port POSTBACK_SHARDS=$case_shards REDIS_URL=$url DELIVER_PROCS=2 \
      DELIVER_INSTANCE=$n DELIVER_ADMIN_BIND=127.0.0.1:$admin_port DELIVER_LOG_FILE=$tmp/$name-deliver_$n.log \
      "$bin/deliver" >"$tmp/$name-deliver_$n.out" 2>&1 &
    deliver_pids+=($!)
    pids+=($!)
  done
  for n in 0 1; do
    wait_for 30 "deliver_0$n" curl -fsS -o /dev/null "http://127.0.0.1:$((admin_port + n))/health" || die "deliver did not start"
  done
  declare -A cpu_before events_before
  for port in "${ports[@]}"; do cpu_before[$port]=$(cpu_seconds "$port") events_before[$port]=$(events "$port"); done
  local before
  before=$(curl -fsS "$sink/_sink/count")
  started=$(date +%s%6N)
  rename_all bench-staging ready
  curl -fsS -o /dev/null --max-time 305 "$sink/_sink/wait?count=$((before + jobs))&timeout_ms=300000" ||
    die "$name: the drain did not finish within 300 s"
  finished=$(date +%s%6N)
  drain_per_s=$(awk -v n="$jobs" -v a="$started" -v b="$finished" 'BEGIN { printf "%.0f", n / ((b - a) / 1e6) }')
  for port in "${ports[@]}"; do
    cpu_us[$port]=$(awk -v a="${cpu_before[$port]}" -v b="$(cpu_seconds "$port")" -v n="$jobs" 'BEGIN { printf "%.2f", (b - a) * 1e6 / n }')
    read -r "reads[$port]" "per_read[$port]" < <(echo "${events_before[$port]} $(events "$port")" |
      awk -v n="$jobs" '{ r = $3 - $1; c = $4 - $2; printf "%.0f %.1f\n", r * 1000 / n, (r > 0 ? c / r : 0) }')
  done
  for n in "${deliver_pids[@]}"; do kill "$n"; done
  for n in "${deliver_pids[@]}"; do wait "$n" 2>/dev/null || true; done
}

# --- one Redis ------------------------------------------------------------
single_port=$(free_port)
redis_node "$tmp/single" "$single_port"
run_case single "redis://127.0.0.1:$single_port" "$single_port"
single_queue=$queue_per_s single_drain=$drain_per_s single_cpu=${cpu_us[$single_port]}
single_events="${reads[$single_port]} / ${per_read[$single_port]}"
# The same Redis with the cluster's shards (a fresh one: no keys left over).
sharded_port=$(free_port)
redis_node "$tmp/sharded" "$sharded_port"
run_case sharded "redis://127.0.0.1:$sharded_port" "$sharded_port"
sharded_drain=$drain_per_s sharded_cpu=${cpu_us[$sharded_port]}
sharded_events="${reads[$sharded_port]} / ${per_read[$sharded_port]}"

# --- a cluster of three masters -----------------------------------------------
cluster_ports=()
for ((n = 0; n < masters; n++)); do
  port=$(free_port) bus=$(free_port)
  redis_node "$tmp/node$n" "$port" --cluster-enabled yes --cluster-port "$bus" --cluster-config-file "$tmp/node$n/nodes.conf"
  cluster_ports+=("$port")
done
create=()
for port in "${cluster_ports[@]}"; do create+=("127.0.0.1:$port"); done
redis-cli --cluster create "${create[@]}" --cluster-yes >"$tmp/create.out" 2>&1 ||
  die "redis-cli --cluster create failed: $(tail -n 3 "$tmp/create.out")"
for port in "${cluster_ports[@]}"; do
  wait_for 30 "the cluster" bash -c "redis-cli -p $port CLUSTER INFO | grep -q cluster_state:ok" || die "the cluster did not form"
done
run_case cluster "redis-cluster://$(printf '127.0.0.1:%s,' "${cluster_ports[@]}" | sed 's/,$//')" "${cluster_ports[@]}"

# --- report --------------------------------------------------------------------
shares=() cpus=() cluster_events=()
for port in "${cluster_ports[@]}"; do
  shares+=("${share[$port]}") cpus+=("${cpu_us[$port]}") cluster_events+=("${reads[$port]}/${per_read[$port]}")
done
balance=$(printf '%s\n' "${shares[@]}" | sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f", (lo > 0 ? hi / lo : 0) }')
cpu_sum=$(printf '%s\n' "${cpus[@]}" | awk '{ s += $1 } END { printf "%.2f", s }')
cpu_max=$(printf '%s\n' "${cpus[@]}" | sort -n | tail -n1)
mkdir -p "$repo/target/bench"
json="$repo/target/bench/cluster-$(date -u +%Y%m%dT%H%M%SZ).json"
printf '{"jobs":%s,"masters":%s,"shards":%s,"single_queue_per_s":%s,"single_drain_per_s":%s,"single_redis_cpu_us_per_job":%s,"sharded_single_drain_per_s":%s,"sharded_single_redis_cpu_us_per_job":%s,"cluster_queue_per_s":%s,"cluster_drain_per_s":%s,"cluster_shares":[%s],"cluster_balance_max_min":%s,"cluster_redis_cpu_us_per_job":[%s],"cluster_redis_cpu_us_per_job_all_masters":%s}\n' \
  "$jobs" "$masters" "$shards" "$single_queue" "$single_drain" "$single_cpu" "$sharded_drain" "$sharded_cpu" "$queue_per_s" "$drain_per_s" \
  "$(IFS=,; echo "${shares[*]}")" "$balance" "$(IFS=,; echo "${cpus[*]}")" "$cpu_sum" >"$json"
{
  echo "postback cluster benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $jobs jobs"
  printf '%-52s %s\n' "one Redis: queued / drained, jobs/s" "$single_queue / $single_drain"
  printf '%-52s %s\n' "one Redis: Redis CPU per job, us" "$single_cpu"
  printf '%-52s %s / %s\n' "one Redis, $shards shards: drained, jobs/s / CPU per job, us" "$sharded_drain" "$sharded_cpu"
  printf '%-52s %s\n' "cluster ($masters masters, $shards shards): queued / drained, jobs/s" "$queue_per_s / $drain_per_s"
  printf '%-52s %s (max/min %s, target <= 1.2)\n' "cluster: each master's share of the jobs" "${shares[*]}" "$balance"
  printf '%-52s %s (all masters %s)\n' "cluster: Redis CPU per job, per master, us" "${cpus[*]}" "$cpu_sum"
  printf '%-52s %s | %s | %s\n' "read events per 1000 jobs / commands per read:" "one Redis $single_events" "$shards shards $sharded_events" "masters ${cluster_events[*]}"
  awk -v one="$single_cpu" -v most="$cpu_max" -v n="$masters" -v sharded="$sharded_cpu" 'BEGIN {
    printf "one Redis core saturates near %.0f jobs/s; the busiest master here at %.0f jobs/s,\n", 1e6 / one, 1e6 / most
    printf "so %d masters on %d hosts carry about %.1fx what one Redis does (ingest and deliver scale out on their own hosts)\n", n, n, one / most
    printf "the same shards on one Redis cost %.2f us per job; the busiest master spends %.2f of that (1/N = %.2f)\n", sharded, most / sharded, 1 / n
  }'
} | tee "$tmp/table.txt"
[ "$(awk -v b="$balance" 'BEGIN { print (b <= 1.2) }')" = 1 ] || say "note: the masters' shares are uneven (max/min $balance > 1.2)"
say "results: $json"
