"""cxr-convert's options, defined once: the flags, both converters' arguments and
BUILD.md's flag table come from these fields (core/config_flags.py).

TensorFlow-free: cxr-convert checks its flags before TensorFlow loads.
"""
import dataclasses
from typing import Optional, Tuple

from cxr_edge.core import schema
from cxr_edge.core.config_flags import option
from cxr_edge.pipeline import splits


def _ratios(text: str) -> Tuple[float, float, float]:
  return splits.parse_ratios(text)


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
  """What a conversion reads and writes, and how (the local and the Beam runner alike)."""
  input_dir: str = option(
      help="Folder with one sub-folder per class (NORMAL, PNEUMONIA; any case), searched "
      "recursively, so the public release's train/val/test layout is pooled and re-split.",
      doc="folder with class sub-folders `NORMAL`, `PNEUMONIA` (any case, any depth; every "
      "class folder below it is pooled and re-split, so point it at training images only, "
      "never at a folder that also holds external or test films)")
  output_dir: str = option(
      help="Where shards, labels.txt and manifest.json are written.",
      doc="output; a non-empty one is refused unless `--overwrite`")
  split_ratios: Tuple[float, float, float] = option(
      (0.8, 0.1, 0.1), parse=_ratios,
      help="train,val,test shares of each class's images; splits are grouped by patient.")
  seed: int = option(42, help="Seed of the split and of the record order.")
  num_shards: int = option(
      0, lower_bound=0,
      help="Shards of the train split (val and test get proportionally fewer, at least 1). "
      "0 sizes each split by --shard_size_mb.")
  shard_size_mb: float = option(16.0, lower_bound=0.001,
                                help="Target shard size when --num_shards=0.")
  image_size: Optional[int] = option(
      None, lower_bound=1,
      help="If set, images whose longer side exceeds it are downscaled to it (aspect kept) "
      "and re-encoded; by default the source bytes are stored unchanged.")
  num_workers: Optional[int] = option(
      None, lower_bound=1,
      help="Worker processes for reading and decoding; default: all CPUs (with "
      "--runner=beam on a cluster: the runner's worker count).")
  overwrite: bool = option(
      False, help="Replace a previous conversion in a non-empty --output_dir.",
      doc="replace a previous conversion (removes its shards, labels and manifest; leaves "
      "other files)")
  max_pixels: int = option(schema.MAX_PIXELS, lower_bound=1,
                           help="Images with more pixels are rejected as decompression bombs.")
  metadata_csv: Optional[str] = option(
      None,
      help="A CSV with columns path (relative to --input_dir), patient_id, label, optionally "
      "subtype (bacterial or viral for a PNEUMONIA film, blank = unknown) and others (e.g. "
      "study_date, ignored): each file's patient, class and subtype, instead of file names "
      "and class folders. Files it does not list are rejected. Patient ids are stored "
      "hashed.")
  patient_id_salt: Optional[str] = option(
      None,
      help="Secret key of the hash under which patient ids from --metadata_csv or DICOM "
      "PatientID tags are stored; default: a random one, not stored (the ids cannot be "
      "traced back, and another conversion hashes them differently).")

  def __post_init__(self):
    """Checks the ratios once, however they were given (a flag's text, a caller's tuple).

    Raises:
      ValueError: not three non-negative numbers summing to 1, or a zero train ratio.
    """
    text = ",".join(repr(float(r)) for r in self.split_ratios)
    object.__setattr__(self, "split_ratios", splits.parse_ratios(text))


REQUIRED = ("input_dir", "output_dir")
DEFAULT_BEAM_RUNNER = "FnApiRunner"


@dataclasses.dataclass(frozen=True)
class RunnerOptions:
  """Where cxr-convert runs the conversion."""
  runner: str = option(
      "local", choices=("local", "beam"),
      help="local: worker processes on this machine. beam: an Apache Beam pipeline (needs "
      "the 'beam' extra), on --beam_runner; flags cxr-convert does not define are passed to "
      "Beam as pipeline options.")
  beam_runner: str = option(
      DEFAULT_BEAM_RUNNER,
      help="With --runner=beam: FnApiRunner (this machine, --num_workers processes), "
      "DataflowRunner, FlinkRunner, SparkRunner, or any Beam runner name. DirectRunner "
      "first tries to download the Prism runner, which fails offline.",
      doc="with `--runner=beam`: `FnApiRunner` runs here with `--num_workers` processes; "
      "`DataflowRunner`, `FlinkRunner`, `SparkRunner` on a cluster (`--num_workers` is "
      "passed on as their worker count); with Beam, `--input_dir` and `--output_dir` may be "
      "object-store URLs (`gs://…`, extra `beam-gcp`). `DirectRunner` first tries to "
      "download the Prism runner and fails offline")


# cxr-convert's flags: these classes' options, in this order.
OPTION_CLASSES = (ConvertOptions, RunnerOptions)
