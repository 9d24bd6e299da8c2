# shellcheck shell=bash
# The production-shaped stack (nginx -> ingest, Redis, deliver, all under
# supervisord), rendered from the repository's templates. Used by
# scripts/run (var/), scripts/test (temp folders), scripts/bench and
# scripts/provision (/ or --root), so all of them run the same configs.
#
# Layout variables (set them before calling stack_render):
#   POSTBACK_CONF_DIR  configs and postback.env     POSTBACK_LOG_DIR  logs
#   POSTBACK_DATA_DIR  Redis data                   POSTBACK_RUN_DIR  sockets, pids
#   POSTBACK_BIN_DIR   ingest and deliver binaries  POSTBACK_LIB_DIR  with-env
#   POSTBACK_NGINX_USER  user of nginx workers
#   POSTBACK_USER        user of ingest and deliver (default: the caller)
#   POSTBACK_REDIS_USER  user of redis-server (default: the caller)
#   STACK_OUT_DIR      where rendered files are written (default: POSTBACK_CONF_DIR)

STACK_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Where the one-host Sentinel set-up's replica and first sentinel listen
# unless postback.env says: REDIS_PORT plus these.
STACK_REPLICA_PORT_OFFSET=1 STACK_SENTINEL_PORT_OFFSET=20000

# render TEMPLATE OUT : replace every {{NAME}} with $NAME; an unset name is
# an error, so a template and its variables can never drift apart silently.
render() {
  perl -pe 's/\{\{(\w+)\}\}/exists $ENV{$1} ? $ENV{$1} : die "$ARGV: {{$1}} is not set\n"/ge' "$1" >"$2.tmp" &&
    mv "$2.tmp" "$2"
}

