#!/usr/bin/env bash
# Checks the symbols libkvlm exports. libkvlm.a: each global name is public
# (kvlm_*, and then declared in include/kvlm.h) or internal-prefixed (kv_*).
# libkvlm.so (built with hidden visibility): its dynamic symbol table has only
# kvlm_* names, and every function kvlm.h declares is among them (KVLM_API).
# Names the compiler, libc or a sanitizer generates (_*) are ignored. Lists
# every offender and exits 1 if there is one.
# Usage: scripts/check_exports.sh [path/to/libkvlm.a|path/to/libkvlm.so] [path/to/kvlm.h]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
lib="${1:-$root/build/libkvlm.a}"
header="${2:-$root/include/kvlm.h}"
[ -f "$lib" ] || { echo "check_exports: no library at $lib (build first)" >&2; exit 2; }
[ -f "$header" ] || { echo "check_exports: no header at $header" >&2; exit 2; }

shared=0
case "$lib" in *.so | *.so.*) shared=1 ;; esac
# Defined external symbols (functions and data): of every object in the archive,
# or the shared library's dynamic symbols (name@VERSION -> name).
if [ $shared = 1 ]; then
  syms=$(nm -D --defined-only "$lib" | awk 'NF == 3 { sub(/@.*/, "", $3); print $3 }' | grep -v '^_' | sort -u)
  allowed='^kvlm_'
else
  syms=$(nm -g --defined-only "$lib" | awk 'NF == 3 { print $3 }' | grep -v '^__' | sort -u)
  allowed='^(kvlm|kv)_'
fi
# Functions kvlm.h declares (a kvlm_ name followed by "(", not a typedef'd pointer "(*name)(").
declared=$(grep -o '\bkvlm_[A-Za-z0-9_]*[[:space:]]*(' "$header" | tr -d ' (\t' | sort -u)

bad_prefix=$(grep -Ev "$allowed" <<<"$syms" || true)
undeclared=$(comm -23 <(grep '^kvlm_' <<<"$syms" || true) <(echo "$declared"))
missing=""
[ $shared = 1 ] && missing=$(comm -13 <(grep '^kvlm_' <<<"$syms" || true) <(echo "$declared"))

status=0
if [ -n "$bad_prefix" ]; then
  if [ $shared = 1 ]; then what="not kvlm_*"; else what="neither kvlm_* nor kv_*"; fi
  echo "check_exports: $(wc -l <<<"$bad_prefix") exported symbols of $(basename "$lib") are $what:"
  sed 's/^/  /' <<<"$bad_prefix"
  status=1
fi
if [ -n "$undeclared" ]; then
  echo "check_exports: $(wc -l <<<"$undeclared") kvlm_* symbols are not declared in $(basename "$header"):"
  sed 's/^/  /' <<<"$undeclared"
  status=1
fi
if [ -n "$missing" ]; then
  echo "check_exports: $(wc -l <<<"$missing") functions of $(basename "$header") are not exported by $(basename "$lib") (KVLM_API?):"
  sed 's/^/  /' <<<"$missing"
  status=1
fi
[ $status = 0 ] && [ $shared = 1 ] && echo "check_exports: $(basename "$lib") exports $(wc -l <<<"$syms") symbols, all kvlm_* functions of $(basename "$header")"
[ $status = 0 ] && [ $shared = 0 ] && echo "check_exports: $(wc -l <<<"$syms") symbols, all kvlm_* (public, in $(basename "$header")) or kv_*"
exit $status
