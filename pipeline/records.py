"""Reading a cxr-convert output's index: the manifest and the shard files of a split.

TensorFlow-free; the writer is pipeline/convert_lib.py, the one split reader is
pipeline/dataset.read_split.
"""
import json
import os
from typing import Any, Dict, List

from pipeline import schema


def load_manifest(data_dir: str) -> Dict[str, Any]:
  """Reads manifest.json of a conversion.

  Raises:
    FileNotFoundError: with a message saying the directory is not a finished conversion.
  """
  path = os.path.join(data_dir, schema.MANIFEST_NAME)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{data_dir!r} has no {schema.MANIFEST_NAME}: not a complete "
                            "cxr-convert output (missing, or the conversion was interrupted)")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def shard_paths(data_dir: str, split: str) -> List[str]:
  """The shard files of one split, as listed in the manifest, in order.

  Raises:
    FileNotFoundError: no manifest, or a listed shard is missing.
    ValueError: unknown split name.
  """
  if split not in schema.SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {schema.SPLITS}")
  manifest = load_manifest(data_dir)
  paths = [os.path.join(data_dir, s["file"]) for s in manifest["splits"][split]["shards"]]
  for p in paths:
    if not os.path.isfile(p):
      raise FileNotFoundError(f"shard {p} listed in the manifest is missing")
  return paths
