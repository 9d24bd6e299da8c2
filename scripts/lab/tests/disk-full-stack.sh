#!/usr/bin/env bash
# A stack whose every folder is on a small filesystem (a 300 MiB tmpfs).
# First the disk check: a 2 GiB log budget is refused, and an append-only
# file that does not fit gets a lower rewrite threshold. Then, with a
# 32 MiB log budget, the stack is run for real and then filled up by a ballast
# file while a producer posts one job a request and 60 deliveries to a slow
# receiver are in flight. While the disk is full: ingest answers JSON 503,
# the read-only views answer, the writable gauges read 0, the free-space
# gauges nothing left, and the workers' delivery logs wait. Once the
# ballast is removed: every job ingest accepted is delivered once and has
# its one `delivered` line in the delivery logs, nothing restarted, and the
# log folder is within its budget. Before the fill, a flood of 404s shows
# nginx's access log rotated within its share.
# Called by scripts/lab/tests/stack.sh with the binaries' folder, the port
# of a postback-sink it runs and that sink's record file. Needs root (for
# the mount). Everything it starts is stopped on exit, also on failure.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../../.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$repo/scripts/lib/common.sh"
# shellcheck source=scripts/lab/lab.sh
. "$repo/scripts/lab/lab.sh"
# shellcheck source=scripts/lib/stack.sh
. "$repo/scripts/lib/stack.sh"

