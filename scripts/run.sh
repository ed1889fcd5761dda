#!/usr/bin/env bash
# The main job, end to end on the embedded sample (or INPUT_DIR), into OUT_DIR:
# convert -> verify -> train -> evaluate on the held-out test split (and on EXTERNAL_DIR,
# films from another source, when given) -> quantization-aware fine-tuning -> export ->
# predict.
# Usage: scripts/run.sh            # data/sample -> out/, a few epochs
#        INPUT_DIR=../shared/data/chest_xray/train EXTERNAL_DIR=../shared/data/chest_xray/external \
#          OUT_DIR=/tmp/cxr EPOCHS=40 scripts/run.sh
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$ROOT"
INPUT_DIR="${INPUT_DIR:-data/sample}"
OUT_DIR="${OUT_DIR:-out}"
EPOCHS="${EPOCHS:-8}"
MODEL="${MODEL:-edge_cnn}"
EXTERNAL_DIR="${EXTERNAL_DIR:-}"
EXT=()
if [ -n "$EXTERNAL_DIR" ]; then EXT=(--external_dir="$EXTERNAL_DIR"); fi
mkdir -p "$OUT_DIR"

echo "== 1/6 convert $INPUT_DIR -> $OUT_DIR/records"
"$PY" -m cxr_edge.pipeline.convert --input_dir="$INPUT_DIR" --output_dir="$OUT_DIR/records" --overwrite
echo "== 2/6 verify $OUT_DIR/records"
"$PY" -m cxr_edge.pipeline.verify --tfrecord_dir="$OUT_DIR/records"
echo "== 3/6 train $MODEL for $EPOCHS epochs -> $OUT_DIR/model"
rm -rf "$OUT_DIR/model"
"$PY" -m cxr_edge.model.train --data_dir="$OUT_DIR/records" --model_dir="$OUT_DIR/model" \
  --model="$MODEL" --epochs="$EPOCHS" "${EXT[@]}"
echo "== 4/6 evaluate on the test split -> $OUT_DIR/eval"
"$PY" -m cxr_edge.model.evaluate --model_dir="$OUT_DIR/model" --data_dir="$OUT_DIR/records" \
  --split=test --output_dir="$OUT_DIR/eval" --overwrite
if [ -n "$EXTERNAL_DIR" ]; then
  echo "== 4/6 evaluate on the external films $EXTERNAL_DIR -> $OUT_DIR/eval_external"
  "$PY" -m cxr_edge.model.evaluate --model_dir="$OUT_DIR/model" --image_dir="$EXTERNAL_DIR" \
    --output_dir="$OUT_DIR/eval_external" --overwrite
fi
echo "== 5/6 quantization-aware fine-tuning -> $OUT_DIR/model_qat; export SavedModel + TFLite -> $OUT_DIR/export"
rm -rf "$OUT_DIR/model_qat"
"$PY" -m cxr_edge.model.train --qat --init_from="$OUT_DIR/model" --data_dir="$OUT_DIR/records" \
  --model_dir="$OUT_DIR/model_qat" --epochs=1
"$PY" -m cxr_edge.export.export --model_dir="$OUT_DIR/model" --qat_model_dir="$OUT_DIR/model_qat" \
  --data_dir="$OUT_DIR/records" --export_dir="$OUT_DIR/export" --overwrite --latency_runs=50 \
  "${EXT[@]}"
echo "== 6/6 edge predictor (int8, no TensorFlow needed) on $INPUT_DIR -> $OUT_DIR/predictions.jsonl"
"$PY" -m cxr_edge.edge.predict --model="$OUT_DIR/export/model_int8.tflite" \
  --output="$OUT_DIR/predictions.jsonl" "$INPUT_DIR"

echo
echo "Done. In $OUT_DIR: records/ (TFRecords, manifest), model/ and model_qat/ (models, curves),"
echo "eval/ (test-split metrics and plots), export/ (SavedModel, TFLite, report), predictions.jsonl."
