#!/usr/bin/env bash
# What the heap of ingest and deliver holds over a run: each runs under
# valgrind's massif (a heap profiler: every allocation, with its call
# stack) against a Redis and a postback-sink of its own, while
# postback-load sends one-job requests at a steady rate. Prints, for each,
# the heap in use at each snapshot and the call stacks holding the most at
# the last one: a heap that keeps growing names what is kept; a flat heap
# under a growing RSS points at the allocator instead.
#
#   scripts/lab/heap-profile.sh [RATE] [SECONDS]    (200/s, 300 s)
#
# massif slows a process about twentyfold, hence the modest rate. The
# release binaries (their profile keeps line tables, for the call stacks).
# Traffic goes to 127.0.0.1 only; everything it starts is stopped by PID on
# exit. The full massif files are kept in target/heap-profile/.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$repo/scripts/lib/common.sh"
# shellcheck source=scripts/lab/lab.sh
. "$repo/scripts/lab/lab.sh"

rate=${1:-200} seconds=${2:-300}
ensure_packages redis-server valgrind
ensure_rust
out=$repo/target/heap-profile
mkdir -p "$out"
say "building release binaries..."
cargo build --release --quiet --manifest-path "$repo/Cargo.toml" -p ingest -p deliver -p bench
bin=$repo/target/release

tmp=$(mktemp -d /tmp/postback-heap.XXXXXX)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
  rm -f "$POSTBACK_PORTS_TAKEN"
}
trap cleanup EXIT

redis_port=$(free_port 1) sink_port=$(free_port 1) ingest_port=$(free_port 1) admin_port=$(free_port 1)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$tmp/redis.out" 2>&1 &
pids+=($!)
"$bin/postback-sink" --listen "127.0.0.1:$sink_port" >"$tmp/sink.out" 2>&1 &
pids+=($!)
wait_for 10 "Redis" redis-cli -p "$redis_port" ping || die "Redis did not start"
export REDIS_URL=redis://127.0.0.1:$redis_port POSTBACK_ALLOW_DESTINATIONS=127.0.0.1:$sink_port RUST_LOG=warn
massif() { exec valgrind --tool=massif --time-unit=ms --max-snapshots=60 --massif-out-file="$out/$1.massif" "${@:2}"; }
INGEST_AUTH=off INGEST_BIND=127.0.0.1:$ingest_port INGEST_ACCESS_LOG="$tmp/access.log" \
  massif ingest "$bin/ingest" >"$tmp/ingest.out" 2>&1 &
pids+=($!)
ingest_pid=$!
DELIVER_LOG_FILE="$tmp/delivery.log" DELIVER_ADMIN_BIND=127.0.0.1:$admin_port \
  massif deliver "$bin/deliver" >"$tmp/deliver.out" 2>&1 &
pids+=($!)
deliver_pid=$!
wait_for 60 "ingest under massif" curl -fsS -o /dev/null "http://127.0.0.1:$ingest_port/health" || die "ingest did not start"
wait_for 60 "deliver under massif" curl -fsS -o /dev/null "http://127.0.0.1:$admin_port/health" || die "deliver did not start"
say "== $rate one-job requests a second for $seconds s"
"$bin/postback-load" --url "http://127.0.0.1:$ingest_port/ingest" --rate "$rate" --seconds "$seconds" \
  --connections 8 --target "http://127.0.0.1:$sink_port/heap?t={t}&n={n}"
sleep 5 # the last deliveries; nothing here waits on a state
kill -INT "$ingest_pid" "$deliver_pid"
wait "$ingest_pid" "$deliver_pid" 2>/dev/null || true
for p in ingest deliver; do
  echo "== $p: heap in use (bytes) at each snapshot, ms since start"
  awk -F= '/^time=/ { t = $2 } /^mem_heap_B=/ { h = $2 } /^mem_heap_extra_B=/ { printf "  %8d ms  %9d heap  %8d extra\n", t, h, $2 }' "$out/$p.massif"
  echo "== $p: our functions among the call stacks holding the most at the peak (ms_print $out/$p.massif: all)"
  ms_print "$out/$p.massif" 2>/dev/null | grep -E '(ingest|deliver|common)::' | head -n 15 || true
done
