#!/usr/bin/env bash
# The released model: the default recipe trained once on the full training set, exported
# (float32 and int8, scored on the external films) and laid into the TensorFlow-free
# package (edge/released/), with RELEASE.json recording what made it. One run, one seed:
# nothing is picked among runs by their external figures.
#
# Usage: scripts/release_model.sh TRAIN_DIR EXTERNAL_DIR WORK_DIR
#   scripts/release_model.sh ../shared/data/chest_xray/train \
#       ../shared/data/chest_xray/external /tmp/cxr_release
# Then review `git diff edge/released`, add the new version to CHANGELOG.md (the script
# prints its figures) and commit both together. Finished steps in WORK_DIR are kept, so an
# interrupted release continues where it stopped; delete WORK_DIR to start afresh.
# About 20 minutes on a 2-core CPU machine (training is most of it).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$ROOT"
if [ $# -ne 3 ]; then
  echo "usage: scripts/release_model.sh TRAIN_DIR EXTERNAL_DIR WORK_DIR" >&2; exit 2
fi
TRAIN_DIR="$1"; EXTERNAL_DIR="$2"; WORK="$3"
SEED=42
mkdir -p "$WORK"
start=$(date +%s)

if [ ! -f "$WORK/records/manifest.json" ]; then
  echo "== 1/5 convert $TRAIN_DIR -> $WORK/records"
  "$PY" -m cxr_edge.pipeline.convert --input_dir="$TRAIN_DIR" --output_dir="$WORK/records" \
    --seed="$SEED" --overwrite
fi
echo "== 2/5 verify $WORK/records"
"$PY" -m cxr_edge.pipeline.verify --tfrecord_dir="$WORK/records"
if [ ! -f "$WORK/model/model_info.json" ]; then
  echo "== 3/5 train the default recipe (seed $SEED) -> $WORK/model"
  "$PY" -m cxr_edge.model.train --data_dir="$WORK/records" --model_dir="$WORK/model" \
    --seed="$SEED" --external_dir="$EXTERNAL_DIR"
fi
echo "== 4/5 export float32 and int8, scored on $EXTERNAL_DIR -> $WORK/export"
"$PY" -m cxr_edge.export.export --model_dir="$WORK/model" --data_dir="$WORK/records" \
  --export_dir="$WORK/export" --variants=float32 --variants=int8 \
  --external_dir="$EXTERNAL_DIR" --model_kind=released --overwrite
echo "== 5/5 lay the package into edge/released/"
"$PY" -m scripts.release_model --export_dir="$WORK/export" --model_dir="$WORK/model" \
  --external_dir="$EXTERNAL_DIR" --command="scripts/release_model.sh $*" \
  --wall_seconds="$(( $(date +%s) - start ))"
