#!/usr/bin/env bash
# Installs the Debian packages kvlm needs to build and test, if any are missing.
# Usage: scripts/deps.sh [build|test]   (test adds the test-only packages)
set -eu
want="cmake make gcc pkg-config libpcre2-dev libzstd-dev libxxhash-dev libcjson-dev libmicrohttpd-dev"
if [ "${1:-build}" = test ]; then
  want="$want libcmocka-dev python3-pytest python3-requests" # tests/server runs Debian's /usr/bin/python3
fi
missing=""
for p in $want; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done
[ -z "$missing" ] && exit 0
echo "installing:$missing" >&2
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq $missing >/dev/null
