#!/usr/bin/env bash
# The external-validation study behind the default recipe (README, "Films from another
# source"; every table in docs/external_study.md): each recipe trained with three seeds,
# every run exported (float32, int8) and scored on the external films at the threshold it
# ships with, then the split-half evaluation of site calibration. With IMAGE_ROOT, the
# source article's recipe is run with seeds 0, 1, 2 as well and scored on the same films
# (slow: seed_cnn fed by ImageDataGenerator).
# Finished runs are kept, so an interrupted study continues where it stopped.
# One edge_cnn run of 30 epochs takes about 20-22 min on a 2-core AVX2 machine (4 min on a
# faster one); 40 epochs, about 27 min.
# The recipes in order: rotation+zoom, + brightness+contrast (both without weight decay,
# as they were measured), and + weight decay 0.5 (all three keeping the best validation
# epoch, as every run did before the default kept the last), at the default threshold rule
# (prevalence 0.625). Then the same runs at 0.5 (the previous rule), the rotation+zoom
# runs at the rule before that, the TTA/ensemble probe, and the later levers that were not
# adopted, each on the recipe before weight decay (histogram equalization over three
# seeds, 224-px input for 15 epochs, mixup on seed 42, translation on seeds 42 and 1, EMA
# of the weights on seeds 42 and 1, stronger rotation and zoom over three seeds, label
# smoothing on seeds 42 and 1), the threshold/ensemble bound before weight decay and for
# the default, sites with other shares of PNEUMONIA (the shipped threshold vs
# cxr-calibrate --prevalence), the previous default (seed 42) for the README's first
# comparison, which epoch to keep (best by validation or last), paired on three
# deterministic default runs (seeds 3, 4, 5), and weight decay 1.0 paired with those runs
# (not adopted), test-time augmentation on those runs (int8, fixed warps), and the default
# over three more deterministic seeds (6, 7, 8) and all six, weight decay 1.0 paired
# with those three as well (its six pairs), a one-seed probe of 224-px input, and the
# three-seed study of 224 px within the time budget that the probe led to (not adopted),
# and 40 epochs at 150 px (the default since) on seeds 3, 4, 5, then on 6, 7, 8.
# Usage: studies/external_study.sh DATA_DIR EXTERNAL_DIR OUT_DIR [IMAGE_ROOT]
#   DATA_DIR: cxr-convert output of the training images only (never the external films)
#   IMAGE_ROOT: the --input_dir DATA_DIR was converted from (the article's loader reads JPEGs)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_venv.sh"
cd "$ROOT"
DATA_DIR="$1"; EXTERNAL_DIR="$2"; OUT="$3"; IMAGE_ROOT="${4:-}"
mkdir -p "$OUT"
SEEDS="42 1 2"
# train_runs PREFIX SEEDS FLAGS...: trains $OUT/PREFIX_<seed> for each seed with
# cxr-train's defaults plus FLAGS (a finished run is kept); RUNS holds the run folders.
# Every recipe before the 40-epoch default trained 30 epochs: BEFORE_40 pins that for
# train_runs and the two trainings outside it (FLAGS can say otherwise: cxr-train takes a
# repeated flag's last value).
# TRAIN is the trainer ($PY's arguments before the flags).
TRAIN=(-m cxr_edge.model.train)
BEFORE_40=(--epochs=30)
train_runs() {
  local prefix="$1" seeds="$2" s d
  shift 2
  RUNS=()
  for s in $seeds; do
    d="$OUT/${prefix}_$s"
    if [ ! -f "$d/model_info.json" ]; then
      rm -rf "$d"
      "$PY" "${TRAIN[@]}" --data_dir="$DATA_DIR" --model_dir="$d" --seed="$s" \
        --external_dir="$EXTERNAL_DIR" "${BEFORE_40[@]}" "$@"
    fi
    RUNS+=("$d")
  done
}
joined() { (IFS=,; echo "$*"); }
# score NAME ARGS...: studies/external_study.py with ARGS; its JSON goes to $OUT/NAME and
# every export to one cache, $OUT/exports (a run is exported once per threshold rule).
score() {
  local name="$1"
  shift
  "$PY" -m studies.external_study --data_dir="$DATA_DIR" --external_dir="$EXTERNAL_DIR" \
    --exports="$OUT/exports" --out="$OUT/$name" "$@"
}
# Every recipe measured before weight decay joined the default is reproduced without it,
# and every run before the default kept the last epoch keeps the best one, as they did.
BEFORE_LAST=(--keep_epoch=best)
BEFORE_WD=(--weight_decay=0 "${BEFORE_LAST[@]}")
train_runs rotation+zoom "$SEEDS" --augment=rotation,zoom "${BEFORE_WD[@]}"
groups=("--group=rotation+zoom=$(joined "${RUNS[@]}")")
train_runs rotation+zoom+brightness+contrast "$SEEDS" "${BEFORE_WD[@]}"
previous_runs=("${RUNS[@]}")
groups+=("--group=rotation+zoom+brightness+contrast=$(joined "${RUNS[@]}")")
train_runs default "$SEEDS" "${BEFORE_LAST[@]}"
default_runs=("${RUNS[@]}")
groups+=("--group=default=$(joined "${RUNS[@]}")")
articles=()
if [ -n "$IMAGE_ROOT" ]; then
  for s in 0 1 2; do
    if [ ! -f "$OUT/article_$s/article_baseline.json" ]; then
      "$PY" -m studies.article_baseline --data_dir="$DATA_DIR" --image_root="$IMAGE_ROOT" \
        --output_dir="$OUT/article_$s" --seed="$s" --external_dir="$EXTERNAL_DIR"
    fi
    articles+=("$OUT/article_$s/article_baseline.json")
  done
