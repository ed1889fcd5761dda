import pytest

pytest.importorskip("tensorflow", reason="TensorFlow is not installed (a device "
                    "install without the train extra): training-side tests")
# pylint: disable=wrong-import-position

import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

from cxr_edge.core import schema
from cxr_edge.pipeline import augment_config
from cxr_edge.pipeline import convert_config
from cxr_edge.pipeline import convert_lib
from cxr_edge.pipeline import dataset
from cxr_edge.pipeline import preprocess
from cxr_edge.pipeline import records

SIZE = 64


def _all(ds):
  return list(ds.as_numpy_iterator())


def _reference(data_dir, split):
  """Per-record image checksums decoded straight from the shards, in file order."""
  sums = []
  for path in records.shard_paths(data_dir, split):
    for raw in tf.data.TFRecordDataset(path):
      ex = preprocess.parse_example(raw)
      sums.append(float(tf.reduce_sum(preprocess.preprocess_image(ex[schema.KEY_ENCODED], SIZE))))
  return sums


def test_shapes_dtypes_range(sample_records):
  batches = _all(dataset.make_dataset(sample_records, "val", batch_size=8, image_size=SIZE))
  x, y = batches[0]
  assert x.shape == (8, SIZE, SIZE, 1) and x.dtype == np.float32
  assert y.shape == (8,) and y.dtype == np.int32
  allx = np.concatenate([b[0] for b in batches])
  assert allx.min() >= 0.0 and allx.max() <= 1.0
  assert set(np.concatenate([b[1] for b in batches])) <= {0, 1}


def test_every_record_once_per_epoch(sample_records):
  p = dataset.make_pipeline(sample_records, "train", batch_size=16, image_size=SIZE, seed=3)
  want = np.sort(_reference(sample_records, "train"))
  assert len(p.shards) == 2
  for _ in range(2):  # the first epoch fills the cache, the second reads it
    sums = [float(s) for x, _ in _all(p.dataset) for s in x.reshape(len(x), -1).sum(1)]
    np.testing.assert_allclose(np.sort(sums), want, atol=1e-2)
  assert p.skipped() == 0 and len(want) == p.num_records


def test_training_shuffles_each_epoch_reproducibly(sample_records):
  def labels_of(ds):
    return np.concatenate([y for _, y in ds.as_numpy_iterator()])

  a = dataset.make_dataset(sample_records, "train", batch_size=16, image_size=SIZE, seed=1,
                           deterministic=True)
  b = dataset.make_dataset(sample_records, "train", batch_size=16, image_size=SIZE, seed=1,
                           deterministic=True)
  a1, a2 = _all(a), _all(a)
  b1 = _all(b)
  assert all(np.array_equal(x[0], y[0]) for x, y in zip(a1, b1))  # same seed, same batches
  assert not all(np.array_equal(x[0], y[0]) for x, y in zip(a1, a2))  # epochs differ


def test_validation_is_never_augmented_or_shuffled(sample_records):
  cfg = augment_config.config_from_names(["rotation", "zoom", "brightness"])
  kw = dict(batch_size=8, image_size=SIZE, deterministic=True)
  plain = _all(dataset.make_dataset(sample_records, "val", **kw))
  asked = _all(dataset.make_dataset(sample_records, "val", augment=cfg, augment_in_pipeline=True, **kw))
  # In file order and unchanged: exactly the records read straight from the shard.
  np.testing.assert_allclose([x.sum() for b in plain for x in b[0]],
                             _reference(sample_records, "val"), atol=1e-2)
  for (x1, y1), (x2, y2) in zip(plain, asked):
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


def test_pipeline_stage_augmentation_changes_and_reproduces(sample_records):
  cfg = augment_config.config_from_names(["rotation", "zoom", "brightness"])
  kw = dict(batch_size=16, image_size=SIZE, seed=5, deterministic=True)
  plain = dataset.make_dataset(sample_records, "train", **kw)
  aug1 = dataset.make_dataset(sample_records, "train", augment=cfg, augment_in_pipeline=True, **kw)
  aug2 = dataset.make_dataset(sample_records, "train", augment=cfg, augment_in_pipeline=True, **kw)
  p, e1, e1b = _all(plain), _all(aug1), _all(aug2)
  e2 = _all(aug1)
  np.testing.assert_array_equal(p[0][1], e1[0][1])  # same order, labels untouched
  assert np.abs(p[0][0] - e1[0][0]).mean() > 0.02  # images changed
  np.testing.assert_array_equal(e1[0][0], e1b[0][0])  # same seed, same augmentation
  assert np.abs(e1[0][0] - e2[0][0]).mean() > 0.0  # next epoch, new augmentation


