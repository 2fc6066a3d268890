#!/usr/bin/env bash
# Remakes docs/images/fruits_lineage.png: the kedro-viz static site of the fruits pipeline,
# photographed by headless Chromium (Debian: `apt-get install chromium`; not a project dependency).
# Run it from the root of a project where `kedro run --pipelines=fruits --env=cpu` has finished:
#   bash docs/images/lineage_screenshot.sh [OUTPUT.png]
set -euo pipefail
out=$(realpath -m "${1:-docs/images/fruits_lineage.png}")
port=${PORT:-8765}

KEDRO_ENV=cpu KEDRO_DISABLE_TELEMETRY=true kedro viz build --include-previews

# kedro-viz keeps its settings in the browser's localStorage: this page sets them (no onboarding
# hints, light theme, readable names, lineage from top to bottom), then opens the fruits pipeline
# with its namespace expanded.
cat > build/screenshot.html <<'HTML'
<!DOCTYPE html>
<script>
  localStorage.setItem("KedroViz", JSON.stringify({
    showFeatureHints: false, theme: "light", orientation: "vertical", isPrettyName: true,
    expandAllPipelines: true, visible: {sidebar: true, miniMap: false}}));
  location.replace("/?pid=fruits&expandAllPipelines=true");
</script>
HTML

python3 -m http.server "$port" --bind 127.0.0.1 --directory build >/dev/null 2>&1 &
server=$!
profile=$(mktemp -d)
trap 'kill $server; rm -rf "$profile"' EXIT
sleep 1
# Every host but 127.0.0.1 is unresolvable: the page's web fonts fall back at once, nothing leaves.
chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
  --disable-sync --no-first-run --user-data-dir="$profile" --host-resolver-rules="MAP * ~NOTFOUND , EXCLUDE 127.0.0.1" \
  --window-size=1300,1700 --virtual-time-budget=15000 --screenshot="$out" "http://127.0.0.1:$port/screenshot.html"
