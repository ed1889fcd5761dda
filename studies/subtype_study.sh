#!/usr/bin/env bash
# The three-class study (docs/subtype_study.md): cxr-train --task=subtype with the binary
# default's recipe otherwise, seeds 42, 1 and 2, each exported and its int8 model scored
# on the external films; then the rule written before the runs, applied. The binary
# default is trained on the same conversion with the same seeds too, for a paired
# comparison of the binary figures (the rule compares with the binary six-seed study).
# Finished runs and exports are kept, so an interrupted study continues where it stopped.
# About 12-15 min per run on the 2-core machine this was measured on (six runs; the
# three-class runs' training time is printed).
# Usage: studies/subtype_study.sh DATA_DIR EXTERNAL_DIR OUT_DIR
#   DATA_DIR: cxr-convert output of the training images only, made by a cxr-convert that
#   keeps subtypes (manifest format 3)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_venv.sh"
cd "$ROOT"
DATA_DIR="$1"; EXTERNAL_DIR="$2"; OUT="$3"
mkdir -p "$OUT"
runs=(); baseline=()
for task in subtype binary; do
  for s in 42 1 2; do
    d="$OUT/${task}_$s"
    if [ ! -f "$d/model_info.json" ]; then
      rm -rf "$d"
      "$PY" -m cxr_edge.model.train --data_dir="$DATA_DIR" --model_dir="$d" --seed="$s" \
        --task="$task" --external_dir="$EXTERNAL_DIR"
    fi
    if [ "$task" = subtype ]; then runs+=("$d"); else baseline+=("$d"); fi
  done
done
"$PY" -m studies.subtype_study --data_dir="$DATA_DIR" --external_dir="$EXTERNAL_DIR" \
  --out="$OUT" --runs="$(IFS=,; echo "${runs[*]}")" \
  --baseline_runs="$(IFS=,; echo "${baseline[*]}")"
