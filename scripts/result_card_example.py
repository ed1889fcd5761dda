"""Writes docs/result_card.png: the result card cxr-node sends for a film of the embedded
sample, with the released model (what docs/clinic_node.md shows).

Usage:
  .venv/bin/python -m scripts.result_card_example [OUT.png] [--film=PATH]
"""
import argparse
import os

from PIL import Image

from cxr_edge.edge import released
from cxr_edge.edge import runtime
from cxr_edge.node import card

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "data", "sample", "PNEUMONIA")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("out", nargs="?", default=os.path.join(ROOT, "docs", "result_card.png"))
  parser.add_argument("--film", default=os.path.join(SAMPLE, sorted(os.listdir(SAMPLE))[0]))
  args = parser.parse_args()
  model = runtime.LiteModel(released.resolve(None))
  with open(args.film, "rb") as f:
    data = f.read()
  result = model.predict_bytes(data)
  rgb = card.render(runtime.film_gray(data), result, model.info)
  Image.fromarray(rgb).save(args.out, optimize=True)
  print(f"result_card_example: {args.out} ({result['prediction']}, "
        f"p={result['p_pneumonia']:.3f}; {os.path.getsize(args.out):,} bytes)")


if __name__ == "__main__":
  main()
