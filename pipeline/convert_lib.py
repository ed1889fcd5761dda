"""Converts a folder of class sub-folders of chest X-rays into sharded TFRecords.

Two passes over the files, both in parallel worker processes:
1. inspect: hash and fully decode every file, so bad input is rejected with a reason
   before anything is written and byte-identical images are known for the split;
2. write: the accepted files, split by patient, go to shards in a seeded order. Each
   shard is written under a temporary name and renamed when complete; manifest.json is
   written last, so an interrupted run never leaves a directory that looks complete.
"""
import collections
import dataclasses
import json
import math
import multiprocessing
import os
import platform
import random
import secrets
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from absl import logging

from cxr_edge.core import cli
from cxr_edge.core import folders
from cxr_edge.core import image_io
from cxr_edge.core import locks
from cxr_edge.core import schema
from cxr_edge.core.errors import ConversionError
from cxr_edge.pipeline import convert_config
from cxr_edge.pipeline import splits as splits_lib

# 2: records carry image/source_format; DICOM input; patient-id sources in the manifest.
# 3: records carry image/class/subtype; splits keep the subtypes' shares; the manifest
#    counts them.
MANIFEST_VERSION = 3
# Below this share of files with a recognised patient id, the patient-grouped split is
# close to an image-level one (a patient's films may straddle splits): warn.
MIN_RECOGNISED_PATIENTS = 0.9
TMP_SUFFIX = ".incomplete"  # a file being written; renamed when complete
_PROGRESS_EVERY_S = 5.0



@dataclasses.dataclass(frozen=True)
class Record:
  """An accepted image and where it goes."""
  relpath: str
  label: str
  patient_id: str
  info: image_io.ImageInfo
  subtype: Optional[str] = None  # a PNEUMONIA film's (schema.SUBTYPES), None if unknown


@dataclasses.dataclass
class ConversionResult:
  """What convert() did; `manifest` is exactly what manifest.json holds."""
  manifest: Dict[str, Any]
  seconds: float
  inspect_seconds: float

  @property
  def num_written(self) -> int:
    return self.manifest["num_written"]

  @property
  def num_rejected(self) -> int:
    return len(self.manifest["rejected"])

  @property
  def images_per_s(self) -> float:
    total = self.num_written + self.num_rejected
    return total / self.seconds if self.seconds > 0 else float("nan")

  def summary(self) -> str:
    counts = ", ".join(f"{s} {self.manifest['splits'][s]['images']}" for s in schema.SPLITS)
    return (f"wrote {self.num_written} images ({counts}), rejected {self.num_rejected}"
            f"{_first_rejected(self.manifest['rejected'])}, "
            f"in {self.seconds:.1f} s ({self.images_per_s:.0f} images/s)")


# The summary names this many rejected files with their reasons; the manifest lists all.
NAMED_REJECTIONS = 3


def _first_rejected(rejected: List[Dict[str, Any]]) -> str:
  """' (a.txt: not an image; ...)': what was rejected and why, the first few by name."""
  if not rejected:
    return ""
  named = "; ".join(f"{r['path']}: {r['reason']}" for r in rejected[:NAMED_REJECTIONS])
  more = len(rejected) - NAMED_REJECTIONS
  return f" ({named}" + (f"; {more} more in manifest.json" if more > 0 else "") + ")"


def _tool_versions() -> Dict[str, str]:
  import numpy  # pylint: disable=g-import-not-at-top
  import PIL  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return {"python": platform.python_version(), "tensorflow": tf.__version__,
          "pillow": PIL.__version__, "numpy": numpy.__version__}


def _inspect_worker(args: Tuple[str, int]) -> Any:
  path, max_pixels = args
  return image_io.inspect_image(path, max_pixels)


def _load_worker(args: Tuple[str, str, str, Optional[int]]) -> Any:
  return image_io.load_encoded(*args)


def _progress(what: str, total: int) -> cli.Progress:
  """Logs `what done/total images (rate)` at most every few seconds, and once at the end."""
  return cli.Progress(total, _PROGRESS_EVERY_S, lambda done, total, rate, _, extra: logging.info(
      "%s %d/%d images (%.0f images/s)%s", what, done, total, rate, extra))


def shard_count(split_bytes: int, split_images: int, num_shards: int, train_images: int,
                shard_size_mb: float) -> int:
  """Shards of one split: --num_shards scaled by its size against train's, or by bytes."""
  if split_images == 0:
    return 0
  if num_shards > 0:
    # --num_shards sizes the train split; smaller splits get proportionally fewer.
    n = math.ceil(num_shards * split_images / max(train_images, 1))
  else:
    n = math.ceil(split_bytes / (shard_size_mb * 1024 * 1024))
  return max(1, min(n, split_images))


