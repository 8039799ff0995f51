#!/usr/bin/env bash
# Runs each libFuzzer target for SECONDS seconds (default 60) on its seed corpus.
# Usage: fuzz/run.sh BUILD_DIR [SECONDS] [TARGET...]   (targets: gguf tokenizer session chat json_schema server http)
# New inputs go to BUILD_DIR/corpus/<target>, crashes to BUILD_DIR/artifacts/.
# Exits non-zero when a target crashes or breaks its contract.
set -u
cd "$(dirname "$0")/.."
build=${1:?build directory}
secs=${2:-60}
shift 2 2>/dev/null || shift $#
targets=${*:-gguf tokenizer session chat json_schema server http}
max_len() {
  case $1 in
    gguf) echo 131072 ;;
    session) echo 65536 ;;
    tokenizer) echo 4097 ;;
    chat) echo 8192 ;;
    json_schema) echo 8192 ;;
    server) echo 65536 ;;
    http) echo 65537 ;;
  esac
}
status=0
mkdir -p "$build/artifacts"
for t in $targets; do
  mkdir -p "$build/corpus/$t"
  echo "== fuzz_$t: ${secs}s" >&2
  log="$build/artifacts/fuzz_$t.log"
  # inputs that once broke a target (fuzz/known/<target>-*) must pass first
  known=$(ls fuzz/known/"$t"-* 2>/dev/null || true)
  if [ -n "$known" ] && ! "$build/bin/fuzz_$t" $known >"$log.known" 2>&1; then
    echo "fuzz_$t FAILED on a known input (log: $log.known):" >&2
    grep -A30 -E 'ERROR|contract broken|deadly signal' "$log.known" | head -60 >&2
    status=1
    continue
  fi
  if "$build/bin/fuzz_$t" -max_total_time="$secs" -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$build/artifacts/$t-" \
      "$build/corpus/$t" "fuzz/corpus/$t" >"$log" 2>&1; then
    grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' "$log" | sed "s/^/  fuzz_$t /" >&2
  else
    echo "fuzz_$t FAILED (log: $log):" >&2
    grep -A30 -E 'ERROR|contract broken|deadly signal' "$log" | head -60 >&2
    status=1
  fi
done
exit $status