fi
score external "${groups[@]}" --calibrate_group=default \
  ${articles:+--article="$(IFS=,; echo "${articles[*]}")"}
echo "== the same runs at 0.5 (cxr-train's previous threshold rule, --threshold_rule=balanced)"
score external_balanced "${groups[@]}" --calibrate_group=default --threshold_rule=balanced
echo "== the rotation+zoom runs at the rule before that (validation Youden J)"
score external_youden "${groups[0]}" --threshold_rule=youden
echo "== the probe for the next lever (before weight decay): test-time augmentation and a"
echo "   seed ensemble of the rotation+zoom+brightness+contrast runs"
"$PY" -m studies.probe_tta_ensemble --data_dir="$DATA_DIR" --external_dir="$EXTERNAL_DIR" \
  "${previous_runs[@]}"

echo "== later levers, not adopted: histogram equalization (3 seeds), 224-px input (seed 42)"
TRAIN=(-m studies.with_study_models --equalize cxr_edge.model.train)
train_runs equalize "$SEEDS" "${BEFORE_WD[@]}"
TRAIN=(-m cxr_edge.model.train)
score external_equalize --equalize --threshold_rule=balanced \
  "--group=equalize=$(joined "${RUNS[@]}")"
# lever NAME PREFIX SEEDS LABEL FLAGS...: the recipe before weight decay plus FLAGS, one
# run per seed (train_runs), scored as one group (score external_NAME) at 0.5 (the
# threshold rule the levers were compared at).
lever() {
  local name="$1" prefix="$2" seeds="$3" label="$4"
  shift 4
  train_runs "$prefix" "$seeds" "${BEFORE_WD[@]}" "$@"
  score external_$name --threshold_rule=balanced "--group=$label=$(joined "${RUNS[@]}")"
}
# 15 epochs: 224 px costs ~2.2x per epoch, and the recipe must train within 30 min.
lever 224 size224 42 "224 px, 15 epochs" --image_size=224 --epochs=15
echo "== mixup (alpha 0.2), not adopted: stopped after seed 42 (its pair of the default lost 0.016 of ROC-AUC)"
lever mixup mixup02 42 "mixup 0.2" --mixup=0.2
echo "== + translation (shift ±10%) on the default augmentation, not adopted: stopped after"
echo "   seeds 42 and 1 (the equalization rule's accuracy criterion could no longer be met)"
lever translation translation "42 1" "+ translation" \
  --augment=rotation,zoom,brightness,contrast,translation
