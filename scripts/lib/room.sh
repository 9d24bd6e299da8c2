# shellcheck shell=bash
# Room on disk for the stack: the log budget (POSTBACK_LOG_MAX_MB divided
# among every log the host writes) and the check that the disks hold what
# the stack may write (the logs, Redis' append-only file, a copy of
# Redis' memory). Sourced by scripts/lib/stack.sh; docs/OPERATIONS.md
# ("Disk") says what a host needs and why.

# The least budget that leaves every log a useful share, in MiB.
LOG_BUDGET_MIN_MB=32
# Weights of the budget's division: a delivery log is the record of every
# attempt, so it gets the most; an access log the next; every other log
# (a program's own messages, nginx's, supervisord's) one part.
LOG_WEIGHT_DELIVERY=12 LOG_WEIGHT_ACCESS=4 LOG_WEIGHT_OTHER=1
# What is divided: 95 % of the budget. supervisord rotates a file once a
# write has taken it past its size, so each may pass it by one read.
LOG_BUDGET_USED_PCT=95
# A log supervisord captures is this file and this many old ones.
LOG_CAPTURED_BACKUPS=4
# The least rewrite threshold the disk check will lower
# REDIS_AOF_REWRITE_MIN_SIZE to before it refuses: below it Redis
# rewrites its append-only file very often.
AOF_REWRITE_MIN_FLOOR=$((64 * 1024 * 1024))

# bytes_of SIZE : a Redis-style size (1gb, 512mb, 100k, 1048576) in bytes.
bytes_of() {
  local size=${1,,}
  case "$size" in
    *gb) echo $((${size%gb} * 1024 * 1024 * 1024)) ;;
    *mb) echo $((${size%mb} * 1024 * 1024)) ;;
    *kb) echo $((${size%kb} * 1024)) ;;
    *g) echo $((${size%g} * 1000 * 1000 * 1000)) ;;
    *m) echo $((${size%m} * 1000 * 1000)) ;;
    *k) echo $((${size%k} * 1000)) ;;
    *[!0-9]* | "") return 1 ;;
    *) echo "$size" ;;
  esac
}

# mib N : N bytes in MiB, rounded down, for messages.
mib() { echo "$(($1 / 1024 / 1024)) MiB"; }

# log_budget_divide BUDGET_MB DELIVERY_LOGS ACCESS_LOGS OTHER_LOGS : prints
# "DELIVERY_MB ACCESS_MB CAPTURED_FILE_BYTES": the MiB each delivery log and
# each access log may take with its rotated copies, and the size at which
# supervisord rotates each log it captures (which keeps
# LOG_CAPTURED_BACKUPS old ones). Their sum stays within the budget.
log_budget_divide() {
  local budget=$1 delivery=$2 access=$3 other=$4
  local weights=$((delivery * LOG_WEIGHT_DELIVERY + access * LOG_WEIGHT_ACCESS + other * LOG_WEIGHT_OTHER))
  local part=$((budget * 1024 * 1024 * LOG_BUDGET_USED_PCT / 100 / weights))
  echo "$((part * LOG_WEIGHT_DELIVERY / 1024 / 1024)) $((part * LOG_WEIGHT_ACCESS / 1024 / 1024)) $((part * LOG_WEIGHT_OTHER / (LOG_CAPTURED_BACKUPS + 1)))"
}

