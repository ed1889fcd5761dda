import pytest

pytest.importorskip("tensorflow", reason="TensorFlow is not installed (a device "
                    "install without the train extra): training-side tests")
# pylint: disable=wrong-import-position

import json
import os

import tensorflow as tf

from cxr_edge.core import image_io
from cxr_edge.core import schema
from cxr_edge.pipeline import convert_config
from cxr_edge.pipeline import convert_lib
from cxr_edge.pipeline import verify_lib
from tests.conftest import run_main


@pytest.fixture
def records(tmp_path, image_tree):
  out = str(tmp_path / "out")
  convert_lib.convert(convert_config.ConvertOptions(
      input_dir=image_tree, output_dir=out, num_shards=2, num_workers=1))
  return out


def _manifest(out):
  with open(os.path.join(out, schema.MANIFEST_NAME)) as f:
    return json.load(f)


def _save(out, m):
  with open(os.path.join(out, schema.MANIFEST_NAME), "w") as f:
    json.dump(m, f)


def test_detects_corrupted_shard_bytes(records):
  name = _manifest(records)["splits"]["train"]["shards"][0]["file"]
  path = os.path.join(records, name)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0xFF
  open(path, "wb").write(bytes(data))
  with pytest.raises(verify_lib.VerificationError, match="sha256"):
    verify_lib.verify(records)
  # Even with the hash updated, the record CRC catches the flipped byte.
  m = _manifest(records)
  m["splits"]["train"]["shards"][0]["sha256"] = image_io.sha256_file(path)
  _save(records, m)
  with pytest.raises(verify_lib.VerificationError, match="corrupt record"):
    verify_lib.verify(records)


def test_detects_count_mismatch(records):
  m = _manifest(records)
  m["splits"]["val"]["classes"]["NORMAL"]["images"] += 1
  _save(records, m)
  with pytest.raises(verify_lib.VerificationError, match="split val class NORMAL"):
    verify_lib.verify(records)


def test_detects_patient_in_two_splits(records):
  m = _manifest(records)
  # Copy one train shard's record into the val shard, keeping hashes/counts consistent.
  train = os.path.join(records, m["splits"]["train"]["shards"][0]["file"])
  val_info = m["splits"]["val"]["shards"][0]
  val = os.path.join(records, val_info["file"])
  raws = [r.numpy() for r in tf.data.TFRecordDataset(val)] + [next(iter(tf.data.TFRecordDataset(train))).numpy()]
  with tf.io.TFRecordWriter(val) as w:
    for r in raws:
      w.write(r)
  ex = tf.train.Example.FromString(raws[-1])
  label = ex.features.feature[schema.KEY_TEXT].bytes_list.value[0].decode()
  val_info["records"] += 1
  val_info["sha256"] = image_io.sha256_file(val)
  pids = set()
  for r in raws:
    f = tf.train.Example.FromString(r).features.feature
    if f[schema.KEY_TEXT].bytes_list.value[0].decode() == label:
      pids.add(f[schema.KEY_PATIENT].bytes_list.value[0])
  m["splits"]["val"]["classes"][label] = {"images": m["splits"]["val"]["classes"][label]["images"] + 1,
                                          "patients": len(pids)}
  m["splits"]["val"]["images"] += 1
  m["splits"]["val"]["patients"] = len({tf.train.Example.FromString(r).features.feature[schema.KEY_PATIENT].bytes_list.value[0] for r in raws})
  _save(records, m)
  with pytest.raises(verify_lib.VerificationError, match="patient.*in both train and val"):
    verify_lib.verify(records)


def test_detects_missing_shard_and_labels(records):
  os.remove(os.path.join(records, schema.LABELS_NAME))
  with pytest.raises(verify_lib.VerificationError, match="labels.txt"):
    verify_lib.verify(records)


def test_cli_exit_status(records, tmp_path):
  run_main("cxr_edge.pipeline.verify", tfrecord_dir=records)  # no SystemExit: status 0
  os.remove(os.path.join(records, _manifest(records)["splits"]["test"]["shards"][0]["file"]))
  with pytest.raises(SystemExit) as e:
    run_main("cxr_edge.pipeline.verify", tfrecord_dir=records)
  assert str(e.value.code).startswith("cxr-verify: FAILED:") and "missing" in str(e.value.code)
