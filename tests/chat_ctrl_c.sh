#!/usr/bin/env bash
# kvlm chat: Ctrl-C (SIGINT) stops the current answer without leaving; /quit then exits 0.
set -u
KVLM="$1"; MODEL="$2"
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
mkfifo "$dir/in"
"$KVLM" chat -m "$MODEL" -n 100000 -c 4096 < "$dir/in" > "$dir/out" 2>&1 &
pid=$!
exec 3>"$dir/in"
echo "Hello" >&3
sleep 1
kill -INT "$pid"
sleep 0.5
kill -0 "$pid" 2>/dev/null || { echo "FAIL: chat exited on Ctrl-C"; cat "$dir/out"; exit 1; }
echo "/quit" >&3
exec 3>&-
wait "$pid"; rc=$?
grep -q "(stopped)" "$dir/out" || { echo "FAIL: no (stopped) after Ctrl-C"; cat "$dir/out"; exit 1; }
[ "$rc" = 0 ] || { echo "FAIL: exit code $rc"; exit 1; }
echo "1 passed, 0 failed"