# stack_init_env : writes postback.env once, with a fresh Redis password.
# Ports come from REDIS_PORT, INGEST_PORT, DELIVER_ADMIN_PORT and
# POSTBACK_HTTP_LISTEN if set. (The subshell keeps them from the caller.)
# shellcheck disable=SC2030
stack_init_env() {
  local env_file=$POSTBACK_CONF_DIR/postback.env
  [ -f "$env_file" ] && return 0
  mkdir -p "$POSTBACK_CONF_DIR"
  (
    umask 077
    export REDIS_PORT=${REDIS_PORT:-6379}
    export INGEST_PORT=${INGEST_PORT:-3000}
    export DELIVER_ADMIN_PORT=${DELIVER_ADMIN_PORT:-3001}
    export INFLUX_HTTP_PORT=${INFLUX_HTTP_PORT:-8086} INFLUX_RPC_PORT=${INFLUX_RPC_PORT:-8088}
    export COLLECTD_PORT=${COLLECTD_PORT:-25826}
    export POSTBACK_HTTP_LISTEN=${POSTBACK_HTTP_LISTEN:-80}
    export REDIS_MAXMEMORY=${REDIS_MAXMEMORY:-2gb}
    export REDIS_REPLICA_PORT=${REDIS_REPLICA_PORT:-$((REDIS_PORT + STACK_REPLICA_PORT_OFFSET))}
    export REDIS_SENTINEL_PORT=${REDIS_SENTINEL_PORT:-$((REDIS_PORT + STACK_SENTINEL_PORT_OFFSET))}
    # Given by scripts/provision when hosts must share one (the Redis
    # hosts and app hosts of the Sentinel shape).
    REDIS_PASSWORD=${STACK_REDIS_PASSWORD:-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')}
    # Quoted: the file is read by the shell, and the URL has a '&'.
    if redis_socket_fits; then
      REDIS_URL="'redis+unix://$(redis_socket)?user=default&pass=$REDIS_PASSWORD'"
    else
      REDIS_URL="redis://default:$REDIS_PASSWORD@127.0.0.1:$REDIS_PORT/0"
    fi
    export REDIS_PASSWORD REDIS_URL
    render "$STACK_REPO/supervisor.templates/postback.env.template" "$env_file"
  )
}

# redis_socket : where Redis puts its Unix socket (in a folder of its own,
# which Redis' user can write to in production).
redis_socket() { echo "$POSTBACK_RUN_DIR/redis/redis.sock"; }

# redis_socket_fits : whether that path fits a socket address (108 bytes,
# with room to spare); a deep checkout's run folder may not.
redis_socket_fits() { local path; path=$(redis_socket); [ ${#path} -le 100 ]; }

# sockets_reachable DIR NGINX_USER : whether nginx workers running as
# NGINX_USER can reach sockets in DIR: they run as the caller, or every
# existing directory on the way lets others through (a checkout under a
# private home directory does not), and the socket paths fit a sockaddr.
sockets_reachable() {
  local dir=$1 user=${2%% *}
  [ ${#dir} -le 90 ] || return 1
  [ "$user" = "$(id -un)" ] && return 0
  while [ -n "$dir" ] && [ "$dir" != / ]; do
    # Others may pass: x, or t (x with the sticky bit), last in the mode.
    if [ -d "$dir" ]; then
      case "$(stat -c %A "$dir")" in *x | *t) ;; *) return 1 ;; esac
    fi
    dir=$(dirname "$dir")
  done
}

# shellcheck source=scripts/lib/room.sh
. "$STACK_REPO/scripts/lib/room.sh"
# shellcheck source=scripts/lib/redis-tls.sh
. "$STACK_REPO/scripts/lib/redis-tls.sh"

# stack_render : renders every config from the templates and postback.env.
# Monitoring (collectd, InfluxDB) is rendered when postback.env says
# stack_producer_key : prints the stack's own producer key, made once with
# `ingest keys create local` and kept in $POSTBACK_CONF_DIR/producer-key
# (mode 0600); made again if the store no longer has it, active. Needs the
# stack up, and returns once ingest accepts the key.
stack_producer_key() {
  local file=$POSTBACK_CONF_DIR/producer-key key id
  local ingest=("$POSTBACK_LIB_DIR/with-env" "$POSTBACK_CONF_DIR/postback.env" "$POSTBACK_BIN_DIR/ingest")
  if [ -f "$file" ]; then
    key=$(cat "$file") id=${key#pk_}
    id=${id%%_*}
    if "${ingest[@]}" keys list --json | grep -q "\"id\":\"$id\",\"name\":\"[^\"]*\",\"created_ms\":[0-9]*,\"rate\":[0-9a-z]*,\"revoked_ms\":null"; then
      echo "$key"
      return 0
    fi
  fi
  key=$("${ingest[@]}" keys create local --json | sed -n 's/.*"key":"\([^"]*\)".*/\1/p')
  [ -n "$key" ] || { echo "error: could not make a producer key (is Redis up?)" >&2; return 1; }
  (umask 077 && echo "$key" >"$file")
  # Every ingest process reloads the store within a second or so; until
  # then the new key is unknown (401). A request it accepts and ingest
  # refuses as empty (400) tells that it has.
  wait_for 10 "ingest to know the new producer key" bash -c \
    "[ \"\$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Authorization: Bearer $key' -d '{}' '$(stack_http_base)/ingest')\" = 400 ]" >&2 ||
    return 1
  echo "$key"
}

# env_set FILE VAR VALUE : FILE's line for VAR says VALUE (quoted for the
# shell that reads the file), where the template put the line, so that the
# comment above it still applies; appended when FILE has none. Any other
# line for VAR is removed: one setting, one line. FILE keeps its mode (it
# holds the Redis password).
env_set() {
  local file=$1 var=$2 line
  line=$(printf '%s=%q' "$var" "$3")
  (
    umask 077
    LINE=$line VAR=$var awk '
      index($0, ENVIRON["VAR"] "=") == 1 { if (!done) print ENVIRON["LINE"]; done = 1; next }
      { print }
      END { if (!done) print ENVIRON["LINE"] }
    ' "$file" >"$file.new" || exit 1
    # Unchanged, untouched: provision's second run must change nothing.
    cmp -s "$file.new" "$file" || cat "$file.new" >"$file"
    rm -f "$file.new"
  )
}

# env_default VAR : VAR's value in the env template, for a postback.env
# written before VAR existed. Defaults are written once, there.
env_default() {
  sed -n "s/^$1=//p" "$STACK_REPO/supervisor.templates/postback.env.template" | tr -d "\"'"
}

# stack_take_settings_from_env : writes every INGEST_*, DELIVER_* and
# POSTBACK_* variable of the caller's environment that is a setting (one
# that ingest --help, deliver --help or the env template names) into
# postback.env, replacing the line it had: `DELIVER_CONCURRENCY=64
# scripts/run` lasts. Says what it took, never the values.
stack_take_settings_from_env() {
  local env_file=$POSTBACK_CONF_DIR/postback.env known var taken=()
  [ -f "$env_file" ] || return 0
  known=$(
    for bin in ingest deliver; do
      [ -x "$POSTBACK_BIN_DIR/$bin" ] && "$POSTBACK_BIN_DIR/$bin" --help | awk '$2 == "default" { print $1 }'
    done
    sed -n 's/^\([A-Z_]*\)=.*/\1/p' "$STACK_REPO/supervisor.templates/postback.env.template"
  )
  while read -r var; do
    grep -qx "$var" <<<"$known" || continue
    env_set "$env_file" "$var" "${!var}"
    taken+=("$var")
  done < <(compgen -e | grep -E '^(INGEST|DELIVER|POSTBACK)_' | grep -vxE 'POSTBACK_(CONF|LOG|DATA|RUN|BIN|LIB)_DIR')
  [ ${#taken[@]} -eq 0 ] || echo "postback.env: took ${taken[*]} from the environment" >&2
}

# POSTBACK_MONITORING=1 or the caller sets POSTBACK_MONITORING_FLAG=1.
stack_render() {
  stack_take_settings_from_env
  stack_check_disk
  # A postback.env written before DELIVER_LOG_DIR existed (`deliver job`
  # finds the delivery logs by it).
  if [ -f "$POSTBACK_CONF_DIR/postback.env" ] && ! grep -q '^DELIVER_LOG_DIR=' "$POSTBACK_CONF_DIR/postback.env"; then
    env_set "$POSTBACK_CONF_DIR/postback.env" DELIVER_LOG_DIR "$POSTBACK_LOG_DIR"
  fi
  # The same for REDIS_DATA_DIR (the services show its disk's free space).
  if [ -f "$POSTBACK_CONF_DIR/postback.env" ] && ! grep -q '^REDIS_DATA_DIR=' "$POSTBACK_CONF_DIR/postback.env"; then
    env_set "$POSTBACK_CONF_DIR/postback.env" REDIS_DATA_DIR "$POSTBACK_DATA_DIR/redis"
  fi
  : "${POSTBACK_NGINX_USER:=www-data}" "${POSTBACK_USER:=$(id -un)}" "${POSTBACK_REDIS_USER:=$(id -un)}"
  : "${POSTBACK_INFLUX_USER:=$POSTBACK_USER}"
  # scripts/bench adds a location answering 202 without an upstream.
  : "${NGINX_EXTRA_LOCATIONS:=}"
  export POSTBACK_NGINX_USER POSTBACK_USER POSTBACK_REDIS_USER POSTBACK_INFLUX_USER NGINX_EXTRA_LOCATIONS
  (
    set -a
    # shellcheck disable=SC1091
    . "$POSTBACK_CONF_DIR/postback.env"
    set +a
    NGINX_MAX_BODY=$(( ${INGEST_MAX_BODY_BYTES:-$(env_default INGEST_MAX_BODY_BYTES)} ))
    # nginx must close an idle connection to ingest before ingest does
    # (postback.env says why): 4/5 of ingest's keep-alive.
    NGINX_UPSTREAM_KEEPALIVE_MS=$(( ${INGEST_KEEPALIVE_MS:-$(env_default INGEST_KEEPALIVE_MS)} * 4 / 5 ))
    # supervisord must wait longer than deliver's own grace period.
    SUPERVISOR_STOPWAITSECS=$(( ${DELIVER_SHUTDOWN_GRACE_MS:-$(env_default DELIVER_SHUTDOWN_GRACE_MS)} / 1000 + 10 ))
    NGINX_ADMIN_RULES=""
    local addr
    for addr in ${POSTBACK_ADMIN_ALLOW-$(env_default POSTBACK_ADMIN_ALLOW)}; do
      NGINX_ADMIN_RULES+="        allow $addr;"$'\n'
    done
    local hard_files
    hard_files=$(ulimit -Hn)
    [ "$hard_files" = unlimited ] && hard_files=65536
    NGINX_RLIMIT_NOFILE=$((hard_files < 65536 ? hard_files : 65536))
    export NGINX_MAX_BODY NGINX_UPSTREAM_KEEPALIVE_MS SUPERVISOR_STOPWAITSECS NGINX_ADMIN_RULES NGINX_RLIMIT_NOFILE
    # postback.env files written before this setting existed do not have it.
    export REDIS_AOF_REWRITE_MIN_SIZE=${REDIS_AOF_REWRITE_MIN_SIZE:-$(env_default REDIS_AOF_REWRITE_MIN_SIZE)}
    export REDIS_APPENDFSYNC=${REDIS_APPENDFSYNC:-$(env_default REDIS_APPENDFSYNC)}
    case "$REDIS_APPENDFSYNC" in everysec | always) ;; *) die "REDIS_APPENDFSYNC=$REDIS_APPENDFSYNC in postback.env: use everysec or always" ;; esac
    # Redis also listens on a Unix socket, for ingest and deliver: Redis'
    # user and its group (scripts/provision puts the services' user in it),
    # no one else.
    REDIS_SOCKET_CONF="# (no Unix socket: $(redis_socket) is too long for one)"
    if redis_socket_fits; then
      REDIS_SOCKET_CONF="unixsocket $(redis_socket)"$'\n'"unixsocketperm 770"
    fi
    export REDIS_SOCKET_CONF
    # Redis' own refusal matches the acknowledgements ingest waits for.
    local acks=${INGEST_REPLICA_ACKS:-0}
    [[ "$acks" =~ ^[0-9]+$ ]] || die "INGEST_REPLICA_ACKS=$acks in postback.env: use a number of replicas (0: none)"
    REDIS_MIN_REPLICAS_CONF="# (INGEST_REPLICA_ACKS is 0: no min-replicas-to-write)"
    if [ "$acks" -ge 1 ]; then
      REDIS_MIN_REPLICAS_CONF="min-replicas-to-write $acks"$'\n'"min-replicas-max-lag 10"
    fi
    export REDIS_MIN_REPLICAS_CONF
    export REDIS_CLUSTER_CONF="# (not a Redis Cluster node)"
    # nginx reaches each ingest process on its own Unix socket, or on the
    # shared TCP port if its workers could not reach the socket folder.
    local n
    INGEST_SOCKET_DIR=$POSTBACK_RUN_DIR/ingest
    NGINX_INGEST_SERVERS=""
    if sockets_reachable "$INGEST_SOCKET_DIR" "$POSTBACK_NGINX_USER"; then
      for ((n = 0; n < ${INGEST_PROCS:-$(env_default INGEST_PROCS)}; n++)); do
        NGINX_INGEST_SERVERS+="    server unix:$INGEST_SOCKET_DIR/ingest_$(printf %02d "$n").sock;"$'\n'
      done
    else
      echo "note: nginx workers ($POSTBACK_NGINX_USER) cannot reach $INGEST_SOCKET_DIR; proxying to ingest over TCP ($INGEST_BIND)" >&2
      NGINX_INGEST_SERVERS="    server ${INGEST_BIND:?postback.env has no INGEST_BIND (see supervisor.templates/postback.env.template)};"$'\n'
    fi
    export INGEST_SOCKET_DIR NGINX_INGEST_SERVERS
    local monitoring=${POSTBACK_MONITORING:-$(env_default POSTBACK_MONITORING)}
    [ "${POSTBACK_MONITORING_FLAG:-0}" = 1 ] && monitoring=1
    # One curl_json block per deliver process, on its admin port.
    COLLECTD_DELIVER_URLS=""
    local admin_bind=${DELIVER_ADMIN_BIND:?postback.env has no DELIVER_ADMIN_BIND (see supervisor.templates/postback.env.template)} n
    local admin_port=${admin_bind##*:}
    for ((n = 0; n < ${DELIVER_PROCS:-$(env_default DELIVER_PROCS)}; n++)); do
      COLLECTD_DELIVER_URLS+="  <URL \"http://127.0.0.1:$((admin_port + n))/stats\">"$'\n'
      COLLECTD_DELIVER_URLS+="    Instance \"deliver_$(printf %02d "$n")\""$'\n'
      local key type
      for key in delivered retry dead in_flight; do
        type=derive
        [ "$key" = in_flight ] && type=gauge
        COLLECTD_DELIVER_URLS+="    <Key \"$key\">"$'\n'"      Type \"$type\""$'\n'"    </Key>"$'\n'
      done
      COLLECTD_DELIVER_URLS+="  </URL>"$'\n'
    done
    export COLLECTD_DELIVER_URLS COLLECTD_HOSTNAME=${COLLECTD_HOSTNAME:-$(cat /proc/sys/kernel/hostname)}
    export POSTBACK_CONF_DIR POSTBACK_LOG_DIR POSTBACK_DATA_DIR POSTBACK_RUN_DIR POSTBACK_BIN_DIR POSTBACK_LIB_DIR
    local out=${STACK_OUT_DIR:-$POSTBACK_CONF_DIR}
    mkdir -p "$out/supervisor.d"
    local t=$STACK_REPO
    # all: the whole stack; redis: Redis and a sentinel; app: the rest.
    local role=${POSTBACK_ROLE:-$(env_default POSTBACK_ROLE)} programs program
    case "$role" in
      all) programs=(redis ingest deliver nginx) ;;
      redis)
        programs=(redis sentinel)
        # A Cluster node has no sentinel: the Cluster fails over itself.
        [ "${POSTBACK_REDIS_CLUSTER:-0}" != 1 ] || programs=(redis)
        ;;
      app) programs=(ingest deliver nginx) ;;
      *) die "POSTBACK_ROLE=$role in postback.env: use all, redis or app" ;;
    esac
    if [ "$role" != redis ]; then
      render "$t/nginx/nginx.conf.template" "$out/nginx.conf"
      render "$t/nginx/postback.conf.template" "$out/nginx-site.conf"
    fi
    local ha=${POSTBACK_HA:-$(env_default POSTBACK_HA)}
    [ "${POSTBACK_HA_FLAG:-0}" = 1 ] && ha=1
    export REDIS_DATA_DIR=$POSTBACK_DATA_DIR/redis REDIS_REPLICAOF="" REDIS_BIND_EXTRA=""
    # shellcheck disable=SC2031
    export SENTINEL_COUNT=3 SENTINEL_MASTER="127.0.0.1 $REDIS_PORT"
    if [ "$role" = redis ]; then
      stack_render_redis_host "$out"
    elif [ "$role" = app ]; then
      :
    elif [ "$ha" != 1 ]; then
      (umask 077 && render_redis_conf "$out/redis.conf")
    else
      stack_render_ha "$out"
    fi
    export POSTBACK_DEMO_SINK_PORT=${POSTBACK_DEMO_SINK_PORT:-}
    stack_log_budget "$role" "$ha" "$monitoring"
    render "$t/supervisor.templates/supervisord.conf.template" "$out/supervisord.conf"
    for program in redis ingest deliver nginx; do
      rm -f "$out/supervisor.d/$program.conf"
    done
    for program in "${programs[@]}"; do
      render "$t/supervisor.templates/programs/$program.conf.template" "$out/supervisor.d/$program.conf"
    done
    # scripts/run's demo receiver, when postback.env names its port.
    if [ -n "$POSTBACK_DEMO_SINK_PORT" ]; then
      render "$t/supervisor.templates/programs/demo-sink.conf.template" "$out/supervisor.d/demo-sink.conf"
    else
      rm -f "$out/supervisor.d/demo-sink.conf"
    fi
    if [ "$ha" = 1 ] && [ "$role" = all ]; then
      for program in redis-replica sentinel; do
        render "$t/supervisor.templates/programs/$program.conf.template" "$out/supervisor.d/$program.conf"
      done
    elif [ "$role" != redis ]; then
      rm -f "$out/supervisor.d/redis-replica.conf" "$out/supervisor.d/sentinel.conf"
    fi
    if [ "$monitoring" = 1 ]; then
      render "$t/monitoring/influxdb.conf.template" "$out/influxdb.conf"
      render "$t/monitoring/collectd.conf.template" "$out/collectd.conf"
      for program in influxdb collectd; do
        render "$t/supervisor.templates/programs/$program.conf.template" "$out/supervisor.d/$program.conf"
      done
      mkdir -p "$POSTBACK_DATA_DIR/influxdb" "$POSTBACK_DATA_DIR/collectd"
    else
      rm -f "$out/supervisor.d/influxdb.conf" "$out/supervisor.d/collectd.conf"
    fi
  )
}

# render_redis_conf OUT, render_sentinel_conf OUT : the Redis (sentinel)
# template rendered for REDIS_PORT (SENTINEL_PORT), plain or TLS.
# shellcheck disable=SC2031 # REDIS_PORT is the caller's, set for the render
render_redis_conf() {
  REDIS_LISTEN_CONF=$(redis_listen_conf "$REDIS_PORT") render "$STACK_REPO/redis/redis.conf.template" "$1"
}
render_sentinel_conf() {
  SENTINEL_LISTEN_CONF=$(redis_listen_conf "$SENTINEL_PORT") render "$STACK_REPO/redis/sentinel.conf.template" "$1"
}

# redis_listen_conf PORT : the lines of a Redis (or sentinel) config that
# open PORT: `port PORT`, or, with POSTBACK_REDIS_TLS=1 in postback.env,
# TLS only on PORT with this host's certificate (scripts/provision
# --redis-tls makes it in $POSTBACK_CONF_DIR/tls), client certificates
# required, and TLS to the other nodes.
redis_listen_conf() {
  local port=$1 dir=$POSTBACK_CONF_DIR/tls
  if [ "${POSTBACK_REDIS_TLS:-0}" != 1 ]; then
    echo "port $port"
    return 0
  fi
  printf '%s\n' "port 0" "tls-port $port" "tls-cert-file $dir/redis.crt" "tls-key-file $dir/redis.key" \
    "tls-ca-cert-file $dir/ca.crt" "tls-auth-clients yes" "tls-replication yes"
}

# stack_redis_cli ARGS... : redis-cli to this host's Redis (its port, the
# password from postback.env), over TLS when the host speaks only TLS.
stack_redis_cli() { stack_redis_cli_at 127.0.0.1 "$(stack_setting REDIS_PORT)" "$@"; }

# stack_redis_cli_at HOST PORT ARGS... : the same to another node of the
# shape (the same password, the same CA). Bounded: a node behind a
# firewall that drops would otherwise hold it for TCP's two minutes.
stack_redis_cli_at() {
  local host=$1 port=$2 tls=()
  shift 2
  if [ "$(stack_setting POSTBACK_REDIS_TLS | tr -d "'")" = 1 ]; then
    mapfile -t tls < <(redis_tls_cli_args "$POSTBACK_CONF_DIR/tls" redis)
  fi
  REDISCLI_AUTH=$(stack_setting REDIS_PASSWORD | tr -d "'") timeout 30 redis-cli "${tls[@]}" -h "$host" -p "$port" "$@"
}

# stack_render_ha OUT : the one-host Sentinel set-up's Redis configs: the
# master's and the replica's, and three sentinels'. Rendered only when
# missing: after a failover, Redis and the sentinels rewrite these files
# (which node is master, who the replicas are), and a re-render would undo
# it. Runs inside stack_render's subshell (postback.env read), whose
# REDIS_PORT is postback.env's, not stack_init_env's.
# shellcheck disable=SC2031
stack_render_ha() {
  local out=$1 t=$STACK_REPO n
  [ -n "${REDIS_REPLICA_PORT:-}" ] || REDIS_REPLICA_PORT=$((REDIS_PORT + STACK_REPLICA_PORT_OFFSET))
  [ -n "${REDIS_SENTINEL_PORT:-}" ] || REDIS_SENTINEL_PORT=$((REDIS_PORT + STACK_SENTINEL_PORT_OFFSET))
  if [ ! -f "$out/redis.conf" ] || ! grep -q '^masterauth' "$out/redis.conf"; then
    (umask 077 && render_redis_conf "$out/redis.conf")
  fi
  if [ ! -f "$out/redis-replica.conf" ]; then
    local master_port=$REDIS_PORT
    (
      umask 077
      REDIS_PORT=$REDIS_REPLICA_PORT REDIS_DATA_DIR=$POSTBACK_DATA_DIR/redis-replica \
        REDIS_REPLICAOF="replicaof 127.0.0.1 $master_port" REDIS_SOCKET_CONF="# (the replica has no Unix socket)" \
        render_redis_conf "$out/redis-replica.conf"
    )
  fi
  mkdir -p "$POSTBACK_DATA_DIR/redis-replica"
  for n in 0 1 2; do
    [ -f "$out/sentinel_0$n.conf" ] && continue
    mkdir -p "$POSTBACK_DATA_DIR/sentinel_0$n"
    (
      umask 077
      SENTINEL_PORT=$((REDIS_SENTINEL_PORT + n)) SENTINEL_DIR=$POSTBACK_DATA_DIR/sentinel_0$n \
        render_sentinel_conf "$out/sentinel_0$n.conf"
    )
  done
}

# stack_render_redis_host OUT : one Redis host of the Sentinel shape
# (POSTBACK_ROLE=redis): its Redis, listening on loopback and
# POSTBACK_REDIS_LISTEN, a replica of POSTBACK_REDIS_MASTER if that is set,
# and one sentinel watching the master. Rendered once, as the one-host
# set-up's are: after a failover Redis and the sentinel rewrite them.
# Runs inside stack_render's subshell, as stack_render_ha does.
# shellcheck disable=SC2031
stack_render_redis_host() {
  local out=$1 t=$STACK_REPO master=${POSTBACK_REDIS_MASTER:-}
  [ -n "${REDIS_SENTINEL_PORT:-}" ] || REDIS_SENTINEL_PORT=$((REDIS_PORT + STACK_SENTINEL_PORT_OFFSET))
  [ -z "${POSTBACK_REDIS_LISTEN:-}" ] || REDIS_BIND_EXTRA=" $POSTBACK_REDIS_LISTEN"
  SENTINEL_COUNT=1 SENTINEL_MASTER="${POSTBACK_REDIS_LISTEN:-127.0.0.1} $REDIS_PORT"
  if [ -n "$master" ]; then
    REDIS_REPLICAOF="replicaof ${master%:*} ${master##*:}" SENTINEL_MASTER="${master%:*} ${master##*:}"
  fi
  # A node of a Redis Cluster (provision --cluster): no sentinel, no
  # replicaof; the Cluster picks masters and replicas itself. Its peers
  # reach it on the port and on the cluster bus (the port + 10000).
  if [ "${POSTBACK_REDIS_CLUSTER:-0}" = 1 ]; then
    REDIS_CLUSTER_CONF=$(
      printf '%s\n' "cluster-enabled yes" "cluster-config-file nodes.conf" "cluster-node-timeout 5000" \
        "cluster-announce-ip ${POSTBACK_REDIS_LISTEN:-127.0.0.1}"
      [ "${POSTBACK_REDIS_TLS:-0}" != 1 ] || echo "tls-cluster yes"
    )
    [ -f "$out/redis.conf" ] || (umask 077 && render_redis_conf "$out/redis.conf")
    return 0
  fi
  [ -f "$out/redis.conf" ] || (umask 077 && render_redis_conf "$out/redis.conf")
  if [ ! -f "$out/sentinel_00.conf" ]; then
    mkdir -p "$POSTBACK_DATA_DIR/sentinel_00"
    (
      umask 077
      SENTINEL_PORT=$REDIS_SENTINEL_PORT SENTINEL_DIR=$POSTBACK_DATA_DIR/sentinel_00 \
        render_sentinel_conf "$out/sentinel_00.conf"
    )
  fi
}

# stack_cluster_build PEER... : makes a Redis Cluster of this node and the
# PEERs (host or host:port, this node's port when left out), once: with
# six nodes or more, one replica per master; fewer, masters only. Prints
# what it did; returns 1 while a peer does not answer yet (run it again
# once every node runs), and does nothing on a node already in a Cluster.
stack_cluster_build() {
  local port me peer host p nodes=() known replicas=0
  # known_nodes CLI... : the nodes the node CLI reaches knows (1: no Cluster yet).
  known_nodes() { "$@" CLUSTER INFO 2>/dev/null | sed -n 's/^cluster_known_nodes:\([0-9]*\).*/\1/p'; }
  port=$(stack_setting REDIS_PORT)
  me="$(stack_setting POSTBACK_REDIS_LISTEN | tr -d "'")"
  me=${me:-127.0.0.1}:$port
  known=$(known_nodes stack_redis_cli)
  [ -n "$known" ] || { echo "this node's Redis does not answer CLUSTER INFO"; return 1; }
  if [ "$known" -gt 1 ]; then
    echo "already in a Cluster of $known nodes"
    return 0
  fi
  nodes=("$me")
  for peer in "$@"; do
    host=${peer%:*} p=${peer##*:}
    [ "$host" != "$peer" ] || p=$port
    known=$(known_nodes stack_redis_cli_at "$host" "$p")
    if [ -z "$known" ]; then
      echo "waiting for $host:$p (not answering as a Cluster node yet)"
      return 1
    fi
    [ "$known" = 1 ] || die "$host:$p is already in a Cluster of $known nodes; this node is not: add it by hand (redis-cli --cluster add-node)"
    nodes+=("$host:$p")
  done
  [ "${#nodes[@]}" -ge 3 ] || die "a Redis Cluster needs 3 nodes or more (--peers names ${#nodes[@]} with this one)"
  [ "${#nodes[@]}" -lt 6 ] || replicas=1
  stack_redis_cli --cluster create "${nodes[@]}" --cluster-replicas "$replicas" --cluster-yes >/dev/null ||
    die "redis-cli --cluster create failed"
  echo "made a Redis Cluster of ${#nodes[@]} nodes, $((${#nodes[@]} / (replicas + 1))) masters, $replicas replica each"
}

# stack_ha_url : the redis-sentinel:// URL of the one-host Sentinel set-up,
# from postback.env.
stack_ha_url() {
  local port password
  port=$(stack_setting REDIS_SENTINEL_PORT) password=$(stack_setting REDIS_PASSWORD)
  # A postback.env from before this setting: the default stack_init_env uses.
  [ -n "$port" ] || port=$(($(stack_setting REDIS_PORT) + STACK_SENTINEL_PORT_OFFSET))
  echo "redis-sentinel://:$password@127.0.0.1:$port,127.0.0.1:$((port + 1)),127.0.0.1:$((port + 2))#postback"
}

# stack_use_ha : turns the one-host Sentinel set-up on in postback.env
# (POSTBACK_HA=1, REDIS_URL through the sentinels), where it stays.
stack_use_ha() {
  local env_file=$POSTBACK_CONF_DIR/postback.env url
  url=$(stack_ha_url)
  sed -i '/^POSTBACK_HA=/d; /^REDIS_URL=/d' "$env_file"
  printf "POSTBACK_HA=1\nREDIS_URL='%s'\n" "$url" >>"$env_file"
}

# stack_ctl ARGS... : supervisorctl for this stack.
stack_ctl() {
  supervisorctl -c "$POSTBACK_CONF_DIR/supervisord.conf" "$@"
}

# stack_running : whether this stack's supervisord is alive.
stack_running() {
  local pid_file=$POSTBACK_RUN_DIR/supervisord.pid
  [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

# stack_start : starts supervisord (which starts everything).
stack_start() {
  mkdir -p "$POSTBACK_RUN_DIR/ingest" "$POSTBACK_RUN_DIR/redis" "$POSTBACK_LOG_DIR" "$POSTBACK_DATA_DIR/redis"
  # Every file made from here on (nginx's logs, which `nginx -t` already
  # opens; supervisord's own log) is no one else's to read, as the
  # programs' files are (umask=027 in the supervisord config).
  (
    umask 027
    if [ -f "$POSTBACK_CONF_DIR/supervisor.d/nginx.conf" ]; then
      nginx -t -q -c "$POSTBACK_CONF_DIR/nginx.conf" -e stderr ||
        die "nginx -t failed on $POSTBACK_CONF_DIR/nginx.conf"
    fi
    supervisord -c "$POSTBACK_CONF_DIR/supervisord.conf"
  )
}

# stack_setting NAME : NAME's value in postback.env, as written there (the
# last line wins, as when the shell reads the file).
stack_setting() {
  sed -n "s/^$1=//p" "$POSTBACK_CONF_DIR/postback.env" | tail -n1
}

# stack_http_base : the http://host:port nginx listens on, for curl.
stack_http_base() {
  local listen
  listen=$(sed -n 's/^ *listen \([^ ;]*\).*/\1/p' "$POSTBACK_CONF_DIR/nginx-site.conf" | head -n1)
  case "$listen" in
    *:*) echo "http://$listen" ;;
    *) echo "http://127.0.0.1:$listen" ;;
  esac
}

stack_all_running() {
  local status
  status=$(stack_ctl status 2>/dev/null) || return 1
  [ -n "$status" ] && ! grep -qv ' RUNNING ' <<<"$status"
}

stack_healthy() {
  stack_all_running || return 1
  if [ "$(stack_setting POSTBACK_ROLE | tr -d "'")" = redis ]; then
    [ "$(stack_redis_cli ping 2>/dev/null)" = PONG ]
  else
    curl -fsS -o /dev/null "$(stack_http_base)/health"
  fi
}

# stack_wait_healthy SECONDS : every program RUNNING and /health 200 (on a
# Redis host: Redis answering).
stack_wait_healthy() {
  wait_for "${1:-60}" "the stack to be healthy (see $POSTBACK_LOG_DIR)" stack_healthy
}

# stack_stop : stops every program gracefully, then supervisord.
stack_stop() {
  stack_running || return 0
  local pid
  pid=$(cat "$POSTBACK_RUN_DIR/supervisord.pid")
  stack_ctl shutdown >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
  wait_for 120 "supervisord to stop" bash -c "! kill -0 $pid 2>/dev/null"
}
