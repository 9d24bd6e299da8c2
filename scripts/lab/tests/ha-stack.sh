#!/usr/bin/env bash
# scripts/run --ha's set-up (master, replica and three sentinels under the
# stack's supervisord), rendered into a temp folder and run for real: a job
# is delivered; the master is stopped; the sentinels promote the replica
# and a job is delivered through the new master; the old master, started
# again, comes back as the new master's replica. Called by
# scripts/lab/tests/stack.sh with the binaries' folder, the port of a
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
tmp=$(mktemp -d /tmp/postback-ha-test.XXXXXX)
chmod 711 "$tmp"
cleanup() {
  stack_stop >/dev/null 2>&1
  [ -n "${KEEP_HA_TMP:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT

export POSTBACK_CONF_DIR=$tmp/etc POSTBACK_LOG_DIR=$tmp/log POSTBACK_DATA_DIR=$tmp/data POSTBACK_RUN_DIR=$tmp/run
export POSTBACK_BIN_DIR=$bin POSTBACK_LIB_DIR=$repo/scripts POSTBACK_NGINX_USER="nobody nogroup"
http=$(free_port) sentinel=$(free_port 3)
REDIS_PORT=$(free_port) REDIS_REPLICA_PORT=$(free_port) REDIS_SENTINEL_PORT=$sentinel INGEST_PORT=$(free_port) \
  DELIVER_ADMIN_PORT=$(free_port 2) POSTBACK_HTTP_LISTEN=127.0.0.1:$http REDIS_MAXMEMORY=64mb stack_init_env
printf 'POSTBACK_ALLOW_DESTINATIONS=127.0.0.1:%s\nDELIVER_PROCS=1\n' "$sink_port" >>"$POSTBACK_CONF_DIR/postback.env"
stack_use_ha

show() {
  stack_ctl status
  tail -n 5 "$POSTBACK_LOG_DIR"/sentinel_0*.log "$POSTBACK_LOG_DIR"/deliver_00.log "$POSTBACK_LOG_DIR"/ingest_00.log
  exit 1
}
stack_render || exit 1
stack_start >/dev/null || exit 1
stack_wait_healthy 60 || show
key=$(stack_producer_key) || show
base=http://127.0.0.1:$http
post() {
  curl -fsS -o /dev/null -X POST "$base/ingest" -H "Authorization: Bearer $key" \
    -d "{\"endpoint\":{\"method\":\"GET\",\"url\":\"http://127.0.0.1:$sink_port/ha?id=$1\"},\"data\":[{}]}"
}
sentinel_master() { redis-cli -p "$sentinel" SENTINEL get-master-addr-by-name postback | tail -n1; }
replica=$(stack_setting REDIS_REPLICA_PORT)

# The sentinels learn of the replica from the master's INFO, every 10 s;
# they can only promote one they know.
knows_replica() { redis-cli -p "$sentinel" SENTINEL REPLICAS postback | grep -qx "$replica"; }
wait_for 30 "the sentinels to know the replica" knows_replica || show
# A replica that has never been in sync cannot be promoted (Sentinel finds
# no replica fit, and tries again only after twice failover-timeout), and
# the first sync starts repl-diskless-sync-delay (5 s) after the replica
# asks: stopping the master before it was a race the test lost half the time.
replica_synced() {
  redis-cli --no-auth-warning -p "$replica" -a "$(stack_setting REDIS_PASSWORD)" INFO replication | grep -q '^master_link_status:up'
}
wait_for 30 "the replica's first sync" replica_synced || show
post ha-before || show
wait_for 20 "a job through the Sentinel stack" grep -q 'GET /ha?id=ha-before' "$sink_log" || show
stack_ctl stop redis >/dev/null
wait_for 40 "the sentinels to promote the replica" bash -c "[ \"\$(redis-cli -p $sentinel SENTINEL get-master-addr-by-name postback | tail -n1)\" = $replica ]" || show
say "    the sentinels promoted the replica (port $(sentinel_master))"
wait_for 20 "ingest to accept through the new master" post ha-after || show
wait_for 20 "the job through the new master" grep -q 'GET /ha?id=ha-after' "$sink_log" || show
stack_ctl start redis >/dev/null
old_master_role() {
  redis-cli --no-auth-warning -p "$(stack_setting REDIS_PORT)" -a "$(stack_setting REDIS_PASSWORD)" ROLE | head -n1
}
wait_for 40 "the old master back as a replica" bash -c "[ \"\$(redis-cli --no-auth-warning -p $(stack_setting REDIS_PORT) -a $(stack_setting REDIS_PASSWORD) ROLE | head -n1)\" = slave ]" || show
say "    the old master is back as a $(old_master_role)"
