#!/usr/bin/env python3
"""The source article's recipe on our patient-grouped split, for a like-for-like comparison.

Usage:
  .venv/bin/python -m studies.article_baseline --data_dir=/tmp/cxr_records \
      --image_root=../shared/data/chest_xray/train --output_dir=/tmp/article --epochs=30 \
      --external_dir=../shared/data/chest_xray/external

seed_cnn, Adam 1e-3 (constant), batch 32, 150x150 grayscale, fed by Keras
ImageDataGenerator.flow_from_directory with the article's experiment V augmentation
(rotation 20, zoom 0.3), trained on the train split of --data_dir (files linked from
--image_root) and scored at threshold 0.5, as the article does, on its test split and,
with --external_dir, on that class-folder tree (films from another source). Writes
article_baseline.json (wall time, metrics per data set) and predictions.csv (every
scored film's probability, so intervals and other thresholds can be computed later).
Prints the JSON.
"""
import argparse
import csv
import json
import os
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import numpy as np
import tf_keras as keras

from cxr_edge.core import metrics
from cxr_edge.core import schema
from cxr_edge.model import models
from cxr_edge.pipeline import dataset


def link_split(data_dir: str, split: str, image_root: str, dest: str) -> int:
  """Symlinks the split's source files into dest/<LABEL>/ (flow_from_directory layout)."""
  r = dataset.read_split(data_dir, split)
  for n, (rel, label) in enumerate(zip(r.filenames, r.labels)):
    folder = os.path.join(dest, schema.LABELS[label])
    os.makedirs(folder, exist_ok=True)
    os.symlink(os.path.abspath(os.path.join(image_root, rel)),
               os.path.join(folder, f"{n:05d}_{os.path.basename(rel)}"))
  return len(r.labels)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--image_root", required=True, help="the --input_dir of the conversion")
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--epochs", type=int, default=30)
  parser.add_argument("--external_dir", default=None,
                      help="a class-folder tree (NORMAL/, PNEUMONIA/) scored too, never trained on")
  parser.add_argument("--seed", type=int, default=0,
                      help="seeds weights, shuffling and augmentation; run several to see the spread")
  args = parser.parse_args()
  keras.utils.set_random_seed(args.seed)
  os.makedirs(args.output_dir, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    for split in ("train", "test"):
      link_split(args.data_dir, split, args.image_root, os.path.join(tmp, split))
    kw = dict(target_size=(150, 150), color_mode="grayscale", batch_size=32,
              class_mode="binary", classes=list(schema.LABELS))
    train = keras.preprocessing.image.ImageDataGenerator(
        rescale=1 / 255, rotation_range=20, zoom_range=0.3).flow_from_directory(
            os.path.join(tmp, "train"), shuffle=True, seed=args.seed, **kw)
    plain = keras.preprocessing.image.ImageDataGenerator(rescale=1 / 255)
    sets = {"test": plain.flow_from_directory(os.path.join(tmp, "test"), shuffle=False, **kw)}
    if args.external_dir:
      sets["external"] = plain.flow_from_directory(args.external_dir, shuffle=False, **kw)
    model = models.seed_cnn(150)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", ["accuracy"])
    start = time.monotonic()
    model.fit(train, epochs=args.epochs, verbose=2)
    seconds = time.monotonic() - start
    result = {"recipe": "article: seed_cnn + ImageDataGenerator (rotation 20, zoom 0.3)",
              "epochs": args.epochs, "seed": args.seed, "train_seconds": round(seconds, 1)}
    rows = []
    for name, flow in sets.items():
      p = model.predict(flow, verbose=0)[:, 1].astype(np.float64)
      y = flow.classes
      result[name] = {"images": int(len(y)), "roc_auc": metrics.roc_auc(y, p),
                      **{k: v for k, v in metrics.at_threshold(y, p, 0.5).items()
                         if k != "confusion_matrix"}}
      rows += [(name, f, schema.LABELS[int(c)], f"{q:.6f}")
               for f, c, q in zip(flow.filenames, y, p)]
  # The test split's figures stay at the top level, as earlier results files have them.
  result.update(result["test"])
  with open(os.path.join(args.output_dir, "predictions.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["set", "file", "label", "probability"])
    w.writerows(rows)
  with open(os.path.join(args.output_dir, "article_baseline.json"), "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
