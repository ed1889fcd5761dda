"""Checks a cxr-convert output against its manifest, record by record."""
import collections
import os
from typing import Dict, List, Set

from absl import logging

from cxr_edge.core import cli
from cxr_edge.core import image_io
from cxr_edge.core import schema
from cxr_edge.core.errors import VerificationError
from cxr_edge.pipeline import records


def verify(data_dir: str) -> Dict[str, int]:
  """Reads every record of every shard (CRC-checked) and checks it against the manifest.

  Checks, in order: labels.txt, each shard's presence and sha256, each record's keys
  and label consistency, per-shard and per split x class record and patient counts, and
  that no patient and no image (sha256) appears in two splits.

  Args:
    data_dir: a cxr-convert output directory.

  Returns:
    Records per split.

  Raises:
    VerificationError: with the first problem found.
  """
  try:
    manifest = records.load_manifest(data_dir)
  except (FileNotFoundError, ValueError) as e:
    raise VerificationError(str(e)) from None
  tf = cli.import_tensorflow()
  labels_path = os.path.join(data_dir, schema.LABELS_NAME)
  if not os.path.isfile(labels_path):
    raise VerificationError(f"{labels_path} is missing")
  with open(labels_path, encoding="utf-8") as f:
    labels = [line.strip() for line in f if line.strip()]
  if labels != list(schema.LABELS) or manifest["labels"] != schema.LABEL_TO_INDEX:
    raise VerificationError(f"label map {labels} / {manifest['labels']} is not {schema.LABELS}")

  # Format 1 (before DICOM input) had no source-format key, formats before 3 no subtype.
  version = manifest.get("format_version", 1)
  absent = {schema.KEY_SOURCE_FORMAT: 2, schema.KEY_SUBTYPE: 3}
  expected_keys = tuple(k for k in schema.ALL_KEYS if version >= absent.get(k, 0))
  patients_by_split: Dict[str, Set[str]] = {}
  shas_by_split: Dict[str, Set[str]] = {}
  counts = {}
  for split in schema.SPLITS:
    info = manifest["splits"][split]
    patients_by_split[split] = set()
    shas_by_split[split] = set()
    class_images = collections.Counter()
    class_patients: Dict[str, Set[str]] = collections.defaultdict(set)
    subtype_images = collections.Counter()
    for shard in info["shards"]:
      path = os.path.join(data_dir, shard["file"])
      if not os.path.isfile(path):
        raise VerificationError(f"shard {shard['file']} is missing")
      if image_io.sha256_file(path) != shard["sha256"]:
        raise VerificationError(f"shard {shard['file']}: sha256 differs from the manifest")
      n = 0
      try:
        for raw in tf.data.TFRecordDataset(path):
          example = tf.train.Example.FromString(raw.numpy())
          feats = example.features.feature
          keys = sorted(feats.keys())
          if tuple(keys) != expected_keys:
            raise VerificationError(f"shard {shard['file']} record {n}: keys {keys} differ "
                                    f"from {list(expected_keys)}")
          label = feats[schema.KEY_LABEL].int64_list.value[0]
          text = feats[schema.KEY_TEXT].bytes_list.value[0].decode()
          if label not in range(schema.NUM_CLASSES) or schema.LABELS[label] != text:
            raise VerificationError(f"shard {shard['file']} record {n}: label {label} / {text!r}")
          patient = feats[schema.KEY_PATIENT].bytes_list.value[0].decode()
          patients_by_split[split].add(patient)
          shas_by_split[split].add(feats[schema.KEY_SHA256].bytes_list.value[0].decode())
          class_images[text] += 1
          class_patients[text].add(patient)
          if schema.KEY_SUBTYPE in feats:
            subtype = feats[schema.KEY_SUBTYPE].bytes_list.value[0].decode()
            if subtype and (subtype not in schema.SUBTYPES or text != schema.POSITIVE_LABEL):
              raise VerificationError(f"shard {shard['file']} record {n}: subtype {subtype!r} "
                                      f"of a {text} film")
            if text == schema.POSITIVE_LABEL:
              subtype_images[subtype or "unknown"] += 1
          n += 1
      except tf.errors.DataLossError as e:
        raise VerificationError(f"shard {shard['file']}: corrupt record after {n} records "
                                f"({e.message.splitlines()[0]})") from None
      if n != shard["records"]:
        raise VerificationError(f"shard {shard['file']}: {n} records, manifest says "
                                f"{shard['records']}")
    for label in schema.LABELS:
      want = info["classes"][label]
      got = {"images": class_images[label], "patients": len(class_patients[label])}
      if got != want:
        raise VerificationError(f"split {split} class {label}: {got}, manifest says {want}")
    if "subtypes" in info:
      want = {k: v["images"] for k, v in info["subtypes"].items() if v["images"]}
      if dict(subtype_images) != want:
        raise VerificationError(f"split {split} subtypes: {dict(subtype_images)}, manifest says "
                                f"{want}")
    counts[split] = sum(class_images.values())
    if counts[split] != info["images"] or len(patients_by_split[split]) != info["patients"]:
      raise VerificationError(f"split {split}: totals differ from the manifest")
    logging.debug("verified split %s: %d records in %d shards", split, counts[split],
                 len(info["shards"]))

  _check_disjoint("patient", patients_by_split)
  _check_disjoint("image (sha256)", shas_by_split)
  return counts


def _check_disjoint(what: str, by_split: Dict[str, Set[str]]) -> None:
  names: List[str] = list(by_split)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      shared = by_split[a] & by_split[b]
      if shared:
        raise VerificationError(f"{len(shared)} {what}(s) in both {a} and {b}, e.g. "
                                f"{sorted(shared)[0]}")