# stack_log_budget ROLE HA MONITORING : divides POSTBACK_LOG_MAX_MB among
# the logs this host writes, and exports the shares the templates use:
# DELIVER_LOG_MAX_MB and INGEST_ACCESS_LOG_MAX_MB (given to each process
# by supervisord), LOG_CAPTURED_BYTES and LOG_CAPTURED_BACKUPS (every
# log supervisord captures, its own included). Runs inside stack_render's
# subshell (postback.env read).
stack_log_budget() {
  local role=$1 ha=$2 monitoring=$3
  local budget=${POSTBACK_LOG_MAX_MB:-$(env_default POSTBACK_LOG_MAX_MB)}
  if ! [[ "$budget" =~ ^[0-9]+$ ]] || [ "$budget" -lt "$LOG_BUDGET_MIN_MB" ]; then
    die "POSTBACK_LOG_MAX_MB=$budget in postback.env: give a whole number of MiB, at least $LOG_BUDGET_MIN_MB"
  fi
  local var
  for var in DELIVER_LOG_MAX_MB INGEST_ACCESS_LOG_MAX_MB; do
    ! grep -q "^$var=" "$POSTBACK_CONF_DIR/postback.env" ||
      die "postback.env sets $var: remove it; the stack divides POSTBACK_LOG_MAX_MB among the logs itself"
  done
  local deliver_procs=${DELIVER_PROCS:-$(env_default DELIVER_PROCS)} ingest_procs=${INGEST_PROCS:-$(env_default INGEST_PROCS)}
  local delivery=0 access=0 other=1 # supervisord's own
  case "$role" in
    redis) other=$((other + 2)) ;; # Redis, its sentinel
    *)
      delivery=$deliver_procs access=$ingest_procs
      # each process's own messages; nginx's access and error logs
      other=$((other + deliver_procs + ingest_procs + 2))
      if [ "$role" = all ]; then
        other=$((other + 1))
        [ "$ha" = 1 ] && other=$((other + 4)) # the replica, three sentinels
      fi
      ;;
  esac
  [ -n "${POSTBACK_DEMO_SINK_PORT:-}" ] && other=$((other + 1))
  [ "$monitoring" = 1 ] && other=$((other + 2))
  local shares
  read -r -a shares <<<"$(log_budget_divide "$budget" "$delivery" "$access" "$other")"
  if [ "${shares[2]}" -lt 65536 ] || { [ "$delivery" != 0 ] && [ "${shares[0]}" -lt 1 ]; }; then
    die "POSTBACK_LOG_MAX_MB=$budget is too small for the $((delivery + access + other)) logs of this host: raise it in postback.env"
  fi
  export DELIVER_LOG_MAX_MB=${shares[0]} INGEST_ACCESS_LOG_MAX_MB=${shares[1]}
  export LOG_CAPTURED_BYTES=${shares[2]} LOG_CAPTURED_BACKUPS
}

# existing DIR : DIR, or its nearest folder that exists (a host being
# provisioned may not have DIR yet, and the check must create nothing).
existing() {
  local dir=$1
  until [ -d "$dir" ]; do dir=$(dirname "$dir"); done
  echo "$dir"
}

# free_bytes DIR : bytes free for an unprivileged user on DIR's filesystem.
free_bytes() { echo $(($(stat -f -c '%a * %S' "$(existing "$1")"))); }

# used_bytes DIR... : bytes the stack's files already take there (they
# count towards what it needs, not against it).
used_bytes() {
  local total=0 dir
  for dir in "$@"; do
    [ -d "$dir" ] && total=$((total + $(du -sb "$dir" | cut -f1)))
  done
  echo "$total"
}

