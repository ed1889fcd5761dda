#!/usr/bin/env bash
# The main job, end to end on the embedded sample (or INPUT_DIR), into OUT_DIR.
# Usage: scripts/run.sh            # data/sample -> out/
#        INPUT_DIR=../shared/data/chest_xray OUT_DIR=/tmp/cxr scripts/run.sh
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$ROOT"
INPUT_DIR="${INPUT_DIR:-data/sample}"
OUT_DIR="${OUT_DIR:-out}"
mkdir -p "$OUT_DIR"

echo "== 1/2 convert $INPUT_DIR -> $OUT_DIR/records"
"$PY" -m pipeline.convert --input_dir="$INPUT_DIR" --output_dir="$OUT_DIR/records" --overwrite
echo "== 2/2 verify $OUT_DIR/records"
"$PY" -m pipeline.verify --tfrecord_dir="$OUT_DIR/records"

echo
echo "Done. Results:"
echo "  TFRecords + manifest: $OUT_DIR/records (manifest.json lists splits, shards, rejects)"
