"""The Beam converter against the local one: same records per split, same rejections."""
import pytest

pytest.importorskip("tensorflow", reason="TensorFlow is not installed (a device "
                    "install without the train extra): training-side tests")
# pylint: disable=wrong-import-position

import collections
import hashlib
import os
import shutil
from unittest import mock

from absl import app
import tensorflow as tf

from cxr_edge.core import schema
from cxr_edge.pipeline import convert_config
from cxr_edge.pipeline import convert_lib
from cxr_edge.pipeline import verify_lib
from tests.conftest import (SAMPLE_DIR, image_bytes, make_tree, run_main, run_module,
                            write_file)

beam = pytest.importorskip(
    "apache_beam", reason="Apache Beam is not installed (pip install -e '.[beam]'); "
    "scripts/test.sh installs it")
from cxr_edge.core import errors
from cxr_edge.core import folders
from cxr_edge.pipeline import convert_beam  # pylint: disable=g-import-not-at-top,wrong-import-position


def _record_hashes(data_dir):
  """{split: sorted sha256 of every serialized record}, whatever the shards."""
  out = {}
  for split in schema.SPLITS:
    paths = [os.path.join(data_dir, n) for n in sorted(os.listdir(data_dir))
             if n.startswith(split + "-")]
    out[split] = sorted(hashlib.sha256(r.numpy()).hexdigest()
                        for r in tf.data.TFRecordDataset(paths))
  return out


def _sample_with_bad_files(root):
  """The embedded sample plus one file of each kind the converters reject."""
  shutil.copytree(SAMPLE_DIR, root)
  normal = sorted(os.listdir(os.path.join(root, "NORMAL")))
  write_file(os.path.join(root, "NORMAL", "empty.jpeg"), b"")
  write_file(os.path.join(root, "NORMAL", "notes.txt"), b"not an image")
  write_file(os.path.join(root, "NORMAL", "cut.jpeg"), image_bytes(size=(64, 64))[:300])
  write_file(os.path.join(root, "stray", "x.jpeg"), image_bytes(seed=5))
  # The same bytes under both labels: every copy rejected, by both converters.
  shutil.copy(os.path.join(root, "NORMAL", normal[0]),
              os.path.join(root, "PNEUMONIA", "person9999_copy.jpeg"))
  return root


@pytest.mark.slow
def test_beam_writes_the_local_converters_records_and_rejections(tmp_path):
  src = _sample_with_bad_files(str(tmp_path / "in"))
  local = convert_lib.convert(convert_config.ConvertOptions(
      input_dir=src, output_dir=str(tmp_path / "local"), seed=7, num_shards=3, num_workers=2,
      patient_id_salt="s"))
  # The command line, with two worker processes as a cluster would run it
  # (FnApiRunner, multi-processing; the mode passed through as a Beam option).
  run = run_module("cxr_edge.pipeline.convert", "--runner=beam", "--num_workers=2",
                   "--direct_running_mode=multi_processing", f"--input_dir={src}",
                   f"--output_dir={tmp_path / 'beam'}", "--seed=7", "--num_shards=3",
                   "--patient_id_salt=s")
  assert run.returncode == 0, run.stderr
  assert "cxr-convert: wrote 300 images" in run.stdout
  # Quiet: our lines only, none of the SDK workers' start-up and shutdown chatter.
  assert len(run.stderr.splitlines()) <= 3, run.stderr
  from cxr_edge.pipeline import records  # pylint: disable=g-import-not-at-top
  beamed = convert_lib.ConversionResult(records.load_manifest(str(tmp_path / "beam")), 0, 0)

  hashes = _record_hashes(str(tmp_path / "beam"))
  assert hashes == _record_hashes(str(tmp_path / "local"))
  assert [len(hashes[s]) for s in schema.SPLITS] == [
      local.manifest["splits"][s]["images"] for s in schema.SPLITS]
  key = lambda r: (r["path"], r["reason"])
  assert sorted(beamed.manifest["rejected"], key=key) == sorted(local.manifest["rejected"], key=key)
  reasons = collections.Counter(r["reason"].split(":")[0] for r in beamed.manifest["rejected"])
  assert reasons == {"empty file": 1, "not an image": 1, "truncated or corrupt image": 1,
                     "unknown class folder": 2, "conflicting labels": 2}  # + the sample's README
  # The manifests agree except where shards are concerned.
  for name in ("num_written", "num_files_found", "duplicate_groups", "source_formats",
               "patient_ids", "split_ratios", "seed"):
    assert beamed.manifest[name] == local.manifest[name], name
  for s in schema.SPLITS:
    strip = lambda m: {k: v for k, v in m["splits"][s].items() if k != "shards"}
    assert strip(beamed.manifest) == strip(local.manifest)
    assert len(beamed.manifest["splits"][s]["shards"]) == len(local.manifest["splits"][s]["shards"])

  for d in ("local", "beam"):
    counts = verify_lib.verify(str(tmp_path / d))
    assert counts == {s: local.manifest["splits"][s]["images"] for s in schema.SPLITS}
  # Training reads it: the one split reader parses every record.
  from cxr_edge.pipeline import dataset  # pylint: disable=g-import-not-at-top
  read = dataset.read_split(str(tmp_path / "beam"), "train")
  assert len(read.labels) == local.manifest["splits"]["train"]["images"]
  assert not os.path.exists(os.path.join(str(tmp_path / "beam"), "beam-temp"))
  assert not [n for n in os.listdir(str(tmp_path / "beam")) if n.startswith("beam-temp")]


