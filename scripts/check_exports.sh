#!/usr/bin/env bash
# Checks the symbols libkvlm exports: each is public (kvlm_*, and then declared in
# include/kvlm.h) or internal-prefixed (kv_*); names the compiler or a sanitizer
# generates (__*) are ignored. Lists every offender and exits 1 if there is one.
# Usage: scripts/check_exports.sh [path/to/libkvlm.a] [path/to/kvlm.h]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
lib="${1:-$root/build/libkvlm.a}"
header="${2:-$root/include/kvlm.h}"
[ -f "$lib" ] || { echo "check_exports: no library at $lib (build first)" >&2; exit 2; }
[ -f "$header" ] || { echo "check_exports: no header at $header" >&2; exit 2; }

# Defined external symbols (functions and data) of every object in the archive.
syms=$(nm -g --defined-only "$lib" | awk 'NF == 3 { print $3 }' | grep -v '^__' | sort -u)
# Identifiers kvlm.h declares (a kvlm_ name followed by "(" is a function).
declared=$(grep -o '\bkvlm_[A-Za-z0-9_]*[[:space:]]*(' "$header" | tr -d ' (\t' | sort -u)

bad_prefix=$(grep -Ev '^(kvlm|kv)_' <<<"$syms" || true)
undeclared=$(comm -23 <(grep '^kvlm_' <<<"$syms" || true) <(echo "$declared"))

status=0
if [ -n "$bad_prefix" ]; then
  echo "check_exports: $(wc -l <<<"$bad_prefix") exported symbols are neither kvlm_* nor kv_*:"
  sed 's/^/  /' <<<"$bad_prefix"
  status=1
fi
if [ -n "$undeclared" ]; then
  echo "check_exports: $(wc -l <<<"$undeclared") kvlm_* symbols are not declared in $(basename "$header"):"
  sed 's/^/  /' <<<"$undeclared"
  status=1
fi
[ $status = 0 ] && echo "check_exports: $(wc -l <<<"$syms") symbols, all kvlm_* (public, in $(basename "$header")) or kv_*"
exit $status
