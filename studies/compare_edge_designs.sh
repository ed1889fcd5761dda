#!/usr/bin/env bash
# int8 vs float32 TFLite size and 1-thread latency of edge_cnn vs edge_dwsep_cnn, measured
# in one run. Both ratios depend on the architecture, not on how well it is trained, so a
# short training is enough; accuracy from this script means nothing.
# Usage: studies/compare_edge_designs.sh DATA_DIR OUT_DIR
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_venv.sh"
cd "$ROOT"
DATA_DIR="$1"; OUT="$2"
for model in edge_cnn edge_dwsep_cnn; do
  rm -rf "$OUT/$model"
  "$PY" -m studies.with_study_models cxr_edge.model.train --data_dir="$DATA_DIR" --model_dir="$OUT/$model/model" --model="$model" \
    --epochs=1 --steps_per_epoch=20 --cache=none
  "$PY" -m studies.with_study_models cxr_edge.export.export --model_dir="$OUT/$model/model" --data_dir="$DATA_DIR" \
    --export_dir="$OUT/$model/export" --variants=float32 --variants=int8 \
    --latency_runs=300 > /dev/null
done
"$PY" - "$OUT" <<'PY'
import json, os, sys
print("| model | params | float32 KB | int8 KB | int8 size / float32 | int8 p50 / float32 p50 (1 thread) |")
print("| --- | --- | --- | --- | --- | --- |")
for model in ("edge_cnn", "edge_dwsep_cnn"):
  r = json.load(open(os.path.join(sys.argv[1], model, "export", "export_report.json")))["variants"]
  from studies import models as study_models
  from cxr_edge.model import model_dir as model_dir_lib
  study_models.register()
  params = model_dir_lib.load_model_dir(os.path.join(sys.argv[1], model, "model"))[0].count_params()
  print(f"| {model} | {params:,} | {r['float32']['bytes'] / 1024:.0f} | {r['int8']['bytes'] / 1024:.0f} | "
        f"{r['int8']['size_vs_float32']:.3f} | {r['int8']['latency_p50_1_thread_vs_float32']:.3f} |")
PY
