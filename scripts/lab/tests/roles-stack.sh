#!/usr/bin/env bash
# scripts/provision --role, for real on loopback: two Redis hosts (the
# first master, a replica of it, a sentinel on each) and an app host
# reaching Redis through the sentinels, each provisioned with --root into a
# folder of its own from one shared password file and the first host's TLS
# CA (TLS between hosts is the default), and started under its own
# supervisord. A job is delivered; the master's Redis is stopped; the
# sentinels promote the replica and a job is delivered through it. Called
# by scripts/lab/tests/stack.sh with the binaries' folder, the port of a
# postback-sink it runs and that sink's record file. Everything it starts
# is stopped on exit, also on failure.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../../.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$repo/scripts/lib/common.sh"
# shellcheck source=scripts/lab/lab.sh
. "$repo/scripts/lab/lab.sh"
# shellcheck source=scripts/lib/stack.sh
. "$repo/scripts/lib/stack.sh"

bin=$1 sink_port=$2 sink_log=$3
tmp=$(mktemp -d /tmp/postback-roles-test.XXXXXX)
chmod 711 "$tmp"
hosts=(redis-a redis-b app)
# on HOST CMD... : CMD with HOST's layout (as stack.sh's functions read it).
on() {
  local root=$tmp/$1
  shift
  POSTBACK_CONF_DIR=$root/etc/postback POSTBACK_LOG_DIR=$root/var/log/postback POSTBACK_DATA_DIR=$root/var/lib/postback \
    POSTBACK_RUN_DIR=$root/run/postback POSTBACK_BIN_DIR=$root/usr/local/bin POSTBACK_LIB_DIR=$root/usr/local/lib/postback "$@"
}
cleanup() {
  local host
  for host in app redis-b redis-a; do on "$host" stack_stop >/dev/null 2>&1; done
  [ -n "${KEEP_ROLES_TMP:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT
show() {
  local host
  for host in "${hosts[@]}"; do
    echo "--- $host"
    on "$host" stack_ctl status
    tail -n 5 "$tmp/$host"/var/log/postback/*.log
  done
  exit 1
}

(umask 077 && od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$tmp/redis-password")
port_a=$(free_port 1) port_b=$(free_port 1) sentinel_a=$(free_port 1) sentinel_b=$(free_port 1)
provision() {
  local host=$1
  shift
  POSTBACK_BIN_SOURCE=$bin "$repo/scripts/provision" --root "$tmp/$host" --swap 0 \
    --redis-password-file "$tmp/redis-password" "$@" >"$tmp/$host.provision.log" 2>&1 ||
    { cat "$tmp/$host.provision.log"; exit 1; }
}
provision redis-a --role redis --redis-port "$port_a" --sentinel-port "$sentinel_a" --peers 127.0.0.2
# The first Redis host made the CA; the others get it as the password file.
ca=$tmp/redis-a/etc/postback/tls
if [ ! -f "$ca/ca.crt" ] || [ ! -f "$ca/ca.key" ]; then
  echo "the first Redis host made no TLS CA"
  cat "$tmp/redis-a.provision.log"
  exit 1
fi
cp "$ca/ca.crt" "$ca/ca.key" "$tmp/"
provision redis-b --role redis --redis-port "$port_b" --sentinel-port "$sentinel_b" --redis-master "127.0.0.1:$port_a" \
  --redis-tls-ca "$tmp/ca.crt" --redis-tls-ca-key "$tmp/ca.key"
[ ! -e "$tmp/redis-b/etc/postback/tls/ca.key" ] || { echo "redis-b kept a copy of the CA's key"; exit 1; }
# The app host delivers to the test's sink only, and takes no producer keys
# (the keys have their own tests): both said in its environment.
POSTBACK_ALLOW_DESTINATIONS=127.0.0.1:$sink_port INGEST_AUTH=off DELIVER_PROCS=1 \
  provision app --role app --http-port "$(free_port 1)" --ingest-port "$(free_port 1)" --admin-port "$(free_port 1)" \
  --redis-url "redis-sentinel://127.0.0.1:$sentinel_a,127.0.0.1:$sentinel_b#postback" \
  --redis-tls-ca "$tmp/ca.crt" --redis-tls-ca-key "$tmp/ca.key"
grep -q "^REDIS_URL='rediss-sentinel://" "$tmp/app/etc/postback/postback.env" ||
  { echo "the app host's REDIS_URL is not the TLS form"; grep REDIS_URL "$tmp/app/etc/postback/postback.env" | sed 's/:[^:@]*@/:***@/'; exit 1; }

grep -q "skipped firewall.*$port_a $sentinel_a from 127.0.0.2" "$tmp/redis-a.provision.log" ||
  { echo "the Redis host's firewall plan does not admit its peer to Redis' and Sentinel's ports"; cat "$tmp/redis-a.provision.log"; exit 1; }
for host in redis-a redis-b; do
  if [ -e "$tmp/$host/etc/postback/supervisor.d/ingest.conf" ] || [ -e "$tmp/$host/etc/postback/nginx.conf" ]; then
    echo "$host runs more than Redis and a sentinel"
    exit 1
  fi
done
[ ! -e "$tmp/app/etc/postback/supervisor.d/redis.conf" ] || { echo "the app host runs a Redis"; exit 1; }

for host in "${hosts[@]}"; do on "$host" stack_start >/dev/null || show; done
for host in "${hosts[@]}"; do on "$host" stack_wait_healthy 60 || show; done
# The data nodes want the password; the sentinels have none of their own
# (their port is for the listed peers only).
# Everything speaks TLS only: a plain client gets no answer, from Redis
# or from a sentinel.
for port in "$port_a" "$sentinel_a"; do
  [ "$(timeout 5 redis-cli -p "$port" ping 2>/dev/null)" != PONG ] || { echo "port $port answers without TLS"; exit 1; }
done
# sentinel_cli HOST PORT ARGS... : a sentinel's answer, over TLS with HOST's
# certificate.
sentinel_cli() {
  local dir=$tmp/$1/etc/postback/tls port=$2
  shift 2
  mapfile -t tls < <(redis_tls_cli_args "$dir" redis)
  redis-cli "${tls[@]}" -h 127.0.0.1 -p "$port" "$@"
}
link_up() { on redis-b stack_redis_cli INFO replication | grep -q 'master_link_status:up'; }
wait_for 30 "redis-b to replicate redis-a over TLS" link_up || show
sentinel_master() { sentinel_cli redis-b "$sentinel_b" SENTINEL get-master-addr-by-name postback | tail -n1; }
knows_replica() { sentinel_cli redis-a "$sentinel_a" SENTINEL REPLICAS postback | grep -qx "$port_b"; }
wait_for 30 "the sentinels to know the replica" knows_replica || show

out=$(POSTBACK_BIN_SOURCE=$bin "$repo/scripts/provision" --root "$tmp/redis-b" --swap 0 2>&1)
grep -q "nothing to change" <<<"$out" || { echo "a second run on a running Redis host changed something: $out"; exit 1; }

base=$(on app stack_http_base)
post() {
  curl -fsS -o /dev/null -X POST "$base/ingest" \
    -d "{\"endpoint\":{\"method\":\"GET\",\"url\":\"http://127.0.0.1:$sink_port/roles?id=$1\"},\"data\":[{}]}"
}
post roles-before || show
wait_for 20 "a job through the provisioned hosts" grep -q 'GET /roles?id=roles-before' "$sink_log" || show
on redis-a stack_ctl stop redis >/dev/null
promoted() { [ "$(sentinel_master)" = "$port_b" ]; }
wait_for 40 "the sentinels to promote redis-b" promoted || show
say "    the sentinels promoted redis-b (port $(sentinel_master))"
wait_for 20 "ingest to accept through the new master" post roles-after || show
wait_for 20 "a job through the new master" grep -q 'GET /roles?id=roles-after' "$sink_log" || show