def prepare_output(output_dir: str, overwrite: bool) -> None:
  """Creates output_dir, or empties a previous conversion's files from it if overwrite.

  Raises:
    ConversionError: output_dir is a file, or not empty and overwrite is False.
  """
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise ConversionError(f"--output_dir {output_dir!r} exists and is not a directory")
  os.makedirs(output_dir, exist_ok=True)
  existing = sorted(os.listdir(output_dir))
  if existing and not overwrite:
    raise ConversionError(
        f"--output_dir {output_dir!r} is not empty ({len(existing)} entries); "
        "pass --overwrite to replace a previous conversion")
  own = own_files(output_dir, existing)
  cli.remove_own(output_dir, own)
  kept = sorted(set(existing) - set(own))
  if kept:
    logging.info("--overwrite kept %d entr%s a conversion does not write: %s", len(kept),
                 "y" if len(kept) == 1 else "ies", ", ".join(kept[:5]))


def own_names(names: Sequence[str]) -> List[str]:
  """Of an output's entry names, those a conversion gives its files, the manifest first:
  it is removed first, so that from then on the output does not look complete.

  Exactly: the manifest, the labels, shards named as schema.shard_name names them, and
  those files' temporaries; a file of the user's that merely ends in .tfrecord or
  .incomplete is not one of them.
  """
  def ours(name: str) -> bool:
    base = name[:-len(TMP_SUFFIX)] if name.endswith(TMP_SUFFIX) else name
    return (base in (schema.MANIFEST_NAME, schema.LABELS_NAME)
            or bool(schema.SHARD_NAME_PATTERN.fullmatch(base)))
  return [n for n in names if n == schema.MANIFEST_NAME] + [
      n for n in names if n != schema.MANIFEST_NAME and ours(n)]


def own_files(output_dir: str, names: Sequence[str]) -> List[str]:
  """own_names that are regular files in output_dir: a folder is never a conversion's."""
  return [n for n in own_names(names) if os.path.isfile(os.path.join(output_dir, n))]


def _write_atomic(path: str, text: str) -> None:
  tmp = path + TMP_SUFFIX
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def index_files(manifest: Dict[str, Any]) -> List[Tuple[str, str]]:
  """(name, text) of labels.txt and manifest.json, in the order they are written: the
  manifest last, as the mark of a complete conversion."""
  return [(schema.LABELS_NAME, "".join(l + "\n" for l in schema.LABELS)),
          (schema.MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n")]


def write_index(output_dir: str, manifest: Dict[str, Any]) -> None:
  """Writes labels.txt and then manifest.json (index_files)."""
  for name, text in index_files(manifest):
    _write_atomic(os.path.join(output_dir, name), text)


def serialize_example(record: Record, encoded: bytes, height: int, width: int,
                      channels: int) -> bytes:
  """The TFRecord payload of one image (the same bytes from every converter)."""
  # deterministic=True: the feature map otherwise serializes in hash order, which
  # changes between processes and would break byte-identical shards.
  return _make_example(record, encoded, height, width, channels).SerializeToString(
      deterministic=True)


def _make_example(record: Record, encoded: bytes, height: int, width: int, channels: int):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def b(v: Union[str, bytes]):
    return tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[v if isinstance(v, bytes) else v.encode("utf-8")]))

  def i(v: int):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

  return tf.train.Example(features=tf.train.Features(feature={
      schema.KEY_ENCODED: b(encoded),
      schema.KEY_FORMAT: b(record.info.format),
      schema.KEY_HEIGHT: i(height),
      schema.KEY_WIDTH: i(width),
      schema.KEY_CHANNELS: i(channels),
      schema.KEY_LABEL: i(schema.LABEL_TO_INDEX[record.label]),
      schema.KEY_TEXT: b(record.label),
      schema.KEY_FILENAME: b(record.relpath),
      schema.KEY_PATIENT: b(record.patient_id),
      schema.KEY_SHA256: b(record.info.sha256),
      schema.KEY_SOURCE_FORMAT: b(record.info.source_format or record.info.format),
      schema.KEY_SUBTYPE: b(record.subtype or ""),
  }))


