#!/usr/bin/env python3
"""Measures training step time: one process against two MultiWorkerMirroredStrategy
workers on this machine (localhost, TF_CONFIG), same run.

Usage:
  .venv/bin/python -m studies.benchmark_multi_worker --data_dir=/tmp/cxr_records

Both train the same model for --epochs x --steps steps at --batch_size per replica (the
two workers' global batch is twice that); each reports its training seconds
(model_info.json's train_seconds_this_run, validation passes included). On one machine
the two workers share its cores and add a ring all-reduce over loopback every step, so
expect them to be slower per image; the point of the strategy is more machines. Last
line: one JSON object with the ratios.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train(args, model_dir: str, workers: int) -> float:
  """Training seconds of the chief (or the single process)."""
  command = [sys.executable, "-m", "cxr_edge.model.train", f"--data_dir={args.data_dir}",
             f"--model_dir={model_dir}", f"--model={args.model}",
             f"--image_size={args.image_size}", f"--epochs={args.epochs}",
             f"--steps_per_epoch={args.steps}", f"--batch_size={args.batch_size}"]
  if workers == 1:
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
  else:
    cluster = {"worker": [f"127.0.0.1:{_free_port()}" for _ in range(workers)]}
    procs = [subprocess.Popen(command + ["--strategy=multi_worker"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=dict(os.environ, TF_CONFIG=json.dumps(
                                  {"cluster": cluster, "task": {"type": "worker", "index": i}})))
             for i in range(workers)]
    for p in procs:
      if p.wait() != 0:
        raise SystemExit(f"a worker failed (status {p.returncode}); rerun cxr-train by hand")
  with open(os.path.join(model_dir, "model_info.json"), encoding="utf-8") as f:
    return json.load(f)["train_seconds_this_run"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", required=True, help="a cxr-convert output")
  parser.add_argument("--model", default="edge_cnn")
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--epochs", type=int, default=2)
  args = parser.parse_args()
  out = {"cpus": os.cpu_count()}
  steps = args.steps * args.epochs
  with tempfile.TemporaryDirectory() as tmp:
    for workers in (1, 2):
      seconds = _train(args, os.path.join(tmp, f"w{workers}"), workers)
      images = steps * args.batch_size * workers
      out[f"{workers}_process_step_s"] = round(seconds / steps, 3)
      out[f"{workers}_process_images_per_s"] = round(images / seconds, 1)
      print(f"{workers} process(es): {steps} steps of {args.batch_size * workers} images in "
            f"{seconds:.1f} s ({seconds / steps:.3f} s/step, {images / seconds:.0f} images/s)",
            flush=True)
  out["step_time_ratio"] = round(out["2_process_step_s"] / out["1_process_step_s"], 2)
  out["images_per_s_ratio"] = round(out["2_process_images_per_s"] / out["1_process_images_per_s"], 2)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
