#!/usr/bin/env bash
# The multi-host shape over a real network: five hosts in network
# namespaces of their own (three Redis hosts with a sentinel each, two app
# hosts) on one bridge, at 198.18.0.0/24 (RFC 2544's benchmark range, never
# routed off this machine), plus a namespace for the sink and the
# producers. Each host is provisioned with `scripts/provision --root DIR
# --role …` (TLS between hosts, the default; INGEST_REPLICA_ACKS=1, so Redis
# runs min-replicas-to-write 1) and runs under its own supervisord inside
# its namespace. Then four faults, each reporting the jobs answered 202,
# how many of them were delivered, lost and duplicated, and how long until
# the service was back:
#   1. every process of the master's host SIGKILLed, under load;
#   2. an app host's link cut for 10 s under load;
#   3. a split brain: the master cut off from its replicas, the other
#      sentinels and one app host, but not from the other app host, for
#      20 s, then healed;
#   4. an app host's link cut for 10 s in the middle of a drain.
# A job answered 202 and never delivered fails the test; duplicates are
# reported (at-least-once delivery). Needs root (`ip netns`): otherwise it
# says so and skips. Everything it makes (namespaces, processes, files) is
# removed on exit, also on failure.
#
# usage: scripts/lab/tests/hosts-stack.sh [BIN_DIR]   (default target/debug)
#   HOSTS_REPLICA_ACKS=0 runs it without replica acknowledgements (and so
#   without min-replicas-to-write), to see what they prevent: the split
#   brain then loses jobs that were answered 202, and the test fails.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../../.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$repo/scripts/lib/common.sh"
# shellcheck source=scripts/lab/lab.sh
. "$repo/scripts/lab/lab.sh"
# shellcheck source=scripts/lib/stack.sh
. "$repo/scripts/lib/stack.sh"

bin=$(realpath "${1:-$repo/target/debug}")
if [ "$(id -u)" -ne 0 ]; then
  echo "skipped: the hosts test needs root for ip netns"
  exit 0
fi
command -v ip >/dev/null || ensure_packages iproute2

net=198.18.0
tag=pb$$
declare -A address=([redis-a]=1 [redis-b]=2 [redis-c]=3 [app-a]=11 [app-b]=12 [client]=100)
hosts=(redis-a redis-b redis-c app-a app-b)
tmp=$(mktemp -d /tmp/postback-hosts-test.XXXXXX)
chmod 711 "$tmp"
sink=$net.100:8080

ns() { echo "$tag-$1"; }
ip_of() { echo "$net.${address[$1]}"; }

# on HOST CMD... : CMD with HOST's layout.
on() { on_host "$tmp" "$@"; }
# in_host HOST FUNCTION ARGS... : a stack.sh function inside HOST's namespace.
in_host() {
  local host=$1
  shift
  # shellcheck disable=SC2016 # expanded by the inner bash
  on "$host" ip netns exec "$(ns "$host")" bash -c '. "$0/scripts/lib/common.sh"; . "$0/scripts/lab/lab.sh"; . "$0/scripts/lib/stack.sh"; "$@"' "$repo" "$@"
}

