#!/usr/bin/env bash
# How the previous default augmentation (brightness + contrast) was chosen on validation,
# and how it compares with the source article's recipe on the internal test split, with
# three seeds each. Kept to reproduce that README table; the current default was chosen
# on external films (studies/external_study.sh).
#   1. edge_cnn with brightness / brightness+contrast / brightness+translation, seeds
#      42, 1, 2, compared on the VALIDATION split (the choice: lowest mean log loss);
#   2. the article's recipe (studies/article_baseline.py) with seeds 0, 1, 2;
#   3. the default and the article's recipe, all seeds, on the TEST split.
# Finished runs are kept, so an interrupted study continues where it stopped.
# About 1.5 hours on 2 quiet CPU cores (9 x ~3.6 min + 3 x ~20 min).
# Usage: studies/seed_study.sh DATA_DIR IMAGE_ROOT OUT_DIR [EPOCHS]
#   IMAGE_ROOT: the --input_dir DATA_DIR was converted from (the article's loader reads JPEGs)
# Runs are scored at their validation Youden-J threshold (compare_runs.py), as then.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_venv.sh"
cd "$ROOT"
DATA_DIR="$1"; IMAGE_ROOT="$2"; OUT="$3"; EPOCHS="${4:-30}"
mkdir -p "$OUT"
SEEDS="42 1 2"
groups=()
for aug in brightness brightness,contrast brightness,translation; do
  dirs=()
  for s in $SEEDS; do
    d="$OUT/${aug/,/+}_$s"
    if [ ! -f "$d/model_info.json" ]; then
      rm -rf "$d"
      # --weight_decay=0: these recipes were measured before weight decay was the default.
      "$PY" -m cxr_edge.model.train --data_dir="$DATA_DIR" --model_dir="$d" --augment="$aug" --seed="$s" \
        --epochs="$EPOCHS" --weight_decay=0
    fi
    dirs+=("$d")
  done
  groups+=("--group=$aug=$(IFS=,; echo "${dirs[*]}")")
done
articles=()
for s in 0 1 2; do
  if [ ! -f "$OUT/article_$s/article_baseline.json" ]; then
    "$PY" -m studies.article_baseline --data_dir="$DATA_DIR" --image_root="$IMAGE_ROOT" \
      --output_dir="$OUT/article_$s" --epochs="$EPOCHS" --seed="$s"
  fi
  articles+=("$OUT/article_$s/article_baseline.json")
done
echo "== choosing on validation"
"$PY" -m studies.compare_runs --data_dir="$DATA_DIR" --split=val "${groups[@]}"
echo "== test split: the previous default (brightness,contrast) and the article's recipe"
"$PY" -m studies.compare_runs --data_dir="$DATA_DIR" --split=test "${groups[1]}" \
  --article="$(IFS=,; echo "${articles[*]}")"