def test_class_weights_added_per_example(sample_records):
  weights = dataset.class_weights(sample_records)
  m = records.load_manifest(sample_records)["splits"]["train"]["classes"]
  n0, n1 = m["NORMAL"]["images"], m["PNEUMONIA"]["images"]
  assert weights[0] == pytest.approx((n0 + n1) / (2 * n0))
  x, y, w = _all(dataset.make_dataset(sample_records, "train", batch_size=8, image_size=SIZE,
                                      weights=weights))[0]
  np.testing.assert_allclose(w, [weights[int(c)] for c in y])


def test_output_prior_is_half_under_balanced_weights_else_the_train_share(sample_records):
  m = records.load_manifest(sample_records)["splits"]["train"]["classes"]
  n0, n1 = m["NORMAL"]["images"], m["PNEUMONIA"]["images"]
  assert n0 != n1  # so the two cases differ
  assert dataset.trained_prior(sample_records, "balanced") == 0.5
  assert dataset.trained_prior(sample_records, "none") == pytest.approx(n1 / (n0 + n1))


def test_input_context_shards_without_hanging(sample_records):
  # 3 workers but 1 val shard: must fall back to record sharding and cover all once.
  seen = []
  for i in range(3):
    ctx = tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=i,
                                     num_replicas_in_sync=3)
    ds = dataset.make_dataset(sample_records, "val", batch_size=6, image_size=SIZE,
                              input_context=ctx)
    batches = _all(ds)
    assert batches[0][0].shape[0] == 2  # per-replica batch
    seen += [float(s) for x, _ in batches for s in x.reshape(len(x), -1).sum(1)]
  np.testing.assert_allclose(np.sort(seen), np.sort(_reference(sample_records, "val")), atol=1e-2)


def _write_bad_shard(data_dir, split, good_records=3):
  """Replaces a split's first shard with good records then one undecodable image."""
  m = records.load_manifest(data_dir)
  path = os.path.join(data_dir, m["splits"][split]["shards"][0]["file"])
  raws = [r.numpy() for r in tf.data.TFRecordDataset(path)][:good_records]
  bad = tf.train.Example.FromString(raws[0])
  bad.features.feature[schema.KEY_ENCODED].bytes_list.value[0] = b"\xff\xd8 garbage"
  with tf.io.TFRecordWriter(path) as w:
    for r in raws:
      w.write(r)
    w.write(bad.SerializeToString())
  return path


def test_corrupt_image_fails_naming_the_shard_or_is_skipped(tmp_path, image_tree):
  out = str(tmp_path / "rec")
  convert_lib.convert(convert_config.ConvertOptions(
      input_dir=image_tree, output_dir=out, num_workers=1))
  path = _write_bad_shard(out, "val")
  p = dataset.make_pipeline(out, "val", batch_size=2, image_size=SIZE)
  with pytest.raises(dataset.CorruptDataError, match=os.path.basename(path) + ": record 3"):
    with dataset.naming_corrupt_shards(p.shards, SIZE):
      _all(p.dataset)
  p = dataset.make_pipeline(out, "val", batch_size=2, image_size=SIZE, skip_corrupt=True)
  p.num_records = 4  # the rewritten shard: 3 good records + 1 bad
  assert sum(len(y) for _, y in _all(p.dataset)) == 3
  assert p.skipped() == 1


def test_corrupt_crc_is_located(tmp_path, image_tree):
  out = str(tmp_path / "rec")
  convert_lib.convert(convert_config.ConvertOptions(
      input_dir=image_tree, output_dir=out, num_workers=1))
  path = records.shard_paths(out, "train")[0]
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x55
  open(path, "wb").write(bytes(data))
  where = dataset.find_corrupt_record([path], SIZE)
  assert where.startswith(path + ": record ") and "unreadable" in where


def test_bad_arguments(sample_records, tmp_path):
  with pytest.raises(FileNotFoundError, match="manifest"):
    dataset.make_dataset(str(tmp_path), "train")
  with pytest.raises(ValueError, match="unknown split"):
    dataset.make_dataset(sample_records, "holdout")
  with pytest.raises(ValueError, match="cache"):
    dataset.make_dataset(sample_records, "train", cache=str(tmp_path / "nope"))


