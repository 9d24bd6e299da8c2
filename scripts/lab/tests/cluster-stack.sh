#!/usr/bin/env bash
# scripts/provision --role redis --cluster, for real on loopback: six Redis
# nodes (TLS between them, the first node's CA given to the others), each
# provisioned with --root into a folder of its own and started under its
# own supervisord; a run of provision on one of them makes the Cluster
# (three masters, a replica each), a later run changes nothing; an app host
# reaching the Cluster by rediss-cluster:// with the queue in three shards
# delivers jobs that spread over the masters. Called by
# scripts/lab/tests/stack.sh with the binaries' folder, the port of a
# postback-sink it runs and that sink's record file. Everything it starts is
# stopped on exit, also on failure.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../../.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$repo/scripts/lib/common.sh"
# shellcheck source=scripts/lab/lab.sh
. "$repo/scripts/lab/lab.sh"
# shellcheck source=scripts/lib/stack.sh
. "$repo/scripts/lib/stack.sh"

bin=$1 sink_port=$2 sink_log=$3
tmp=$(mktemp -d /tmp/postback-cluster-test.XXXXXX)
chmod 711 "$tmp"
nodes=(node-1 node-2 node-3 node-4 node-5 node-6)
hosts=("${nodes[@]}" app)
# on HOST CMD... : CMD with HOST's layout.
on() { on_host "$tmp" "$@"; }
cleanup() {
  local host
  for host in "${hosts[@]}"; do on "$host" stack_stop >/dev/null 2>&1; done
  [ -n "${KEEP_CLUSTER_TMP:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT
show() { show_hosts "$tmp" "${hosts[@]}"; }

(umask 077 && od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$tmp/redis-password")
declare -A port
for node in "${nodes[@]}"; do port[$node]=$(free_port 1); done
peers_of() {
  local node list=()
  for node in "${nodes[@]}"; do [ "$node" = "$1" ] || list+=("127.0.0.1:${port[$node]}"); done
  local IFS=,
  echo "${list[*]}"
}
provision() {
  local host=$1
  shift
  POSTBACK_BIN_SOURCE=$bin "$repo/scripts/provision" --root "$tmp/$host" --swap 0 \
    --redis-password-file "$tmp/redis-password" "$@" >"$tmp/$host.provision.log" 2>&1 ||
    { cat "$tmp/$host.provision.log"; exit 1; }
}
provision node-1 --role redis --cluster --redis-port "${port[node-1]}" --peers "$(peers_of node-1)" --clients 127.0.0.2
cp "$tmp/node-1/etc/postback/tls/ca.crt" "$tmp/node-1/etc/postback/tls/ca.key" "$tmp/" || exit 1
for node in "${nodes[@]:1}"; do
  provision "$node" --role redis --cluster --redis-port "${port[$node]}" --peers "$(peers_of "$node")" \
    --redis-tls-ca "$tmp/ca.crt" --redis-tls-ca-key "$tmp/ca.key"
done
conf=$tmp/node-1/etc/postback
for line in "cluster-enabled yes" "tls-cluster yes" "port 0" "tls-port ${port[node-1]}"; do
  grep -qx "$line" "$conf/redis.conf" || { echo "node-1's redis.conf lacks: $line"; exit 1; }
done
[ ! -e "$conf/supervisor.d/sentinel.conf" ] || { echo "a Cluster node runs a sentinel"; exit 1; }
grep -q "skipped firewall.*${port[node-1]} $((port[node-1] + 10000)) from 127.0.0.1.*; ${port[node-1]} from 127.0.0.2" \
  "$tmp/node-1.provision.log" || { echo "the firewall plan does not admit peers to the port and bus, clients to the port"; cat "$tmp/node-1.provision.log"; exit 1; }

for node in "${nodes[@]}"; do on "$node" stack_start >/dev/null || show; done
for node in "${nodes[@]}"; do on "$node" stack_wait_healthy 60 >/dev/null || show; done

# Any node's run makes the Cluster once every node runs; then nothing.
out=$(POSTBACK_BIN_SOURCE=$bin "$repo/scripts/provision" --root "$tmp/node-3" --swap 0 2>&1) || { echo "$out"; show; }
grep -q "made a Redis Cluster of 6 nodes, 3 masters, 1 replica each" <<<"$out" || { echo "node-3's run made no Cluster: $out"; show; }
cluster_ok() {
  local node
  for node in "${nodes[@]}"; do on "$node" stack_redis_cli CLUSTER INFO | grep -q 'cluster_state:ok' || return 1; done
}
wait_for 30 "every node to say cluster_state:ok" cluster_ok || show
out=$(POSTBACK_BIN_SOURCE=$bin "$repo/scripts/provision" --root "$tmp/node-5" --swap 0 2>&1) || { echo "$out"; show; }
grep -q "nothing to change" <<<"$out" || { echo "a second run on a Cluster node changed something: $out"; exit 1; }
masters=$(on node-1 stack_redis_cli CLUSTER NODES | grep -c master)
[ "$masters" = 3 ] || { echo "want 3 masters, the Cluster has $masters"; show; }

POSTBACK_ALLOW_DESTINATIONS=127.0.0.1:$sink_port INGEST_AUTH=off DELIVER_PROCS=1 POSTBACK_SHARDS=3 \
  provision app --role app --http-port "$(free_port 1)" --ingest-port "$(free_port 1)" --admin-port "$(free_port 1)" \
  --redis-url "redis-cluster://127.0.0.1:${port[node-1]},127.0.0.1:${port[node-2]}" \
  --redis-tls-ca "$tmp/ca.crt" --redis-tls-ca-key "$tmp/ca.key"
grep -q "^REDIS_URL='rediss-cluster://" "$tmp/app/etc/postback/postback.env" ||
  { echo "the app host's REDIS_URL is not the TLS form"; exit 1; }
on app stack_start >/dev/null || show
on app stack_wait_healthy 60 >/dev/null || show
base=$(on app stack_http_base)
for n in $(seq 1 30); do
  curl -fsS -o /dev/null -X POST "$base/ingest" \
    -d "{\"endpoint\":{\"method\":\"GET\",\"url\":\"http://127.0.0.1:$sink_port/cluster?n=$n\"},\"data\":[{}]}" || show
done
delivered() { [ "$(grep -c 'GET /cluster?n=' "$sink_log")" -ge 30 ]; }
wait_for 30 "30 jobs through the Cluster" delivered || show
# The shards' statistics and lists spread over the masters.
holding=0
for node in "${nodes[@]}"; do
  if on "$node" stack_redis_cli ROLE | head -n1 | grep -qx master && [ "$(on "$node" stack_redis_cli DBSIZE)" -gt 0 ]; then
    holding=$((holding + 1))
  fi
done
[ "$holding" -ge 2 ] || { echo "the queue's keys sit on $holding master(s), not spread"; show; }
say "    a Cluster of 6 nodes over TLS, 3 masters ($holding holding the queue's keys); 30 jobs delivered"