def _split_stats(records: Sequence[Record]) -> Dict[str, Any]:
  classes = {}
  for label in schema.LABELS:
    of_class = [r for r in records if r.label == label]
    classes[label] = {"images": len(of_class),
                      "patients": len({r.patient_id for r in of_class})}
  pneumonia = [r for r in records if r.label == schema.POSITIVE_LABEL]
  subtypes = {}
  for subtype in schema.SUBTYPES + (None,):
    of_subtype = [r for r in pneumonia if r.subtype == subtype]
    subtypes[subtype or "unknown"] = {"images": len(of_subtype),
                                      "patients": len({r.patient_id for r in of_subtype})}
  return {"images": len(records), "patients": len({r.patient_id for r in records}),
          "classes": classes, "subtypes": subtypes}


def convert(options: convert_config.ConvertOptions) -> ConversionResult:
  """Converts class folders of images into split, sharded TFRecords.

  Args:
    options: what to read and write, and how (pipeline/convert_config.py documents
      each option).

  Returns:
    A ConversionResult whose manifest was also written to output_dir.

  Raises:
    ConversionError: unusable input_dir or output_dir.
  """
  start = time.monotonic()
  # The input is checked first (a typo fails before the output folder is made).
  listed = folders.read_metadata_csv(options.metadata_csv) if options.metadata_csv else None
  files = folders.scan_input(options.input_dir, listed=listed)
  with locks.exclusive(options.output_dir, "cxr-convert", "--output_dir"):
    return _convert(options, listed, files, start)


def _convert(options: convert_config.ConvertOptions,
             listed: Optional[folders.Listing], files: List[folders.SourceFile],
             start: float) -> ConversionResult:
  """convert() once the input is listed and the output folder is this process's."""
  prepare_output(options.output_dir, options.overwrite)
  salt = (options.patient_id_salt if options.patient_id_salt is not None
          else secrets.token_hex(16))
  # TensorFlow is imported lazily (spawned workers import this module and must stay
  # light), after the folders are checked, and off the clock, so the reported rate is
  # the conversion's own.
  before_import = time.monotonic()
  cli.import_tensorflow()
  start += time.monotonic() - before_import
  num_workers = options.num_workers or os.cpu_count() or 1
  logging.info("found %d files in %s; inspecting with %d workers", len(files),
               options.input_dir, num_workers)
  candidates, rejected = triage(files)
  # spawn, not fork: the parent may already have TensorFlow's threads running.
  with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
    records, id_sources = _inspect(pool, options, candidates, listed, salt, rejected)
    inspect_seconds = time.monotonic() - start
    by_split, conflicts = plan_splits(records, options.split_ratios, options.seed)
    rejected += conflicts
    plan = _shard_plan(by_split, options)
    shards_info, vanished = _write_shards(options.output_dir, plan, _loads(pool, options, plan))
  # Files that changed or disappeared after the first pass: rejected, the rest kept.
  rejected += vanished
  gone = {v["path"] for v in vanished}
  by_split = {s: [r for r in recs if r.relpath not in gone] for s, recs in by_split.items()}
  manifest = build_manifest(
      num_files_found=len(files), by_split=by_split, shards=shards_info, rejected=rejected,
      id_sources=id_sources, salt_given=options.patient_id_salt is not None,
      ratios=options.split_ratios, seed=options.seed, image_size=options.image_size)
  write_index(options.output_dir, manifest)
  return ConversionResult(manifest, time.monotonic() - start, inspect_seconds)


def _inspect(pool, options: convert_config.ConvertOptions,
             candidates: Sequence[folders.SourceFile],
             listed: Optional[folders.Listing], salt: str,
             rejected: List[Dict[str, str]]) -> Tuple[List[Record], collections.Counter]:
  """The first pass: hashes and fully decodes every candidate in the workers.

  Returns:
    (the accepted files' records, how many patient ids came from each source); the
    rejected files are appended to `rejected` with their reasons.
  """
  records: List[Record] = []
  id_sources: collections.Counter = collections.Counter()
  progress = _progress("inspected", len(candidates))
  jobs = [(os.path.join(options.input_dir, f.relpath), options.max_pixels) for f in candidates]
  results = pool.imap(_inspect_worker, jobs, chunksize=16)
  for n, (f, result) in enumerate(zip(candidates, results), 1):
    if isinstance(result, image_io.Rejection):
      rejected.append({"path": f.relpath, "reason": result.reason})
    else:
      record, source = make_record(f, result, listed[f.relpath].patient_id if listed else None,
                                   salt)
      id_sources[source] += 1
      records.append(record)
    progress.update(n, f", rejected {len(rejected)} so far")
  return records, id_sources


