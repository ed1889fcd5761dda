"""Conversion on Apache Beam: convert_lib's output, from as many machines as a runner has.

The same steps and the same functions as the local converter, as a Beam pipeline:

1. the driver lists the input (folders.scan_input) and rejects what the listing
   already condemns (unreadable folders, files outside class folders);
2. workers hash and fully decode every file in parallel (image_io.inspect_image); bad
   files go to a side output of rejections with their reasons;
3. one global combine gathers every accepted file's metadata (about 200 bytes a film,
   never the image) and computes the patient-grouped, class-stratified split with
   convert_lib.plan_splits: the same function as the local converter, so the same seed
   and input give the same assignment; identical images are grouped into one split and
   those whose labels conflict are rejected, as locally;
4. workers re-read each accepted file (a file changed since step 2 is rejected) and
   serialize its tf.train.Example with convert_lib.serialize_example; WriteToTFRecord
   writes each split's shards;
5. last, once every shard is final, one step hashes the shards and writes labels.txt and
   manifest.json: an interrupted pipeline leaves no manifest, so nothing reads it.

The records of each split are those of the local converter, byte for byte; their order
within and across shards differs (Beam assigns records to shards as they arrive), so
shard bytes differ between runs and runners. Compare conversions by their record sets
(cxr-verify checks each one on its own).

Workers read and write through Beam's FileSystems, so input and output can be local
paths (a shared filesystem on a cluster) or object-store URLs (gs://, s3://, with the
Beam extra for that store). A local input is listed exactly as the local converter lists
it (folders.scan_input); an object store has no folders, links or undecodable names,
so it is listed by prefix with the same class-folder and --metadata_csv rules.
"""
import collections
import contextlib
import hashlib
import json
import os
import posixpath
import re
import secrets
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import logging
import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options import pipeline_options

from cxr_edge.core import errors
from cxr_edge.core import folders
from cxr_edge.core import image_io
from cxr_edge.core import locks
from cxr_edge.core import schema
from cxr_edge.pipeline import convert_config
from cxr_edge.pipeline import convert_lib

# Runners that execute on this machine. DirectRunner first tries Prism, which downloads a
# binary (and fails offline); FnApiRunner runs here and needs nothing else.
LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "PrismRunner")
_TAG_REJECTED = "rejected"


def is_local(path: str) -> bool:
  """Whether path is on this machine's filesystem (not gs://, s3://, …)."""
  return FileSystems.get_scheme(path) in (None, "file")


def _join(base: str, relpath: str) -> str:
  return os.path.join(base, relpath) if is_local(base) else posixpath.join(base, relpath)


def _read(path: str) -> bytes:
  with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    return f.read()


def list_files(input_dir: str, listed: Optional[folders.Listing] = None
               ) -> Tuple[List[folders.SourceFile], Dict[str, int]]:
  """Every file below input_dir and its size: (SourceFiles as scan_input gives, sizes).

  Raises:
    errors.ConversionError: as scan_input: missing input, no class folders.
  """
  if is_local(input_dir):
    files = folders.scan_input(input_dir, listed=listed)
    return files, {}
  prefix = input_dir.rstrip("/") + "/"
  try:
    found = FileSystems.match([prefix + "**"])[0].metadata_list
  except Exception as e:  # pylint: disable=broad-except
    # Each store raises its own errors (BeamIOError, its client's); the message says why.
    raise errors.ConversionError(f"--input_dir {input_dir!r} cannot be listed: {e}") from None
  if not found:
    raise errors.ConversionError(f"--input_dir {input_dir!r} holds no files")
  files, sizes, any_class_dir = [], {}, False
  for meta in sorted(found, key=lambda m: m.path):
    relpath = meta.path[len(prefix):]
    if not relpath or relpath.endswith("/"):
      continue  # a folder marker object
    label = folders.class_of(relpath.split("/")[:-1])
    any_class_dir = any_class_dir or label is not None
    files.append(folders.source_file(relpath, label, listed))
    sizes[relpath] = meta.size_in_bytes
  return folders.finish_listing(files, listed, any_class_dir, input_dir,
                                    "--input_dir"), sizes


def prepare_output(output_dir: str, overwrite: bool) -> None:
  """convert_lib.prepare_output, for object stores too (manifest removed first)."""
  if is_local(output_dir):
    convert_lib.prepare_output(output_dir, overwrite)
    return
  prefix = output_dir.rstrip("/") + "/"
  existing = [m.path for m in FileSystems.match([prefix + "*"])[0].metadata_list]
  if existing and not overwrite:
    raise errors.ConversionError(
        f"--output_dir {output_dir!r} is not empty ({len(existing)} entries); "
        "pass --overwrite to replace a previous conversion")
  ours = convert_lib.own_names([p[len(prefix):] for p in existing])
  if ours:
    FileSystems.delete([prefix + n for n in ours])


