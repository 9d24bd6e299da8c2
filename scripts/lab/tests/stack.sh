#!/usr/bin/env bash
# Tests of the production-shaped stack: the repository's templates rendered
# into a temp folder and run for real (nginx, supervisord, Redis from
# Debian's packages, the debug binaries of ingest and deliver, and
# postback-sink as the endpoint). Called by scripts/test after the cargo
# build; everything it starts is stopped by PID on exit, also on failure.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../../.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$repo/scripts/lib/common.sh"
# shellcheck source=scripts/lab/lab.sh
. "$repo/scripts/lab/lab.sh"
# shellcheck source=scripts/lib/stack.sh
. "$repo/scripts/lib/stack.sh"

bin=${POSTBACK_TEST_BIN_DIR:-$repo/target/debug}
tmp=$(mktemp -d /tmp/postback-stack-test.XXXXXX)
# nginx workers run as nobody and reach ingest's sockets in here.
chmod 711 "$tmp"
sink_pid="" passed=0 failed=0 failures=()

cleanup() {
  stack_stop >/dev/null 2>&1
  [ -n "${run_var:-}" ] && POSTBACK_VAR_DIR=$run_var "$repo/scripts/run" stop >/dev/null 2>&1
  if [ -n "${provisioned_conf:-}" ] && [ -f "$provisioned_run/supervisord.pid" ]; then
    supervisorctl -c "$provisioned_conf" shutdown >/dev/null 2>&1
    wait_for 60 "provisioned stack to stop" bash -c "! kill -0 $(cat "$provisioned_run/supervisord.pid") 2>/dev/null"
  fi
  [ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null
  rm -rf "$tmp"
  rm -f "$POSTBACK_PORTS_TAKEN"
}
trap cleanup EXIT

# STACK_ONLY=TEXT runs only the cases whose name holds TEXT (for working
# on one; scripts/test runs them all).
check() {
  local name=$1
  shift
  [[ "$name" == *"${STACK_ONLY:-}"* ]] || return 0
  local started=$SECONDS
  if "$@"; then
    passed=$((passed + 1))
    echo "ok - $name ($((SECONDS - started)) s)"
  else
    failed=$((failed + 1))
    failures+=("$name")
    echo "FAILED - $name"
  fi
}

fail() { say "    $*"; return 1; }
# redis-cli takes no socket URLs: it uses the port.
rcli() { redis-cli --no-auth-warning -p "$(stack_setting REDIS_PORT)" -a "$(stack_setting REDIS_PASSWORD)" "$@"; }

# --- set-up: a stack in $tmp and a sink ------------------------------------
export POSTBACK_CONF_DIR=$tmp/etc POSTBACK_LOG_DIR=$tmp/log POSTBACK_DATA_DIR=$tmp/data POSTBACK_RUN_DIR=$tmp/run
export POSTBACK_BIN_DIR=$bin POSTBACK_LIB_DIR=$repo/scripts POSTBACK_NGINX_USER="nobody nogroup"
http_port=$(free_port)
INFLUX_HTTP_PORT=$(free_port) INFLUX_RPC_PORT=$(free_port) COLLECTD_PORT=$(free_port) \
  REDIS_PORT=$(free_port) INGEST_PORT=$(free_port) DELIVER_ADMIN_PORT=$(free_port 2) POSTBACK_HTTP_LISTEN=127.0.0.1:$http_port REDIS_MAXMEMORY=256mb \
  stack_init_env
cat >>"$POSTBACK_CONF_DIR/postback.env" <<'ENV'
# test overrides
DELIVER_SHUTDOWN_GRACE_MS=3000
DELIVER_CONCURRENCY=16
DELIVER_RETRY_SCHEDULE=100ms,200ms
DELIVER_HEARTBEAT_MS=200
DELIVER_HEARTBEAT_TTL_MS=1000
INGEST_MAX_BODY_BYTES=65536
INGEST_BODY_TIMEOUT_MS=2000
INGEST_KEEPALIVE_MS=2000
POSTBACK_ADMIN_ALLOW="192.0.2.1"
POSTBACK_MONITORING=1
COLLECTD_INTERVAL=1
REDIS_AOF_REWRITE_MIN_SIZE=128mb
ENV
base=http://127.0.0.1:$http_port

# The sink, and exactly its ip:port opened to the destination guard.
sink_port=$(free_port)
echo "POSTBACK_ALLOW_DESTINATIONS=127.0.0.1:$sink_port" >>"$POSTBACK_CONF_DIR/postback.env"
"$bin/postback-sink" --listen "127.0.0.1:$sink_port" --delay-ms 20 --record "$tmp/sink.log" >"$tmp/sink.out" 2>&1 &
sink_pid=$!
wait_for 10 "the sink" grep -q "listening on" "$tmp/sink.out" || exit 1
sink=http://$(sed -n 's/^listening on //p' "$tmp/sink.out")

if ! stack_render || ! stack_start >/dev/null; then
  echo "FAILED - the stack could not start"
  exit 1
fi

# The stack's producer key, made as scripts/run makes it: every POST to
# ingest carries it.
stack_wait_healthy 60 >/dev/null || { echo "FAILED - the stack did not become healthy"; exit 1; }
key=$(stack_producer_key) || { echo "FAILED - no producer key"; exit 1; }
auth=(-H "Authorization: Bearer $key")

# ids_at_sink : distinct `id` values the sink received.
ids_at_sink() { sed -n 's/.*[?&]id=\([^& ]*\).*/\1/p' "$tmp/sink.log" | sort -u | wc -l; }

# post_jobs FROM COUNT : COUNT jobs with ids FROM.. through nginx, 100 per request.
post_jobs() {
  local from=$1 count=$2 i body
  for ((i = from; i < from + count; i += 100)); do
    body=$(seq "$i" $((i + 99)) | sed 's/.*/{"id":"&"}/' | paste -sd, -)
    curl -fsS -o /dev/null -X POST "$base/ingest" "${auth[@]}" \
      -d "{\"endpoint\":{\"method\":\"GET\",\"url\":\"$sink/job?id={id}\"},\"data\":[$body]}" || return 1
  done
}

pid_of() { stack_ctl pid "$1"; }

# --- 1 ----------------------------------------------------------------------
test_all_running_and_sample_delivered() {
  stack_wait_healthy 60 || { stack_ctl status; return 1; }
  local status
  status=$(stack_ctl status)
  local program
  for program in redis ingest:ingest_00 deliver:deliver_00 deliver:deliver_01 nginx influxdb collectd; do
    grep -q "^$program .* RUNNING " <<<"$status" || fail "$program is not RUNNING: $status" || return 1
  done
  local response headers
  response=$(curl -sS -D "$tmp/sample.headers" -X POST "$base/ingest" "${auth[@]}" -d "{\"endpoint\":{\"method\":\"GET\",\"url\":\"$sink/data?title={mascot}&image={location}&foo={bar}\"},\"data\":[{\"mascot\":\"Gopher\",\"location\":\"https://blog.golang.org/gopher/gopher.png\"}]}")
  grep -q '"accepted":1' <<<"$response" || fail "ingest answered: $response" || return 1
  # The queue's files are no one else's: Redis' socket, its append-only
  # file, every log.
  local open_files
  open_files=$(find "$POSTBACK_DATA_DIR" "$POSTBACK_LOG_DIR" "$POSTBACK_RUN_DIR/redis" \( -type f -o -type s \) -perm /o=rwx -printf '%m %p\n')
  [ -z "$open_files" ] || fail "open to other users: $open_files" || return 1
  [ -n "$(find "$POSTBACK_DATA_DIR" -type f -name '*.aof*')" ] || fail "no append-only file found to check" || return 1
  # Without the key: 401 with its JSON, through nginx.
  local code
  code=$(curl -sS -o "$tmp/401.json" -D "$tmp/401.headers" -w '%{http_code}' -X POST "$base/ingest" -d '{}')
  [ "$code" = 401 ] && grep -q '"code":"missing_key"' "$tmp/401.json" && grep -qi '^www-authenticate: Bearer' "$tmp/401.headers" ||
    fail "a keyless request got $code: $(cat "$tmp/401.json")" || return 1
  # One X-Request-Id, whether nginx made it or ingest echoed it.
  headers=$(grep -ci '^x-request-id:' "$tmp/sample.headers")
  [ "$headers" -eq 1 ] || fail "$headers X-Request-Id headers: $(cat "$tmp/sample.headers")" || return 1
  wait_for 20 "the sample at the sink" grep -q ' GET /data' "$tmp/sink.log" || return 1
  grep -qx '[0-9]* GET /data?title=Gopher&image=https%3A%2F%2Fblog.golang.org%2Fgopher%2Fgopher.png&foo=' "$tmp/sink.log" ||
    fail "wrong URL: $(cat "$tmp/sink.log")" || return 1
  # Redis compacts its append-only file at the size postback.env gives.
  local min_size
  min_size=$(rcli CONFIG GET auto-aof-rewrite-min-size | tail -n1)
  [ "$min_size" = $((128 * 1024 * 1024)) ] || fail "auto-aof-rewrite-min-size is $min_size" || return 1
  # ingest and deliver reached Redis on its Unix socket: every client but
  # this redis-cli (at least one per ingest and deliver process) is on it.
  local clients
  clients=$(rcli CLIENT LIST | grep -v ' cmd=client|list ')
  [ "$(grep -c " addr=$POSTBACK_RUN_DIR/redis/redis.sock:0 " <<<"$clients")" -ge 3 ] &&
    ! grep -q ' addr=127\.0\.0\.1:' <<<"$clients" ||
    fail "Redis' clients: $(grep -o ' addr=[^ ]*' <<<"$clients")" || return 1
  # nginx reached ingest on its Unix socket: after a request, nginx keeps
  # its connection to ingest_00's socket open (nothing else connects there).
  curl -sS -o /dev/null -X POST "$base/ingest" "${auth[@]}" -d '{}' || return 1
  local sockets
  sockets=$(ss -xH state established)
  grep -qF "$POSTBACK_RUN_DIR/ingest/ingest_00.sock" <<<"$sockets" ||
    fail "no connection to ingest_00.sock: $(grep -F "$POSTBACK_RUN_DIR" <<<"$sockets")"
}

# --- 2 ----------------------------------------------------------------------
test_sigkilled_deliver_is_restarted_and_nothing_lost() {
  : >"$tmp/sink.log"
  post_jobs 0 4000 || fail "posting failed" || return 1
  wait_for 30 "deliveries to flow" bash -c "[ \$(wc -l <'$tmp/sink.log') -ge 400 ]" || return 1
  local old
  old=$(pid_of deliver:deliver_00)
  kill -KILL "$old"
  wait_for 30 "supervisord to restart deliver_00" bash -c \
    "supervisorctl -c '$POSTBACK_CONF_DIR/supervisord.conf' status deliver:deliver_00 | grep -q RUNNING && [ \"\$(supervisorctl -c '$POSTBACK_CONF_DIR/supervisord.conf' pid deliver:deliver_00)\" != '$old' ]" ||
    return 1
  wait_for 90 "all 4000 ids at the sink" bash -c "[ \$(sed -n 's/.*[?&]id=\([^& ]*\).*/\1/p' '$tmp/sink.log' | sort -u | wc -l) -eq 4000 ]" ||
    fail "only $(ids_at_sink) of 4000 ids arrived"
}

# --- 3 ----------------------------------------------------------------------
test_stopping_deliver_is_graceful_and_start_finishes_the_work() {
  : >"$tmp/sink.log"
  post_jobs 10000 4000 || fail "posting failed" || return 1
  wait_for 30 "deliveries to flow" bash -c "[ \$(wc -l <'$tmp/sink.log') -ge 200 ]" || return 1
  local started=$SECONDS
  stack_ctl stop 'deliver:*' >/dev/null || fail "supervisorctl stop failed" || return 1
  local took=$((SECONDS - started))
  [ "$took" -le 13 ] || fail "stop took ${took}s, more than stopwaitsecs" || return 1
  local n
  for n in 00 01; do
    grep -q "stopped: .* returned to the queue" "$POSTBACK_LOG_DIR/deliver_$n.log" ||
      fail "deliver_$n did not log a graceful stop" || return 1
  done
  grep -q "stopped: deliver_00 (exit status 0)" "$POSTBACK_LOG_DIR/supervisord.log" ||
    fail "deliver_00 did not exit 0: $(grep deliver_00 "$POSTBACK_LOG_DIR/supervisord.log" | tail -3)" || return 1
  [ "$(ids_at_sink)" -lt 4000 ] || fail "the drain finished before the stop; the test proved nothing" || return 1
  stack_ctl start 'deliver:*' >/dev/null || return 1
  wait_for 90 "all 4000 ids at the sink" bash -c "[ \$(sed -n 's/.*[?&]id=\([^& ]*\).*/\1/p' '$tmp/sink.log' | sort -u | wc -l) -eq 4000 ]" ||
    fail "only $(ids_at_sink) of 4000 ids arrived"
}

# --- 4 ----------------------------------------------------------------------
test_nginx_limits_body_and_admin_pages() {
  local code
  code=$(head -c 70000 /dev/zero | tr '\0' a | curl -sS -o "$tmp/413.json" -w '%{http_code}' -X POST --data-binary @- "$base/ingest")
  [ "$code" = 413 ] || fail "oversized body got $code" || return 1
  grep -q '"body_too_large"' "$tmp/413.json" || fail "413 body: $(cat "$tmp/413.json")" || return 1
  grep -q "Server: nginx" < <(curl -sS -D - -o /dev/null -X POST --data-binary @<(head -c 70000 /dev/zero) "$base/ingest") ||
    fail "the 413 did not come from nginx" || return 1
  code=$(curl -sS -o "$tmp/403.json" -w '%{http_code}' "$base/metrics")
  [ "$code" = 403 ] || fail "/metrics from a non-allowed address got $code" || return 1
  grep -q '"forbidden"' "$tmp/403.json" || return 1
  # Allow loopback: the same page is now passed through to ingest.
  echo 'POSTBACK_ADMIN_ALLOW="127.0.0.1"' >>"$POSTBACK_CONF_DIR/postback.env"
  stack_render && stack_ctl signal HUP nginx >/dev/null || return 1
  wait_for 10 "nginx to allow loopback" bash -c "[ \$(curl -s -o /dev/null -w '%{http_code}' '$base/metrics') != 403 ]" ||
    fail "/metrics still refused after allowing 127.0.0.1"
}

# raw_http TEXT : sends TEXT (printf escapes) to nginx as it is and prints
# the answer.
raw_http() {
  local port=${base##*:}
  (
    exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
    # shellcheck disable=SC2059 # the escapes are the point
    printf "$1" >&3
    timeout 5 cat <&3 2>/dev/null
  )
}

test_every_error_a_client_can_cause_is_json_through_nginx() {
  local answer text big_header
  big_header="X-Big: $(head -c 9000 /dev/zero | tr '\0' a)"
  for text in 'POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n' 'GARBAGE\r\n\r\n' \
    'GET / HTTP/9.9\r\n\r\n' 'POST /ingest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n' \
    "GET /$(head -c 20000 /dev/zero | tr '\0' a) HTTP/1.1\r\nHost: x\r\n\r\n" \
    'POST /ingest HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}' 'GET /stats?seconds=abc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' \
    "POST /ingest HTTP/1.1\r\nHost: x\r\n$big_header\r\nContent-Length: 2\r\n\r\n{}" \
    'POST /ingest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n' \
    'POST /ingest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n'; do
    answer=$(raw_http "$text" | tr -d '\r')
    grep -q '^{"error":{"code":"[a-z_]*"' <<<"$answer" ||
      fail "no JSON error for $(head -c 60 <<<"$text"): $(head -c 300 <<<"$answer")" || return 1
    # The client's fault is a 4xx, never a 5xx (505 aside: the version).
    grep -qE '^HTTP/1\.[01] (4[0-9][0-9]|505) ' <<<"$answer" ||
      fail "not a 4xx for $(head -c 60 <<<"$text"): $(head -n1 <<<"$answer")" || return 1
  done
  raw_http "POST /ingest HTTP/1.1\r\nHost: x\r\n$big_header\r\n\r\n" | tr -d '\r' | grep -q '^HTTP/1.1 431 ' ||
    fail "a header too large is not a 431" || return 1
  # HTTP/1.0 without Host reaches ingest, which asks for a key.
  raw_http 'POST /ingest HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}' | grep -q '"missing_key"' ||
    fail "HTTP/1.0 without Host was not served by ingest"
}

test_a_key_in_the_query_string_reaches_no_log() {
  local secret=pk_0123456789ab_QUERYSECRETVALUEQUERYSECRETVALUE code
  code=$(curl -sS -o /dev/null -w '%{http_code}' -X POST "$base/ingest?key=$secret&x=1" -d '{}')
  [ "$code" = 401 ] || fail "a key in the query string got $code" || return 1
  wait_for 10 "ingest's access line of the request" grep -q ' method=POST path=/ingest status=401 ' "$POSTBACK_LOG_DIR"/ingest_00.access.log ||
    fail "no access line: $(tail -n3 "$POSTBACK_LOG_DIR"/ingest_00.access.log)" || return 1
  # And in nginx's, for an answer it gives itself.
  code=$(curl -sS -o /dev/null -w '%{http_code}' "$base/no-such-page?key=$secret")
  [ "$code" = 404 ] || fail "the page got $code" || return 1
  wait_for 10 "nginx's access line of the request" grep -qF '"GET /no-such-page?... HTTP/1.1" 404 ' "$POSTBACK_LOG_DIR/nginx-access.log" ||
    fail "no access line: $(tail -n3 "$POSTBACK_LOG_DIR/nginx-access.log")" || return 1
  ! grep -rqF QUERYSECRETVALUE "$POSTBACK_LOG_DIR" || fail "the secret is in: $(grep -rlF QUERYSECRETVALUE "$POSTBACK_LOG_DIR")"
}

# A body sent a byte a second: no gap between reads reaches nginx's 10 s,
# but ingest cuts the whole at INGEST_BODY_TIMEOUT_MS (2 s here).
test_a_body_that_trickles_in_is_cut_off_with_a_json_408() {
  local port=${base##*:} started=$SECONDS answer="" line length=0 trickle
  exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
  printf 'POST /ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 100\r\n\r\n' "$key" >&3
  (for _ in $(seq 1 40); do printf ' ' >&3 2>/dev/null || exit 0; sleep 1; done) &
  trickle=$!
  # The answer's head, then exactly its Content-Length bytes: the
  # connection itself may stay open while nginx discards the rest.
  while IFS= read -r -t 30 line <&3; do
    line=${line%$'\r'}
    answer+="$line"$'\n'
    [[ "$line" =~ ^[Cc]ontent-[Ll]ength:\ *([0-9]+) ]] && length=${BASH_REMATCH[1]}
    [ -n "$line" ] || break
  done
  [ "$length" -gt 0 ] && answer+=$(timeout 10 head -c "$length" <&3)
  kill "$trickle" 2>/dev/null
  exec 3>&-
  grep -q '^HTTP/1.1 408 ' <<<"$answer" && grep -q '"code":"body_timeout"' <<<"$answer" ||
    fail "a trickled body got: $(head -c 300 <<<"$answer")" || return 1
  [ $((SECONDS - started)) -lt 20 ] || fail "cut after $((SECONDS - started)) s"
}

# nginx reuses its idle connections to ingest; whichever side closes one
# first, a request sent on it as it closes fails. Requests after pauses
# from well within to past both sides' limits (here nginx 1.6 s, ingest
# 2 s: INGEST_KEEPALIVE_MS=2000), each on a connection nginx reuses or
# has just closed: every one is answered by ingest.
test_no_request_fails_on_a_connection_reused_after_a_pause() {
  grep -q 'keepalive_timeout 1600ms;' "$POSTBACK_CONF_DIR/nginx-site.conf" ||
    fail "nginx's keep-alive to ingest is not 4/5 of ingest's: $(grep keepalive_timeout "$POSTBACK_CONF_DIR/nginx-site.conf")" || return 1
  local pause code missed=""
  for pause in 0.5 1.5 1.55 1.6 1.65 1.9 1.95 2.0 2.05 2.5; do
    sleep "$pause" # the pause is what is tested, not a wait for a state
    code=$(curl -sS -o /dev/null -w '%{http_code}' -X POST "$base/ingest" "${auth[@]}" -d '{}')
    [ "$code" = 400 ] || missed+=" after ${pause}s: $code"
  done
  [ -z "$missed" ] || fail "requests failed:$missed"
}

# --- request ids --------------------------------------------------------------
# request_id_of METHOD PATH BY [CURL_ARGS...] : the one X-Request-Id of the
# answer (fails if there is none or more than one), after checking that
# the request has exactly one access line with that id, in the log of BY:
# ingest's (the route, no query string) or nginx's (the path with its
# query string, if any, shown as `?...`), for an answer nginx gave itself.
request_id_of() {
  local method=$1 path=$2 by=$3 headers=$tmp/rid.headers ids status lines
  shift 3
  curl -sS -o /dev/null -D "$headers" -X "$method" "$@" "$base$path" || return 1
  ids=$(sed -n 's/^[Xx]-[Rr]equest-[Ii]d: *\([^[:space:]]*\).*/\1/p' "$headers")
  [ "$(wc -l <<<"$ids")" -eq 1 ] && [ -n "$ids" ] ||
    fail "$method $path: X-Request-Id headers: '$ids'" || return 1
  status=$(sed -n 's/^HTTP[^ ]* \([0-9]*\).*/\1/p' "$headers" | tail -n1)
  local logs=("$POSTBACK_LOG_DIR"/nginx-access.log "$POSTBACK_LOG_DIR"/ingest_*.access.log)
  wait_for 10 "the access line of $method $path" grep -qF "request_id=$ids " "${logs[@]}" ||
    fail "no access line with request_id=$ids" || return 1
  lines=$(grep -HF "request_id=$ids " "${logs[@]}")
  [ "$(wc -l <<<"$lines")" -eq 1 ] || fail "$method $path is logged more than once: $lines" || return 1
  local expected="$POSTBACK_LOG_DIR/ingest_00.access.log:.* method=$method path=${path%%\?*} status=$status "
  if [ "$by" = nginx ]; then
    local logged=${path%%\?*}
    [ "$logged" = "$path" ] || logged="$logged?..."
    expected="$POSTBACK_LOG_DIR/nginx-access.log:.*\"$method $logged HTTP/1.1\" $status "
  fi
  grep -q "$expected" <<<"$lines" ||
    fail "$method $path, answered $status $ids by $by, is logged as: $lines" || return 1
  echo "$ids"
}

test_every_answer_carries_one_request_id_logged_once() {
  local sample id
  sample="{\"endpoint\":{\"method\":\"GET\",\"url\":\"$sink/rid?n={n}\"},\"data\":[{\"n\":\"1\"}]}"
  # ingest makes the id when the caller sent none, not nginx: a UUID v7,
  # whose first 12 hex digits are the time in ms (nginx's are random)...
  id=$(request_id_of POST /ingest?made ingest "${auth[@]}" -d "$sample") || return 1
  [[ "$id" =~ ^[0-9a-f]{32}$ ]] || fail "made id: $id" || return 1
  local skew=$(($(date +%s%3N) - 16#${id:0:12}))
  [ "${skew#-}" -lt 60000 ] || fail "$id is not a UUID v7 of now (off by $skew ms): nginx made it?" || return 1
  # ...and keeps the caller's,
  id=$(request_id_of POST /ingest?given ingest "${auth[@]}" -H 'X-Request-Id: trace-42' -d "$sample") || return 1
  [ "$id" = trace-42 ] || fail "the caller's id came back as $id" || return 1
  # which reaches the delivery log.
  wait_for 20 "request_id=trace-42 in a delivery log" bash -c "grep -q 'request_id=trace-42' '$POSTBACK_LOG_DIR'/deliver_*.delivery.log" ||
    return 1
  # nginx makes one for the answers it gives itself,
  id=$(request_id_of GET /no-such-page nginx) || return 1
  [[ "$id" =~ ^[0-9a-f]{32}$ ]] || fail "nginx's 404 id: $id" || return 1
  # including its 503 while ingest is down.
  stack_ctl stop 'ingest:*' >/dev/null || return 1
  local answered=0
  id=$(request_id_of POST /ingest?down nginx -d "$sample") && answered=1
  stack_ctl start 'ingest:*' >/dev/null
  [ "$answered" = 1 ] && [[ "$id" =~ ^[0-9a-f]{32}$ ]] || fail "503 id: '$id'" || return 1
  grep -q 'Retry-After: 5' "$tmp/rid.headers" || fail "the 503 lost its Retry-After: $(cat "$tmp/rid.headers")" || return 1
  stack_wait_healthy 60
}

# --- monitoring ---------------------------------------------------------------
influx() {
  curl -fsS -G "http://127.0.0.1:$(stack_setting INFLUX_HTTP_PORT)/query" \
    --data-urlencode db=monitor --data-urlencode "q=$1"
}

test_collectd_data_reaches_influxdb() {
  wait_for 60 "cpu data in InfluxDB" bash -c "$(declare -f influx stack_setting); influx 'SELECT count(value) FROM cpu_value' | grep -q '\"count\"'" ||
    fail "no cpu_value in InfluxDB: $(influx 'SHOW MEASUREMENTS' 2>&1)" || return 1
  local q="SELECT last(value) FROM curl_json_value WHERE instance = 'ingest' AND type_instance = 'queue-ready'"
  wait_for 60 "queue depth in InfluxDB" bash -c "$(declare -f influx stack_setting); influx \"$q\" | grep -q '\"last\"'" ||
    fail "no ingest stats in InfluxDB" || return 1
  # Deliveries of the last minute, cluster-wide (every test before delivered).
  q="SELECT last(value) FROM curl_json_value WHERE instance = 'ingest' AND type_instance = 'window-totals-delivered'"
  wait_for 60 "delivery counts in InfluxDB" bash -c "$(declare -f influx stack_setting); influx \"$q\" | grep -qE '\"last\"\\],\"values\":\\[\\[\"[^\"]*\",[1-9]'" ||
    fail "no delivery counts in InfluxDB: $(influx "$q")"
}

# --- runbook ------------------------------------------------------------------
# Runs every `# read-only` block of docs/RUNBOOK.md against this stack, with
# the production paths replaced by the test stack's, after the first block
# (which loads the settings).
test_runbook_read_only_commands_work() {
  local shim=$tmp/shim
  mkdir -p "$shim"
  printf '#!/bin/sh\nexec supervisorctl -c %s "$@"\n' "$POSTBACK_CONF_DIR/supervisord.conf" >"$shim/postbackctl"
  chmod +x "$shim/postbackctl"
  local blocks=$tmp/runbook
  rm -rf "$blocks" && mkdir -p "$blocks"
  awk -v dir="$blocks" '
    /^```sh$/ { n++; inblock = 1; readonly = 0; first = 1; next }
    /^```$/ && inblock { inblock = 0; next }
    inblock && first { first = 0; if ($0 == "# read-only") { readonly = 1; next } }
    inblock && readonly { print > (dir "/" sprintf("%02d", n) ".sh") }
  ' "$repo/docs/RUNBOOK.md"
  local count
  count=$(find "$blocks" -name '*.sh' | wc -l)
  [ "$count" -ge 8 ] || fail "found only $count read-only blocks in the runbook" || return 1
  sed -i -e "s|/etc/postback|$POSTBACK_CONF_DIR|g" -e "s|/var/log/postback|$POSTBACK_LOG_DIR|g" \
    -e "s|/var/lib/postback|$POSTBACK_DATA_DIR|g" -e "s|/run/postback|$POSTBACK_RUN_DIR|g" "$blocks"/*.sh
  local setup block out
  setup=$(find "$blocks" -name '*.sh' | sort | head -n 1)
  for block in $(find "$blocks" -name '*.sh' | sort); do
    if ! out=$(PATH="$shim:$bin:$PATH" bash -c "set -e; . '$setup'; . '$block'" 2>&1); then
      fail "runbook block failed: $(cat "$block")"$'\n'"$out" || return 1
    fi
    # The services' own log lines that a block prints (`[2026-...`) are
    # not errors of its commands: a worker that started before Redis made
    # its socket logs "No such file or directory", say.
    if grep -vE '^\[[0-9]{4}-[0-9]{2}-' <<<"$out" | grep -qiE 'command not found|no such file|unknown command|usage:'; then
      fail "runbook block printed an error: $(cat "$block")"$'\n'"$out" || return 1
    fi
    # Its URLs are the stack's own, on the port it was given (loopback is
    # allowed the admin pages by now: test_nginx_limits_body_and_admin_pages).
    if grep -q 'dashboard answers' "$block"; then
      grep -qx "dashboard: $base/dashboard" <<<"$out" && grep -qx 'dashboard answers 200' <<<"$out" ||
        fail "the runbook's dashboard is not the stack's ($base): $out" || return 1
    fi
  done
}

# --- 5 ----------------------------------------------------------------------
test_provision_dry_run_and_root() {
  local out
  out=$("$repo/scripts/provision" --dry-run 2>&1) || fail "dry run failed: $out" || return 1
  local expect
  for expect in "would install Debian packages" "would firewall: allow 22/tcp" "would firewall: allow 80/tcp" \
    "would create a 2G swap file" "vm.swappiness=10" "disable the distribution's redis-server.service" \
    "would enable and start postback.service"; do
    grep -qF "$expect" <<<"$out" || fail "dry run does not mention: $expect" || return 1
  done
  # A Redis host of the Sentinel shape: TLS by default, the CA made on the
  # first one; --no-redis-tls leaves it out.
  out=$("$repo/scripts/provision" --dry-run --role redis 2>&1) || fail "dry run --role redis failed: $out" || return 1
  for expect in "would make a CA for Redis' TLS" "would make this host's TLS certificate" "Redis and the sentinel TLS only"; do
    grep -qF "$expect" <<<"$out" || fail "dry run --role redis does not mention: $expect" || return 1
  done
  out=$("$repo/scripts/provision" --dry-run --role redis --no-redis-tls 2>&1) || fail "dry run --no-redis-tls failed: $out" || return 1
  ! grep -q "TLS" <<<"$out" || fail "--no-redis-tls still plans TLS: $out" || return 1
  # A Cluster node: no sentinel; the bus open to its peers, the port to its
  # clients; the Cluster made once all run.
  out=$("$repo/scripts/provision" --dry-run --role redis --cluster --peers 10.0.0.2,10.0.0.3 --clients 10.0.0.11 2>&1) ||
    fail "dry run --cluster failed: $out" || return 1
  for expect in "allow 16379/tcp from 10.0.0.2" "allow 6379/tcp from 10.0.0.11" "would make a Redis Cluster of this node and 10.0.0.2, 10.0.0.3"; do
    grep -qF "$expect" <<<"$out" || fail "dry run --cluster does not mention: $expect" || return 1
  done
  ! grep -qE "sentinel|16379/tcp from 10.0.0.11" <<<"$out" || fail "a Cluster node plans a sentinel, or opens the bus to a client: $out" || return 1

  local root=$tmp/root
  provisioned_conf=$root/etc/postback/supervisord.conf provisioned_run=$root/run/postback
  out=$(POSTBACK_BIN_SOURCE=$bin "$repo/scripts/provision" --root "$root" --swap 0 --http-port "$(free_port)" \
    --redis-port "$(free_port)" --ingest-port "$(free_port)" --admin-port "$(free_port 2)" 2>&1) || fail "provision --root failed: $out" || return 1
  grep -q "skipped firewall" <<<"$out" || fail "--root must say it skips the firewall" || return 1
  supervisord -c "$provisioned_conf" || return 1
  POSTBACK_CONF_DIR=$root/etc/postback POSTBACK_LOG_DIR=$root/var/log/postback stack_wait_healthy 60 ||
    fail "the provisioned stack did not become healthy" || return 1
  supervisorctl -c "$provisioned_conf" shutdown >/dev/null
  wait_for 60 "the provisioned stack to stop" bash -c "! kill -0 $(cat "$provisioned_run/supervisord.pid") 2>/dev/null" || return 1

  touch "$tmp/marker"
  sleep 1
  out=$(POSTBACK_BIN_SOURCE=$bin "$repo/scripts/provision" --root "$root" --swap 0 2>&1) || fail "second run failed: $out" || return 1
  grep -q "nothing to change" <<<"$out" || fail "second run changed something: $out" || return 1
  local touched
  touched=$(find "$root/etc" "$root/usr" -newer "$tmp/marker" -type f)
  [ -z "$touched" ] || fail "second run rewrote: $touched"
}

# --- 6 ----------------------------------------------------------------------
# scripts/bench --runs N: each target on the median of its per-run values.
# Made-up runs, so that the median of the ratios (0.46, ok) differs from
# the ratio of the medians (0.50), a 0.599 is not rounded up to pass 0.6,
# and one error in one run is a miss.
test_bench_medians_are_of_per_run_ratios() {
  local dir=$tmp/bench-runs i out
  mkdir -p "$dir"
  local ingest=(40 50 92) ceiling=(100 100 200) errors10=(0 1 0)
  for i in 1 2 3; do
    printf '{"mode":"full","ingest1_rps":%s,"nginx_ceiling_rps":%s,"ingest10_rps":30,"drain_per_s":5990,"sink_ceiling_rps":10000,"healthy_next_to_dead_per_s":6,"healthy_alone_per_s":10,"ingest1_peak_rss_mb":9.1,"ingest10_peak_rss_mb":9.4,"ingest1_errors":0,"ingest10_errors":%s,"ingest1_p99_ms":3.5,"e2e_p99_ms":1.2,"deliver_peak_rss_mb":11,"redis_bytes_per_job":294}\n' \
      "${ingest[i - 1]}" "${ceiling[i - 1]}" "${errors10[i - 1]}" >"$dir/$i.json"
  done
  out=$(bash -c '. "$1/scripts/lab/bench-targets.sh"; bench_medians "$2" 3 full "$2/median.json"' _ "$repo" "$dir") || return 1
  grep -Eq '^ingest 1 item, req/s / nginx ceiling +0\.400/0\.500/0\.460 +0\.46 +>= 0\.45 +ok$' <<<"$out" ||
    fail "1 item: want the median of the per-run ratios, 0.46: $out" || return 1
  grep -Eq '^drain, deliveries/s / sink ceiling +0\.599/0\.599/0\.599 +0\.599 +>= 0\.6 +MISSED$' <<<"$out" ||
    fail "drain: 0.599 must miss 0.6: $out" || return 1
  grep -Eq '^ingest errors \(non-202\), all runs +0/1/0 +1 +< 1 +MISSED$' <<<"$out" ||
    fail "errors: one in one run must miss: $out" || return 1
  grep -Eq '^ingest peak RSS under load, MB +9\.4/9\.4/9\.4 +9\.4 +< 32 +ok$' <<<"$out" ||
    fail "ingest RSS: the larger of the two phases: $out" || return 1
  grep -q '"ingest1_ratio":0.46,.*"drain_ratio":0.599' "$dir/median.json" || fail "median JSON: $(cat "$dir/median.json")" || return 1
  # A "no more than" target: 2.0 itself is met; a figure a run could not
  # make (no CPU reading) is a miss, never an ok.
  grep -q '^ok$' <<<"$(bash -c '. "$1/scripts/lab/bench-targets.sh"; meets deliver_wrk_cpu_ratio 2.000' _ "$repo")" ||
    fail "2.000 must meet <= 2.0" || return 1
  grep -q '^MISSED$' <<<"$(bash -c '. "$1/scripts/lab/bench-targets.sh"; meets deliver_wrk_cpu_ratio n/a' _ "$repo")" ||
    fail "n/a must miss"
}

test_settings_from_the_environment_are_taken_into_postback_env() {
  local dir=$tmp/env-take
  mkdir -p "$dir" && cp "$POSTBACK_CONF_DIR/postback.env" "$dir/" || return 1
  (
    # shellcheck disable=SC2030 # set for this subshell only, on purpose
    export POSTBACK_CONF_DIR=$dir DELIVER_CONCURRENCY=7 POSTBACK_DENY_DESTINATIONS="8.8.8.8, 1.1.1.1" INGEST_NOT_A_SETTING=1
    stack_take_settings_from_env 2>/dev/null
  ) || return 1
  [ "$(grep -c '^DELIVER_CONCURRENCY=' "$dir/postback.env")" = 1 ] && grep -qx 'DELIVER_CONCURRENCY=7' "$dir/postback.env" ||
    fail "DELIVER_CONCURRENCY not taken: $(grep DELIVER_CONCURRENCY "$dir/postback.env")" || return 1
  # A value with spaces survives the shell that reads the file.
  # shellcheck disable=SC1091,SC2031 # the file is made above; read in a subshell on purpose
  [ "$(set -a; . "$dir/postback.env"; echo "$POSTBACK_DENY_DESTINATIONS")" = "8.8.8.8, 1.1.1.1" ] ||
    fail "POSTBACK_DENY_DESTINATIONS garbled" || return 1
  ! grep -q INGEST_NOT_A_SETTING "$dir/postback.env" || fail "a variable that is no setting was taken" || return 1
}

# INGEST_REPLICA_ACKS=1 in postback.env makes Redis refuse writes without
# a replica in reach (ingest's cargo tests show the 503 replicas_unavailable
# that follows); at 0, the stack's Redis has no such rule.
# shellcheck disable=SC2030,SC2031 # POSTBACK_CONF_DIR moves for one subshell only, on purpose
test_replica_acks_make_redis_require_replicas() {
  local dir=$tmp/acks
  mkdir -p "$dir" && cp "$POSTBACK_CONF_DIR/postback.env" "$dir/" || return 1
  env_set "$dir/postback.env" INGEST_REPLICA_ACKS 1
  (export POSTBACK_CONF_DIR=$dir STACK_OUT_DIR=$dir && stack_render >/dev/null 2>&1) || fail "render with INGEST_REPLICA_ACKS=1 failed" || return 1
  grep -qx 'min-replicas-to-write 1' "$dir/redis.conf" && grep -qx 'min-replicas-max-lag 10' "$dir/redis.conf" ||
    fail "redis.conf lacks min-replicas-to-write 1 / min-replicas-max-lag 10: $(grep -n min-replicas "$dir/redis.conf")" || return 1
  ! grep -q '^min-replicas' "$POSTBACK_CONF_DIR/redis.conf" || fail "the default stack's Redis requires replicas" || return 1
  [ "$(rcli CONFIG GET min-replicas-to-write | tail -1)" = 0 ] || fail "the running Redis requires replicas"
}

# --- 9 ----------------------------------------------------------------------
# failover_test SCRIPT ARGS... : runs a Sentinel failover test; while it
# fails with a Sentinel "-failover-abort-..." or "Next failover delay" (a
# sentinel whose attempt was abandoned) in what it showed, again on a
# fresh set-up, saying so, three set-ups at most. Sentinel now and then
# abandons a failover with its replica in sync (seen 2026-12-07 in both
# failover tests, cause not yet found) and tries again only after twice
# its failover-timeout; any other failure fails at once.
failover_test() {
  local out try
  for try in 1 2 3; do
    if out=$("$@" 2>&1); then
      printf '%s\n' "$out"
      return 0
    fi
    printf '%s\n' "$out"
    grep -qE -- '-failover-abort-|Next failover delay' <<<"$out" || return 1
    [ "$try" -lt 3 ] && say "    Sentinel abandoned the failover (no replica fit); again, on a fresh set-up"
  done
  return 1
}

test_sentinel_stack_follows_a_failover() {
  stack_stop >/dev/null 2>&1 # the main stack's work is done: its CPU back
  failover_test "$repo/scripts/lab/tests/ha-stack.sh" "$bin" "$sink_port" "$tmp/sink.log"
}

test_provision_roles_make_a_sentinel_shape_that_fails_over() {
  local out expect
  out=$("$repo/scripts/provision" --dry-run --role redis --redis-listen 10.0.0.1 --peers 10.0.0.2,10.0.0.3 2>&1) ||
    fail "dry run failed: $out" || return 1
  for expect in "would firewall: allow 22/tcp" "would firewall: allow 6379/tcp from 10.0.0.2" \
    "would firewall: allow 26379/tcp from 10.0.0.3" "apt-get install -y redis-server supervisor"; do
    grep -qF "$expect" <<<"$out" || fail "--role redis dry run does not mention: $expect" || return 1
  done
  ! grep -qE "allow 80/tcp|allow 6379/tcp: |nginx" <<<"$out" || fail "a Redis host opens more: $out" || return 1
  # An app host needs the shape's CA, and says so before doing anything.
  if out=$("$repo/scripts/provision" --dry-run --role app --redis-url 'redis-sentinel://10.0.0.1:26379#postback' 2>&1); then
    fail "an app host without the CA must refuse: $out"
    return 1
  fi
  grep -qF -- "--redis-tls-ca FILE --redis-tls-ca-key FILE" <<<"$out" || fail "the refusal must name the flags: $out" || return 1
  : >"$tmp/dummy-ca"
  out=$("$repo/scripts/provision" --dry-run --role app --redis-url 'redis-sentinel://10.0.0.1:26379#postback' \
    --redis-tls-ca "$tmp/dummy-ca" --redis-tls-ca-key "$tmp/dummy-ca" 2>&1) || fail "dry run failed: $out" || return 1
  grep -qF "would make this host's TLS certificate" <<<"$out" || fail "an app host must plan its certificate: $out" || return 1
  grep -qF "would firewall: allow 80/tcp" <<<"$out" || fail "an app host must open HTTP: $out" || return 1
  ! grep -qE "6379|redis-server" <<<"$out" || fail "an app host opens or installs Redis: $out" || return 1
  stack_stop >/dev/null 2>&1 # the main stack's work is done: its CPU back
  # Five hosts in network namespaces, TLS between them, four faults: every
  # job answered 202 delivered (scripts/lab/tests/hosts-stack.sh).
  failover_test "$repo/scripts/lab/tests/hosts-stack.sh" "$bin"
}

test_provision_cluster_makes_a_cluster_once() {
  stack_stop >/dev/null 2>&1 # the main stack's work is done: its CPU back
  "$repo/scripts/lab/tests/cluster-stack.sh" "$bin" "$sink_port" "$tmp/sink.log"
}

test_scripts_run_first_postback_arrives_and_a_start_is_quiet() {
  stack_stop >/dev/null 2>&1 # the main stack's work is done: its CPU back
  run_var=$tmp/run-var
  local out line answer id http_port
  http_port=$(free_port)
  out=$(POSTBACK_VAR_DIR=$run_var POSTBACK_RUN_BIN_DIR=$bin REDIS_PORT=$(free_port) INGEST_PORT=$(free_port) \
    DELIVER_ADMIN_PORT=$(free_port 2) POSTBACK_HTTP_PORT=$http_port POSTBACK_DEMO_SINK_PORT=$(free_port) \
    "$repo/scripts/run" --detach 2>&1) || fail "scripts/run --detach failed: $out" || return 1
  # The first curl line it prints, run as a newcomer would paste it.
  line=$(grep -m1 '^  curl ' <<<"$out")
  grep -q "/demo?" <<<"$line" || fail "the first curl line is not the demo receiver's: $line" || return 1
  answer=$(cd "$repo" && bash -c "$line") || fail "the first curl line failed: $answer" || return 1
  id=$(sed -n 's/.*"ids":\["\([^"]*\)".*/\1/p' <<<"$answer")
  [ -n "$id" ] || fail "no job id in the answer: $answer" || return 1
  wait_for 20 "the first postback's attempt" grep -qh "id=$id " "$run_var"/log/deliver_*.delivery.log || return 1
  grep -h "id=$id " "$run_var"/log/deliver_*.delivery.log | grep -q "attempt=1 .*status=200 .*outcome=delivered" ||
    fail "the first postback was not delivered at the first try: $(grep -h "id=$id " "$run_var"/log/deliver_*.delivery.log)" || return 1
  local loud
  loud=$(grep -HE '^\[[^]]* (ERROR|WARN) ' "$run_var"/log/ingest_*.log "$run_var"/log/deliver_[0-9][0-9].log
    grep -HE '\[(warn|error|crit|alert|emerg)\]' "$run_var"/log/nginx-error.log 2>/dev/null)
  [ -z "$loud" ] || fail "a normal start logged warnings or errors: $loud" || return 1
  # The job's story, with the command the banner prints: no --logs needed.
  line=$(grep -m1 'deliver job ID$' <<<"$out") || fail "no 'deliver job' line in: $out" || return 1
  answer=$(cd "$repo" && bash -c "${line/ID/$id}" 2>&1) || fail "$line: $answer" || return 1
  grep -q 'attempts in .*: 1$' <<<"$answer" && grep -q 'status=200' <<<"$answer" ||
    fail "deliver job without --logs: $answer" || return 1
  # The dashboard's address is in the banner, on the stack's port.
  grep -q "^  dashboard: http://127.0.0.1:$http_port/dashboard " <<<"$out" || fail "no dashboard URL in: $out" || return 1
  # One line per setting in postback.env (the template's own line).
  local env=$run_var/etc/postback.env
  [ "$(grep -c '^POSTBACK_ALLOW_DESTINATIONS=' "$env")" = 1 ] || fail "$(grep -n '^POSTBACK_ALLOW' "$env")" || return 1
  # --detach again while it runs: not an error; the banner again.
  out=$(POSTBACK_VAR_DIR=$run_var POSTBACK_RUN_BIN_DIR=$bin "$repo/scripts/run" --detach 2>&1) ||
    fail "a second --detach failed: $out" || return 1
  grep -q 'running already' <<<"$out" && grep -q '^  curl .*/demo?' <<<"$out" || fail "second --detach said: $out" || return 1
  POSTBACK_VAR_DIR=$run_var "$repo/scripts/run" stop >/dev/null 2>&1

  # A later start moves every port it is given, and opens a receiver of
  # one's own beside the demo one.
  local redis_port ingest_port admin_port demo_port
  http_port=$(free_port) redis_port=$(free_port) ingest_port=$(free_port) admin_port=$(free_port 2) demo_port=$(free_port)
  out=$(POSTBACK_VAR_DIR=$run_var POSTBACK_RUN_BIN_DIR=$bin REDIS_PORT=$redis_port INGEST_PORT=$ingest_port \
    DELIVER_ADMIN_PORT=$admin_port POSTBACK_HTTP_PORT=$http_port POSTBACK_DEMO_SINK_PORT=$demo_port \
    POSTBACK_ALLOW_DESTINATIONS=127.0.0.1:$sink_port "$repo/scripts/run" --detach 2>&1) ||
    fail "a start with moved ports failed: $out" || return 1
  curl -fsS -o /dev/null "http://127.0.0.1:$ingest_port/health" || fail "ingest is not on $ingest_port" || return 1
  curl -fsS -o /dev/null "http://127.0.0.1:$admin_port/health" || fail "deliver_00 is not on $admin_port" || return 1
  [ "$(REDISCLI_AUTH=$(sed -n 's/^REDIS_PASSWORD=//p' "$env") redis-cli -p "$redis_port" PING)" = PONG ] ||
    fail "Redis is not on $redis_port" || return 1
  [ "$(grep -c '^POSTBACK_ALLOW_DESTINATIONS=' "$env")" = 1 ] || fail "$(grep -n '^POSTBACK_ALLOW' "$env")" || return 1
  line=$(grep -m1 '^  curl .*/demo?' <<<"$out")
  grep -q "http://127.0.0.1:$http_port/ingest .*127.0.0.1:$demo_port/demo" <<<"$line" || fail "banner: $line" || return 1
  answer=$(cd "$repo" && bash -c "$line") || fail "the demo line failed: $answer" || return 1
  local key2
  key2=$(cat "$run_var/etc/producer-key")
  : >"$tmp/sink.log"
  answer=$(curl -sS -X POST "http://127.0.0.1:$http_port/ingest" -H "Authorization: Bearer $key2" \
    -d "{\"endpoint\":{\"method\":\"GET\",\"url\":\"$sink/own?n={n}\"},\"data\":[{\"n\":\"7\"}]}")
  grep -q '"accepted":1' <<<"$answer" || fail "to one's own receiver: $answer" || return 1
  wait_for 20 "the postback at one's own receiver" grep -q ' GET /own?n=7' "$tmp/sink.log" || return 1
  wait_for 20 "the demo postback at the moved demo receiver" bash -c \
    "grep -h 'url=\"http://127.0.0.1:$demo_port/demo' '$run_var'/log/deliver_*.delivery.log | grep -q status=200" || return 1
  POSTBACK_VAR_DIR=$run_var "$repo/scripts/run" stop >/dev/null 2>&1
}

test_a_full_disk_loses_nothing_and_is_seen() {
  stack_stop >/dev/null 2>&1 # the main stack's work is done: its CPU back
  "$repo/scripts/lab/tests/disk-full-stack.sh" "$bin" "$sink_port" "$tmp/sink.log"
}

test_alert_rules_pass_promtool() {
  (cd "$repo/monitoring" && promtool check rules alerts.yml && promtool test rules alerts.test.yml)
}

test_shellcheck_is_clean() {
  (cd "$repo" && shellcheck -x scripts/run scripts/test scripts/provision scripts/with-env scripts/bench scripts/bench-instructions scripts/lib/*.sh scripts/lab/*.sh scripts/lab/tests/*.sh .ci/run)
}

check "templates render; every program RUNNING; the sample is delivered through nginx" test_all_running_and_sample_delivered
check "a SIGKILLed deliver is restarted by supervisord and every job is delivered" test_sigkilled_deliver_is_restarted_and_nothing_lost
check "supervisorctl stop of deliver is graceful; start delivers the rest" test_stopping_deliver_is_graceful_and_start_finishes_the_work
check "with monitoring on, collectd's host data and delivery counts can be queried from InfluxDB" test_collectd_data_reaches_influxdb
check "nginx answers 413 over the body limit and guards /metrics with the allowlist" test_nginx_limits_body_and_admin_pages
check "every answer carries one X-Request-Id, on its one access line and on its deliveries" test_every_answer_carries_one_request_id_logged_once
check "every error a client can cause is a JSON body through nginx, HTTP/1.0 without Host served" test_every_error_a_client_can_cause_is_json_through_nginx
check "a producer key in the query string reaches no log" test_a_key_in_the_query_string_reaches_no_log
check "a body that trickles in is cut off at INGEST_BODY_TIMEOUT_MS with a JSON 408" test_a_body_that_trickles_in_is_cut_off_with_a_json_408
check "nginx closes idle connections to ingest first: no request fails after any pause" test_no_request_fails_on_a_connection_reused_after_a_pause
check "every read-only command of docs/RUNBOOK.md works on the running stack" test_runbook_read_only_commands_work
check "provision: --dry-run lists every step; --root installs a startable, idempotent tree" test_provision_dry_run_and_root
check "bench --runs: each target is checked on the median of its per-run values" test_bench_medians_are_of_per_run_ratios
check "INGEST_*, DELIVER_* and POSTBACK_* settings in the environment reach postback.env" test_settings_from_the_environment_are_taken_into_postback_env
check "INGEST_REPLICA_ACKS=1 renders Redis' min-replicas-to-write 1 with min-replicas-max-lag 10" test_replica_acks_make_redis_require_replicas
check "scripts/run --ha's Sentinel set follows a failover of its master" test_sentinel_stack_follows_a_failover
check "provision --cluster: six TLS nodes make a Cluster once (3 masters, a replica each); an app host's jobs spread over it" test_provision_cluster_makes_a_cluster_once
check "provision --role: five hosts in network namespaces over TLS; master host killed, links cut, a split brain; no accepted job lost" test_provision_roles_make_a_sentinel_shape_that_fails_over
check "scripts/run: the first curl line it prints is delivered at the first try, its job's story found; a second --detach is no error; ports move on a later start" test_scripts_run_first_postback_arrives_and_a_start_is_quiet
check "a full disk: JSON 503s, the views answer, gauges at 0; after it every accepted job delivered once with its line, nothing restarted, logs within POSTBACK_LOG_MAX_MB" test_a_full_disk_loses_nothing_and_is_seen
check "monitoring/alerts.yml passes promtool's check and its unit tests" test_alert_rules_pass_promtool
check "shellcheck is clean" test_shellcheck_is_clean

if [ "$failed" -gt 0 ]; then
  rm -rf "$repo/target/stack-test-logs" && mkdir -p "$repo/target" && cp -r "$POSTBACK_LOG_DIR" "$repo/target/stack-test-logs"
  cp "$tmp/sink.log" "$repo/target/stack-test-logs/" 2>/dev/null
  say "logs of the failed run: target/stack-test-logs"
  for f in "${failures[@]}"; do say "  failed: $f"; done
fi
echo "stack: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
