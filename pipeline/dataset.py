"""The tf.data input pipeline: cxr-convert shards -> (images, labels[, weights]) batches.

Order (tensorflow/models official/ practice): shuffle file names -> parallel interleave
-> parse + decode + resize (AUTOTUNE) -> cache -> shuffle -> batch -> augment (training,
batched) -> prefetch last.

Augmentation is usually not done here: the training step applies
`augment.augment_batch` on the accelerator with a seed derived from the global step
(see model/train_lib.py). `augment_in_pipeline=True` runs the same batched op as a
pipeline stage instead, seeded from `tf.data.Dataset.random(rerandomize_each_iteration)`
so each epoch differs yet a seed reproduces the run.
"""
import contextlib
import dataclasses
import glob
import hashlib
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from absl import logging
import tensorflow as tf

from cxr_edge.core import errors
from cxr_edge.core import film
from cxr_edge.core import folders
from cxr_edge.core import image_io
from cxr_edge.core import schema
from cxr_edge.core.errors import CorruptDataError
from cxr_edge.pipeline import augment as augment_lib
from cxr_edge.pipeline import augment_config
from cxr_edge.pipeline import preprocess
from cxr_edge.pipeline import records

AUTOTUNE = tf.data.AUTOTUNE
CACHE_MEMORY = schema.CACHE_MEMORY
CACHE_NONE = schema.CACHE_NONE


@dataclasses.dataclass
class InputPipeline:
  """A dataset and what is known about it.

  Attributes:
    dataset: yields (images float32 [B,S,S,1] in [0,1], labels int32 [B]) or, with class
      weights, (images, labels, weights float32 [B]).
    num_records: records of the split according to the manifest.
    shards: the shard paths read.
    delivered: with skip_corrupt, records that parsed and decoded, counted before the
      cache (so, with a cache, during the first epoch only); skipped() is the rest.
      None without skip_corrupt: a corrupt record then fails the pipeline, nothing is
      skipped, and no stateful op is needed (under TensorFlow's op determinism one
      would make every parallel map of the pipeline sequential).
  """
  dataset: tf.data.Dataset
  num_records: int
  shards: List[str]
  delivered: Optional[tf.Variable]

  def skipped(self) -> int:
    """Corrupt records skipped in the first (cached) epoch; valid once it has run."""
    if self.delivered is None:
      return 0
    return max(0, self.num_records - int(self.delivered.numpy()))


def split_size(data_dir: str, split: str) -> int:
  """Records in one split, from the manifest."""
  return records.load_manifest(data_dir)["splits"][split]["images"]


def _class_counts(data_dir: str, split: str) -> List[int]:
  classes = records.load_manifest(data_dir)["splits"][split]["classes"]
  return [classes[label]["images"] for label in schema.LABELS]


def subtype_counts(data_dir: str, split: str) -> Dict[str, int]:
  """A split's PNEUMONIA films by subtype (schema.SUBTYPES and "unknown"); all unknown
  for a conversion made before subtypes were kept."""
  info = records.load_manifest(data_dir)["splits"][split]
  if "subtypes" not in info:
    return {**{s: 0 for s in schema.SUBTYPES},
            "unknown": info["classes"][schema.POSITIVE_LABEL]["images"]}
  return {k: v["images"] for k, v in info["subtypes"].items()}


def class_weights(data_dir: str, split: str = "train",
                  task: str = schema.TASK_BINARY) -> Dict[int, float]:
  """'balanced' weights of each training target, from the manifest's counts.

  Binary: n / (2 n_c). Subtype: NORMAL and PNEUMONIA weigh half the total each, as in
  the binary task (so the binary decision keeps its prior of 0.5); within PNEUMONIA the
  films of known subtype are reweighted so BACTERIAL and VIRAL weigh the same, and
  those of unknown subtype keep the PNEUMONIA weight.
  """
  counts = _class_counts(data_dir, split)
  total = sum(counts)
  binary = {i: total / (len(counts) * c) if c else 0.0 for i, c in enumerate(counts)}
  if task == schema.TASK_BINARY:
    return binary
  by_subtype = subtype_counts(data_dir, split)
  known = sum(by_subtype[s] for s in schema.SUBTYPES)
  pneumonia = binary[schema.LABEL_TO_INDEX[schema.POSITIVE_LABEL]]
  weights = {0: binary[0], schema.TARGET_PNEUMONIA_UNKNOWN: pneumonia}
  for i, s in enumerate(schema.SUBTYPES, 1):
    n = by_subtype[s]
    weights[i] = pneumonia * known / (len(schema.SUBTYPES) * n) if n else 0.0
  return weights


