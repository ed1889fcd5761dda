"""edge/package.py: metadata embedded in the .tflite, without TensorFlow."""
import os

import numpy as np
import pytest

from cxr_edge.edge import package


def _run(data: bytes, x: np.ndarray) -> np.ndarray:
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  it = Interpreter(model_content=data)
  it.allocate_tensors()
  it.set_tensor(it.get_input_details()[0]["index"], x)
  it.invoke()
  return it.get_tensor(it.get_output_details()[0]["index"])


def test_embed_read_replace_and_the_model_still_computes_the_same(exported):
  with open(os.path.join(exported[0], "model_float32.tflite"), "rb") as f:
    exported_data = f.read()
  assert package.read(exported_data)["model"]["output_kind"] == "logits"  # cxr-export's
  once = package.embed(exported_data, {"threshold": 0.25, "labels": ["A", "B"]})
  assert package.read(once) == {"threshold": 0.25, "labels": ["A", "B"],
                                "integrity_scope": "model",
                                "integrity": package.read(once)["integrity"]}
  twice = package.embed(once, {"threshold": 0.75})  # replaced, not appended
  assert package.read(twice)["threshold"] == 0.75 and "labels" not in package.read(twice)
  assert abs(len(twice) - len(once)) < 64
  x = np.random.default_rng(0).random((1, 48, 48, 1), dtype=np.float32)
  np.testing.assert_array_equal(_run(exported_data, x), _run(twice, x))


def test_metadata_moved_onto_other_weights_is_refused(exported):
  with open(os.path.join(exported[0], "model_float32.tflite"), "rb") as f:
    float_data = f.read()
  with open(os.path.join(exported[0], "model_int8.tflite"), "rb") as f:
    int8_data = f.read()
  from ai_edge_litert import schema_py_generated as fb  # pylint: disable=g-import-not-at-top
  import flatbuffers  # pylint: disable=g-import-not-at-top
  # Graft the float model's embedded metadata buffer onto the int8 model.
  donor = fb.ModelT.InitFromPackedBuf(bytearray(float_data), 0)
  target = fb.ModelT.InitFromPackedBuf(bytearray(int8_data), 0)
  theirs = next(e.buffer for e in donor.metadata if e.name in (b"cxr_edge", "cxr_edge"))
  ours = next(e.buffer for e in target.metadata if e.name in (b"cxr_edge", "cxr_edge"))
  target.buffers[ours].data = donor.buffers[theirs].data
  builder = flatbuffers.Builder(1 << 20)
  builder.Finish(target.Pack(builder), file_identifier=b"TFL3")
  with pytest.raises(package.PackageError, match="integrity"):
    package.read(bytes(builder.Output()))


def test_not_a_model():
  with pytest.raises(package.PackageError, match="not a TFLite model"):
    package.read(b"PK\x03\x04 a zip file")


def test_a_changed_quantization_scale_is_refused(exported):
  """Not a weight buffer: one bit of a tensor's scale flipped 9 of 20 decisions, unseen."""
  with open(os.path.join(exported[0], "model_int8.tflite"), "rb") as f:
    data = f.read()
  from ai_edge_litert import schema_py_generated as fb  # pylint: disable=g-import-not-at-top
  import flatbuffers  # pylint: disable=g-import-not-at-top
  model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
  tensor = next(t for t in model.subgraphs[0].tensors
                if t.quantization is not None and t.quantization.scale is not None
                and len(t.quantization.scale))
  scale = np.array(tensor.quantization.scale, np.float32)
  scale.view(np.uint32)[0] ^= 1 << 22  # one bit of the first scale's mantissa
  tensor.quantization.scale = scale
  builder = flatbuffers.Builder(1 << 20)
  builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
  with pytest.raises(package.PackageError, match="integrity"):
    package.read(bytes(builder.Output()))
  assert package.read(data)["integrity_scope"] == "model"  # the untouched file reads


def test_a_package_from_before_the_whole_model_digest_still_reads(exported):
  with open(os.path.join(exported[0], "model_float32.tflite"), "rb") as f:
    data = f.read()
  # As the previous version embedded it: the digest over the fields and the buffers only.
  model = package.parse(data)
  ours = model.metadata[package._ours(model)].buffer  # pylint: disable=protected-access
  fields = {"threshold": 0.3}
  fields["integrity"] = package._digest(  # pylint: disable=protected-access
      fields, package._weights_digest(model, ours))  # pylint: disable=protected-access
  model.buffers[ours].data = np.frombuffer(
      __import__("json").dumps(fields, sort_keys=True).encode(), np.uint8)
  old = package.pack(model)
  assert package.read(old) == fields
