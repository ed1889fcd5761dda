#!/usr/bin/env python3
"""A probe, not a product feature: would test-time augmentation or a seed ensemble rank
external films better?

Usage:
  .venv/bin/python studies/probe_tta_ensemble.py \
      --external_dir=../shared/data/chest_xray/external /tmp/study/rz_42 /tmp/study/rz_1
  .venv/bin/python studies/probe_tta_ensemble.py --data_dir=/tmp/rec \
      --external_dir=../shared/data/chest_xray/external /tmp/study/rz_42 /tmp/study/rz_1

For each cxr-train run (float Keras model): external ROC-AUC as is, and with the logit
margin averaged over the film and 8 seeded random variants (rotation +-10 deg, zoom
+-15%: the training warp at half strength); then the same for the runs' mean margin (an
ensemble). Accuracy, sensitivity and specificity at 0.5 are printed too: augmented
variants shift the scores, so a product version would need its own threshold. With
--data_dir, one candidate rule: subtract the mean shift (TTA margin minus plain margin)
measured on the validation split, so the external films choose nothing.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import numpy as np  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position

from model import metrics  # pylint: disable=wrong-import-position
from model import model_dir as model_dir_lib  # pylint: disable=wrong-import-position
from model import models  # pylint: disable=wrong-import-position
from pipeline import augment  # pylint: disable=wrong-import-position
from pipeline import augment_config  # pylint: disable=wrong-import-position
from pipeline import dataset  # pylint: disable=wrong-import-position

VARIANTS = 8
TTA = augment_config.AugmentConfig(rotation_deg=10.0, zoom=0.15)


def _line(name: str, y: np.ndarray, margin: np.ndarray) -> str:
  d = metrics.at_threshold(y, metrics.sigmoid(margin), 0.5)
  return (f"| {name} | {metrics.roc_auc(y, margin):.4f} | " + " | ".join(
      f"{100 * d[k]:.1f}" for k in ("accuracy", "sensitivity", "specificity")) + " |")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--external_dir", required=True)
  parser.add_argument("--data_dir", default=None,
                      help="the runs' conversion: re-centre TTA by its validation shift")
  parser.add_argument("runs", nargs="+", help="cxr-train directories")
  args = parser.parse_args()
  folder, val = None, None
  plain, tta, centred = [], [], []
  print("| model | ROC-AUC | accuracy % at 0.5 | sensitivity % | specificity % |\n"
        "| --- | --- | --- | --- | --- |")
  for run in args.runs:
    model, info = model_dir_lib.load_model_dir(run)
    if folder is None:
      folder = dataset.load_image_folder(args.external_dir, info["image_size"])
      if args.data_dir:
        val = dataset.read_split(args.data_dir, "val", info["image_size"])
    logits = models.logits_model(model)

    def margin(images):
      out = np.concatenate([logits(images[i:i + 64]).numpy() for i in range(0, len(images), 64)])
      return out[:, 1] - out[:, 0]

    def tta_margin(images):
      return np.mean([margin(images)] + [
          margin(augment.augment_batch(tf.constant(images), tf.constant([7, k], tf.int64),
                                       TTA).numpy()) for k in range(VARIANTS)], axis=0)

    m = margin(folder.images)
    plain.append(m)
    tta.append(tta_margin(folder.images))
    name = os.path.basename(run.rstrip("/"))
    print(_line(name, folder.labels, m))
    print(_line(f"{name}, TTA x{VARIANTS + 1}", folder.labels, tta[-1]))
    if val is not None:
      shift = float(np.mean(tta_margin(val.images) - margin(val.images)))
      centred.append(tta[-1] - shift)
      print(_line(f"{name}, TTA x{VARIANTS + 1} - validation shift {shift:.3f}",
                  folder.labels, centred[-1]))
  if len(args.runs) > 1:
    print(_line(f"ensemble of {len(args.runs)}", folder.labels, np.mean(plain, axis=0)))
    print(_line(f"ensemble of {len(args.runs)}, TTA x{VARIANTS + 1}", folder.labels,
                np.mean(tta, axis=0)))
  if centred:
    means = [metrics.at_threshold(folder.labels, metrics.sigmoid(c), 0.5) for c in centred]
    print(f"| mean of the {len(centred)} re-centred TTA runs | "
          f"{np.mean([metrics.roc_auc(folder.labels, c) for c in centred]):.4f} | "
          + " | ".join(f"{100 * np.mean([d[k] for d in means]):.1f}"
                       for k in ("accuracy", "sensitivity", "specificity")) + " |")


if __name__ == "__main__":
  main()