def trained_prior(data_dir: str, class_weight: str) -> float:
  """The PNEUMONIA share a model's probabilities assume (the prior it was trained to).

  Balanced class weights make both classes weigh the same: 0.5 (for the subtype task
  too: see class_weights). Without them, the train split's own share.
  """
  if class_weight == "balanced":
    return 0.5
  counts = _class_counts(data_dir, "train")
  return counts[schema.LABELS.index(schema.POSITIVE_LABEL)] / sum(counts)


def target(example: Dict[str, tf.Tensor], task: str) -> tf.Tensor:
  """A parsed record's training target: its label index, or for the subtype task
  schema.subtype_target's (0 NORMAL, 1 BACTERIAL, 2 VIRAL, 3 PNEUMONIA of unknown
  subtype)."""
  label = tf.cast(example[schema.KEY_LABEL], tf.int32)
  if task == schema.TASK_BINARY:
    return label
  subtype = example[schema.KEY_SUBTYPE]
  pneumonia = tf.constant(schema.TARGET_PNEUMONIA_UNKNOWN, tf.int32)
  for i, name in enumerate(schema.SUBTYPES, 1):
    pneumonia = tf.where(subtype == name, i, pneumonia)
  return tf.where(label == schema.LABEL_TO_INDEX[schema.POSITIVE_LABEL], pneumonia, 0)


