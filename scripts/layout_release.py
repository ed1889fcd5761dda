r"""Lays a downloaded copy of the public chest X-ray release out as this project's data:
train/ for training, and its test folder split by patient into external/ (validation on
films from another acquisition) and final_test/ (kept aside), as ../shared was made.

Usage:
  .venv/bin/python -m scripts.layout_release --release_dir=~/Downloads/chest_xray \
      --output_dir=data/chest_xray --image_size=224
  scripts/release_model.sh data/chest_xray/train data/chest_xray/external /tmp/cxr_release

The release: Kermany, Zhang, Goldbaum (2018), Mendeley Data v2, doi:10.17632/rscbjbr9sj.2
(CC BY 4.0; the ZhangLabData archive's CellData/chest_xray), or the widely used copy with
train/, test/ and val/ folders (val/ holds 16 films taken from the release's train/, so
that copy's train/ has 5,216 films, the Mendeley one's 5,232). Either is found anywhere
below --release_dir (a folder holding train/ and test/, each with NORMAL/ and
PNEUMONIA/; macOS __MACOSX folders are ignored). val/ is never used.

The test folder's 624 films are split in two halves by patient (file names carry the
patient: person12_virus_3, IM-0001-0001), stratified by class and seeded, so no child
is in both. --image_size=224 resizes every film to 224x224 and stores it as a 3-channel
JPEG, as ../shared's copy was made; by default files are copied unchanged. An existing
non-empty --output_dir is refused.
"""
import argparse
import hashlib
import os
import shutil
import sys
from typing import List, Optional, Tuple

from PIL import Image

from cxr_edge.core import folders
from cxr_edge.core import schema
from cxr_edge.pipeline import splits

HALVES = ("external", "final_test")
_EXTENSIONS = (".jpeg", ".jpg", ".png")


def find_release(release_dir: str) -> str:
  """The folder below release_dir that holds train/ and test/ with class folders."""
  def has_classes(path: str) -> bool:
    names = {n.upper() for n in os.listdir(path)} if os.path.isdir(path) else set()
    return set(schema.LABELS) <= names

  for here, dirs, _ in os.walk(release_dir):
    dirs[:] = sorted(d for d in dirs if d != "__MACOSX")
    if has_classes(os.path.join(here, "train")) and has_classes(os.path.join(here, "test")):
      return here
  raise SystemExit(f"no folder below {release_dir} holds train/ and test/ with "
                   f"{' and '.join(schema.LABELS)}/ inside: is this the release?")


def films(split_dir: str) -> List[Tuple[str, str]]:
  """(label, file name) of every film in a split folder, sorted."""
  out = []
  for entry in sorted(os.listdir(split_dir)):
    label = entry.upper()
    if label not in schema.LABELS:
      continue
    for name in sorted(os.listdir(os.path.join(split_dir, entry))):
      if name.lower().endswith(_EXTENSIONS) and not name.startswith("."):
        out.append((label, os.path.join(entry, name)))
  return out


def place(source: str, target: str, image_size: Optional[int]) -> None:
  """Copies a film, or resizes it to image_size x image_size as a 3-channel JPEG."""
  os.makedirs(os.path.dirname(target), exist_ok=True)
  if image_size is None:
    shutil.copyfile(source, target)
    return
  with Image.open(source) as image:
    image.convert("RGB").resize((image_size, image_size), Image.BILINEAR).save(
        os.path.splitext(target)[0] + ".jpeg", "JPEG", quality=95)


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def halves(test_dir: str, test: List[Tuple[str, str]], seed: int) -> List[int]:
  """0 (external) or 1 (final test) per test film: by patient (and identical bytes: a
  copied film stays with its twin), stratified by class."""
  items = [splits.SplitItem(key=rel, label=schema.LABELS.index(label),
                            patient_id=folders.patient_id(rel)[0],
                            sha256=_sha256(os.path.join(test_dir, rel)))
           for label, rel in test]
  return splits.assign_splits(items, (0.5, 0.5, 0.0), seed)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--release_dir", required=True)
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--image_size", type=int, default=None)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  source = find_release(os.path.expanduser(args.release_dir))
  out = args.output_dir
  if os.path.isdir(out) and os.listdir(out):
    sys.exit(f"--output_dir {out} is not empty")
  train = films(os.path.join(source, "train"))
  test = films(os.path.join(source, "test"))
  for i, (label, rel) in enumerate(train, 1):
    place(os.path.join(source, "train", rel), os.path.join(out, "train", rel), args.image_size)
    if i % 1000 == 0:
      print(f"train: {i}/{len(train)}", file=sys.stderr)
  counts = {h: {label: 0 for label in schema.LABELS} for h in HALVES}
  for (label, rel), half in zip(test, halves(os.path.join(source, "test"), test, args.seed)):
    place(os.path.join(source, "test", rel), os.path.join(out, HALVES[half], rel),
          args.image_size)
    counts[HALVES[half]][label] += 1
  print(f"{source}: train/ {len(train)} films; test/ {len(test)} films -> "
        + "; ".join(f"{h}/ " + ", ".join(f"{n} {k}" for k, n in c.items())
                    for h, c in counts.items()) + f"; in {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
