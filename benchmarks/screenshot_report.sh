#!/usr/bin/env bash
# Open an analysis report in headless Chromium and screenshot it (issue 7's check that the page renders).
#   bash benchmarks/screenshot_report.sh OUT_DIR/report.html shot.png
# Needs Debian's chromium (apt-get install -y chromium). Exits non-zero if Chromium fails or writes no image.
set -euo pipefail
report=$(realpath "$1"); shot=${2:-report.png}
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "chromium not found: apt-get install -y chromium" >&2; exit 2; }
profile=$(mktemp -d)
log=$(mktemp)
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --hide-scrollbars \
  --window-size=1200,4200 --screenshot="$shot" "file://$report" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
rm -rf "$profile"
[ -s "$shot" ] || { echo "no screenshot written" >&2; cat "$log" >&2; exit 1; }
if grep -iE "uncaught|net::ERR_" "$log" >&2; then echo "the page reported errors" >&2; exit 1; fi
echo "screenshot: $shot"