def make_pipeline(data_dir: str,
                  split: str,
                  batch_size: int = 32,
                  image_size: int = schema.DEFAULT_IMAGE_SIZE,
                  training: Optional[bool] = None,
                  augment: Optional[augment_config.AugmentConfig] = None,
                  augment_in_pipeline: bool = False,
                  cache: str = CACHE_MEMORY,
                  shuffle_buffer: Optional[int] = None,
                  seed: int = 42,
                  deterministic: bool = False,
                  repeat: bool = False,
                  drop_remainder: bool = False,
                  weights: Optional[Dict[int, float]] = None,
                  skip_corrupt: bool = False,
                  task: str = schema.TASK_BINARY,
                  input_context: Optional[tf.distribute.InputContext] = None) -> InputPipeline:
  """Builds the input pipeline for one split.

  Args:
    data_dir: a cxr-convert output directory.
    split: "train", "val" or "test".
    batch_size: global batch size (divided among replicas with input_context).
    image_size: square model input side.
    training: shuffles (and augments, with augment_in_pipeline). Defaults to
      split == "train". Never set it for val/test/calibration data.
    augment: the augmentation; used here only with augment_in_pipeline and training.
    augment_in_pipeline: run augmentation as a batched pipeline stage (CPU) rather than
      leaving it to the training step.
    cache: "memory", "none", or a directory for a file cache (for data that does not
      fit in memory); see claim_file_cache.
    shuffle_buffer: examples in the shuffle buffer; default the whole split (at most 10k).
    seed: seeds file and example shuffling and pipeline augmentation.
    deterministic: fixed element order (slower interleave/map); with it, the same seed
      gives the same batches.
    repeat: repeat indefinitely.
    drop_remainder: drop a last partial batch (static batch shape).
    weights: per-target weights (class_weights); adds a per-example weight to each
      batch.
    skip_corrupt: skip records that fail to read or decode (logged, and counted by
      InputPipeline.skipped()) instead of failing.
    input_context: from tf.distribute's distribute_datasets_from_function; shards the
      input per worker (by file when there are at least two shards per worker, else by
      record, so it cannot hang with fewer shards than workers).
    task: what the labels are (`target`): the binary label, or the subtype task's.

  Returns:
    An InputPipeline.

  Raises:
    FileNotFoundError: data_dir is not a complete conversion, or a shard is missing.
    ValueError: empty split or bad arguments.
  """
  if training is None:
    training = split == "train"
  if cache not in (CACHE_MEMORY, CACHE_NONE) and not os.path.isdir(cache):
    raise errors.ConfigError(
        f"cache must be 'memory', 'none' or an existing directory, got {cache!r}")
  manifest = records.load_manifest(data_dir)
  paths = records.shard_paths(data_dir, split)
  num_records = manifest["splits"][split]["images"]
  if not paths:
    raise errors.ConfigError(f"split {split!r} of {data_dir} is empty")
  # The order the developers' guide sets: shuffle files -> interleave -> parse/decode ->
  # cache -> shuffle -> batch -> augment (training only) -> prefetch.
  ds = _interleaved_records(paths, split, training, seed, deterministic, input_context)
  ds, delivered = _decoded(ds, image_size, deterministic, skip_corrupt, task)
  if not skip_corrupt and (input_context is None or input_context.num_input_pipelines == 1):
    # The manifest knows the record count; with it Keras knows an epoch's steps from the
    # first epoch on (exact progress, and a resumed run takes the same steps as an
    # uninterrupted one). A wrong count fails loudly instead of training on.
    ds = ds.apply(tf.data.experimental.assert_cardinality(num_records))
  if cache == CACHE_MEMORY:
    ds = ds.cache()
  elif cache != CACHE_NONE:
    ds = ds.cache(claim_file_cache(cache, data_dir, split, image_size))
  if training:
    ds = ds.shuffle(shuffle_buffer or min(num_records, 10_000), seed=seed,
                    reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  per_replica = (input_context.get_per_replica_batch_size(batch_size)
                 if input_context is not None else batch_size)
  ds = ds.batch(per_replica, drop_remainder=drop_remainder,
                num_parallel_calls=AUTOTUNE, deterministic=deterministic)
  if training and augment_in_pipeline and augment is not None and augment.enabled:
    ds = _augmented(ds, augment, seed, deterministic)
  if weights is not None:
    table = tf.constant([weights.get(i, 1.0) for i in range(max(weights) + 1)], tf.float32)
    ds = ds.map(lambda x, y: (x, y, tf.gather(table, y)), num_parallel_calls=AUTOTUNE)
  ds = ds.prefetch(AUTOTUNE)
  return InputPipeline(ds.with_options(_options(deterministic, input_context)), num_records,
                       paths, delivered)


def _interleaved_records(paths: List[str], split: str, training: bool, seed: int,
                         deterministic: bool,
                         input_context: Optional[tf.distribute.InputContext]) -> tf.data.Dataset:
  """Serialized records of the shards: files shuffled (training), this worker's share."""
  files = tf.data.Dataset.from_tensor_slices(paths)
  if training:
    files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
  by_record = None
  if input_context is not None and input_context.num_input_pipelines > 1:
    workers = input_context.num_input_pipelines
    # By file when every worker gets at least two shards (balanced enough); else by
    # record, which never leaves a worker without data.
    if len(paths) >= 2 * workers:
      files = files.shard(workers, input_context.input_pipeline_id)
    else:
      by_record = input_context
    logging.info("%s split: %d shards for %d workers: sharded by %s", split, len(paths),
                 workers, "file" if by_record is None else "record")
  ds = files.interleave(tf.data.TFRecordDataset, cycle_length=min(len(paths), 8),
                        num_parallel_calls=AUTOTUNE, deterministic=deterministic)
  if by_record is not None:
    ds = ds.shard(by_record.num_input_pipelines, by_record.input_pipeline_id)
  return ds


def _decoded(ds: tf.data.Dataset, image_size: int, deterministic: bool, skip_corrupt: bool,
             task: str = schema.TASK_BINARY) -> Tuple[tf.data.Dataset, Optional[tf.Variable]]:
  """(image, target) pairs; with skip_corrupt, bad records are skipped and the good
  counted."""
  def parse(serialized):
    example = preprocess.parse_example(serialized)
    image = preprocess.preprocess_image(example[schema.KEY_ENCODED], image_size)
    return image, target(example, task)

  ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
  if not skip_corrupt:
    return ds, None
  ds = ds.ignore_errors(log_warning=True)
  delivered = tf.Variable(0, dtype=tf.int64, trainable=False, name="delivered")

  def count(image, label):
    delivered.assign_add(1)
    return image, label

  return ds.map(count), delivered


def _augmented(ds: tf.data.Dataset, augment: augment_config.AugmentConfig, seed: int,
               deterministic: bool) -> tf.data.Dataset:
  """Batches augmented as a CPU pipeline stage (the benchmark's; training augments on the
  device, in the step)."""
  seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
  return tf.data.Dataset.zip((ds, seeds)).map(
      lambda batch, s: (augment_lib.augment_batch(batch[0], s, augment, use_op=True), batch[1]),
      num_parallel_calls=AUTOTUNE, deterministic=deterministic)


def _options(deterministic: bool,
             input_context: Optional[tf.distribute.InputContext]) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = deterministic
  # We shard ourselves when given an input context; otherwise DATA never hangs (FILE
  # auto-sharding does when there are fewer files than workers).
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.OFF if input_context is not None
      else tf.data.experimental.AutoShardPolicy.DATA)
  return options


# Open lock files of the file caches this process owns (held until it exits).
_CACHE_LOCKS: Dict[str, Any] = {}


