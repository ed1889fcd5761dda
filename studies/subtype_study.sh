#!/usr/bin/env bash
# The three-class study (docs/subtype_study.md): cxr-train --task=subtype with the binary
# default's recipe otherwise, seeds 42, 1 and 2, each exported and its int8 model scored
# on the external films; then the rule written before the runs, applied.
# Finished runs and exports are kept, so an interrupted study continues where it stopped.
# About 10-12 min per run on the 2-core machine this was measured on (the runs'
# training time is printed).
# Usage: studies/subtype_study.sh DATA_DIR EXTERNAL_DIR OUT_DIR
#   DATA_DIR: cxr-convert output of the training images only, made by a cxr-convert that
#   keeps subtypes (manifest format 3)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_venv.sh"
cd "$ROOT"
DATA_DIR="$1"; EXTERNAL_DIR="$2"; OUT="$3"
mkdir -p "$OUT"
runs=()
for s in 42 1 2; do
  d="$OUT/subtype_$s"
  if [ ! -f "$d/model_info.json" ]; then
    rm -rf "$d"
    "$PY" -m cxr_edge.model.train --data_dir="$DATA_DIR" --model_dir="$d" --seed="$s" \
      --task=subtype --external_dir="$EXTERNAL_DIR"
  fi
  runs+=("$d")
done
"$PY" -m studies.subtype_study --data_dir="$DATA_DIR" --external_dir="$EXTERNAL_DIR" \
  --out="$OUT" --runs="$(IFS=,; echo "${runs[*]}")"