def _write_text(path: str, text: str) -> None:
  """Writes under a temporary name, then renames (atomic on a local filesystem)."""
  tmp = path + convert_lib.TMP_SUFFIX
  with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    f.write(text.encode("utf-8"))
  FileSystems.rename([tmp], [path])


def unknown_beam_options(args: Sequence[str]) -> List[str]:
  """Those of args that no Beam pipeline option (of any runner) understands.

  Beam itself only logs and drops them, so a mistyped option would silently not apply.
  """
  parsers = []
  pipeline_options.PipelineOptions(list(args)).get_all_options(add_extra_args_fn=parsers.append)
  _, unknown = parsers[0].parse_known_args(list(args))
  return [a for a in unknown if a.startswith("-")]


def pipeline_options_for(beam_runner: str, beam_args: Sequence[str],
                         num_workers: Optional[int]) -> pipeline_options.PipelineOptions:
  """The Beam options of a conversion: the runner, its workers, then the user's own.

  On this machine's runners, num_workers worker processes (default: all CPUs) run in
  multi-processing mode; on a cluster runner, num_workers (if given) is its worker count.

  Raises:
    errors.ConversionError: an option no Beam runner knows.
  """
  unknown = unknown_beam_options(beam_args)
  if unknown:
    raise errors.ConversionError(
        f"unknown flag(s) {' '.join(unknown)}: neither cxr-convert's nor a Beam "
        "pipeline option (see cxr-convert --helpfull, and Beam's pipeline options)")
  args = [f"--runner={beam_runner}"]
  given = {a.split("=", 1)[0] for a in beam_args}
  if beam_runner in LOCAL_RUNNERS:
    if "--direct_num_workers" not in given:
      args.append(f"--direct_num_workers={num_workers or os.cpu_count() or 1}")
    if "--direct_running_mode" not in given:
      args.append("--direct_running_mode=multi_processing")
  elif num_workers and "--num_workers" not in given:
    args.append(f"--num_workers={num_workers}")
  # Workers import our packages: they must be installed there too (see README).
  return pipeline_options.PipelineOptions(args + list(beam_args))


class _Inspect(beam.DoFn):
  """(SourceFile, listed patient) -> (Record, id source), or a rejection."""

  def __init__(self, input_dir: str, max_pixels: int, salt: str):
    self.input_dir, self.max_pixels, self.salt = input_dir, max_pixels, salt
    self.inspected = beam.metrics.Metrics.counter("cxr_convert", "inspected")
    self.rejected = beam.metrics.Metrics.counter("cxr_convert", "rejected")

  def process(self, element):
    f, listed_patient = element
    try:
      data = _read(_join(self.input_dir, f.relpath))
    except OSError as e:  # Beam's BeamIOError is an OSError
      result = image_io.Rejection(f"{image_io.REASON_UNREADABLE}: {e}")
    else:
      result = image_io.inspect_data(data, self.max_pixels)
    self.inspected.inc()
    if isinstance(result, image_io.Rejection):
      self.rejected.inc()
      yield beam.pvalue.TaggedOutput(_TAG_REJECTED, {"path": f.relpath, "reason": result.reason})
    else:
      yield convert_lib.make_record(f, result, listed_patient, self.salt)


def _plan(inspected, ratios: Sequence[float],
          seed: int) -> Dict[str, Any]:
  """The global step: every accepted file's split (convert_lib.plan_splits)."""
  by_split, conflicts = convert_lib.plan_splits([r for r, _ in inspected], ratios, seed)
  return {"by_split": by_split, "conflicts": conflicts,
          "id_sources": collections.Counter(source for _, source in inspected)}


class _Load(beam.DoFn):
  """(split, Record) -> (split, serialized example), or a rejection if the file changed."""

  def __init__(self, input_dir: str, image_size: Optional[int]):
    self.input_dir, self.image_size = input_dir, image_size
    self.written = beam.metrics.Metrics.counter("cxr_convert", "written")

  def process(self, element):
    split, r = element
    try:
      data = _read(_join(self.input_dir, r.relpath))
    except OSError as e:
      loaded = image_io.Rejection(f"{image_io.REASON_CHANGED}: {e}")
    else:
      loaded = image_io.encoded_from_data(data, r.info.sha256, r.info.format, self.image_size)
    if isinstance(loaded, image_io.Rejection):
      yield beam.pvalue.TaggedOutput(_TAG_REJECTED, {"path": r.relpath, "reason": loaded.reason})
      return
    self.written.inc()
    yield split, convert_lib.serialize_example(r, *loaded)