def claim_file_cache(cache_dir: str, data_dir: str, split: str, image_size: int) -> str:
  """The file-cache prefix for one split in cache_dir, safe to hand to Dataset.cache.

  The name carries a key of the conversion's manifest, the split, the image size and the
  preprocessing code, so a cache filled from other data or by other preprocessing is
  never read. This process holds an advisory lock on it while it lives; a cache left
  half-written by a killed process (TensorFlow's lockfile still present, nobody holding
  the lock) is deleted, so the run refills it instead of failing.

  Raises:
    ValueError: another running process is filling the same cache.
  """
  import fcntl  # pylint: disable=g-import-not-at-top  # POSIX only, like file caches here
  digest = hashlib.sha256()
  digest.update(image_io.sha256_file(os.path.join(data_dir, schema.MANIFEST_NAME)).encode())
  with open(preprocess.__file__, "rb") as f:
    digest.update(f.read())
  digest.update(f"{split}/{image_size}".encode())
  prefix = os.path.join(cache_dir, f"{split}_{image_size}_{digest.hexdigest()[:16]}")
  if prefix in _CACHE_LOCKS:
    return prefix
  lock = open(prefix + ".owner", "a+", encoding="utf-8")  # pylint: disable=consider-using-with
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    lock.close()
    raise errors.ConfigError(f"the cache {prefix} is being filled by another running process; "
                             "wait for it or pass another --cache directory") from None
  lock.truncate(0)
  lock.write(f"{os.getpid()}\n")
  lock.flush()
  _CACHE_LOCKS[prefix] = lock
  stale = glob.glob(glob.escape(prefix) + "_*.lockfile")
  if stale:
    logging.warning("removing the half-written cache %s left by an interrupted run", prefix)
    for path in glob.glob(glob.escape(prefix) + "[._]*"):
      if path != prefix + ".owner":
        os.remove(path)
  return prefix


def make_dataset(*args, **kwargs) -> tf.data.Dataset:
  """make_pipeline(...).dataset; same arguments."""
  return make_pipeline(*args, **kwargs).dataset


@dataclasses.dataclass
class FolderImages:
  """A labelled image folder, preprocessed for the model, in a stable order.

  Attributes:
    images: float32 [N, S, S, 1] in [0, 1] (preprocess.preprocess_image).
    labels: int [N].
    relpaths: [N] paths relative to the folder.
    patients: [N] patient ids (cxr-convert's rule).
    skipped: [{"path", "reason"}] files that are not labelled readable images.
    subtypes: str [N]: a PNEUMONIA film's subtype where its name states it, else "".
  """
  images: np.ndarray
  labels: np.ndarray
  relpaths: np.ndarray
  patients: np.ndarray
  skipped: List[Dict[str, str]]
  subtypes: Optional[np.ndarray] = None


def load_image_folder(image_dir: str, image_size: int = schema.DEFAULT_IMAGE_SIZE) -> FolderImages:
  """Reads and preprocesses every labelled image of a class-folder tree.

  For data scored but never trained on (external validation, cxr-evaluate --image_dir):
  the whole folder is held in memory (a few hundred films at 150 px are ~30 MB).

  Raises:
    errors.ConversionError: not a class-folder tree.
    ValueError: no readable labelled image in it.
  """
  items, skipped = folders.list_labelled_images(image_dir)
  for s in skipped:
    logging.warning("%s: skipping %s: %s", image_dir, s["path"], s["reason"])
  if not items:
    raise errors.ConfigError(f"no readable labelled images in {image_dir!r}")
  ds = (tf.data.Dataset.from_tensor_slices([i.path for i in items])
        .map(lambda p: preprocess.preprocess_image(_readable_bytes(p), image_size),
             num_parallel_calls=AUTOTUNE, deterministic=True)
        .batch(64))
  images = np.concatenate(list(ds.as_numpy_iterator()))
  return FolderImages(images, np.array([i.label for i in items]),
                      np.array([i.relpath for i in items]),
                      np.array([i.patient_id for i in items]), skipped,
                      np.array([i.subtype or "" for i in items], dtype=str))


def _readable_bytes(path: tf.Tensor) -> tf.Tensor:
  """A file's bytes, with DICOM/TIFF/16-bit PNG windowed to 8 bits (core/film.py)."""

  def read(p):
    with open(p.decode("utf-8", "surrogateescape"), "rb") as f:
      data = f.read()
    return film.as_8bit(data)

  data = tf.numpy_function(read, [path], tf.string, stateful=False)
  return tf.reshape(data, [])


