#!/usr/bin/env python3
"""What a site's share of PNEUMONIA does to a fixed threshold, and what --prevalence recovers.

Usage:
  .venv/bin/python -m studies.site_prevalence \
      --external_dir=../shared/data/chest_xray/external --prevalences=0.1,0.3,0.5,0.625,0.8 \
      /tmp/study/external/prevalence/export_default_42/model_int8.tflite ...

A site whose films show PNEUMONIA in a share P is simulated by reweighting the external
films by class (no film is dropped): sensitivity and specificity at a threshold do not
depend on P, and the site's accuracy is P x sensitivity + (1 - P) x specificity. For
each P and each TFLite model (through the edge runtime, as cxr-predict runs it) the table
gives that accuracy at the threshold the model ships with, at 0.5, and at the threshold
`cxr-calibrate --prevalence=P` would set (core/thresholds.py at_prevalence; it
uses P, not the films' labels), as means over the models with their range.
"""
import argparse
from typing import Dict, List

import numpy as np

from cxr_edge.core import metrics
from cxr_edge.core import thresholds
from cxr_edge.edge import calibrate_lib
from cxr_edge.edge import runtime


def site_accuracy(labels: np.ndarray, p: np.ndarray, threshold: float,
                  prevalence: float) -> float:
  """Accuracy of p >= threshold where a share `prevalence` of films shows PNEUMONIA."""
  d = metrics.at_threshold(labels, p, threshold)
  return prevalence * d["sensitivity"] + (1.0 - prevalence) * d["specificity"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--external_dir", required=True)
  parser.add_argument("--prevalences", default="0.1,0.3,0.5,0.625,0.8",
                      help="comma-separated site shares of PNEUMONIA")
  parser.add_argument("models", nargs="+", help="TFLite files exported by cxr-export")
  args = parser.parse_args()
  prevalences = [float(v) for v in args.prevalences.split(",")]
  scored = []
  for path in args.models:
    model = runtime.LiteModel(path)
    films = calibrate_lib.score_films(model, args.external_dir)
    scored.append((model, films.labels, calibrate_lib.probabilities(model, films.logits)))
  print(f"External films: {args.external_dir}, reweighted by class to each site share; "
        f"accuracy %, mean over {len(scored)} models (range)")
  print("| site share of PNEUMONIA | shipped threshold | at 0.5 | cxr-calibrate --prevalence "
        "| its threshold | its sensitivity % | its specificity % |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  for prevalence in prevalences:
    cells: Dict[str, List[float]] = {"shipped": [], "half": [], "site": [],
                                     "sensitivity": [], "specificity": []}
    site_thresholds = set()
    for model, y, p in scored:
      site = thresholds.at_prevalence(prevalence, calibrate_lib.package_prior(model))
      site_thresholds.add(f"{site:.3f}")
      for name, t in (("shipped", model.threshold), ("half", 0.5), ("site", site)):
        cells[name].append(100 * site_accuracy(y, p, t, prevalence))
      d = metrics.at_threshold(y, p, site)
      cells["sensitivity"].append(100 * d["sensitivity"])
      cells["specificity"].append(100 * d["specificity"])
    text = {k: f"{np.mean(v):.1f} ({min(v):.1f}-{max(v):.1f})" for k, v in cells.items()}
    print(f"| {prevalence:g} | {text['shipped']} | {text['half']} | {text['site']} | "
          f"{', '.join(sorted(site_thresholds))} | {text['sensitivity']} | "
          f"{text['specificity']} |")


if __name__ == "__main__":
  main()
