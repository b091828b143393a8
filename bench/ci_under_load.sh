#!/usr/bin/env bash
# The suite on a busy host: clone this checkout's HEAD into fresh folders and run CI there (`CI=true
# bash .ci/run`) RUNS times in a row (default 3), each while a CPU hog spins on one core (HOG=0: on
# an idle host, to check the suite's parallel runs and its time); stops at the first failure. Prints
# one line per run: exit status, seconds, pytest's summary. Takes most of an hour on a 2-core host;
# run it alone (nothing else on the machine).
set -u
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
commit=$(git -C "$repo" rev-parse HEAD)
runs=${RUNS:-3}
hog_on=${HOG:-1}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for i in $(seq 1 "$runs"); do
  git clone -q "$repo" "$work/clone$i" && git -C "$work/clone$i" checkout -q "$commit"
  hog=
  if [ "$hog_on" != 0 ]; then
    python3 -c "while True: pass" &
    hog=$!
  fi
  start=$(date +%s)
  (cd "$work/clone$i" && CI=true bash .ci/run) > "$work/run$i.log" 2>&1
  rc=$?
  [ -n "$hog" ] && kill "$hog"
  summary=$(grep -E "[0-9]+ (passed|failed)" "$work/run$i.log" | tail -1)
  echo "run $i of $runs (hog: $hog_on), commit ${commit:0:7}: exit $rc after $(( $(date +%s) - start )) s: $summary"
  if [ "$rc" -ne 0 ]; then
    grep -E "^(FAILED|ERROR) " "$work/run$i.log"
    cp "$work/run$i.log" "${TMPDIR:-/tmp}/ci_under_load_run$i.log"
    echo "full log: ${TMPDIR:-/tmp}/ci_under_load_run$i.log"
    exit "$rc"
  fi
  rm -rf "$work/clone$i"
done
