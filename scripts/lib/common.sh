# shellcheck shell=bash
# Helpers shared by the scripts: messages, installing Debian packages when
# they are missing (so every script works on a fresh machine), and waiting
# on a condition. The test and bench tools add theirs from
# scripts/lab/lab.sh.

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
  for unit in redis-server nginx supervisor prometheus; do
    if printf '%s\n' "${missing[@]}" | grep -qx "$unit"; then
      "${sudo[@]}" service "$unit" stop >/dev/null 2>&1 || true
    fi
  done
}

# ensure_rust: cargo must exist (the machine image provides rustup's).
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