# stack_check_disk : the log folder's disk must hold POSTBACK_LOG_MAX_MB,
# and Redis' data folder's 2 x REDIS_AOF_REWRITE_MIN_SIZE (the file grows
# to twice its size after the last rewrite before the next) +
# REDIS_MAXMEMORY (a rewrite writes a fresh copy of memory beside the old
# file); both, when they are one disk. If the rewrite threshold is what
# does not fit, it is lowered in postback.env to what does, and said so;
# if even that would be too little, this refuses with the numbers and the
# settings to change. Run before the configs are rendered.
stack_check_disk() {
  local env_file=$POSTBACK_CONF_DIR/postback.env
  local role budget_mb maxmemory aof
  role=$(stack_setting POSTBACK_ROLE | tr -d "'")
  budget_mb=$(stack_setting POSTBACK_LOG_MAX_MB)
  budget_mb=${budget_mb:-$(env_default POSTBACK_LOG_MAX_MB)}
  [[ "$budget_mb" =~ ^[0-9]+$ ]] || die "POSTBACK_LOG_MAX_MB=$budget_mb in postback.env: give a whole number of MiB"
  local logs=$((budget_mb * 1024 * 1024)) redis=0 aof_bytes=0 maxmemory_bytes=0
  if [ "$role" != app ]; then
    maxmemory=$(stack_setting REDIS_MAXMEMORY)
    aof=$(stack_setting REDIS_AOF_REWRITE_MIN_SIZE)
    aof=${aof:-$(env_default REDIS_AOF_REWRITE_MIN_SIZE)}
    maxmemory_bytes=$(bytes_of "$maxmemory") || die "REDIS_MAXMEMORY=$maxmemory in postback.env: give a size such as 2gb"
    aof_bytes=$(bytes_of "$aof") || die "REDIS_AOF_REWRITE_MIN_SIZE=$aof in postback.env: give a size such as 1gb"
    redis=$((2 * aof_bytes + maxmemory_bytes))
  fi
  local log_fs data_fs
  log_fs=$(stat -c %d "$(existing "$POSTBACK_LOG_DIR")") data_fs=$(stat -c %d "$(existing "$POSTBACK_DATA_DIR")")
  local log_room data_room
  if [ "$log_fs" = "$data_fs" ]; then
    log_room=$(($(free_bytes "$POSTBACK_LOG_DIR") + $(used_bytes "$POSTBACK_LOG_DIR" "$POSTBACK_DATA_DIR")))
    data_room=$((log_room - logs))
  else
    log_room=$(($(free_bytes "$POSTBACK_LOG_DIR") + $(used_bytes "$POSTBACK_LOG_DIR")))
    data_room=$(($(free_bytes "$POSTBACK_DATA_DIR") + $(used_bytes "$POSTBACK_DATA_DIR")))
  fi
  [ "$log_room" -ge "$logs" ] ||
    die "the disk of $POSTBACK_LOG_DIR has room for $(mib "$log_room") of logs, and POSTBACK_LOG_MAX_MB=$budget_mb asks for more: lower POSTBACK_LOG_MAX_MB in $env_file, or give the logs a bigger disk"
  [ "$role" = app ] || [ "$data_room" -ge "$redis" ] && return 0
  # The rewrite threshold that fits beside Redis' memory, if it is not
  # too small to be worth it.
  local fits=$(((data_room - maxmemory_bytes) / 2 / 1024 / 1024 * 1024 * 1024))
  local shared=""
  [ "$log_fs" = "$data_fs" ] && shared=" after POSTBACK_LOG_MAX_MB=$budget_mb for the logs on the same disk"
  if [ "$fits" -ge "$AOF_REWRITE_MIN_FLOOR" ]; then
    env_set "$env_file" REDIS_AOF_REWRITE_MIN_SIZE "$((fits / 1024 / 1024))mb"
    say "note: the disk of $POSTBACK_DATA_DIR has room for $(mib "$data_room")$shared; REDIS_AOF_REWRITE_MIN_SIZE is lowered from $aof to $((fits / 1024 / 1024))mb in $env_file so that Redis' append-only file fits (2 x it + REDIS_MAXMEMORY=$maxmemory)"
    return 0
  fi
  die "the disk of $POSTBACK_DATA_DIR has room for $(mib "$data_room")$shared; Redis needs 2 x REDIS_AOF_REWRITE_MIN_SIZE ($aof, at least $(mib "$AOF_REWRITE_MIN_FLOOR")) + REDIS_MAXMEMORY ($maxmemory) = $(mib "$((2 * AOF_REWRITE_MIN_FLOOR + maxmemory_bytes))") at least: lower REDIS_MAXMEMORY or POSTBACK_LOG_MAX_MB in $env_file, or give the data a bigger disk"
}
