#!/usr/bin/env bash
# Renders the HTML of `cuboid report` in headless Chromium and checks that the charts are in the rendered DOM, then
# saves a screenshot next to it. Exits 77 (ctest: skipped) when no Chromium is installed (tools/setup installs
# Debian's chromium).
# Usage: report_browser_test.sh CUBOID_BINARY OUTPUT_DIR
set -euo pipefail

cuboid=${1:?usage: report_browser_test.sh CUBOID_BINARY OUTPUT_DIR}
out_dir=${2:?usage: report_browser_test.sh CUBOID_BINARY OUTPUT_DIR}
SKIP=77

browser=""
for candidate in chromium chromium-browser google-chrome google-chrome-stable; do
  if command -v "$candidate" > /dev/null 2>&1; then
    browser=$(command -v "$candidate")
    break
  fi
done
if [ -z "$browser" ]; then
  echo "SKIP: no headless Chromium found (chromium, chromium-browser, google-chrome); tools/setup installs Debian's chromium"
  exit "$SKIP"
fi

mkdir -p "$out_dir"
html="$out_dir/report.html"
profile_dir=$(mktemp -d)
trap 'rm -rf "$profile_dir"' EXIT

# A small space (TP 8, one micro-batch size) keeps the search to seconds; the charts are the same kind.
"$cuboid" report --model gpt3-175b --tokens 300e9 --gpu a100-80gb,h100-sxm --num-gpus 512,1024,2048 \
  --global-batch-size 1536 --tp 8 --micro-batch-size 1 --straggler-slowdown 1.2 --out "$html" > "$out_dir/report.txt"

chrome_flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
  --disable-component-update --disable-sync "--user-data-dir=$profile_dir")
timeout 120 "$browser" "${chrome_flags[@]}" --dump-dom "file://$html" > "$out_dir/dom.html" 2> "$out_dir/chromium.log"

fail=0
check() { # check DESCRIPTION PATTERN [MIN_COUNT]
  local count
  count=$(grep -o -- "$2" "$out_dir/dom.html" | wc -l)
  if [ "$count" -lt "${3:-1}" ]; then
    echo "FAIL: $1: found $count of '$2' in the rendered DOM (want >= ${3:-1})"
    fail=1
  else
    echo "ok: $1 ($count)"
  fi
}
check "recommendation summary" 'id="recommendation"'
check "options table rows" '<tr' 7
check "scaling chart" '<svg id="chart-scaling"'
check "scaling curves, one per GPU type" '<polyline' 4
check "recommended point marked" 'class="recommended-ring"' 2
check "timeline chart" '<svg id="chart-timeline"'
check "timeline blocks" 'class="block"' 20
check "memory chart" '<svg id="chart-memory"'
check "HBM line" 'class="hbm-line"'
check "tornado chart" '<svg id="chart-tornado"'
if grep -qi '<script' "$out_dir/dom.html"; then
  echo "FAIL: the report contains a script element"
  fail=1
fi

timeout 120 "$browser" "${chrome_flags[@]}" --screenshot="$out_dir/report.png" --window-size=1280,2400 \
  "file://$html" >> "$out_dir/chromium.log" 2>&1
if [ ! -s "$out_dir/report.png" ] || [ "$(wc -c < "$out_dir/report.png")" -lt 20000 ]; then
  echo "FAIL: no screenshot (or an empty one) at $out_dir/report.png"
  fail=1
else
  echo "ok: screenshot $out_dir/report.png"
fi
exit "$fail"