def test_shard_entry_counts_and_hashes_in_one_read(tmp_path):
  path = str(tmp_path / "train-00000-of-00001.tfrecord")
  with tf.io.TFRecordWriter(path) as w:
    for n in (0, 5, 3_000_000):  # the last spans several read chunks
      w.write(b"x" * n)
  with open(path, "rb") as f:
    data = f.read()
  assert convert_beam.shard_entry(path) == {
      "file": "train-00000-of-00001.tfrecord", "records": 3,
      "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
  write_file(path, data[:-3])
  with pytest.raises(ValueError, match="truncated record after 2 records"):
    convert_beam.shard_entry(path)


def test_object_store_listing_follows_the_local_rules(tmp_path):
  """The prefix listing used for gs:// and s3://, exercised on a local folder."""
  root = str(tmp_path / "in")
  write_file(os.path.join(root, "a", "NORMAL", "IM-0001-0001.jpeg"), b"1")
  write_file(os.path.join(root, "PNEUMONIA", "x", "person1_virus_1.jpeg"), b"22")
  write_file(os.path.join(root, "stray.jpeg"), b"333")
  by_path = lambda files: sorted(files, key=lambda f: f.relpath)
  with mock.patch.object(convert_beam, "is_local", lambda path: False):
    files, sizes = convert_beam.list_files(root)
    assert by_path(files) == by_path(folders.scan_input(root))
    assert sizes == {"PNEUMONIA/x/person1_virus_1.jpeg": 2, "a/NORMAL/IM-0001-0001.jpeg": 1,
                     "stray.jpeg": 3}
    listed = {"stray.jpeg": folders.Row("p1", "NORMAL", None),
              "gone.jpeg": folders.Row("p2", "PNEUMONIA", None)}
    assert by_path(convert_beam.list_files(root, listed)[0]) == by_path(
        folders.scan_input(root, listed=listed))
    with pytest.raises(errors.ConversionError, match="holds no files"):
      convert_beam.list_files(str(tmp_path / "empty"))


def test_object_store_code_path_converts_like_the_local_one(tmp_path):
  """The whole pipeline with every path treated as an object store's (in one process)."""
  src = make_tree(str(tmp_path / "in"), patients_per_class=6)
  write_file(str(tmp_path / "in" / "NORMAL" / "empty.jpeg"), b"")
  local = convert_lib.convert(convert_config.ConvertOptions(
      input_dir=src, output_dir=str(tmp_path / "local"), split_ratios=(0.5, 0.25, 0.25),
      num_shards=2, num_workers=1))
  out = str(tmp_path / "remote")
  with mock.patch.object(convert_beam, "is_local", lambda path: False):
    beamed = convert_beam.convert(convert_config.ConvertOptions(
        input_dir=src, output_dir=out, split_ratios=(0.5, 0.25, 0.25), num_shards=2,
        num_workers=1), beam_args=["--direct_running_mode=in_memory"])
    with pytest.raises(errors.ConversionError, match="not empty"):
      convert_beam.prepare_output(out, overwrite=False)
  assert _record_hashes(out) == _record_hashes(str(tmp_path / "local"))
  assert beamed.manifest["rejected"] == local.manifest["rejected"]
  assert verify_lib.verify(out) == verify_lib.verify(str(tmp_path / "local"))
  assert not [n for n in os.listdir(out) if n.endswith(".incomplete")]


def test_planned_shards_follow_the_local_rule():
  files = [folders.SourceFile(f"NORMAL/{i}.jpeg", "NORMAL") for i in range(100)]
  assert convert_beam.planned_shards(files, "/nowhere", (0.8, 0.1, 0.1), 8, 16) == {
      "train": 8, "val": 1, "test": 1}
  assert convert_beam.planned_shards(files, "/nowhere", (0.5, 0.5, 0.0), 4, 16) == {
      "train": 4, "val": 4, "test": 0}


def test_unknown_beam_options_are_refused_not_dropped():
  assert convert_beam.unknown_beam_options(["--project=p", "--projec=p"]) == ["--projec=p"]
  with pytest.raises(errors.ConversionError, match="--projec=p"):
    convert_beam.pipeline_options_for("FnApiRunner", ["--projec=p"], 2)
  options = convert_beam.pipeline_options_for("FnApiRunner", [], 3).get_all_options()
  assert options["direct_num_workers"] == 3
  assert options["direct_running_mode"] == "multi_processing"
  assert convert_beam.pipeline_options_for("DataflowRunner", [], 5).get_all_options()[
      "num_workers"] == 5


def test_job_refuses_flags_nobody_knows(tmp_path):
  out = str(tmp_path / "out")
  with pytest.raises(app.UsageError, match="unknown flag.* --projec=p"):
    run_main("cxr_edge.pipeline.convert", "--projec=p", input_dir=SAMPLE_DIR, output_dir=out)
  with pytest.raises(SystemExit, match=r"unknown flag\(s\) --projec=p: neither"):
    run_main("cxr_edge.pipeline.convert", "--projec=p", input_dir=SAMPLE_DIR, output_dir=out,
             runner="beam")
  assert not os.path.exists(os.path.join(out, schema.MANIFEST_NAME))


def test_a_split_without_both_classes_fails_with_the_reason(tmp_path):
  root = str(tmp_path / "in")
  for i in range(3):
    write_file(os.path.join(root, "NORMAL", f"IM-{i:04d}-0001.jpeg"), image_bytes(seed=i))
    write_file(os.path.join(root, "PNEUMONIA", f"person{i}_virus_1.jpeg"),
               image_bytes(seed=10 + i))
  with pytest.raises(errors.ConversionError, match="would hold no"):
    convert_beam.convert(convert_config.ConvertOptions(
        input_dir=root, output_dir=str(tmp_path / "out"), split_ratios=(0.8, 0.1, 0.1),
        num_workers=1), beam_args=["--direct_running_mode=in_memory"])
  assert not os.path.exists(os.path.join(str(tmp_path / "out"), schema.MANIFEST_NAME))