cleanup() {
  local host pids=()
  for host in "${hosts[@]}"; do on "$host" stack_stop >/dev/null 2>&1; done
  # Whatever is still running in our namespaces is ours (the sink, the
  # producers, a SIGKILLed host's leftovers).
  for host in "${hosts[@]}" client; do
    mapfile -t pids < <(ip netns pids "$(ns "$host")" 2>/dev/null)
    [ ${#pids[@]} -eq 0 ] || kill -9 "${pids[@]}" 2>/dev/null
  done
  for host in "${hosts[@]}" client switch; do ip netns del "$(ns "$host")" 2>/dev/null; done
  [ -n "${KEEP_HOSTS_TMP:-}" ] || rm -rf "$tmp"
  rm -f "$POSTBACK_PORTS_TAKEN"
}
trap cleanup EXIT
show() { show_hosts "$tmp" "${hosts[@]}"; }

# --- the network -------------------------------------------------------------
# A bridge in a namespace of its own (nothing of the machine's own network
# is touched), and one veth per host: eth0 in the host, its peer on the
# bridge. Cutting a host's link = its bridge port down: silence, not refusals.
ip netns add "$(ns switch)" || exit 1
ip -n "$(ns switch)" link add br0 type bridge && ip -n "$(ns switch)" link set br0 up || exit 1
for host in "${hosts[@]}" client; do
  ip netns add "$(ns "$host")" || exit 1
  ip -n "$(ns switch)" link add "p${address[$host]}" type veth peer name eth0 netns "$(ns "$host")" || exit 1
  ip -n "$(ns switch)" link set "p${address[$host]}" master br0 up || exit 1
  ip -n "$(ns "$host")" addr add "$(ip_of "$host")/24" dev eth0 || exit 1
  ip -n "$(ns "$host")" link set eth0 up && ip -n "$(ns "$host")" link set lo up || exit 1
done
link() { ip -n "$(ns switch)" link set "p${address[$1]}" "$2"; }

# --- the hosts ---------------------------------------------------------------
(umask 077 && od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$tmp/redis-password")
peers_of() {
  local host list=()
  for host in "${hosts[@]}"; do [ "$host" = "$1" ] || list+=("$(ip_of "$host")"); done
  local IFS=,
  echo "${list[*]}"
}
provision() {
  local host=$1
  shift
  INGEST_REPLICA_ACKS=${HOSTS_REPLICA_ACKS:-1} POSTBACK_BIN_SOURCE=$bin "$repo/scripts/provision" --root "$tmp/$host" --swap 0 \
    --redis-password-file "$tmp/redis-password" "$@" >"$tmp/$host.provision.log" 2>&1 ||
    { cat "$tmp/$host.provision.log"; exit 1; }
}
provision redis-a --role redis --redis-listen "$(ip_of redis-a)" --peers "$(peers_of redis-a)"
cp "$tmp/redis-a/etc/postback/tls/ca.crt" "$tmp/redis-a/etc/postback/tls/ca.key" "$tmp/" || exit 1
ca=(--redis-tls-ca "$tmp/ca.crt" --redis-tls-ca-key "$tmp/ca.key")
for host in redis-b redis-c; do
  provision "$host" --role redis --redis-listen "$(ip_of "$host")" --peers "$(peers_of "$host")" \
    --redis-master "$(ip_of redis-a):6379" "${ca[@]}"
done
sentinels="$(ip_of redis-a):26379,$(ip_of redis-b):26379,$(ip_of redis-c):26379"
for host in app-a app-b; do
  # The sink is the one destination, and the producers send no keys (the
  # keys have their own tests): both said in the app hosts' environment.
  POSTBACK_ALLOW_DESTINATIONS=$sink INGEST_AUTH=off DELIVER_PROCS=1 INGEST_PROCS=1 INGEST_REPLICA_TIMEOUT_MS=1000 \
    provision "$host" --role app --http-port 80 --redis-url "redis-sentinel://$sentinels#postback" "${ca[@]}"
done
# What each role runs and opens, and what it keeps of the CA.
grep -q "skipped firewall.*6379 26379 from $(peers_of redis-a | tr , ' ')" "$tmp/redis-a.provision.log" ||
  { echo "redis-a's firewall plan does not admit its peers to Redis' and Sentinel's ports"; cat "$tmp/redis-a.provision.log"; exit 1; }
for host in redis-a redis-b redis-c; do
  if [ -e "$tmp/$host/etc/postback/supervisor.d/ingest.conf" ] || [ -e "$tmp/$host/etc/postback/nginx.conf" ]; then
    echo "$host runs more than Redis and a sentinel"
    exit 1
  fi
done
for host in redis-b redis-c app-a app-b; do
  [ ! -e "$tmp/$host/etc/postback/tls/ca.key" ] || { echo "$host kept a copy of the CA's key"; exit 1; }
done
[ ! -e "$tmp/app-a/etc/postback/supervisor.d/redis.conf" ] || { echo "an app host runs a Redis"; exit 1; }
grep -q "^REDIS_URL='rediss-sentinel://" "$tmp/app-a/etc/postback/postback.env" ||
  { echo "the app host's REDIS_URL is not the TLS form"; exit 1; }
for host in "${hosts[@]}"; do in_host "$host" stack_start >/dev/null || show; done

ip netns exec "$(ns client)" "$bin/postback-sink" --listen "$sink" --record "$tmp/sink.log" >"$tmp/sink.out" 2>&1 &
disown
wait_for 10 "the sink" grep -q "listening on" "$tmp/sink.out" || show
for host in "${hosts[@]}"; do in_host "$host" stack_wait_healthy 60 >/dev/null || show; done
# Every replica in sync, and every sentinel knowing the others (over TLS).
sentinel_cli() {
  local host=$1
  shift
  mapfile -t tls < <(redis_tls_cli_args "$tmp/$host/etc/postback/tls" redis)
  ip netns exec "$(ns "$host")" redis-cli "${tls[@]}" -h 127.0.0.1 -p 26379 "$@"
}
master_host() {
  local ip h
  ip=$(sentinel_cli "${1:-redis-b}" SENTINEL get-master-addr-by-name postback 2>/dev/null | head -n1)
  for h in redis-a redis-b redis-c; do [ "$(ip_of "$h")" = "$ip" ] && echo "$h"; done
}
synced() { in_host "$1" stack_redis_cli INFO replication | grep -q 'master_link_status:up'; }
for host in redis-b redis-c; do wait_for 60 "$host to replicate over TLS" synced "$host" || show; done
# Every sentinel must know both replicas before a fault: a replica the
# elected sentinel has not heard of is left replicating the dead master
# until another sentinel fixes it, a failover-timeout (60 s) later.
knows_all() {
  local host
  for host in redis-a redis-b redis-c; do
    [ "$(sentinel_cli "$host" SENTINEL SENTINELS postback | grep -cx 'runid')" = 2 ] &&
      [ "$(sentinel_cli "$host" SENTINEL REPLICAS postback | grep -cx 'name')" = 2 ] || return 1
  done
}
wait_for 60 "every sentinel to know the others and both replicas" knows_all || show
# TLS only: a plain client gets no answer from Redis or a sentinel.
for port in 6379 26379; do
  [ "$(ip netns exec "$(ns client)" timeout 5 redis-cli -h "$(ip_of redis-a)" -p "$port" ping 2>/dev/null)" != PONG ] ||
    { echo "redis-a's port $port answers without TLS"; exit 1; }
done
out=$(POSTBACK_BIN_SOURCE=$bin "$repo/scripts/provision" --root "$tmp/redis-b" --swap 0 2>&1)
grep -q "nothing to change" <<<"$out" || { echo "a second run on a running Redis host changed something: $out"; exit 1; }
say "    5 hosts up over TLS: master $(master_host), replicas in sync, 3 sentinels"

# --- measuring ---------------------------------------------------------------
# load NAME APP RATE SECONDS FIRST : producers at RATE requests (one job
# each) a second to APP for SECONDS, jobs numbered from FIRST; the accepted
# ones go to $tmp/accepted.NAME.APP. In the background: wait_loads.
load_pids=()
load() {
  ip netns exec "$(ns client)" "$bin/postback-load" --url "http://$(ip_of "$2")/ingest" \
    --target "http://$sink/h?n={n}" --rate "$3" --seconds "$4" --first-n "$5" --connections 16 \
    --timeout-ms 3000 --accepted-log "$tmp/accepted.$1.$2" >"$tmp/load.$1.$2.out" 2>&1 &
  load_pids+=($!)
}
wait_loads() {
  wait "${load_pids[@]}"
  load_pids=()
}
# accepted_of NAME : every n accepted in phase NAME, sorted.
accepted_of() { cat "$tmp"/accepted."$1".* 2>/dev/null | sort -n; }
arrived() { sed -n 's/.*[?&]n=\([0-9]*\).*/\1/p' "$tmp/sink.log" | sort -n; }
# lost NAME : how many of NAME's accepted jobs never arrived.
lost_of() { comm -23 <(accepted_of "$1" | sort) <(arrived | sort -u) | wc -l; }
# probe APP : whether APP answers 202 to one job right now.
probe_n=9000000
probe() {
  probe_n=$((probe_n + 1))
  [ "$(ip netns exec "$(ns client)" curl -s -m 2 -o /dev/null -w '%{http_code}' -X POST "http://$(ip_of "$1")/ingest" \
    -d "{\"endpoint\":{\"method\":\"GET\",\"url\":\"http://$sink/probe?n=$probe_n\"},\"data\":[{}]}")" = 202 ]
}
# back_after APP START : seconds from START (epoch s.ns) until APP answers 202.
back_after() {
  wait_for 90 "$1 to answer 202 again" probe "$1" || return 1
  echo "$(date +%s.%N) $2" | awk '{ printf "%.1f", $1 - $2 }'
}
failures=0
# report NAME WHAT SECONDS : waits for NAME's accepted jobs to arrive, then
# prints the fault's figures; a lost job is a failure.
report() {
  local name=$1 what=$2 back=$3 accepted lost dup
  accepted=$(accepted_of "$name" | wc -l)
  wait_for 60 "every job accepted in '$what' delivered" bash -c "[ \$(comm -23 <(cat $tmp/accepted.$name.* | sort) <(sed -n 's/.*[?&]n=\([0-9]*\).*/\1/p' $tmp/sink.log | sort -u) | wc -l) -eq 0 ]"
  lost=$(lost_of "$name")
  dup=$(comm -12 <(accepted_of "$name" | sort) <(arrived | uniq -d | sort) | wc -l)
  printf '    %-58s %6d accepted %6d delivered %4d lost %4d duplicated, back in %s s\n' \
    "$what:" "$accepted" "$((accepted - lost))" "$lost" "$dup" "$back"
  [ "$accepted" -gt 0 ] || { echo "    no job was accepted in '$what'"; failures=$((failures + 1)); }
  [ "$lost" -eq 0 ] || failures=$((failures + 1))
}

# --- 1. the master's host SIGKILLed, under load ------------------------------
master=$(master_host)
load kill app-a 40 30 0
load kill app-b 40 30 100000
sleep 5
start=$(date +%s.%N)
mapfile -t victims < <(ip netns pids "$(ns "$master")")
kill -9 "${victims[@]}" 2>/dev/null
back=$(back_after app-a "$start") || show
wait_loads
report kill "1. every process of the master's host ($master) SIGKILLed" "$back"
new_master=$(master_host "$([ "$master" = redis-b ] && echo redis-c || echo redis-b)")
say "    the sentinels promoted $new_master; $master is started again and rejoins as a replica"
# The old master's supervisord and programs start again; the sentinels
# turn its Redis into a replica of the new master.
rm -f "$tmp/$master/run/postback/supervisord.pid"
in_host "$master" stack_start >/dev/null 2>&1 || show
replica_again() { in_host "$master" stack_redis_cli INFO replication | grep -q 'role:slave'; }
wait_for 60 "$master to rejoin as a replica" replica_again || show
for host in redis-a redis-b redis-c; do
  [ "$host" = "$new_master" ] || wait_for 60 "$host in sync" synced "$host" || show
done
wait_for 60 "every sentinel to know both replicas again" knows_all || show

# --- 2. an app host's link cut for 10 s under load ---------------------------
load cut app-a 40 20 200000
load cut app-b 40 20 300000
sleep 5
link app-a down
sleep 10
start=$(date +%s.%N)
link app-a up
back=$(back_after app-a "$start") || show
wait_loads
report cut "2. app-a's link cut for 10 s under load" "$back"

# --- 3. a split brain ----------------------------------------------------------
# The master is cut off from the other Redis hosts (their Redis and
# sentinels) and from app-b, but app-a still reaches it: app-a's writes
# there are refused or not acknowledged by a replica (min-replicas-to-write
# 1, WAIT 1), so none is answered 202; the others fail over. Only app-b,
# on the majority's side, delivers meanwhile: jobs the isolated master
# took would sit in its queue until it rejoins as a replica and drops them
# (which is what HOSTS_REPLICA_ACKS=0 shows), rather than be delivered by
# app-a straight from it.
master=$(master_host)
isolate() {
  local action=$1 other
  for other in redis-a redis-b redis-c app-b; do
    [ "$other" = "$master" ] && continue
    ip -n "$(ns "$master")" route "$action" blackhole "$(ip_of "$other")/32"
    ip -n "$(ns "$other")" route "$action" blackhole "$(ip_of "$master")/32"
  done
}
load split app-a 40 32 400000
load split app-b 40 32 500000
sleep 5
in_host app-a stack_ctl stop 'deliver:*' >/dev/null
isolate add
sleep 20
start=$(date +%s.%N)
isolate del
in_host app-a stack_ctl start 'deliver:*' >/dev/null
back=$(back_after app-a "$start") || show
wait_loads
report split "3. split brain: $master isolated for 20 s but for app-a" "$back"
say "    during it: $(grep -ho 'errors=[0-9]*' "$tmp"/load.split.* | tr '\n' ' ')(503s and cut-off requests); master now $(master_host redis-a)"
rejoined() { in_host "$master" stack_redis_cli INFO replication | grep -q 'role:slave'; }
wait_for 60 "$master to rejoin as a replica" rejoined || show

# --- 4. an app host cut in the middle of a drain ------------------------------
for host in app-a app-b; do in_host "$host" stack_ctl stop 'deliver:*' >/dev/null; done
ip netns exec "$(ns client)" "$bin/postback-load" --url "http://$(ip_of app-a)/ingest" --target "http://$sink/h?n={n}" \
  --jobs 3000 --items 10 --first-n 600000 --accepted-log "$tmp/accepted.drain.app-a" >"$tmp/load.drain.out" 2>&1 || show
drained_before=$(arrived | wc -l)
for host in app-a app-b; do in_host "$host" stack_ctl start 'deliver:*' >/dev/null; done
wait_for 60 "the drain to be under way" bash -c "[ \$(wc -l <$tmp/sink.log) -ge $((drained_before + 500)) ]" || show
link app-a down
sleep 10
start=$(date +%s.%N)
link app-a up
back=$(back_after app-a "$start") || show
report drain "4. app-a's link cut for 10 s mid-drain (3,000 jobs)" "$back"

if [ "$failures" -gt 0 ]; then
  echo "hosts: $failures fault(s) lost accepted jobs"
  show
fi
