#!/usr/bin/env python3
"""Measures cxr-convert throughput: 1 worker (baseline) vs N workers, same run.

Usage:
  .venv/bin/python studies/benchmark_convert.py --input_dir=../shared/data/chest_xray

Each configuration converts the whole input into a fresh temp dir --repeats times; the
median wall time (TensorFlow import excluded) is reported. Last line: one JSON object.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pipeline import convert_lib  # pylint: disable=wrong-import-position


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--input_dir", default="../shared/data/chest_xray")
  parser.add_argument("--workers", type=int, default=os.cpu_count())
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  out = {"cpus": os.cpu_count()}
  for workers in sorted({1, args.workers}):
    rates, files = [], 0
    for _ in range(args.repeats):
      with tempfile.TemporaryDirectory() as tmp:
        r = convert_lib.convert(args.input_dir, tmp, num_workers=workers)
      files = r.manifest["num_files_found"]
      rates.append(files / r.seconds)
    out[f"images_per_s_{workers}_workers"] = round(statistics.median(rates), 1)
    print(f"{workers} worker(s): {files} files, median {statistics.median(rates):.0f} images/s "
          f"over {args.repeats} runs")
  out["speedup"] = round(out[f"images_per_s_{args.workers}_workers"] / out["images_per_s_1_workers"], 2)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
