#!/usr/bin/env bash
# Installs the Debian packages kvlm needs to build and test, if any are missing.
# Usage: scripts/deps.sh [build|test|tsan|fuzz]   (--list MODE: print the packages, install nothing)
#   test adds the test-only packages (and nodejs / npm if there is no node / npm); tsan the ThreadSanitizer runtime (gcc);
#   fuzz clang and its libFuzzer/sanitizer runtimes (libclang-rt-14-dev).
set -eu
list=0
if [ "${1:-}" = --list ]; then list=1; shift; fi
want="cmake make gcc pkg-config libpcre2-dev libzstd-dev libxxhash-dev libcjson-dev libmicrohttpd-dev"
case "${1:-build}" in
  build) ;;
  test) want="$want libcmocka-dev python3-pytest python3-requests" # tests/server runs Debian's /usr/bin/python3
    # tests/server/test_openai_node.py: the official OpenAI client runs on Node.js, installed with npm
    # (Debian's packages where the machine has no node / npm of its own)
    command -v node >/dev/null 2>&1 || want="$want nodejs"
    command -v npm >/dev/null 2>&1 || want="$want npm" ;;
  tsan) want="$want libcmocka-dev libtsan2" ;;
  fuzz) want="$want clang libclang-rt-14-dev" ;;
  *) echo "usage: scripts/deps.sh [build|test|tsan|fuzz]" >&2; exit 2 ;;
esac
if [ $list = 1 ]; then echo "$want" | tr ' ' '\n'; exit 0; fi
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