echo "== weight averaging (EMA, momentum 0.999), not adopted: stopped after seeds 42 and 1"
echo "   (the rule's ROC-AUC criterion would have needed 0.9902 from seed 2)"
lever ema ema0999 "42 1" "EMA 0.999" --ema_momentum=0.999
echo "== stronger geometric augmentation (rotation ±30°, zoom ±40%), not adopted (3 seeds)"
lever geometry rotation30_zoom04 "$SEEDS" "rotation 30 + zoom 0.4" --rotation_deg=30 --zoom=0.4
echo "== label smoothing 0.1, not adopted: stopped after seeds 42 and 1 (the rule's ROC-AUC"
echo "   criterion would have needed 1.003 from seed 2)"
lever label_smoothing label_smoothing01 "42 1" "label smoothing 0.1" --label_smoothing=0.1
echo "== could a threshold, or a three-run ensemble, meet the targets? (a bound: its best"
echo "   thresholds are chosen on the external films themselves); before weight decay, then the default"
for prefix in rotation+zoom+brightness+contrast default; do
  int8=()
  for s in $SEEDS; do
    int8+=("$OUT/exports/balanced/export_${prefix}_$s/model_int8.tflite")
  done
  "$PY" -m studies.operating_points --at_prevalence --external_dir="$EXTERNAL_DIR" "${int8[@]}"
done
echo "== sites with another share of PNEUMONIA: the shipped threshold vs cxr-calibrate --prevalence"
int8=()
for s in $SEEDS; do
  int8+=("$OUT/exports/prevalence/export_default_$s/model_int8.tflite")
done
"$PY" -m studies.site_prevalence --external_dir="$EXTERNAL_DIR" "${int8[@]}"
echo "== the previous default (brightness + contrast, threshold by validation Youden J), seed 42"
d="$OUT/previous_default_42"
if [ ! -f "$d/model_info.json" ]; then
  rm -rf "$d"
  "$PY" -m cxr_edge.model.train --data_dir="$DATA_DIR" --model_dir="$d" --augment=brightness,contrast \
    --threshold_rule=youden --seed=42 --external_dir="$EXTERNAL_DIR" "${BEFORE_40[@]}" \
    "${BEFORE_WD[@]}"
fi
score external_previous --threshold_rule=youden "--group=previous default=$d"
echo "== which epoch to keep: best by validation (the default before) or the last (the"
echo "   default since), paired on three deterministic runs (seeds 3, 4, 5), each finished"
echo "   again on a copy with --keep_epoch=last (no training: both epochs' weights are kept)"
train_runs default_det "3 4 5" --deterministic "${BEFORE_LAST[@]}"
best_runs=("${RUNS[@]}")
last_runs=()
for d in "${best_runs[@]}"; do
  if ! grep -qs '"keep_epoch": "last"' "${d}_last/model_info.json"; then
    rm -rf "${d}_last"
    cp -r "$d" "${d}_last"
    "$PY" -m cxr_edge.model.train --data_dir="$DATA_DIR" --model_dir="${d}_last" --seed="${d##*_}" \
      --external_dir="$EXTERNAL_DIR" --deterministic --keep_epoch=last "${BEFORE_40[@]}"
  fi
  last_runs+=("${d}_last")
done
score external_keep_epoch "--group=best epoch=$(joined "${best_runs[@]}")" \
  "--group=last epoch=$(joined "${last_runs[@]}")" --calibrate_group=none
echo "== weight decay 1.0 (twice the default's 0.5), not adopted: paired with the default's"
echo "   last-epoch runs above (same seeds 3, 4, 5, deterministic: same initial weights and"
echo "   data order), its ROC-AUC gain fell short of the rule's +0.003"
train_runs wd1_det "3 4 5" --deterministic --weight_decay=1.0
score external_weight_decay_1 "--group=default=$(joined "${last_runs[@]}")" \
  "--group=weight decay 1.0=$(joined "${RUNS[@]}")" --calibrate_group=none
