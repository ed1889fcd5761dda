"""Reading a cxr-convert output's index: the manifest and the shard files of a split.

TensorFlow-free; the writer is pipeline/convert_lib.py, the one split reader is
pipeline/dataset.read_split.
"""
import json
import os
from typing import Any, Dict, List, Sequence

from cxr_edge.core import errors
from cxr_edge.core import image_io
from cxr_edge.core import schema


def load_manifest(data_dir: str) -> Dict[str, Any]:
  """Reads manifest.json of a conversion.

  Raises:
    FileNotFoundError: with a message saying the directory is not a finished conversion.
  """
  path = os.path.join(data_dir, schema.MANIFEST_NAME)
  if not os.path.isfile(path):
    raise errors.MissingInputError(
        f"{data_dir!r} has no {schema.MANIFEST_NAME}: not a complete cxr-convert output "
        "(missing, or the conversion was interrupted)")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def shard_paths(data_dir: str, split: str) -> List[str]:
  """The shard files of one split, as listed in the manifest, in order.

  Raises:
    FileNotFoundError: no manifest, or a listed shard is missing.
    ValueError: unknown split name.
  """
  if split not in schema.SPLITS:
    raise errors.ConfigError(f"unknown split {split!r}; expected one of {schema.SPLITS}")
  manifest = load_manifest(data_dir)
  paths = [os.path.join(data_dir, s["file"]) for s in manifest["splits"][split]["shards"]]
  for p in paths:
    if not os.path.isfile(p):
      raise errors.MissingInputError(f"shard {p} listed in the manifest is missing")
  return paths


def check_shards(data_dir: str, splits: Sequence[str], hashes: bool = True) -> None:
  """Checks the shards of `splits` against the manifest before they are trained on.

  A 0-byte, replaced or swapped shard (train and val exchanged) still reads as valid
  records, so training would run to the end on the wrong data. Sizes are always
  compared (free); sha256 too unless hashes=False (about a second per GB).

  Raises:
    FileNotFoundError: no manifest, or a listed shard is missing.
    ValueError: a shard's size or sha256 differs from the manifest (names the shard).
  """
  manifest = load_manifest(data_dir)
  for split in splits:
    for shard, path in zip(manifest["splits"][split]["shards"], shard_paths(data_dir, split)):
      size = os.path.getsize(path)
      if size != shard["bytes"]:
        raise errors.ConfigError(
            f"shard {path} has {size} bytes, the manifest says {shard['bytes']}: the "
            "conversion output was altered; convert again (cxr-verify details it)")
      if hashes and image_io.sha256_file(path) != shard["sha256"]:
        raise errors.ConfigError(f"shard {path}: sha256 differs from the manifest: the conversion "
                                 "output was altered; convert again (cxr-verify details it)")

