"""Labelled class-folder trees (NORMAL/, PNEUMONIA/ at any depth) outside a conversion.

The one lister of such folders for every job that scores films it does not train on:
external validation during training, cxr-evaluate --image_dir, the export report and
cxr-calibrate on a clinic's films. TensorFlow-free (the calibration tool runs on the
device); class folders and patient ids follow cxr-convert's rules.
"""
import dataclasses
import os
import secrets
from typing import Dict, List, Tuple

from pipeline import convert_lib
from pipeline import image_io
from pipeline import schema


# DICOM PatientID tags only group a folder's films by patient here (bootstrap intervals);
# reports show their hash under this per-process salt, never the tag itself.
_SALT = secrets.token_hex(16)


@dataclasses.dataclass(frozen=True)
class LabelledImage:
  path: str  # as found (image_dir joined with relpath)
  relpath: str  # relative to image_dir, "/" separators
  label: int  # index into schema.LABELS
  patient_id: str


def list_labelled_images(image_dir: str,
                         check: bool = True) -> Tuple[List[LabelledImage], List[Dict[str, str]]]:
  """Finds the labelled images below image_dir, in a stable (sorted) order.

  Args:
    image_dir: a class-folder tree.
    check: fully decode each file (as cxr-convert does) and skip the unreadable ones.

  Returns:
    (images, skipped): skipped is [{"path", "reason"}] for files outside a class
    folder, unreadable folders, non-UTF-8 names and (with check) unreadable files.

  Raises:
    convert_lib.ConversionError: image_dir is missing or holds no class folder.
  """
  items: List[LabelledImage] = []
  skipped: List[Dict[str, str]] = []
  for f in convert_lib.scan_input(image_dir, flag="--image_dir"):
    path = os.path.join(image_dir, f.relpath)
    if f.problem:
      skipped.append({"path": f.relpath, "reason": f.problem})
      continue
    if f.label is None:
      skipped.append({"path": f.relpath, "reason": image_io.REASON_UNKNOWN_CLASS})
      continue
    tag = None
    if check:
      result = image_io.inspect_image(path)
      if isinstance(result, image_io.Rejection):
        skipped.append({"path": f.relpath, "reason": result.reason})
        continue
      tag = result.patient_tag
    items.append(LabelledImage(path, f.relpath, schema.LABEL_TO_INDEX[f.label],
                               convert_lib.patient_id(f.relpath, tag, salt=_SALT)[0]))
  return items, skipped