def test_file_cache(sample_records, tmp_path):
  # deterministic: the default parallel map may reorder elements when the machine is
  # busy, and this compares the cached epoch with the first element by element.
  p = dataset.make_pipeline(sample_records, "val", batch_size=8, image_size=SIZE,
                            cache=str(tmp_path), deterministic=True)
  first = _all(p.dataset)
  assert any(n.startswith("val_64") for n in os.listdir(tmp_path))
  for (x1, _), (x2, _) in zip(first, _all(p.dataset)):
    np.testing.assert_array_equal(x1, x2)


def _labels(data_dir, cache):
  p = dataset.make_pipeline(data_dir, "val", batch_size=64, image_size=SIZE, cache=cache,
                            deterministic=True)
  return np.concatenate([y for _, y in _all(p.dataset)]).tolist()


def test_file_cache_is_keyed_by_the_data(sample_records, image_tree, tmp_path):
  other = str(tmp_path / "other")
  convert_lib.convert(convert_config.ConvertOptions(
      input_dir=image_tree, output_dir=other, num_workers=1))
  cache = str(tmp_path / "cache")
  os.mkdir(cache)
  sample_labels = _labels(sample_records, cache)
  # The same split and image size from another conversion: its own data, not the cache's.
  assert _labels(other, cache) == [r for r in dataset.read_split(other, "val").labels]
  assert _labels(sample_records, cache) == sample_labels
  assert len([n for n in os.listdir(cache) if n.endswith(".index")]) == 2


def test_half_written_cache_of_a_killed_run_is_removed(sample_records, tmp_path):
  prefix = dataset.claim_file_cache(str(tmp_path), sample_records, "val", SIZE)
  dataset._CACHE_LOCKS.pop(prefix).close()  # as if its process had been killed (-9)
  # What TensorFlow leaves behind then (names as TF 2.21 writes them).
  for suffix in ("_0.lockfile", "_0.data-00000-of-00001.tempstate123"):
    open(prefix + suffix, "w").close()
  labels = _labels(sample_records, str(tmp_path))  # used to fail: lockfile exists
  assert len(labels) == records.load_manifest(sample_records)["splits"]["val"]["images"]
  assert not [n for n in os.listdir(tmp_path) if "lockfile" in n or "tempstate" in n]