@dataclasses.dataclass
class SplitRecords:
  """One split of a conversion, in file order (shards as listed, records as written).

  Attributes:
    labels: int [N].
    filenames: str [N], relative to the conversion's --input_dir.
    patients: str [N] patient ids.
    images: float32 [N, S, S, 1] in [0, 1] (preprocess.preprocess_image), if asked for.
    encoded: the stored image bytes, if asked for.
    subtypes: str [N]: a PNEUMONIA film's subtype where the conversion kept one, else "".
  """
  labels: np.ndarray
  filenames: np.ndarray
  patients: np.ndarray
  images: Optional[np.ndarray] = None
  encoded: Optional[List[bytes]] = None
  subtypes: Optional[np.ndarray] = None


def read_split(data_dir: str, split: str, image_size: Optional[int] = None,
               with_bytes: bool = False, limit: Optional[int] = None) -> SplitRecords:
  """Reads a split into memory: the one reader for scoring, export and studies.

  Training reads through make_pipeline (shuffled, cached, streamed); everything that
  needs a whole split in a fixed order (evaluation, thresholds, export parity and
  calibration, studies) reads it here.

  Args:
    data_dir: a cxr-convert output.
    split: one of schema.SPLITS.
    image_size: if set, also preprocess the images to this side.
    with_bytes: also keep the encoded image bytes.
    limit: read only the first `limit` records.

  Raises:
    FileNotFoundError: not a finished conversion, or a listed shard is missing.
    CorruptDataError: a record cannot be read or decoded (names the shard and record).
  """
  paths = records.shard_paths(data_dir, split)

  def parse(raw):
    ex = preprocess.parse_example(raw)
    out = {"label": tf.cast(ex[schema.KEY_LABEL], tf.int32),
           "filename": ex[schema.KEY_FILENAME], "patient": ex[schema.KEY_PATIENT],
           "subtype": ex[schema.KEY_SUBTYPE]}
    if with_bytes:
      out["encoded"] = ex[schema.KEY_ENCODED]
    if image_size:
      out["image"] = preprocess.preprocess_image(ex[schema.KEY_ENCODED], image_size)
    return out

  ds = tf.data.TFRecordDataset(paths)
  if limit is not None:
    ds = ds.take(limit)
  ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=True).batch(256).prefetch(2)
  with naming_corrupt_shards(paths, image_size or schema.DEFAULT_IMAGE_SIZE):
    batches = list(ds.as_numpy_iterator())

  def column(key):
    return np.concatenate([b[key] for b in batches]) if batches else np.array([])

  text = lambda key: np.array([v.decode() for v in column(key)], dtype=str)
  return SplitRecords(
      labels=column("label").astype(np.int64), filenames=text("filename"),
      patients=text("patient"), subtypes=text("subtype"),
      images=column("image") if image_size else None,
      encoded=[bytes(v) for v in column("encoded")] if with_bytes else None)


def find_corrupt_record(paths: Sequence[str], image_size: int = schema.DEFAULT_IMAGE_SIZE) -> Optional[str]:
  """Reads shards one record at a time and describes the first unreadable one.

  tf.data's own errors ("corrupted record at 12") do not say which file; this does.

  Returns:
    "<shard>: record N: <problem>", or None when every record reads and decodes.
  """
  for path in paths:
    index = 0
    iterator = iter(tf.data.TFRecordDataset(path))
    while True:
      try:
        raw = next(iterator)
      except StopIteration:
        break
      except tf.errors.OpError as e:
        return f"{path}: record {index}: unreadable ({e.message.splitlines()[0]})"
      try:
        example = preprocess.parse_example(raw)
        preprocess.preprocess_image(example[schema.KEY_ENCODED], image_size)
      except tf.errors.OpError as e:
        return f"{path}: record {index}: cannot parse or decode ({e.message.splitlines()[0]})"
      index += 1
  return None


@contextlib.contextmanager
def naming_corrupt_shards(paths: Sequence[str],
                          image_size: int = schema.DEFAULT_IMAGE_SIZE) -> Iterator[None]:
  """Turns a data error raised inside the block into a CorruptDataError naming the shard.

  Raises:
    CorruptDataError: when a tf.errors.DataLossError / InvalidArgumentError escaped the
      block and a corrupt record is found in `paths`.
  """
  try:
    yield
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
    logging.error("input pipeline failed (%s); locating the corrupt record", e.message[:200])
    where = find_corrupt_record(paths, image_size)
    if where is None:
      raise
    raise CorruptDataError(f"corrupt input: {where} (cxr-verify lists every problem; "
                           "convert the images again)") from e