bin=$1 sink_port=$2 sink_log=$3
[ "$(id -u)" = 0 ] || die "the disk-full test mounts a tmpfs: run it as root"
tmp=$(mktemp -d /tmp/postback-disk-test.XXXXXX)
chmod 711 "$tmp"
disk=$tmp/disk producer_pid="" slow_pid=""
mkdir "$disk"
mount -t tmpfs -o size=300m,mode=711 postback-disk-test "$disk" || die "cannot mount a tmpfs on $disk"
cleanup() {
  [ -n "$producer_pid" ] && kill "$producer_pid" 2>/dev/null
  [ -n "$slow_pid" ] && kill "$slow_pid" 2>/dev/null
  rm -f "$disk/ballast" # room for a graceful stop
  stack_stop >/dev/null 2>&1
  umount "$disk" 2>/dev/null
  [ -n "${KEEP_DISK_TMP:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT

fail() { say "    $*"; stack_ctl status >&2; exit 1; }

export POSTBACK_CONF_DIR=$disk/etc POSTBACK_LOG_DIR=$disk/log POSTBACK_DATA_DIR=$disk/data POSTBACK_RUN_DIR=$disk/run
export POSTBACK_BIN_DIR=$bin POSTBACK_LIB_DIR=$repo/scripts POSTBACK_NGINX_USER="nobody nogroup"
http=$(free_port)
# A receiver that answers after 3 s: its deliveries are still in flight
# when the disk fills, and their lines must wait for room.
slow=$(free_port)
"$bin/postback-sink" --listen "127.0.0.1:$slow" --delay-ms 3000 --record "$tmp/slow.log" >"$tmp/slow.out" 2>&1 &
slow_pid=$!
REDIS_PORT=$(free_port) INGEST_PORT=$(free_port) DELIVER_ADMIN_PORT=$(free_port 2) \
  POSTBACK_HTTP_LISTEN=127.0.0.1:$http REDIS_MAXMEMORY=64mb stack_init_env
cat >>"$POSTBACK_CONF_DIR/postback.env" <<ENV
# test overrides
POSTBACK_ALLOW_DESTINATIONS=127.0.0.1:$sink_port,127.0.0.1:$slow
DELIVER_RETRY_SCHEDULE=100ms,200ms
DELIVER_HEARTBEAT_MS=200
DELIVER_HEARTBEAT_TTL_MS=1000
ENV
# --- the disk check, before anything starts ----------------------------------
env_file=$POSTBACK_CONF_DIR/postback.env
# The default budget does not fit on 300 MiB: refused, with the numbers
# and the setting to change.
env_set "$env_file" POSTBACK_LOG_MAX_MB 2048
out=$( (stack_render) 2>&1) && fail "a 2 GiB log budget on a 300 MiB disk was not refused: $out"
grep -q "has room for [0-9]* MiB of logs, and POSTBACK_LOG_MAX_MB=2048 asks for more: lower POSTBACK_LOG_MAX_MB" <<<"$out" ||
  fail "the refusal does not say what to change: $out"
# Logs that fit, but an append-only file of 2 x 1gb that does not: the
# rewrite threshold is lowered to what fits beside REDIS_MAXMEMORY, and
# said so.
env_set "$env_file" POSTBACK_LOG_MAX_MB 32
env_set "$env_file" REDIS_AOF_REWRITE_MIN_SIZE 1gb
out=$( (stack_render) 2>&1) || fail "the check refused what it could fit: $out"
lowered=$(stack_setting REDIS_AOF_REWRITE_MIN_SIZE)
grep -q "REDIS_AOF_REWRITE_MIN_SIZE is lowered from 1gb to $lowered" <<<"$out" || fail "no note of the lowering: $out"
lowered_bytes=$(bytes_of "$lowered")
if [ $((2 * lowered_bytes + 64 * 1024 * 1024 + 32 * 1024 * 1024)) -gt $((300 * 1024 * 1024)) ] || [ "$lowered_bytes" -lt $((64 * 1024 * 1024)) ]; then
  fail "lowered to $lowered, which does not fit 300 MiB beside 64mb of memory and 32 MiB of logs"
fi
grep -qx "auto-aof-rewrite-min-size $lowered" "$POSTBACK_CONF_DIR/redis.conf" || fail "redis.conf: $(grep aof-rewrite "$POSTBACK_CONF_DIR/redis.conf")"
say "    the disk check refused a 2 GiB budget and lowered the rewrite threshold to $lowered"
env_set "$env_file" REDIS_AOF_REWRITE_MIN_SIZE 64mb

stack_render || exit 1
stack_start >/dev/null || exit 1
stack_wait_healthy 60 || fail "the stack did not become healthy"
key=$(stack_producer_key) || fail "no producer key"
base=http://127.0.0.1:$http
budget=$((32 * 1024 * 1024))

# --- every log is bounded, within the budget ---------------------------------
# What the rendered configs let each log take, rotated files included.
bounded_bytes() {
  local conf=$POSTBACK_CONF_DIR total=0 procs
  total=$(cat "$conf/supervisord.conf" "$conf"/supervisor.d/*.conf | awk -F= '
    /^(stdout_|stderr_)?logfile_maxbytes=/ { size = $2 }
    /^(stdout_|stderr_)?logfile_backups=/ { sum += size * ($2 + 1) * n }
    /^\[program:/ { n = 1 } /^\[supervisord\]/ { n = 1 } /^numprocs=/ { n = $2 }
    END { print sum }')
  procs=$(stack_setting DELIVER_PROCS)
  total=$((total + procs * $(sed -n 's/.*DELIVER_LOG_MAX_MB="\([0-9]*\)".*/\1/p' "$conf/supervisor.d/deliver.conf") * 1024 * 1024))
  procs=$(stack_setting INGEST_PROCS)
  total=$((total + procs * $(sed -n 's/.*INGEST_ACCESS_LOG_MAX_MB="\([0-9]*\)".*/\1/p' "$conf/supervisor.d/ingest.conf") * 1024 * 1024))
  echo "$total"
}
bounded=$(bounded_bytes)
[ "$bounded" -le "$budget" ] || fail "the logs may take $bounded bytes in all, over POSTBACK_LOG_MAX_MB's $budget"
# Every file in the log folder is one of those logs: its name, less a
# rotation's number, matches a log file name of the rendered configs.
names=$(sed -n 's/^\(stdout_\|stderr_\)\?logfile=//p; s/.*\(DELIVER_LOG_FILE\|INGEST_ACCESS_LOG\)="\([^"]*\)".*/\2/p' \
  "$POSTBACK_CONF_DIR/supervisord.conf" "$POSTBACK_CONF_DIR"/supervisor.d/*.conf |
  sed 's|.*/||; s/[.]/[.]/g; s/%(program_name)s/[a-z-]*/g; s/%(process_num)02d/[0-9][0-9]/g; s/^/^/; s/$/$/')
stray=""
for file in "$POSTBACK_LOG_DIR"/*; do
  name=$(basename "$file")
  name=${name%.[0-9]*}
  matched=0
  while read -r pattern; do
    [[ "$name" =~ $pattern ]] && matched=1
  done <<<"$names"
  [ "$matched" = 1 ] || stray+=" $name"
done
[ -z "$stray" ] || fail "files in the log folder that nothing rotates:$stray"
# nginx's access log rotates within its share: 8,000 404s (about 1.2 MB
# of lines, more than its share) in one curl.
nginx_share=$(awk -F= '/^stdout_logfile_maxbytes=/ { size = $2 } /^stdout_logfile_backups=/ { print size * ($2 + 1); exit }' "$POSTBACK_CONF_DIR/supervisor.d/nginx.conf")
curl -sS "$base/no-such-page?n=[1-8000]" >/dev/null || fail "the 404 flood failed"
wait_for 10 "nginx's access log to rotate" test -f "$POSTBACK_LOG_DIR/nginx-access.log.4" || fail "nginx's access log did not rotate: $(ls -l "$POSTBACK_LOG_DIR")"
nginx_bytes=$(cat "$POSTBACK_LOG_DIR"/nginx-access.log* | wc -c)
[ "$nginx_bytes" -le $((nginx_share + 65536)) ] || fail "nginx's access logs take $nginx_bytes bytes, over their share of $nginx_share"
say "    the logs may take $bounded of $budget bytes; nginx's access logs rotated within $nginx_share"

# --- a producer posting one job a request, until told to stop ----------------
producer() {
  local n=0 answer
  while [ ! -f "$tmp/stop" ] && [ "$n" -lt 20000 ]; do
    n=$((n + 1))
    answer=$(curl -sS -m 10 -w ' %{http_code}' -X POST "$base/ingest" -H "Authorization: Bearer $key" \
      -d "{\"endpoint\":{\"method\":\"GET\",\"url\":\"http://127.0.0.1:$sink_port/full?n=$n\"},\"data\":[{}]}")
    echo "$n ${answer##* } ${answer% *}" >>"$tmp/answers"
  done
}
producer &
producer_pid=$!
arrived() { grep -c ' GET /full?n=' "$sink_log"; }
wait_for 30 "the producer's first 100 jobs to arrive" bash -c "[ \$(grep -c ' GET /full?n=' '$sink_log') -ge 100 ]" ||
  fail "the jobs do not arrive: $(tail -n 3 "$tmp/answers")"
pids_before=$(stack_ctl status | awk '{ print $1, $4 }')
# 60 jobs to the slow receiver, and the disk fills while 20 or more are in
# flight (32 a worker at most: DELIVER_PER_HOST_CONCURRENCY; one worker
# may have taken them all).
data=$(seq 1 60 | sed 's/.*/{"n":"&"}/' | paste -sd, -)
curl -fsS -o /dev/null -X POST "$base/ingest" -H "Authorization: Bearer $key" \
  -d "{\"endpoint\":{\"method\":\"GET\",\"url\":\"http://127.0.0.1:$slow/slow?n={n}\"},\"data\":[$data]}" || fail "the slow jobs were refused"
admin_port=$(stack_setting DELIVER_ADMIN_BIND)
admin_port=${admin_port##*:}
# each_worker PATH : PATH of both workers' admin listeners.
each_worker() { curl -sS "http://127.0.0.1:$admin_port$1"; curl -sS "http://127.0.0.1:$((admin_port + 1))$1"; }
in_flight() { each_worker /metrics | awk '$1 == "postback_deliver_jobs_in_flight" { n += $2 } END { print n + 0 }'; }
slow_in_flight() { [ "$(in_flight)" -ge 20 ]; }
wait_for 20 "the slow jobs to be in flight" slow_in_flight || fail "in flight: $(in_flight)"

# --- the disk fills up ----------------------------------------------------------
dd if=/dev/zero of="$disk/ballast" bs=1M status=none 2>/dev/null
dd if=/dev/zero of="$disk/ballast-tail" bs=4k status=none 2>/dev/null
say "    the disk is full: $(df -h --output=used,avail "$disk" | tail -n1)"
refused() { tail -n 1 "$tmp/answers" | grep -q ' 503 .*"code":"queue_unavailable"'; }
wait_for 30 "ingest to refuse with a JSON 503" refused || fail "ingest answered: $(tail -n 3 "$tmp/answers")"
metrics=$(curl -fsS "$base/metrics") || fail "ingest's /metrics did not answer while the disk is full"
grep -qx 'postback_ingest_redis_writable 0' <<<"$metrics" || fail "ingest's writable gauge: $(grep redis_writable <<<"$metrics")"
# The free-space gauges of both folders read what is left: nothing.
for folder in log data; do
  free=$(sed -n "s/^postback_ingest_disk_free_bytes{folder=\"$folder\"} //p" <<<"$metrics")
  [ "${free:-none}" != none ] || fail "ingest shows no free-space gauge of the $folder folder"
  [ "$free" -lt 1048576 ] || fail "ingest's free-space gauge of the $folder folder: $free"
done
deliver_refused() { [ "$(each_worker /metrics | grep -cx 'postback_deliver_redis_writable 0')" = 2 ]; }
wait_for 30 "deliver's writable gauges to read 0" deliver_refused || fail "deliver's gauges: $(each_worker /metrics | grep writable)"
# The slow receiver answers: the attempts' lines cannot be written.
log_failing() { grep -q '"delivery_log":"failing"' <<<"$(each_worker /health)"; }
wait_for 20 "a worker to say its delivery log fails" log_failing || fail "deliver's /health: $(each_worker /health)"
grep -qx 'postback_deliver_delivery_log_writable 0' <<<"$(each_worker /metrics)" || fail "no delivery_log_writable gauge at 0"
grep -q '"queue"' <<<"$(curl -fsS "$base/stats")" || fail "/stats did not answer"
grep -q '<html' <<<"$(curl -fsS "$base/dashboard")" || fail "the dashboard did not answer"
deliver_cmd() { "$repo/scripts/with-env" "$POSTBACK_CONF_DIR/postback.env" "$bin/deliver" "$@"; }
out=$(deliver_cmd queue 2>&1) || fail "deliver queue: $out"
some_id=$(sed -n 's/.*"ids":\["\([^"]*\)".*/\1/p' "$tmp/answers" | head -n1)
out=$(deliver_cmd job "$some_id" --logs "$POSTBACK_LOG_DIR" 2>&1) || fail "deliver job: $out"
out=$(deliver_cmd dead list 2>&1) || fail "deliver dead list: $out"
# Full for longer than a heartbeat TTL: no worker may take the others'
# jobs for a dead worker's when writes come back.
sleep 3 # the length of the refusal is what is tested, not a wait for a state
say "    while full: JSON 503s, the writable gauges 0, delivery lines waiting, the views answer"

# --- room again ----------------------------------------------------------------
rm -f "$disk/ballast" "$disk/ballast-tail"
accepted_again() { tail -n 1 "$tmp/answers" | grep -q ' 202 '; }
wait_for 30 "ingest to accept again" accepted_again || fail "ingest answers: $(tail -n 3 "$tmp/answers")"
touch "$tmp/stop"
wait "$producer_pid"
producer_pid=""
accepted=$(awk '$2 == 202 { print $1 }' "$tmp/answers" | sort)
count=$(wc -l <<<"$accepted")
refusals=$(awk '$2 == 503' "$tmp/answers" | wc -l)
wait_for 60 "the slow jobs to arrive" bash -c "[ \$(grep -c ' GET /slow?n=' '$tmp/slow.log') -ge 60 ]" || fail "$(grep -c ' GET /slow?n=' "$tmp/slow.log") of 60 slow jobs arrived"
wait_for 60 "every accepted job to arrive" bash -c "[ \$(grep ' GET /full?n=' '$sink_log' | sed 's/.*n=\([0-9]*\).*/\1/' | sort -u | wc -l) -ge $count ]" ||
  fail "$(arrived) of $count arrived"
queue_empty() {
  local queue
  queue=$(deliver_cmd queue) && grep -qx 'ready: *0' <<<"$queue" && grep -qx 'in flight: 0' <<<"$queue"
}
wait_for 30 "the queue to be empty" queue_empty || fail "queue: $(deliver_cmd queue)"
received=$(grep ' GET /full?n=' "$sink_log" | sed 's/.*n=\([0-9]*\).*/\1/' | sort)
[ "$(comm -23 <(echo "$accepted") <(sort -u <<<"$received") | wc -l)" = 0 ] || fail "accepted but never delivered: $(comm -23 <(echo "$accepted") <(sort -u <<<"$received") | head)"
twice=$(uniq -d <<<"$received")
[ -z "$twice" ] || fail "delivered more than once: $(head -n 5 <<<"$twice")"
delivered_lines=$(cat "$POSTBACK_LOG_DIR"/deliver_*.delivery.log* | grep ' outcome=delivered' | grep -o 'url="[^"]*/full?n=[0-9]*"' | sed 's/.*n=\([0-9]*\)"/\1/' | sort)
[ -z "$(uniq -d <<<"$delivered_lines")" ] || fail "two delivered lines for: $(uniq -d <<<"$delivered_lines" | head)"
[ "$(comm -23 <(echo "$accepted") <(echo "$delivered_lines") | wc -l)" = 0 ] ||
  fail "accepted and delivered, but with no delivered line: $(comm -23 <(echo "$accepted") <(echo "$delivered_lines") | head)"
pids_after=$(stack_ctl status | awk '{ print $1, $4 }')
[ "$pids_before" = "$pids_after" ] || fail "a program restarted: $(diff <(echo "$pids_before") <(echo "$pids_after"))"
# The slow jobs, in flight when the disk filled: each arrived once, and
# has its line.
slow_arrived=$(sed -n 's/.* GET \/slow?n=\([0-9]*\).*/\1/p' "$tmp/slow.log" | sort)
[ "$(sort -u <<<"$slow_arrived" | wc -l)" = 60 ] || fail "$(sort -u <<<"$slow_arrived" | wc -l) of the 60 slow jobs arrived"
[ "$(wc -l <<<"$slow_arrived")" = 60 ] ||
  fail "the slow receiver got $(wc -l <<<"$slow_arrived") requests for $(sort -u <<<"$slow_arrived" | wc -l) of 60 jobs"
# Their lines are written at their worker's next try after the room came
# back (every second): wait for all 60, with a deadline.
slow_lines() { cat "$POSTBACK_LOG_DIR"/deliver_*.delivery.log* | grep ' outcome=delivered' | grep -c "/slow?n="; }
all_slow_lines() { [ "$(slow_lines)" -ge 60 ]; }
wait_for 20 "the slow jobs' delivered lines" all_slow_lines || true
[ "$(slow_lines)" = 60 ] || fail "$(slow_lines) delivered lines for the 60 slow jobs: $(each_worker /health)"
used=$(du -sb "$POSTBACK_LOG_DIR" | cut -f1)
[ "$used" -le "$budget" ] || fail "the log folder takes $used bytes, over POSTBACK_LOG_MAX_MB's $budget"
say "    $count accepted one a request ($refusals refused while full) and 60 in flight as it filled: each delivered once, each with its line; nothing restarted; logs $used of $budget bytes"
