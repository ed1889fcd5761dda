#!/usr/bin/env python3
"""Compares groups of training runs (e.g. one recipe with several seeds) on one split.

Usage:
  # choose between recipes on validation only:
  .venv/bin/python -m studies.compare_runs --data_dir=/tmp/rec --split=val \
      --group=default=/tmp/m42,/tmp/m1,/tmp/m2 --group=contrast=/tmp/c42,/tmp/c1,/tmp/c2
  # then score the chosen one, and the article recipe's runs, on test:
  .venv/bin/python -m studies.compare_runs --data_dir=/tmp/rec --split=test \
      --group=default=/tmp/m42,/tmp/m1,/tmp/m2 \
      --article=/tmp/article_s0/article_baseline.json,/tmp/article_s1/article_baseline.json

Each cxr-train directory is scored at the threshold the current rule
(cxr_edge.core.thresholds.on_scores) picks on its validation predictions, so runs trained
before a rule change are compared on equal terms. Article-recipe results
(studies/article_baseline.py JSON, test split at 0.5) are listed as they are. Prints a
Markdown table: one row per run, then each group's mean.
"""
import argparse
import json
import os
from typing import Dict, List

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import numpy as np

from cxr_edge.core import metrics
from cxr_edge.core import thresholds
from cxr_edge.model import inference
from cxr_edge.model import model_dir as model_dir_lib
from cxr_edge.pipeline import dataset
from studies import groups

COLUMNS = ("accuracy", "sensitivity", "specificity", "roc_auc", "log_loss", "brier", "errors")


def score_run(model_dir: str, data_dir: str, split: str) -> Dict[str, float]:
  """One cxr-train run's metrics on `split` at its validation-chosen threshold."""
  model, info = model_dir_lib.load_model_dir(model_dir)
  val = inference.predict_split(model, data_dir, "val", info["image_size"])
  threshold = thresholds.on_scores(val["label"], val["probability"],
                                       info.get("target_sensitivity"))
  out = val if split == "val" else inference.predict_split(model, data_dir, split,
                                                           info["image_size"])
  y, p = out["label"], out["probability"]
  m = metrics.at_threshold(y, p, threshold)
  c = metrics.confusion(y, p, threshold)
  return {"threshold": threshold, "accuracy": m["accuracy"], "sensitivity": m["sensitivity"],
          "specificity": m["specificity"], "roc_auc": metrics.roc_auc(y, p),
          "log_loss": metrics.log_loss(y, p), "brier": metrics.brier(y, p),
          "errors": float(c["fp"] + c["fn"])}


def _row(name: str, r: Dict[str, float]) -> str:
  cells = []
  for c in COLUMNS:
    v = r.get(c)
    if v is None:
      cells.append("")
    elif c in ("accuracy", "sensitivity", "specificity"):
      cells.append(f"{100 * v:.2f}")
    elif c == "errors":
      cells.append(f"{v:.3g}")
    else:
      cells.append(f"{v:.4f}")
  thr = f"{r['threshold']:.4f}" if "threshold" in r else ""
  return f"| {name} | {thr} | " + " | ".join(cells) + " |"


def _mean(rows: List[Dict[str, float]]) -> Dict[str, float]:
  return {c: float(np.mean([r[c] for r in rows])) for c in COLUMNS if all(c in r for r in rows)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", required=True, help="the cxr-convert output trained on")
  parser.add_argument("--split", choices=("val", "test"), default="val")
  parser.add_argument("--group", action="append", default=[],
                      help="NAME=DIR[,DIR...]: cxr-train directories of one recipe")
  parser.add_argument("--article", default="",
                      help="comma-separated article_baseline.json files (test split only)")
  args = parser.parse_args()
  if args.article and args.split != "test":
    parser.error("--article results are on the test split; use --split=test")
  print(f"{args.split} split of {args.data_dir}")
  print("| run | threshold | " + " | ".join(COLUMNS) + " |")
  print("| --- " * (len(COLUMNS) + 2) + "|")
  means = []
  for name, dirs in groups.parse(parser, args.group):
    rows = []
    for d in dirs:
      rows.append(score_run(d, args.data_dir, args.split))
      print(_row(f"{name}: {os.path.basename(d.rstrip('/'))}", rows[-1]), flush=True)
    means.append((name, _mean(rows), len(rows)))
  if args.article:
    test_images = dataset.split_size(args.data_dir, "test")
    rows = []
    for path in args.article.split(","):
      with open(path, encoding="utf-8") as f:
        r = json.load(f)
      r["errors"] = round((1 - r["accuracy"]) * test_images)
      rows.append(r)
      print(_row(f"article recipe: seed {r.get('seed', 0)}", r))
    means.append(("article recipe", _mean(rows), len(rows)))
  for name, m, n in means:
    print(_row(f"**{name}: mean of {n}**", m))


if __name__ == "__main__":
  main()
