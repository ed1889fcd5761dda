r"""DICOM parity: every film of a folder, as a clinic's DICOM, predicted like its JPEG.

For each JPEG/PNG film below --image_dir, writes DICOM versions of its pixels (8 and 12
bits stored, MONOCHROME2 and MONOCHROME1, without and with a VOI window that covers the
data) and a 12-bit-in-16 PNG, runs cxr-predict (a subprocess, TensorFlow-free) on each
variant's folder and on the originals, and reports per variant: films, same decision,
max and mean |p - p_jpeg|. 12 bits stored are round(v * 4095 / 255), so windowing back
to 8 bits can differ from v by one grey level; 8-bit variants must agree exactly.

Usage (from the repository root):
  .venv/bin/python -m scripts.dicom_parity --model=EXPORT/model_int8.tflite \
      --image_dir=../shared/data/chest_xray/external [--out=parity.json]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from cxr_edge.edge import runtime
from tests import dicom_files
from cxr_edge.core import schema


def _twelve(v: np.ndarray) -> np.ndarray:
  return np.round(v.astype(np.float64) * 4095 / 255).astype(np.uint16)


# name -> (file suffix, bytes from the 8-bit pixels v)
VARIANTS = {
    "DICOM 8-bit MONOCHROME2": (".dcm", lambda v: dicom_files.encode_dicom(v)),
    "DICOM 8-bit MONOCHROME1": (".dcm", lambda v: dicom_files.encode_dicom(
        255 - v, photometric="MONOCHROME1")),
    "DICOM 8-bit MONOCHROME2, VOI window 128/256": (".dcm", lambda v: dicom_files.encode_dicom(
        v, window=(128, 256))),
    "DICOM 8-bit MONOCHROME1, VOI window 128/256": (".dcm", lambda v: dicom_files.encode_dicom(
        255 - v, photometric="MONOCHROME1", window=(128, 256))),
    "DICOM 12-bit MONOCHROME2": (".dcm", lambda v: dicom_files.encode_dicom(_twelve(v), bits=12)),
    "DICOM 12-bit MONOCHROME1": (".dcm", lambda v: dicom_files.encode_dicom(
        4095 - _twelve(v), bits=12, photometric="MONOCHROME1")),
    "DICOM 12-bit MONOCHROME2, VOI window 2048/4096": (".dcm", lambda v: dicom_files.encode_dicom(
        _twelve(v), bits=12, window=(2048, 4096))),
    "DICOM 12-bit MONOCHROME1, VOI window 2048/4096": (".dcm", lambda v: dicom_files.encode_dicom(
        4095 - _twelve(v), bits=12, photometric="MONOCHROME1", window=(2048, 4096))),
    "PNG 12 bits in 16": (".png", lambda v: _png16(_twelve(v))),
}


def _png16(values: np.ndarray) -> bytes:
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = io.BytesIO()
  Image.fromarray(values).save(out, format="PNG")
  return out.getvalue()


def _predict(model: str, folder: str, output: str) -> dict:
  r = subprocess.run([sys.executable, "-m", "cxr_edge.edge.predict", f"--model={model}",
                      f"--output={output}", folder], cwd=ROOT, capture_output=True, text=True,
                     check=False)
  if r.returncode != 0:
    sys.exit(f"cxr-predict failed on {folder}: {r.stderr[-1000:]}")
  with open(output, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return {os.path.relpath(row["path"], folder).rsplit(".", 1)[0]: row for row in rows}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", required=True, help="an exported .tflite (metadata beside it)")
  parser.add_argument("--image_dir", required=True, help="a folder of JPEG/PNG films")
  parser.add_argument("--out", help="also write the table as JSON here")
  args = parser.parse_args()
  films = sorted(os.path.relpath(os.path.join(root, f), args.image_dir)
                 for root, _, files in os.walk(args.image_dir) for f in files
                 if f.lower().endswith(schema.IMAGE_EXTENSIONS))
  if not films:
    sys.exit(f"no JPEG/PNG films below {args.image_dir}")
  start = time.monotonic()
  with tempfile.TemporaryDirectory(prefix="dicom_parity_") as tmp:
    reference = _predict(args.model, args.image_dir, os.path.join(tmp, "jpeg.jsonl"))
    results = []
    for k, (name, (suffix, make)) in enumerate(VARIANTS.items()):
      folder = os.path.join(tmp, f"v{k}")
      for rel in films:
        with open(os.path.join(args.image_dir, rel), "rb") as f:
          v = runtime.decode_grayscale(f.read())
        path = os.path.join(folder, os.path.splitext(rel)[0] + suffix)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
          f.write(make(v))
      got = _predict(args.model, folder, os.path.join(tmp, f"v{k}.jsonl"))
      keys = sorted(reference)
      same = sum(got[key]["prediction"] == reference[key]["prediction"] for key in keys)
      delta = np.array([abs(got[key]["p_pneumonia"] - reference[key]["p_pneumonia"])
                        for key in keys])
      results.append({"variant": name, "films": len(keys), "same_decision": same,
                      "max_abs_delta": float(delta.max()), "mean_abs_delta": float(delta.mean())})
      print(f"{name:48s} {same}/{len(keys)} same decision, |dp| max {delta.max():.4f}, "
            f"mean {delta.mean():.5f}", flush=True)
  print(f"({len(films)} films x {len(VARIANTS)} variants in {time.monotonic() - start:.0f} s; "
        f"model {args.model})")
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump({"model": args.model, "image_dir": args.image_dir, "variants": results}, f,
                indent=2)


if __name__ == "__main__":
  main()
