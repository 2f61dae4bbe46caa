#!/usr/bin/env bash
# The few system packages the stack needs that no wheel ships.
# As root on Debian/Ubuntu they are installed; elsewhere this prints what to install.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/local/sbin/$1" ]; }
have pgbouncer || need+=(pgbouncer)                 # no wheel exists for PgBouncer
if [ "${SCALELAB_WITH_WRK:-0}" = 1 ]; then have wrk || need+=(wrk); fi
if [ "${SCALELAB_WITH_BROWSER:-0}" = 1 ]; then have chromium || need+=(chromium); fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing system packages: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
elif [ "$(uname)" = Darwin ]; then
  echo "Missing: ${need[*]}. Install with: brew install ${need[*]}" >&2; exit 1
else
  echo "Missing: ${need[*]}. Install with: sudo apt-get install ${need[*]} (or your distribution's package)" >&2; exit 1
fi
