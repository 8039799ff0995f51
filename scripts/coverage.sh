#!/usr/bin/env bash
# make coverage: runs the ctest suite of a gcov-instrumented build (-DKVLM_COVERAGE=ON), writes the
# per-file line and branch report of the library (src/) with gcovr into BUILD/coverage/ and checks
# it against scripts/coverage_gate.txt (scripts/check_coverage.py). docs/TESTING.md describes it.
# Usage: scripts/coverage.sh [--report] BUILD_DIR [JOBS]
#   --report: the suite already ran in BUILD_DIR (.ci/run: make sanitize COVERAGE=ON); report only.
#   COV_EXCLUDE (ctest -E regex): tests left out of the run (default: the crash-safety loop,
#   test_session_crash, which kills a saver with SIGKILL, so its counters are never written).
set -euo pipefail
report_only=0
if [ "${1:-}" = --report ]; then report_only=1; shift; fi
build=${1:?build dir}
jobs=${2:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [ $report_only = 0 ]; then
  exclude=${COV_EXCLUDE-'^test_session_crash$'}
  find "$build" -name '*.gcda' -delete
  set +e
  (cd "$build" && ctest --output-on-failure -j "$jobs" ${exclude:+-E "$exclude"})
  rc=$?
  set -e
  if [ $rc != 0 ]; then echo "coverage: the test suite failed" >&2; exit $rc; fi
fi
if [ -z "$(find "$build" -name '*.gcda' -print -quit)" ]; then
  echo "coverage: no counters in $build (not a KVLM_COVERAGE build, or nothing ran)" >&2
  exit 1
fi
out="$build/coverage"
mkdir -p "$out"
# one gcov pass into gcovr's JSON, then the reports from it (no -j: gcovr 5.2 hung with it here); the
# counters searched for in $build only (gcovr's default, the whole tree, would merge those of other
# build directories, of other sources, and fail)
gcovr -r "$root" --object-directory "$build" --filter 'src/' --gcov-ignore-parse-errors \
  --json "$out/coverage.json" "$build" >/dev/null
gcovr -a "$out/coverage.json" -r "$root" --txt "$out/lines.txt" \
  --json-summary-pretty --json-summary "$out/summary.json"
gcovr -a "$out/coverage.json" -r "$root" --branches --txt "$out/branches.txt"
cat "$out/lines.txt"
python3 "$root/scripts/check_coverage.py" "$out/summary.json" "$root/scripts/coverage_gate.txt" \
  --table "$out/table.md"
