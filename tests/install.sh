#!/usr/bin/env bash
# Installs a build into a temporary prefix, then builds examples/simple.c against the installed
# tree only, as a C programmer would: with `pkg-config --cflags --libs kvlm` (libkvlm.so), with
# `pkg-config --static --libs kvlm` (a fully static program: kvlm.pc's private libraries must be
# complete), and with find_package(kvlm) (kvlm::kvlm and kvlm::kvlm_static); runs each on a model.
# Usage: tests/install.sh BUILD_DIR SOURCE_DIR MODEL [CC]
set -euo pipefail
build=$1 src=$2 model=$3 cc=${4:-cc}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "install test: $*" >&2; exit 1; }
p=$tmp/prefix
cmake --install "$build" --prefix "$p" >"$tmp/install.log" || { cat "$tmp/install.log"; fail "cmake --install failed"; }

major=$(awk '$2 == "KVLM_VERSION_MAJOR" { print $3 }' "$src/include/kvlm.h")
minor=$(awk '$2 == "KVLM_VERSION_MINOR" { print $3 }' "$src/include/kvlm.h")
patch=$(awk '$2 == "KVLM_VERSION_PATCH" { print $3 }' "$src/include/kvlm.h")
if [ "$major" = 0 ]; then soname=libkvlm.so.0.$minor; else soname=libkvlm.so.$major; fi
for f in include/kvlm.h lib/libkvlm.a lib/libkvlm.so "lib/$soname" "lib/libkvlm.so.$major.$minor.$patch" \
         lib/pkgconfig/kvlm.pc lib/cmake/kvlm/kvlmConfig.cmake lib/cmake/kvlm/kvlmConfigVersion.cmake bin/kvlm; do
  [ -e "$p/$f" ] || fail "$f was not installed"
done
readelf -d "$p/lib/libkvlm.so" | grep -q "SONAME.*\[$soname\]" || fail "libkvlm.so's SONAME is not $soname"
[ "$(readlink "$p/lib/libkvlm.so")" = "$soname" ] || fail "libkvlm.so does not link to $soname"

export PKG_CONFIG_PATH=$p/lib/pkgconfig
[ "$(pkg-config --modversion kvlm)" = "$major.$minor.$patch" ] || fail "kvlm.pc's version is not $major.$minor.$patch"
check_run() { # program: generates the example's greedy text
  local out
  out=$("$@" "$model" "Echoes of" 2>&1) || { echo "$out" >&2; fail "$1 failed"; }
  grep -q "finish: length" <<<"$out" || { echo "$out" >&2; fail "$1 did not generate"; }
}
# shared: the program needs libkvlm.so (by its SONAME) and nothing of kvlm's private libraries
# shellcheck disable=SC2046
"$cc" -Wall -Wextra -Werror "$src/examples/simple.c" $(pkg-config --cflags --libs kvlm) -o "$tmp/simple_shared" \
  || fail "the pkg-config build failed"
readelf -d "$tmp/simple_shared" | grep -q "NEEDED.*\[$soname\]" || fail "simple_shared does not need $soname"
LD_LIBRARY_PATH=$p/lib check_run "$tmp/simple_shared"
# static: -static links every library, so a missing Libs.private/Requires.private fails here
# shellcheck disable=SC2046
"$cc" -static "$src/examples/simple.c" $(pkg-config --cflags kvlm) $(pkg-config --static --libs kvlm) \
  -o "$tmp/simple_static" || fail "the pkg-config --static build failed"
if readelf -d "$tmp/simple_static" | grep -q NEEDED; then fail "simple_static is not static"; fi
check_run "$tmp/simple_static"
# the installed CLI
"$p/bin/kvlm" run -m "$model" -p "Echoes of" -n 4 -t 1 >/dev/null 2>&1 || fail "the installed kvlm does not run"

# find_package(kvlm)
cmake -S "$src/tests/install" -B "$tmp/consumer" -DCMAKE_C_COMPILER="$cc" -DCMAKE_PREFIX_PATH="$p" \
  -DKVLM_EXAMPLE="$src/examples/simple.c" >"$tmp/consumer.log" 2>&1 || { cat "$tmp/consumer.log"; fail "find_package(kvlm) failed"; }
cmake --build "$tmp/consumer" >>"$tmp/consumer.log" 2>&1 || { cat "$tmp/consumer.log"; fail "the find_package build failed"; }
readelf -d "$tmp/consumer/consumer_shared" | grep -q "NEEDED.*\[$soname\]" || fail "consumer_shared does not need $soname"
if readelf -d "$tmp/consumer/consumer_static" | grep -q "NEEDED.*libkvlm"; then fail "consumer_static needs libkvlm.so"; fi
LD_LIBRARY_PATH=$p/lib check_run "$tmp/consumer/consumer_shared"
check_run "$tmp/consumer/consumer_static"
echo "install test: header, libkvlm.a, $soname, kvlm.pc, the CMake package and bin/kvlm installed; pkg-config (shared, --static) and find_package builds run"
