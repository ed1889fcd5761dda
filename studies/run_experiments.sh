#!/usr/bin/env bash
# The source article's experiments I-V on our pipeline and patient-grouped split, with a
# shorter epoch budget, each scored on the test split; then a markdown table.
# Usage: studies/run_experiments.sh DATA_DIR OUT_DIR [EPOCHS]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_venv.sh"
cd "$ROOT"
DATA_DIR="$1"; OUT="$2"; EPOCHS="${3:-10}"
mkdir -p "$OUT"
# The article's experiments as augmentations (its epochs were 30, and 80 for V).
declare -A AUGMENT=([I]=none [II]=rotation [III]=zoom [IV]=brightness [V]=rotation,zoom)
for exp in I II III IV V; do
  if [ ! -f "$OUT/$exp/eval/metrics.json" ]; then
    rm -rf "$OUT/$exp"
    # The article's network and optimizer (constant Adam 1e-3, no weight decay, unweighted
    # classes).
    "$PY" -m cxr_edge.model.train --data_dir="$DATA_DIR" --model_dir="$OUT/$exp/model" --model=seed_cnn \
      --augment="${AUGMENT[$exp]}" --epochs="$EPOCHS" --lr_schedule=constant --class_weight=none \
      --weight_decay=0
    "$PY" -m cxr_edge.model.evaluate --model_dir="$OUT/$exp/model" --data_dir="$DATA_DIR" --split=test \
      --output_dir="$OUT/$exp/eval"
  fi
done
"$PY" - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
article = {"I": 87.1, "II": 90.0, "III": 93.9, "IV": 87.8, "V": 95.0}
print("| experiment | augmentation | epochs | article accuracy (leaky split) | accuracy @0.5 | sensitivity @0.5 | specificity @0.5 | ROC-AUC |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for exp in article:
  m = json.load(open(os.path.join(out, exp, "eval", "metrics.json")))
  info = json.load(open(os.path.join(out, exp, "model", "model_info.json")))
  h = m["at_0_5"]
  print(f"| {exp} | {', '.join(info['augment']) or 'none'} | {info['epochs']} | {article[exp]} | "
        f"{100 * h['accuracy']:.1f} | {100 * h['sensitivity']:.1f} | {100 * h['specificity']:.1f} | {m['roc_auc']:.4f} |")
PY
