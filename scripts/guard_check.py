r"""Measures the plausibility guard (core/guard.py): real films must never be flagged,
things that are not chest radiographs should be.

Real: every film below --image_dir (several allowed). Synthetic, made here from a seed:
blanks and near-blanks, noise, smooth gradients, colour images, and every real film
inverted (MONOCHROME1 read as MONOCHROME2). Prints flags per set and the guard's cost per
film (decode excluded: it is shared with the prediction).

Usage (from the repository root):
  .venv/bin/python -m scripts.guard_check --image_dir=../shared/data/chest_xray/train \
      --image_dir=../shared/data/chest_xray/external
"""
import argparse
import collections
import io
import os
import time

import numpy as np
from PIL import Image

from cxr_edge.core import guard
from cxr_edge.core import schema
from cxr_edge.edge import runtime


def _jpeg(array: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(array.astype(np.uint8)).save(out, format="JPEG", quality=95)
  return out.getvalue()


def synthetic(rng: np.random.Generator, n: int = 50):
  """name -> list of encoded images that are not chest radiographs."""
  side = 224
  yy, xx = np.mgrid[0:side, 0:side] / (side - 1)
  sets = collections.OrderedDict()
  sets["blank and near-blank"] = [_jpeg(np.clip(np.full((side, side), v) + rng.normal(0, s, (side, side)), 0, 255))
                                  for v, s in zip(rng.integers(0, 256, n), rng.uniform(0, 4, n))]
  sets["noise (uniform, Gaussian)"] = [_jpeg(rng.integers(0, 256, (side, side))) for _ in range(n // 2)] + [
      _jpeg(np.clip(rng.normal(128, rng.uniform(20, 80), (side, side)), 0, 255)) for _ in range(n - n // 2)]
  grads = []
  for _ in range(n):
    a, b = rng.uniform(0, 255, 2)
    kind = rng.integers(0, 4)
    t = [xx, yy, (xx + yy) / 2, np.hypot(xx - 0.5, yy - 0.5) / 0.71][kind]
    grads.append(_jpeg(a + (b - a) * t))
  sets["smooth gradients"] = grads
  colours = []
  for _ in range(n):
    base = np.stack([rng.uniform(0, 255) + rng.uniform(-120, 120) * t for t in (xx, yy, xx * yy)], -1)
    noise = rng.normal(0, 25, (side, side, 3))
    colours.append(_jpeg(np.clip(base + noise, 0, 255)))
  sets["colour images"] = colours
  return sets


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--image_dir", action="append", required=True)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  real = []
  for folder in args.image_dir:
    real += sorted(os.path.join(root, f) for root, _, files in os.walk(folder) for f in files
                   if f.lower().endswith(schema.IMAGE_EXTENSIONS))
  rng = np.random.default_rng(args.seed)
  sets = collections.OrderedDict()
  sets[f"real films ({', '.join(args.image_dir)})"] = [open(p, "rb").read() for p in real]
  sets.update(synthetic(rng))
  sets["real films inverted"] = [_jpeg(255 - runtime.decode_grayscale(d))
                                 for d in sets[next(iter(sets))]]
  seconds, calls = 0.0, 0
  print("| inputs | images | flagged | reasons |\n| --- | --- | --- | --- |")
  for name, items in sets.items():
    reasons = collections.Counter()
    for data in items:
      gray = runtime.decode_grayscale(data)
      start = time.perf_counter()
      reason = guard.check(gray, guard.chroma(data), runtime.resize_bilinear)
      seconds += time.perf_counter() - start
      calls += 1
      if reason:
        reasons[reason.split(" (")[0].split(":")[0]] += 1
    flagged = sum(reasons.values())
    print(f"| {name} | {len(items)} | {flagged} ({100 * flagged / len(items):.1f}%) | "
          + ", ".join(f"{k} {v}" for k, v in reasons.most_common()) + " |")
  print(f"\nguard cost: {1000 * seconds / calls:.2f} ms per image (mean over {calls}; decode "
        "excluded)")


if __name__ == "__main__":
  main()
