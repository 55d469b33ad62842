# shellcheck shell=bash
# Shared by the scripts in this folder: logging, root rights and installing Debian packages.
# Source it after setting LOG_TAG, the prefix of log lines.

log() { printf '[%s] %s\n' "${LOG_TAG:-kafka-retry}" "$*" >&2; }

die() {
  log "error: $*"
  exit 1
}

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "root rights needed to run: $*"
  fi
}

# Installs the Debian packages named, if any, after one apt-get update.
apt_install() {
  [ "$#" -gt 0 ] || return 0
  command -v apt-get >/dev/null 2>&1 || die "missing packages ($*) and no apt-get to install them"
  log "installing $* with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}
