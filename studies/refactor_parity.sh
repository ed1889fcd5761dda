#!/usr/bin/env bash
# Whether a refactoring changed behaviour: the embedded sample converted, trained
# (--deterministic, 2 epochs), exported and predicted by a checkout, into OUT; compare
# two such outputs with `python -m studies.refactor_parity A B`.
#
# Usage (from a checkout, with the project's venv):
#   studies/refactor_parity.sh OUT [PYTHON]
#   git worktree add /tmp/before REV && (cd /tmp/before && PREFIX= \
#       /path/to/this/checkout/studies/refactor_parity.sh /tmp/parity/before)
# PREFIX is the jobs' module prefix: "cxr_edge." (the default) for this layout, empty
# for a checkout from before the cxr_edge namespace (run from that checkout's root).
set -euo pipefail
OUT="$1"
PY="${2:-${PY:-.venv/bin/python}}"
P="${PREFIX-cxr_edge.}"
rm -rf "$OUT"
mkdir -p "$OUT"
"$PY" -m "${P}pipeline.convert" --input_dir=data/sample --output_dir="$OUT/records" \
  --seed=42 --num_workers=2
"$PY" -m "${P}model.train" --data_dir="$OUT/records" --model_dir="$OUT/model" --epochs=2 \
  --deterministic --seed=7
"$PY" -m "${P}export.export" --model_dir="$OUT/model" --data_dir="$OUT/records" \
  --export_dir="$OUT/export" --latency_runs=5 --variants=float32 --variants=int8
for v in int8 float32; do
  "$PY" -m "${P}edge.predict" --model="$OUT/export/model_$v.tflite" \
    --output="$OUT/pred_$v.jsonl" data/sample || true  # a skipped README is not a failure
done