def test_a_cache_being_filled_by_a_live_process_is_refused(sample_records, tmp_path):
  prefix = dataset.claim_file_cache(str(tmp_path), sample_records, "val", SIZE)
  dataset._CACHE_LOCKS.pop(prefix).close()
  holder = subprocess.Popen(  # another process holds the lock until its stdin closes
      [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a'); "
       "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
       prefix + ".owner"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(ValueError, match="being filled by another running process"):
      dataset.claim_file_cache(str(tmp_path), sample_records, "val", SIZE)
  finally:
    holder.communicate("")
  assert dataset.claim_file_cache(str(tmp_path), sample_records, "val", SIZE) == prefix


def test_external_folder_is_read_whole_with_patients():
  from tests.conftest import require_shared  # pylint: disable=g-import-not-at-top
  folder = dataset.load_image_folder(require_shared("external"), 64)
  # The shared README: 117 NORMAL films of 112 patients, 195 PNEUMONIA of 89.
  assert folder.images.shape == (312, 64, 64, 1) and folder.skipped == []
  assert int((folder.labels == 0).sum()) == 117 and int((folder.labels == 1).sum()) == 195
  assert len(set(folder.patients[folder.labels == 0])) == 112
  assert len(set(folder.patients[folder.labels == 1])) == 89
  assert 0.0 <= folder.images.min() and folder.images.max() <= 1.0


def test_read_split_is_the_split_in_file_order(sample_records):
  r = dataset.read_split(sample_records, "val", SIZE, with_bytes=True)
  examples = [preprocess.parse_example(raw) for path in records.shard_paths(sample_records, "val")
              for raw in tf.data.TFRecordDataset(path)]
  assert len(r.labels) == len(examples) == dataset.split_size(sample_records, "val")
  assert list(r.filenames) == [e[schema.KEY_FILENAME].numpy().decode() for e in examples]
  assert list(r.labels) == [int(e[schema.KEY_LABEL]) for e in examples]
  assert list(r.patients) == [e[schema.KEY_PATIENT].numpy().decode() for e in examples]
  assert r.encoded[0] == examples[0][schema.KEY_ENCODED].numpy()
  assert r.images.shape == (len(examples), SIZE, SIZE, 1) and r.images.dtype == np.float32
  np.testing.assert_array_equal(
      r.images[-1], preprocess.preprocess_image(examples[-1][schema.KEY_ENCODED], SIZE).numpy())
  bare = dataset.read_split(sample_records, "val", limit=5)
  assert bare.images is None and bare.encoded is None
  assert list(bare.filenames) == list(r.filenames[:5])


def test_read_split_names_a_corrupt_record(tmp_path, image_tree):
  out = str(tmp_path / "rec")
  convert_lib.convert(convert_config.ConvertOptions(
      input_dir=image_tree, output_dir=out, num_workers=1))
  path = _write_bad_shard(out, "val")
  with pytest.raises(dataset.CorruptDataError, match=os.path.basename(path) + ": record 3"):
    dataset.read_split(out, "val", SIZE)


def test_image_folder_reads_dicom_as_its_jpeg(tmp_path):
  """cxr-evaluate --image_dir and external scoring: a DICOM film is its JPEG's pixels."""
  from cxr_edge.edge import runtime  # pylint: disable=g-import-not-at-top
  from tests.conftest import SAMPLE_DIR, dicom_bytes, write_file  # pylint: disable=g-import-not-at-top
  for label in ("NORMAL", "PNEUMONIA"):
    name = sorted(os.listdir(os.path.join(SAMPLE_DIR, label)))[0]
    data = open(os.path.join(SAMPLE_DIR, label, name), "rb").read()
    write_file(str(tmp_path / "jpeg" / label / name), data)
    write_file(str(tmp_path / "dicom" / label / (name + ".dcm")),
               dicom_bytes(runtime.decode_grayscale(data), patient_id=f"{label}-1"))
  jpeg = dataset.load_image_folder(str(tmp_path / "jpeg"), SIZE)
  dicom = dataset.load_image_folder(str(tmp_path / "dicom"), SIZE)
  np.testing.assert_array_equal(jpeg.labels, dicom.labels)
  np.testing.assert_allclose(jpeg.images, dicom.images, atol=1e-6)
  assert all(p.startswith("h-") for p in dicom.patients)  # the tag, hashed


def test_subtype_targets_and_weights_keep_the_binary_balance(sample_records):
  train = records.load_manifest(sample_records)["splits"]["train"]
  weights = dataset.class_weights(sample_records, task=schema.TASK_SUBTYPE)
  n = {**{k: v["images"] for k, v in train["classes"].items()},
       **{k: v["images"] for k, v in train["subtypes"].items()}}
  # NORMAL and PNEUMONIA weigh half the total each (the binary prior stays 0.5), and
  # BACTERIAL and VIRAL half of PNEUMONIA each.
  assert weights[0] * n["NORMAL"] == pytest.approx(train["images"] / 2)
  assert weights[1] * n["BACTERIAL"] == pytest.approx(weights[2] * n["VIRAL"])
  assert weights[1] * n["BACTERIAL"] + weights[2] * n["VIRAL"] == pytest.approx(
      train["images"] / 2)
  batches = _all(dataset.make_dataset(sample_records, "val", image_size=SIZE,
                                      task=schema.TASK_SUBTYPE, deterministic=True))
  targets = np.concatenate([y for _, y in batches])
  val = dataset.read_split(sample_records, "val")
  expected = [schema.subtype_target(schema.LABELS[label], subtype or None)
              for label, subtype in zip(val.labels, val.subtypes)]
  np.testing.assert_array_equal(targets, expected)
  assert {1, 2} <= set(targets.tolist())


def test_a_record_without_a_subtype_is_pneumonia_of_unknown_subtype():
  """Records of conversions before subtypes were kept parse as unknown."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top,reimported
  def example(label):
    return tf.train.Example(features=tf.train.Features(feature={
        **{k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"]))
           for k in schema.BYTES_KEYS if k not in schema.OPTIONAL_KEYS},
        **{k: tf.train.Feature(int64_list=tf.train.Int64List(value=[0]))
           for k in schema.INT_KEYS if k != schema.KEY_LABEL},
        schema.KEY_LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))})
    ).SerializeToString()
  targets = [int(dataset.target(preprocess.parse_example(tf.constant(example(label))),
                                schema.TASK_SUBTYPE)) for label in (0, 1)]
  assert targets == [0, schema.TARGET_PNEUMONIA_UNKNOWN]
