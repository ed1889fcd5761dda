#!/usr/bin/env python3
"""Measures conversion throughput: the local converter and the Beam runner, same run.

Usage:
  .venv/bin/python -m studies.benchmark_convert --input_dir=../shared/data/chest_xray/train
  .venv/bin/python -m studies.benchmark_convert --runners=local   # without Apache Beam

Each configuration (runner x 1 and --workers worker processes) converts the whole input
into a fresh temp dir --repeats times; the median rate (files found / wall seconds,
TensorFlow's import excluded; Beam's worker start-up included, it is part of its cost)
is reported, and every rate as a ratio to the local converter with 1 worker, measured
in the same run. Last line: one JSON object.
"""
import argparse
import json
import os
import statistics
import tempfile

from cxr_edge.pipeline import convert_config
from cxr_edge.pipeline import convert_lib


def _convert(runner: str, input_dir: str, output_dir: str, workers: int):
  if runner == "beam":
    from cxr_edge.pipeline import convert_beam  # pylint: disable=g-import-not-at-top
    return convert_beam.convert(convert_config.ConvertOptions(
        input_dir=input_dir, output_dir=output_dir, num_workers=workers))
  return convert_lib.convert(convert_config.ConvertOptions(
      input_dir=input_dir, output_dir=output_dir, num_workers=workers))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--input_dir", default="../shared/data/chest_xray/train")
  parser.add_argument("--workers", type=int, default=os.cpu_count())
  parser.add_argument("--runners", default="local,beam")
  parser.add_argument("--repeats", type=int, default=1)
  args = parser.parse_args()
  out = {"cpus": os.cpu_count()}
  for runner in args.runners.split(","):
    for workers in sorted({1, args.workers}):
      rates, files = [], 0
      for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
          r = _convert(runner, args.input_dir, tmp, workers)
        files = r.manifest["num_files_found"]
        rates.append(files / r.seconds)
      rate = statistics.median(rates)
      out[f"{runner}_{workers}_workers_images_per_s"] = round(rate, 1)
      base = out.get("local_1_workers_images_per_s")
      ratio = f", {rate / base:.2f}x local 1 worker" if base else ""
      print(f"{runner}, {workers} worker(s): {files} files, median {rate:.0f} images/s over "
            f"{args.repeats} run(s){ratio}", flush=True)
  base = out.get("local_1_workers_images_per_s")
  if base:
    out["ratio_to_local_1_worker"] = {k.replace("_images_per_s", ""): round(v / base, 2)
                                      for k, v in out.items() if k.endswith("_images_per_s")}
  print(json.dumps(out))


if __name__ == "__main__":
  main()
