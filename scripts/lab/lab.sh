# shellcheck shell=bash
# Helpers of the test and bench tools only, sourced after
# scripts/lib/common.sh: free loopback ports, the tests' Python checkers,
# and hosts provisioned side by side into folders of their own.

# ensure_test_python : a Python for the tests' independent checkers (the
# standardwebhooks package, to verify signatures with code that is not
# ours), in a virtualenv under target/, made once from PyPI. Exports
# POSTBACK_TEST_PYTHON.
ensure_test_python() {
  local venv=${repo:?ensure_test_python needs repo}/target/test-python
  if ! "$venv/bin/python" -c 'import standardwebhooks' 2>/dev/null; then
    say "installing the tests' Python checkers (standardwebhooks) into $venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (apt-get install python3-venv?)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check standardwebhooks ||
      die "could not install standardwebhooks from PyPI"
  fi
  export POSTBACK_TEST_PYTHON=$venv/bin/python
}

# free_port [N]: a TCP port on 127.0.0.1 that is free right now (with N,
# the first of N free consecutive ports), below the kernel's ephemeral
# range (a port in that range can be taken at any moment as the local end
# of an outgoing connection, and a later bind then fails), and never one
# this shell session handed out before.
: "${POSTBACK_PORTS_TAKEN:=/tmp/postback-ports.$$}"
free_port() {
  local count=${1:-1} low=32768 port p ok
  read -r low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
  [ "$low" -gt 12000 ] || low=32768
  for _ in $(seq 1 100); do
    port=$((10000 + RANDOM % (low - 10000 - count)))
    ok=1
    for ((p = port; p < port + count; p++)); do
      if grep -qx "$p" "$POSTBACK_PORTS_TAKEN" 2>/dev/null || (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        ok=0
        break
      fi
    done
    [ "$ok" = 1 ] || continue
    for ((p = port; p < port + count; p++)); do echo "$p" >>"$POSTBACK_PORTS_TAKEN"; done
    echo "$port"
    return 0
  done
  die "no free port found"
}

# Hosts provisioned with `scripts/provision --root DIR/HOST` side by side
# (the Cluster and namespace tests):
# on_host DIR HOST CMD... : CMD with HOST's layout, as stack.sh's
# functions read it.
on_host() {
  local root=$1/$2
  shift 2
  POSTBACK_CONF_DIR=$root/etc/postback POSTBACK_LOG_DIR=$root/var/log/postback POSTBACK_DATA_DIR=$root/var/lib/postback \
    POSTBACK_RUN_DIR=$root/run/postback POSTBACK_BIN_DIR=$root/usr/local/bin POSTBACK_LIB_DIR=$root/usr/local/lib/postback "$@"
}
# show_hosts DIR HOST... : each host's programs and last log lines (what
# explains a failure), then exit 1.
show_hosts() {
  local dir=$1 host
  shift
  for host in "$@"; do
    echo "--- $host"
    on_host "$dir" "$host" stack_ctl status
    tail -n 5 "$dir/$host"/var/log/postback/*.log 2>/dev/null | cut -c1-300
  done
  exit 1
}