def shard_entry(path: str) -> Dict[str, Any]:
  """A shard's manifest entry (records, sha256, bytes), from one streamed read.

  Each TFRecord is a little-endian uint64 length, a 4-byte CRC of it, the data and a
  4-byte CRC of the data; the records are counted from that framing (cxr-verify checks
  the CRCs and parses every record).

  Raises:
    ValueError: the file ends inside a record.
  """
  digest, size, count = hashlib.sha256(), 0, 0
  with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    while True:
      header = f.read(12)
      if not header:
        break
      remaining = (int.from_bytes(header[:8], "little") + 4) if len(header) == 12 else -1
      digest.update(header)
      size += len(header)
      while remaining > 0:
        chunk = f.read(min(remaining, 1 << 20))
        if not chunk:
          break
        digest.update(chunk)
        size += len(chunk)
        remaining -= len(chunk)
      if remaining != 0:
        raise errors.ConfigError(f"{path}: truncated record after {count} records")
      count += 1
  return {"file": posixpath.basename(path), "records": count, "sha256": digest.hexdigest(),
          "bytes": size}


def _write_index(_, output_dir: str, plan: Dict[str, Any], shards: List[Dict[str, Any]],
                 rejected: List[Dict[str, str]], num_files_found: int, salt_given: bool,
                 ratios: Sequence[float], seed: int, image_size: Optional[int]) -> int:
  gone = {r["path"] for r in rejected}
  by_split = {s: [r for r in recs if r.relpath not in gone] for s, recs in plan["by_split"].items()}
  manifest = convert_lib.build_manifest(
      num_files_found=num_files_found, by_split=by_split,
      shards=sorted(shards, key=lambda x: x["file"]),
      rejected=sorted(rejected + plan["conflicts"], key=lambda x: (x["path"], x["reason"])),
      id_sources=plan["id_sources"], salt_given=salt_given, ratios=ratios, seed=seed,
      image_size=image_size)
  for name, text in convert_lib.index_files(manifest):  # write_index, through FileSystems
    _write_text(_join(output_dir, name), text)
  return manifest["num_written"]


def planned_shards(candidates: Sequence[folders.SourceFile], input_dir: str,
                   ratios: Sequence[float], num_shards: int, shard_size_mb: float,
                   sizes: Optional[Dict[str, int]] = None) -> Dict[str, int]:
  """Shards per split, fixed before the pipeline runs (WriteToTFRecord needs a number).

  Estimated from the listed files and the split ratios, as convert_lib.shard_count would
  size the split from its accepted images; rejections make a split's shards a little
  smaller than planned, never more numerous than its files. sizes: file sizes known
  from the listing (object stores); local files are looked up.
  """
  total_bytes = 0
  if num_shards == 0:
    for f in candidates:
      if sizes and f.relpath in sizes:
        total_bytes += sizes[f.relpath]
        continue
      try:
        total_bytes += os.path.getsize(os.path.join(input_dir, f.relpath))
      except OSError:
        pass  # inspection rejects it with the reason
  train_images = round(ratios[0] * len(candidates))
  return {s: convert_lib.shard_count(round(r * total_bytes), round(r * len(candidates)),
                                     num_shards, train_images, shard_size_mb)
          for s, r in zip(schema.SPLITS, ratios)}


def convert(options: convert_config.ConvertOptions,
            beam_runner: str = convert_config.DEFAULT_BEAM_RUNNER,
            beam_args: Sequence[str] = ()) -> convert_lib.ConversionResult:
  """convert_lib.convert on Apache Beam; the same arguments, plus the runner's.

  Args:
    options: as convert_lib.convert's; num_workers is the worker count of a local
      runner (default: all CPUs) or passed to a cluster runner (default: the runner's).
    beam_runner: a Beam runner name, e.g. FnApiRunner (here), DataflowRunner,
      FlinkRunner, SparkRunner.
    beam_args: further Beam pipeline options ("--project=…", "--flink_master=…").

  Returns:
    A ConversionResult whose manifest was also written to output_dir (inspect_seconds
    is not measured separately: the steps overlap).

  Raises:
    errors.ConversionError: unusable input or output, an unknown Beam option, or a
      split that would miss a class.
  """
  beam_options = pipeline_options_for(beam_runner, beam_args, options.num_workers)
  start = time.monotonic()
  listed = folders.read_metadata_csv(options.metadata_csv) if options.metadata_csv else None
  files, sizes = list_files(options.input_dir, listed)
  held = (locks.exclusive(options.output_dir, "cxr-convert", "--output_dir")
          if is_local(options.output_dir) else contextlib.nullcontext())
  with held:  # an object store has no folder to lock: a second writer there goes unseen
    return _convert(options, listed, files, sizes, beam_options, beam_runner, start)


