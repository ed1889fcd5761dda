#!/usr/bin/env python3
"""A bound, not a product feature: could any threshold meet the external-validation targets together?

Usage:
  .venv/bin/python -m studies.operating_points \
      --external_dir=../shared/data/chest_xray/external \
      /tmp/study/external/balanced/export_rotation+zoom+brightness+contrast_42/model_int8.tflite

For each TFLite model, through the edge runtime as cxr-predict runs it: accuracy,
sensitivity and specificity (95% Wilson intervals) at the threshold it ships with, then
at the best threshold chosen on these same films (an oracle: it sees the labels it is scored on, so it is an
upper bound for any threshold rule), both under the targets' sensitivity and specificity
floors and without them. If even the oracle misses a target, no threshold rule can meet
it for that model: the ranking (ROC-AUC) has to improve.

With --at_prevalence, also the threshold a site could set from its prevalence alone,
without labelled films (cxr_edge.core.thresholds.at_prevalence; 1 - prevalence for balanced
class weights), here with the prevalence of these films (so it uses their class balance,
though no single label).
"""
import argparse
import os
from typing import Dict, List, Optional

import numpy as np

from cxr_edge.core import metrics
from cxr_edge.core import thresholds
from cxr_edge.edge import calibrate_lib
from cxr_edge.edge import runtime

KEYS = ("accuracy", "sensitivity", "specificity")


def at(labels: np.ndarray, p: np.ndarray, threshold: float) -> Dict[str, float]:
  """Accuracy, sensitivity, specificity of p >= threshold."""
  d = metrics.at_threshold(labels, p, threshold)
  return dict({k: d[k] for k in KEYS}, ci95=d["ci95"])


def best(labels: np.ndarray, p: np.ndarray, min_sensitivity: float = 0.0,
         min_specificity: float = 0.0) -> Optional[Dict[str, float]]:
  """The most accurate threshold among the scores (ties: the lowest), within the floors."""
  found = None
  for t in np.unique(np.concatenate([p, [np.inf]])):
    d = at(labels, p, float(t))
    if d["sensitivity"] < min_sensitivity or d["specificity"] < min_specificity:
      continue
    if found is None or d["accuracy"] > found["accuracy"]:
      found = dict(d, threshold=float(t))
  return found


def _cells(d: Optional[Dict[str, float]]) -> str:
  if d is None:
    return "none | | |"
  return " | ".join(metrics.format_interval(d[k], d["ci95"][k]) for k in KEYS) + (
      f" | {d['threshold']:.4f}" if "threshold" in d else " |")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--external_dir", required=True)
  parser.add_argument("--min_sensitivity", type=float, default=0.97)
  parser.add_argument("--min_specificity", type=float, default=0.88)
  parser.add_argument("--at_prevalence", action="store_true",
                      help="also score each model at the films' prevalence (Bayes' rule)")
  parser.add_argument("models", nargs="+", help="TFLite files")
  args = parser.parse_args()
  rows: List[str] = []
  shipped, bounded, wrong, outputs, by_prevalence = [], [], [], [], []
  for path in args.models:
    model = runtime.LiteModel(path)
    films = calibrate_lib.score_films(model, args.external_dir)
    p = calibrate_lib.probabilities(model, films.logits)
    y = films.labels
    outputs.append(films.logits)
    name = os.path.basename(os.path.dirname(path)) + "/" + os.path.basename(path)
    here = dict(at(y, p, model.threshold), threshold=model.threshold)
    within = best(y, p, args.min_sensitivity, args.min_specificity)
    shipped.append(here)
    wrong.append((p >= model.threshold).astype(int) != y)
    bounded.append(within)
    rows += [f"| {name} | {metrics.roc_auc(y, p):.4f} | shipped | {_cells(here)} |",
             f"| | | best within the floors | {_cells(within)} |",
             f"| | | best, no floors | {_cells(best(y, p))} |"]
    if args.at_prevalence:
      t = thresholds.at_prevalence(float(np.mean(y)), calibrate_lib.package_prior(model))
      by_prevalence.append(at(y, p, t))
      rows.append(f"| | | at the films' prevalence | "
                  f"{_cells(dict(by_prevalence[-1], threshold=t))} |")
  if len(args.models) > 1:
    # The models' mean output (logit margin, or probability for older models): does
    # averaging away the seed-to-seed differences rank better?
    p = calibrate_lib.probabilities(model, np.mean(outputs, axis=0))
    rows += [f"| ensemble (mean output) | {metrics.roc_auc(y, p):.4f} | 0.5 | "
             f"{_cells(dict(at(y, p, 0.5), threshold=0.5))} |",
             f"| | | best within the floors | "
             f"{_cells(best(y, p, args.min_sensitivity, args.min_specificity))} |"]
  print(f"External films: {args.external_dir}. Floors: sensitivity >= {args.min_sensitivity}, "
        f"specificity >= {args.min_specificity}; 'best' thresholds are chosen on these films "
        "(an upper bound).")
  print("| model | ROC-AUC | operating point | accuracy % | sensitivity % | specificity % | "
        "threshold |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  print("\n".join(rows))
  mean = lambda ds, k: 100 * float(np.mean([d[k] for d in ds]))
  print("mean over the models at their shipped thresholds: " + ", ".join(
      f"{k} {mean(shipped, k):.1f}%" for k in KEYS))
  if by_prevalence:
    print("mean at the films' prevalence: " + ", ".join(
        f"{k} {mean(by_prevalence, k):.1f}%" for k in KEYS))
  if all(d is not None for d in bounded):
    print("mean at the best thresholds within the floors: " + ", ".join(
        f"{k} {mean(bounded, k):.1f}%" for k in KEYS))
  else:
    print(f"{sum(d is None for d in bounded)} of {len(bounded)} models have no threshold "
          "within the floors")
  every = np.all(wrong, axis=0)
  print(f"films wrong at the shipped threshold: {np.sum(np.any(wrong, axis=0))} in some "
        f"model, {np.sum(every)} in every model ({np.sum(every & (y == 0))} NORMAL, "
        f"{np.sum(every & (y == 1))} PNEUMONIA; errors per model: "
        f"{', '.join(str(int(np.sum(w))) for w in wrong)})")


if __name__ == "__main__":
  main()
