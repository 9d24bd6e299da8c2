# shellcheck shell=bash
# Helpers shared by the scripts: messages, and installing Debian packages
# when they are missing (so every script works on a fresh machine).

say() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ensure_packages PKG... : apt-get install the ones not installed yet.
ensure_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "missing packages ${missing[*]}: install them as root"
    sudo=(sudo)
  fi
  say "installing Debian packages: ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Package scripts may start the distribution's own services; this stack
  # runs its own copies under supervisord, so stop those (best effort).
  local unit
  for unit in redis-server nginx supervisor; do
    if printf '%s\n' "${missing[@]}" | grep -qx "$unit"; then
      "${sudo[@]}" service "$unit" stop >/dev/null 2>&1 || true
    fi
  done
}

# ensure_rust: cargo must exist (the machine image provides rustup's).
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

ensure_rust() {
  command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs), then run this again"
}

# wait_for SECONDS DESCRIPTION COMMAND... : run COMMAND until it succeeds.
wait_for() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "timed out after ${limit}s waiting for $what"
      return 1
    fi
    sleep 0.1
  done
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
