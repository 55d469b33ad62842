#!/usr/bin/env bash
# Installs what building and testing kafka-retry needs and is missing: the Rust components
# rustfmt and clippy, and the native packages librdkafka's build uses (rdkafka builds it from
# source). Safe to repeat; installs nothing that is already there.
set -euo pipefail

LOG_TAG=build-deps
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Rust toolchain: cargo comes from rustup; add rustfmt/clippy if they are missing.
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck source=/dev/null
  . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust with rustup (https://rustup.rs) and rerun"
for component in rustfmt clippy; do
  subcommand=$component
  if [ "$component" = rustfmt ]; then subcommand=fmt; fi
  if ! cargo "$subcommand" --version >/dev/null 2>&1; then
    command -v rustup >/dev/null 2>&1 || die "cargo $subcommand is missing and there is no rustup to add $component"
    log "adding Rust component $component"
    rustup component add "$component" || die "could not add Rust component $component"
  fi
done

# Native build dependencies (rdkafka builds librdkafka from source).
missing=()
for pkg in gcc g++ make cmake pkg-config libssl-dev libsasl2-dev zlib1g-dev; do
  if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]; then
    missing+=("$pkg")
  fi
done
apt_install "${missing[@]}"
