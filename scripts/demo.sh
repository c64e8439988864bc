#!/usr/bin/env bash
# `make demo`: create and serve the offline world, plan and build a small LAS, report.
set -euo pipefail
OUT=${1:-out/demo}
BIN=.venv/bin
WORLD=$OUT/world
mkdir -p "$OUT"
if [ ! -f "$WORLD/world.json" ]; then
  rm -rf "$WORLD"
  $BIN/las world create "$WORLD" --seed 0 --preset demo
fi
$BIN/las world stop "$WORLD" >/dev/null 2>&1 || true
$BIN/las world serve "$WORLD" --detach
trap '$BIN/las world stop "$WORLD" >/dev/null 2>&1 || true' EXIT
LAS_STAC_URL=$($BIN/python -c "import json,sys; print(json.load(open(sys.argv[1]))['stac_url'])" "$WORLD/serve.json")
export LAS_STAC_URL
$BIN/las plan recipes/demo.yaml --set output.path="$OUT/las"
$BIN/las build recipes/demo.yaml --set output.path="$OUT/las"
$BIN/las inspect "$OUT/las" --samples 12
echo
echo "== las-builder demo =="
echo "offline world : $WORLD ($(du -sh "$WORLD" | cut -f1))"
echo "STAC API      : $LAS_STAC_URL (stopped when the demo ends)"
echo "shards        : $OUT/las/las.zarr"
echo "index         : $OUT/las/index.parquet"
echo "report        : $OUT/las/inspect/report.html"
$BIN/python - "$OUT/las" <<'PY'
import json, sys
summary = json.load(open(f"{sys.argv[1]}/inspect/summary.json"))
print("samples       :", json.dumps({k: v for k, v in summary.items() if k in ("samples", "ok", "skipped", "failed")}))
PY
