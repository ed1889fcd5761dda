#!/usr/bin/env bash
# Does `cxr-train --deterministic` repeat a run bit for bit on the full data, and what does
# it cost? Four 2-epoch runs of the default recipe (seed 42), alternating plain and
# deterministic so that load on a shared machine falls on both, then the weights compared
# pair by pair with their training seconds. About 10 min on 2 quiet cores.
# Usage: studies/determinism_check.sh DATA_DIR OUT_DIR
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_venv.sh"
cd "$ROOT"
DATA_DIR="$1"; OUT="$2"
mkdir -p "$OUT"
for i in 1 2; do
  for mode in plain det; do
    extra=()
    [ "$mode" = det ] && extra=(--deterministic)
    "$PY" -m cxr_edge.model.train --data_dir="$DATA_DIR" --model_dir="$OUT/${mode}_$i" --epochs=2 \
      --overwrite "${extra[@]}"
  done
done
"$PY" -m studies.same_weights "$OUT/det_1" "$OUT/det_2" "$OUT/plain_1" "$OUT/plain_2"