echo "== test-time augmentation on the default's three deterministic runs above: int8 via the"
echo "   edge runtime, fixed warps, re-centred by its validation shift (not adopted unless"
echo "   its rule held: docs/external_study.md)"
"$PY" -m studies.probe_tta_ensemble --data_dir="$DATA_DIR" --external_dir="$EXTERNAL_DIR" \
  --exports="$OUT/exports" "${last_runs[@]}"
echo "== the default over three more deterministic seeds (6, 7, 8; trained with the default"
echo "   --keep_epoch=last), and over all six"
train_runs default_det "6 7 8" --deterministic
default_later=("${RUNS[@]}")
score external_seeds_3_8 "--group=default, seeds 3-5=$(joined "${last_runs[@]}")" \
  "--group=default, seeds 6-8=$(joined "${RUNS[@]}")" \
  "--group=default, seeds 3-8=$(joined "${last_runs[@]}" "${RUNS[@]}")" --calibrate_group=none
echo "== weight decay 1.0 again, on the three further seeds (6, 7, 8), paired with the"
echo "   default's runs just above; its rule (docs/external_study.md) is on all six pairs"
train_runs wd1_det "6 7 8" --deterministic --weight_decay=1.0
wd1_later=("${RUNS[@]}")
train_runs wd1_det "3 4 5" --deterministic --weight_decay=1.0
score external_weight_decay_1_seeds_3_8 \
  "--group=default, seeds 6-8=$(joined "${default_later[@]}")" \
  "--group=weight decay 1.0, seeds 6-8=$(joined "${wd1_later[@]}")" \
  "--group=default, seeds 3-8=$(joined "${last_runs[@]}" "${default_later[@]}")" \
  "--group=weight decay 1.0, seeds 3-8=$(joined "${RUNS[@]}" "${wd1_later[@]}")" \
  --calibrate_group=none
echo "== input resolution, a probe on one seed: 224 px (the films' own size) for 30 epochs"
echo "   (about 2x the time per epoch, over the 30-minute budget) and for 20 epochs (within"
echo "   it), paired with the default's seed 3"
train_runs res224_det "3" --deterministic --image_size=224
res224=("${RUNS[@]}")
train_runs res224e20_det "3" --deterministic --image_size=224 --epochs=20
score external_resolution_probe "--group=default=${last_runs[0]}" \
  "--group=224 px, 30 epochs=${res224[0]}" "--group=224 px, 20 epochs=${RUNS[0]}" \
  --calibrate_group=none
echo "== 224 px for 22 epochs (within the budget), seeds 3, 4, 5, paired with the default's"
echo "   runs, not adopted: its mean ROC-AUC gain fell short of the rule's +0.003"
train_runs res224e22_det "3 4 5" --deterministic --image_size=224 --epochs=22
score external_resolution "--group=default=$(joined "${last_runs[@]}")" \
  "--group=224 px, 22 epochs=$(joined "${RUNS[@]}")" --calibrate_group=none
echo "== 40 epochs at 150 px (the default since), seeds 3, 4, 5, paired with the 30-epoch"
echo "   default's runs; adopted by its rule (docs/external_study.md), written before its runs"
train_runs epochs40_det "3 4 5" --deterministic --epochs=40
epochs40_first=("${RUNS[@]}")
score external_epochs "--group=default=$(joined "${last_runs[@]}")" \
  "--group=40 epochs=$(joined "${RUNS[@]}")" --calibrate_group=none
echo "== the 40-epoch default over three more deterministic seeds (6, 7, 8) and over all"
echo "   six, as its rule asked, beside the 30-epoch default's runs of the same seeds"
train_runs epochs40_det "6 7 8" --deterministic --epochs=40
score external_epochs_seeds_3_8 "--group=30 epochs, seeds 6-8=$(joined "${default_later[@]}")" \
  "--group=40 epochs, seeds 6-8=$(joined "${RUNS[@]}")" \
  "--group=30 epochs, seeds 3-8=$(joined "${last_runs[@]}" "${default_later[@]}")" \
  "--group=40 epochs, seeds 3-8=$(joined "${epochs40_first[@]}" "${RUNS[@]}")" \
  --calibrate_group=none