def _shard_plan(by_split: Dict[str, List[Record]], options: convert_config.ConvertOptions
                ) -> List[Tuple[str, List[Record]]]:
  """(shard file name, its records) for every shard of every split, in order."""
  plan: List[Tuple[str, List[Record]]] = []
  train_images = len(by_split["train"])
  for s in schema.SPLITS:
    recs = by_split[s]
    n = shard_count(sum(r.info.size_bytes for r in recs), len(recs), options.num_shards,
                    train_images, options.shard_size_mb)
    for k in range(n):
      plan.append((schema.shard_name(s, k, n),
                   recs[k * len(recs) // n:(k + 1) * len(recs) // n]))
  return plan


def _loads(pool, options: convert_config.ConvertOptions,
           plan: Sequence[Tuple[str, List[Record]]]) -> Iterator[Any]:
  """The second pass: each planned record's bytes, loaded (and resized) in the workers."""
  ordered = [r for _, recs in plan for r in recs]
  return pool.imap(_load_worker, [(os.path.join(options.input_dir, r.relpath), r.info.sha256,
                                   r.info.format, options.image_size) for r in ordered],
                   chunksize=16)


def triage(files: Sequence[folders.SourceFile]) -> Tuple[List[folders.SourceFile], List[Dict[str, str]]]:
  """Splits scanned files into those to inspect and rejections known from the scan."""
  rejected: List[Dict[str, str]] = []
  candidates = []
  for f in files:
    if f.problem:
      rejected.append({"path": f.relpath, "reason": f.problem})
    elif f.label is None:
      rejected.append({"path": f.relpath, "reason": image_io.REASON_UNKNOWN_CLASS})
    else:
      candidates.append(f)
  return candidates, rejected


def make_record(f: folders.SourceFile, info: image_io.ImageInfo, listed_patient: Optional[str],
                salt: str) -> Tuple[Record, str]:
  """The Record of an accepted file and where its patient id came from (ID_FROM_*).

  listed_patient is the file's patient id in --metadata_csv, if one was given.
  """
  patient, source = folders.patient_id(f.relpath, info.patient_tag, listed_patient, salt)
  return Record(f.relpath, f.label, patient, info, f.subtype), source


def plan_splits(records: Sequence[Record], ratios: Sequence[float],
                seed: int) -> Tuple[Dict[str, List[Record]], List[Dict[str, str]]]:
  """The split of every accepted record, each split in its seeded record order.

  Depends only on the set of records, not their order, so every converter (local or
  Beam) that inspects the same files gets the same answer.

  Returns:
    ({split name: records in shard order}, rejections of identical images whose labels
    conflict).

  Raises:
    ConversionError: a split with a non-zero ratio would miss a class.
  """
  records = sorted(records, key=lambda r: r.relpath)
  records, conflicts = _drop_conflicting_labels(records)
  # Stratified by subtype too, so bacterial and viral films keep their shares in each
  # split (the three-class task's validation needs both).
  items = [splits_lib.SplitItem(r.relpath, schema.subtype_target(r.label, r.subtype),
                                r.patient_id, r.info.sha256) for r in records]
  assignment = splits_lib.assign_splits(items, ratios, seed)
  by_split: Dict[str, List[Record]] = {s: [] for s in schema.SPLITS}
  for r, s in zip(records, assignment):
    by_split[schema.SPLITS[s]].append(r)
  _check_both_classes(by_split, ratios, records)
  # Seeded order within a split, so shards mix classes and patients.
  rng = random.Random(seed)
  for s in schema.SPLITS:
    rng.shuffle(by_split[s])
  return by_split, conflicts


def build_manifest(num_files_found: int, by_split: Dict[str, Sequence[Record]],
                   shards: Sequence[Dict[str, Any]], rejected: Sequence[Dict[str, str]],
                   id_sources: collections.Counter, salt_given: bool,
                   ratios: Sequence[float], seed: int,
                   image_size: Optional[int]) -> Dict[str, Any]:
  """manifest.json of a conversion (both converters write exactly this)."""
  records = [r for s in schema.SPLITS for r in by_split[s]]
  manifest = {
      "format_version": MANIFEST_VERSION,
      "seed": seed,
      "split_ratios": dict(zip(schema.SPLITS, ratios)),
      "image_size": image_size,
      "labels": dict(schema.LABEL_TO_INDEX),
      "num_files_found": num_files_found,
      "num_written": len(records),
      "splits": {},
      "duplicate_groups": _duplicate_groups(records),
      "source_formats": dict(sorted(collections.Counter(
          r.info.source_format or r.info.format for r in records).items())),
      "patient_ids": _patient_id_summary(id_sources, salt_given),
      "rejected": list(rejected),
      "tools": _tool_versions(),
  }
  for s in schema.SPLITS:
    manifest["splits"][s] = _split_stats(by_split[s])
    manifest["splits"][s]["shards"] = [x for x in shards if x["file"].startswith(s + "-")]
  return manifest


def _patient_id_summary(sources: collections.Counter, salt_given: bool) -> Dict[str, Any]:
  """Where the accepted files' patient ids came from, and a warning when too few have one."""
  total = sum(sources.values())
  summary: Dict[str, Any] = {"sources": {k: sources[k] for k in (folders.ID_FROM_CSV, folders.ID_FROM_DICOM,
                                                                  folders.ID_FROM_NAME, folders.ID_NONE)}}
  if sources[folders.ID_FROM_CSV] or sources[folders.ID_FROM_DICOM]:
    summary["hashed"] = ("salted HMAC-SHA256; salt given (--patient_id_salt)" if salt_given
                         else "salted HMAC-SHA256; random salt, not stored")
  recognised = total - sources[folders.ID_NONE]
  if total and recognised < MIN_RECOGNISED_PATIENTS * total:
    summary["warning"] = (
        f"only {recognised} of {total} files have a recognisable patient id: the split "
        "is close to image-level, so one patient's films can land in train and test; "
        "give ids with --metadata_csv (columns path, patient_id, label[, subtype])")
    logging.warning("%s", summary["warning"])
  return summary


def _drop_conflicting_labels(records: List[Record]) -> Tuple[List[Record], List[Dict[str, str]]]:
  """Rejects every copy of an image whose identical bytes carry different labels.

  Neither label can be trusted, and keeping both would train and score one image as
  both classes.
  """
  labels: Dict[str, set] = collections.defaultdict(set)
  for r in records:
    labels[r.info.sha256].add(r.label)
  bad = {sha for sha, found in labels.items() if len(found) > 1}
  rejected = [{"path": r.relpath,
               "reason": f"{image_io.REASON_CONFLICT}: the same bytes are labelled "
                         f"{' and '.join(sorted(labels[r.info.sha256]))}"}
              for r in records if r.info.sha256 in bad]
  return [r for r in records if r.info.sha256 not in bad], rejected


def _check_both_classes(by_split: Dict[str, List[Record]], ratios: Sequence[float],
                        records: Sequence[Record]) -> None:
  """Every split that is asked for must hold both classes (else ROC-AUC, thresholds and
  class weights are undefined downstream)."""
  for split, ratio in zip(schema.SPLITS, ratios):
    if ratio <= 0:
      continue
    have = collections.Counter(r.label for r in by_split[split])
    missing = [label for label in schema.LABELS if not have[label]]
    if missing:
      total = collections.Counter(r.label for r in records)
      raise ConversionError(
          f"the {split} split would hold no {' or '.join(missing)} image: both classes are "
          f"needed in every split (accepted: "
          + ", ".join(f"{total[label]} {label}" for label in schema.LABELS) + ")")


def _duplicate_groups(records: Sequence[Record]) -> int:
  counts = collections.Counter(r.info.sha256 for r in records)
  return sum(1 for c in counts.values() if c > 1)


def _write_shards(output_dir: str, plan: Sequence[Tuple[str, List[Record]]],
                  loads: Iterator[Any]) -> Tuple[List[Dict[str, Any]], List[Dict[str, str]]]:
  """Writes the planned shards; returns (shard entries, rejections of the second pass)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  total = sum(len(recs) for _, recs in plan)
  progress = _progress("wrote", total)
  done = 0
  shards = []
  vanished = []
  for name, recs in plan:
    final = os.path.join(output_dir, name)
    tmp = final + TMP_SUFFIX
    written = 0
    try:
      with tf.io.TFRecordWriter(tmp) as writer:
        for r in recs:
          loaded = next(loads)
          done += 1
          progress.update(done)
          if isinstance(loaded, image_io.Rejection):
            logging.warning("rejecting %s: %s", r.relpath, loaded.reason)
            vanished.append({"path": r.relpath, "reason": loaded.reason})
            continue
          encoded, h, w, c = loaded
          writer.write(serialize_example(r, encoded, h, w, c))
          written += 1
    except tf.errors.OpError as e:  # a full disk, a vanished folder: TensorFlow's errors
      raise ConversionError(f"cannot write {tmp}: {e.message.strip().splitlines()[0]} (the "
                            "output has no manifest: it is incomplete, and cxr-train "
                            "refuses it)") from None
    shards.append({"file": name, "records": written, "sha256": image_io.sha256_file(tmp),
                   "bytes": os.path.getsize(tmp)})
    os.replace(tmp, final)
  return shards, vanished
