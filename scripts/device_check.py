r"""A device install's check: films to predict, and the comparison of two cxr-predict
outputs (the device's against those made where the bundle was built).

Usage:
  .venv/bin/python -m scripts.device_check films OUT_DIR [--per_class=3]  # in the repo
  python3 device_check.py compare expected.jsonl here.jsonl [--tolerance=0.02]

scripts/device_bundle.sh puts the films, their expected records and this file into a
bundle's check/ folder; `compare` needs only the standard library, so it runs on the
device. scripts/check_arm64.sh runs the same commands inside an emulated arm64 system.

`films` writes the embedded sample's first films of each class as they are (JPEG) and
as DICOM: 12-bit uncompressed, MONOCHROME1, JPEG 2000 and JPEG-LS (the compressed ones
need the decoders the device install brings where they have wheels).

`compare` matches records by file name and exits 1 unless every film was predicted on
both, with the same decision, and probabilities within the tolerance; it prints the
largest difference.
"""
import argparse
import glob
import io
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def films(out_dir: str, per_class: int) -> int:
  # In the repository only (the device runs `compare` alone, with the standard library).
  # pylint: disable=g-import-not-at-top
  import numpy as np
  from PIL import Image
  from pydicom import uid
  from tests import dicom_files
  # pylint: enable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  count = 0
  for label in ("NORMAL", "PNEUMONIA"):
    for path in sorted(glob.glob(os.path.join(ROOT, "data", "sample", label, "*.jpeg")))[
        :per_class]:
      name = os.path.splitext(os.path.basename(path))[0]
      with open(path, "rb") as f:
        data = f.read()
      with open(os.path.join(out_dir, name + ".jpeg"), "wb") as f:
        f.write(data)
      gray = np.asarray(Image.open(io.BytesIO(data)).convert("L"), np.uint16)
      variants = {
          "dx12": dicom_files.encode_dicom(gray * 16, bits=12),
          "mono1": dicom_files.encode_dicom(4095 - gray * 16, bits=12,
                                            photometric="MONOCHROME1"),
          "j2k": dicom_files.encode_dicom(gray * 16, bits=12, syntax=uid.JPEG2000Lossless),
          "jpegls": dicom_files.encode_dicom(gray * 16, bits=12, syntax=uid.JPEGLSLossless),
      }
      for kind, dicom in variants.items():
        with open(os.path.join(out_dir, f"{name}.{kind}.dcm"), "wb") as f:
          f.write(dicom)
      count += 1 + len(variants)
  return count


def _records(path: str, problems):
  """The records by film name; a name twice is a problem (the second would hide the
  first's result)."""
  records = {}
  with open(path, encoding="utf-8") as f:
    for r in map(json.loads, f):
      name = os.path.basename(r["path"])
      if name in records:
        problems.append(f"two films named {name} in {path}: give each a unique name")
      records[name] = r
  return records


def tolerance_value(text: str) -> float:
  """--tolerance: a finite number >= 0 (nan compares false with everything: it passed)."""
  value = float(text)
  if not 0.0 <= value < float("inf"):
    raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {text!r}")
  return value


def compare(a_path: str, b_path: str, tolerance: float) -> bool:
  if not 0.0 <= tolerance < float("inf"):
    raise ValueError(f"tolerance must be a finite number >= 0, not {tolerance}")
  problems = []
  a, b = _records(a_path, problems), _records(b_path, problems)
  if set(a) != set(b):
    problems.append(f"films differ: only in {a_path}: {sorted(set(a) - set(b))}, only in "
                    f"{b_path}: {sorted(set(b) - set(a))}")
  worst, name_of_worst = 0.0, None
  for name in sorted(set(a) & set(b)):
    ra, rb = a[name], b[name]
    if "p_pneumonia" not in ra or "p_pneumonia" not in rb:
      problems.append(f"{name}: {ra.get('error')!r} / {rb.get('error')!r}")
      continue
    diff = abs(ra["p_pneumonia"] - rb["p_pneumonia"])
    if diff > worst:
      worst, name_of_worst = diff, name
    if ra["prediction"] != rb["prediction"]:
      problems.append(f"{name}: {ra['prediction']} ({ra['p_pneumonia']}) vs "
                      f"{rb['prediction']} ({rb['p_pneumonia']})")
    elif diff > tolerance:
      problems.append(f"{name}: p_pneumonia {ra['p_pneumonia']} vs {rb['p_pneumonia']}")
    # A three-class model's parts of p_pneumonia, and its subtype.
    for key in ("p_bacterial", "p_viral"):
      if key in ra and key in rb and abs(ra[key] - rb[key]) > tolerance:
        problems.append(f"{name}: {key} {ra[key]} vs {rb[key]}")
    if ra.get("subtype") != rb.get("subtype"):
      problems.append(f"{name}: subtype {ra.get('subtype')} vs {rb.get('subtype')}")
  print(f"device_check: {len(set(a) & set(b))} films on both; same decision on "
        f"{sum(1 for n in set(a) & set(b) if a[n].get('prediction') == b[n].get('prediction'))}"
        f"; largest |p_pneumonia difference| {worst:.6f} ({name_of_worst}); tolerance "
        f"{tolerance}")
  for problem in problems:
    print(f"device_check: MISMATCH {problem}")
  return not problems


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  f = sub.add_parser("films")
  f.add_argument("out_dir")
  f.add_argument("--per_class", type=int, default=3)
  c = sub.add_parser("compare")
  c.add_argument("a")
  c.add_argument("b")
  c.add_argument("--tolerance", type=tolerance_value, default=0.02)
  args = parser.parse_args()
  if args.command == "films":
    print(f"device_check: {films(args.out_dir, args.per_class)} films in {args.out_dir}")
  else:
    sys.exit(0 if compare(args.a, args.b, args.tolerance) else 1)


if __name__ == "__main__":
  main()
