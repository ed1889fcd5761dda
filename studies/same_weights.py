#!/usr/bin/env python3
"""Whether cxr-train runs ended with the same weights, bit for bit, and what each cost.

Usage:
  .venv/bin/python -m studies.same_weights /tmp/repro/det_1 /tmp/repro/det_2 \
      /tmp/repro/plain_1 /tmp/repro/plain_2

Runs are compared in the order given, in pairs (1st with 2nd, 3rd with 4th, ...): for
each pair, "identical" or the largest absolute weight difference, and each run's
training seconds (model_info's train_seconds_this_run). A saved model.keras file itself
differs between identical runs (it stores the save time), hence the weights.
"""
import argparse
import os
from typing import List

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np

from cxr_edge.core import cli
from cxr_edge.model import model_dir as model_dir_lib


def largest_difference(a: List[np.ndarray], b: List[np.ndarray]) -> float:
  """Max |a - b| over every weight; inf if the two do not have the same shapes."""
  if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
    return float("inf")
  return max((float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in zip(a, b)
              if x.size), default=0.0)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("model_dirs", nargs="+", help="finished cxr-train outputs, in pairs")
  args = parser.parse_args()
  if len(args.model_dirs) % 2:
    parser.error("give the runs in pairs")
  for first, second in zip(args.model_dirs[::2], args.model_dirs[1::2]):
    try:
      with cli.native_stderr_quiet():  # the first model load probes for CUDA on stderr
        runs = [model_dir_lib.load_model_dir(d) for d in (first, second)]
    except FileNotFoundError as e:
      parser.error(str(e))
    diff = largest_difference(*([w.numpy() for w in m.weights] for m, _ in runs))
    seconds = " vs ".join(f"{info.get('train_seconds_this_run', float('nan')):.1f} s"
                          for _, info in runs)
    print(f"{first} vs {second}: "
          f"{'identical' if diff == 0 else f'max |difference| {diff:.3g}'}; training {seconds}")


if __name__ == "__main__":
  main()