def _convert(options: convert_config.ConvertOptions,
             listed: Optional[folders.Listing], files: List[folders.SourceFile],
             sizes: Dict[str, int], beam_options, beam_runner: str,
             start: float) -> convert_lib.ConversionResult:
  """convert() once the input is listed and a local output folder is this process's."""
  prepare_output(options.output_dir, options.overwrite)
  salt = (options.patient_id_salt if options.patient_id_salt is not None
          else secrets.token_hex(16))
  candidates, scan_rejected = convert_lib.triage(files)
  shards = planned_shards(candidates, options.input_dir, options.split_ratios, options.num_shards,
                          options.shard_size_mb, sizes)
  logging.info("found %d files in %s; converting on Beam (%s)", len(files), options.input_dir,
               beam_runner)

  pipeline = beam.Pipeline(options=beam_options)
  _build_graph(pipeline, options, candidates, listed, salt, shards, scan_rejected,
               num_files_found=len(files))
  try:
    pipeline.run().wait_until_finish()
  except Exception as e:  # pylint: disable=broad-except
    # Runners wrap a worker's exception in their own; ours carries the message to show.
    found = re.search(r"ConversionError: (.+?)(?:\s*\[while running|\n|$)", str(e))
    if found:
      raise errors.ConversionError(found.group(1)) from None
    raise
  manifest = json.loads(_read(_join(options.output_dir, schema.MANIFEST_NAME)))
  seconds = time.monotonic() - start
  return convert_lib.ConversionResult(manifest, seconds, float("nan"))


def _build_graph(pipeline: beam.Pipeline, options: convert_config.ConvertOptions,
                 candidates: Sequence[folders.SourceFile],
                 listed: Optional[folders.Listing], salt: str,
                 shards: Dict[str, int],
                 scan_rejected: List[Dict[str, str]], num_files_found: int) -> None:
  """The conversion as Beam steps: inspect -> plan the splits -> load -> write each
  split's shards -> hash them -> write the manifest last, with every rejection."""
  inspected = (
      pipeline
      | "List" >> beam.Create([(f, listed[f.relpath].patient_id if listed else None)
                               for f in candidates])
      | "Spread" >> beam.Reshuffle()
      | "Inspect" >> beam.ParDo(_Inspect(options.input_dir, options.max_pixels, salt))
      .with_outputs(_TAG_REJECTED, main="records"))
  plan = (inspected.records
          | "Gather" >> beam.combiners.ToList()
          | "Split" >> beam.Map(_plan, options.split_ratios, options.seed))
  loaded = (
      plan
      | "Assign" >> beam.FlatMap(lambda p: [(s, r) for s in schema.SPLITS
                                            for r in p["by_split"][s]])
      | "Spread again" >> beam.Reshuffle()
      | "Load" >> beam.ParDo(_Load(options.input_dir, options.image_size))
      .with_outputs(_TAG_REJECTED, main="examples"))
  written = []
  for split in schema.SPLITS:
    if options.split_ratios[schema.SPLITS.index(split)] <= 0:
      continue
    written.append(
        loaded.examples
        | f"Only {split}" >> beam.Filter(lambda e, s=split: e[0] == s)
        | f"Payload {split}" >> beam.Values()
        | f"Write {split}" >> beam.io.WriteToTFRecord(
            _join(options.output_dir, split), file_name_suffix=schema.SHARD_SUFFIX,
            num_shards=shards[split], shard_name_template="-SSSSS-of-NNNNN"))
  shard_entries = (written | "Shards" >> beam.Flatten()
                   | "Hash shards" >> beam.Map(shard_entry))
  rejected = ((pipeline | "Scan rejections" >> beam.Create(scan_rejected),
               inspected[_TAG_REJECTED], loaded[_TAG_REJECTED])
              | "Rejections" >> beam.Flatten())
  _ = (pipeline
       | "Once" >> beam.Create([None])
       | "Manifest" >> beam.Map(
           _write_index, output_dir=options.output_dir, plan=beam.pvalue.AsSingleton(plan),
           shards=beam.pvalue.AsList(shard_entries), rejected=beam.pvalue.AsList(rejected),
           num_files_found=num_files_found, salt_given=options.patient_id_salt is not None,
           ratios=options.split_ratios, seed=options.seed, image_size=options.image_size))
