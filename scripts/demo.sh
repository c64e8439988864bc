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
# A short CPU training run (benchmarks/train_acceptance.py trains the full 1400 steps, ~15 min).
DEMO_STEPS=${DEMO_STEPS:-150}
RESUME=""
[ -f "$OUT/model/checkpoints/last.pt" ] && RESUME="--resume"   # a rerun continues, not restarts
LAS_DATASET="$OUT/las" $BIN/las train configs/train-tiny.yaml \
  --set optim.steps="$DEMO_STEPS" --set threads=1 --set out_dir="$OUT/model" $RESUME
$BIN/las eval "$OUT/model" "$OUT/las" --truth "$WORLD" --quiet
echo
echo "== las-builder demo =="
echo "offline world : $WORLD ($(du -sh "$WORLD" | cut -f1))"
echo "STAC API      : $LAS_STAC_URL (stopped when the demo ends)"
echo "shards        : $OUT/las/las.zarr"
echo "index         : $OUT/las/index.parquet"
echo "report        : $OUT/las/inspect/report.html"
echo "model         : $OUT/model/checkpoints/last.pt"
$BIN/python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
summary = json.load(open(f"{out}/las/inspect/summary.json"))
counts = {k: summary[k] for k in ("samples", "ok", "skipped", "failed")}
print(f"samples       : {counts['samples']} planned, {counts['ok']} built, "
      f"{counts['skipped']} skipped, {counts['failed']} failed")
truth = json.load(open(f"{out}/model/metrics.json"))["truth"]
print(f"mIoU vs truth : model {truth['model']['miou']:.3f} (held-out samples), "
      f"best weak label {truth['best_label_product']} {truth['best_label_miou']:.3f}")
PY
