"""Metadata embedded in the .tflite file itself, read and written without TensorFlow.

A TFLite flatbuffer has a `metadata` list of (name, buffer index) entries. cxr-export puts
one entry, METADATA_KEY, holding JSON: what a runtime needs to use the model right
(labels, threshold and where it came from, preprocessing, input, output kind,
temperature) and what it was made from (training data manifest, versions). The file's
sha256 then covers all of it, so the .tflite alone is the model package; metadata.json
beside it, if kept, must agree with it (edge/runtime.py checks).

The JSON carries an `integrity` digest over its own fields and the whole model but the
metadata itself (graph, tensors and their quantization, weights): a field edited in
the file, a changed quantization scale, or metadata moved onto another model is
refused (packages from before `integrity_scope` cover their buffers only). It guards
against accidents and naive edits, not against someone who recomputes the digest: it
is not a signature, which would need a key; core/package_info.py therefore also checks
every decisive field for what can be checked.

Uses the flatbuffer schema that ai-edge-litert ships and the flatbuffers package it
depends on.
"""
import hashlib
import json
from typing import Any, Dict, Optional

import numpy as np
from cxr_edge.core.errors import PackageError

METADATA_KEY = "cxr_edge"
_IDENTIFIER = b"TFL3"


def _schema():
  from ai_edge_litert import schema_py_generated  # pylint: disable=g-import-not-at-top
  return schema_py_generated


def parse(data: bytes):
  """The model as LiteRT's flatbuffer object API (ModelT), to read or edit.

  Raises:
    PackageError: not a TFLite model, or a corrupt one.
  """
  if len(data) < 8 or data[4:8] != _IDENTIFIER:
    raise PackageError("not a TFLite model (no TFL3 identifier)")
  try:
    return _schema().ModelT.InitFromPackedBuf(bytearray(data), 0)
  except Exception as e:  # pylint: disable=broad-except  # flatbuffers raises many kinds
    raise PackageError(f"corrupt TFLite flatbuffer: {type(e).__name__}: {e}") from None


def pack(model) -> bytes:
  """A ModelT (parse's, edited) as the bytes of a .tflite file."""
  import flatbuffers  # pylint: disable=g-import-not-at-top
  builder = flatbuffers.Builder(1 << 20)
  builder.Finish(model.Pack(builder), file_identifier=_IDENTIFIER)
  return bytes(builder.Output())


def _ours(model) -> Optional[int]:
  """Index in model.metadata of our entry, or None."""
  for i, entry in enumerate(model.metadata or []):
    name = entry.name.decode("utf-8") if isinstance(entry.name, bytes) else entry.name
    if name == METADATA_KEY:
      return i
  return None


def _weights_digest(model, skip: Optional[int]) -> str:
  h = hashlib.sha256()
  for i, buffer in enumerate(model.buffers or []):
    if i != skip and buffer.data is not None:
      h.update(np.asarray(buffer.data, np.uint8).tobytes())
  return h.hexdigest()


def _model_digest(model, ours: int) -> str:
  """sha256 of the whole model as packed with our entry's buffer empty: graph, tensors and
  their quantization, operators and weights; everything but the metadata itself."""
  saved = model.buffers[ours].data
  model.buffers[ours].data = None
  try:
    return hashlib.sha256(pack(model)).hexdigest()
  finally:
    model.buffers[ours].data = saved


# What the integrity digest covers: packages from before this field cover their
# buffers (the weights) only, and a changed quantization scale went unnoticed.
INTEGRITY_SCOPE = "model"


def _digest(fields: Dict[str, Any], weights: str) -> str:
  canonical = json.dumps({k: v for k, v in fields.items() if k != "integrity"},
                         sort_keys=True, separators=(",", ":"))
  return hashlib.sha256((canonical + weights).encode("utf-8")).hexdigest()


# Entry fields that describe the file itself; the file cannot contain its own hash.
FILE_FIELDS = ("file", "bytes", "sha256")


def model_fields(package: Dict[str, Any], entry: Dict[str, Any]) -> Dict[str, Any]:
  """What a model file carries about itself: the package's fields (metadata.json without
  "models") and the model's own entry without the fields that describe the file."""
  return {"format": 1,
          "package": {k: v for k, v in package.items() if k != "models"},
          "model": {k: v for k, v in entry.items() if k not in FILE_FIELDS}}


def embed(data: bytes, fields: Dict[str, Any]) -> bytes:
  """Returns the model with `fields` (JSON-serializable) as its embedded metadata.

  An earlier embedded entry is replaced (cxr-calibrate's new package); the model's
  graph and weights are unchanged.
  """
  schema = _schema()
  model = parse(data)
  index = _ours(model)
  model.buffers = model.buffers or []
  model.metadata = model.metadata or []
  if index is None:
    buffer_index = len(model.buffers)
    model.buffers.append(schema.BufferT())
    entry = schema.MetadataT()
    entry.name = METADATA_KEY
    entry.buffer = buffer_index
    model.metadata.append(entry)
  else:
    buffer_index = model.metadata[index].buffer
  fields = dict(fields, integrity_scope=INTEGRITY_SCOPE)
  fields["integrity"] = _digest(fields, _model_digest(model, buffer_index))
  model.buffers[buffer_index].data = np.frombuffer(
      json.dumps(fields, sort_keys=True).encode("utf-8"), np.uint8)
  return pack(model)


def read(data: bytes) -> Optional[Dict[str, Any]]:
  """The embedded metadata of a model, or None for a model that has none (older exports).

  Raises:
    PackageError: not a TFLite model, unreadable metadata, or a failed integrity check.
  """
  model = parse(data)
  index = _ours(model)
  if index is None:
    return None
  buffer_index = model.metadata[index].buffer
  try:
    raw = np.asarray(model.buffers[buffer_index].data, np.uint8).tobytes()
    fields = json.loads(raw.decode("utf-8"))
  except (IndexError, TypeError, ValueError) as e:
    raise PackageError(f"its embedded metadata is unreadable ({type(e).__name__})") from None
  if not isinstance(fields, dict):
    raise PackageError("its embedded metadata is not an object")
  covered = (_model_digest(model, buffer_index)
             if fields.get("integrity_scope") == INTEGRITY_SCOPE
             else _weights_digest(model, buffer_index))  # an older package's digest
  if fields.get("integrity") != _digest(fields, covered):
    raise PackageError("its embedded metadata fails the integrity check (edited, or moved "
                       "from another model)")
  return fields
