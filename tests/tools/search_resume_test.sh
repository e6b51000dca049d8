#!/usr/bin/env bash
# `cuboid search --resume` after a killed run: start a search that writes --csv, kill it (SIGKILL) once its
# .partial file holds some finished plans, resume, and check that the final CSV equals the one of an uninterrupted
# run and that the resumed run simulated fewer plans than a fresh one (the finished plans were reused, none lost).
# Usage: search_resume_test.sh CUBOID_BINARY WORK_DIR
set -euo pipefail
cuboid=${1:?usage: search_resume_test.sh CUBOID_BINARY WORK_DIR}
work=${2:?usage: search_resume_test.sh CUBOID_BINARY WORK_DIR}
rm -rf "$work" && mkdir -p "$work"
# One thread so that the kill lands midway: ~3000 plans at a few hundred plans/s.
args=(search --model gpt3-13b --gpu a100-80gb --num-gpus 64 --global-batch-size 512 --jobs 1 --json)

"$cuboid" "${args[@]}" --csv "$work/fresh.csv" > "$work/fresh.json"

"$cuboid" "${args[@]}" --csv "$work/resumed.csv" > /dev/null &
pid=$!
for _ in $(seq 600); do
  lines=0
  [[ -e "$work/resumed.csv.partial" ]] && lines=$(wc -l < "$work/resumed.csv.partial")
  [[ $lines -ge 200 ]] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.05
done
if ! kill -9 "$pid" 2>/dev/null; then
  echo "FAIL: the search finished before it could be killed; enlarge the space"
  exit 1
fi
wait "$pid" 2>/dev/null || true
[[ ! -e "$work/resumed.csv" ]] || { echo "FAIL: a killed search left a final CSV"; exit 1; }
killed_lines=$(wc -l < "$work/resumed.csv.partial")
echo "killed with $killed_lines lines in the .partial file"

"$cuboid" "${args[@]}" --csv "$work/resumed.csv" --resume > "$work/resumed.json"
cmp "$work/fresh.csv" "$work/resumed.csv" || { echo "FAIL: resumed CSV differs from the uninterrupted one"; exit 1; }
[[ ! -e "$work/resumed.csv.partial" ]] || { echo "FAIL: .partial file left after a finished search"; exit 1; }
count() { grep -o "\"$1\": *[0-9]*" "$2" | grep -o '[0-9]*$'; }
fresh_sim=$(count num_simulated "$work/fresh.json")
resumed_sim=$(count num_simulated "$work/resumed.json")
reused=$(count num_resumed "$work/resumed.json")
echo "plans with results: fresh $fresh_sim, resumed $resumed_sim, of which taken from the killed run $reused"
# Every finished plan of the killed run is reused (the header line and at most one torn line are not plans).
if [[ "$fresh_sim" != "$resumed_sim" || -z "$reused" || $reused -lt $((killed_lines - 2)) ]]; then
  echo "FAIL: the resumed search did not reuse the finished plans"
  exit 1
fi
echo "ok"
