r"""cxr-convert: image folders -> patient-grouped, stratified, sharded TFRecords.

Usage:
  cxr-convert --input_dir=../shared/data/chest_xray/train --output_dir=/tmp/cxr_records
  python -m cxr_edge.pipeline.convert --input_dir=data/sample --output_dir=out/records \
      --split_ratios=0.8,0.1,0.1 --seed=42 --num_shards=8 --overwrite

  cxr-convert --input_dir=/data/clinic --output_dir=/tmp/clinic_records \
      --metadata_csv=/data/clinic/films.csv --patient_id_salt="$SITE_SECRET"

  # On Apache Beam (pip install -e ".[beam]"): here with 2 worker processes, or on a
  # cluster runner with its own pipeline options after ours.
  cxr-convert --runner=beam --num_workers=2 --input_dir=... --output_dir=...
  cxr-convert --runner=beam --beam_runner=FlinkRunner --flink_master=host:8081 \
      --environment_type=DOCKER --environment_config=registry.local/cxr-edge-beam:0.1 \
      --input_dir=/nfs/films --output_dir=/nfs/records
  cxr-convert --runner=beam --beam_runner=DataflowRunner --project=P --region=R \
      --temp_location=gs://B/tmp --input_dir=gs://B/films --output_dir=gs://B/records

Reads 8-bit JPEG and PNG as they are, and DICOM radiographs, 16-bit PNG and TIFF windowed
to 8 bits (stored as lossless PNG; the record keeps the source format). Patient ids come
from --metadata_csv, DICOM PatientID tags (both stored only as a salted hash) or the public
release's file names; fewer than nine in ten recognised is warned about and noted in the manifest.
Writes train-/val-/test-NNNNN-of-NNNNN.tfrecord, labels.txt and, last, manifest.json.
Check a finished conversion with cxr-verify. Both runners write the same records to the
same splits; Beam's order within shards differs from run to run.
"""

from absl import app
from absl import flags

from cxr_edge.core import cli
from cxr_edge.core import errors
from cxr_edge.core import schema
from cxr_edge.pipeline import convert_lib
from cxr_edge.pipeline import splits

_INPUT_DIR = flags.DEFINE_string(
    "input_dir", None,
    "Folder with one sub-folder per class (NORMAL, PNEUMONIA; any case), searched "
    "recursively, so the public release's train/val/test layout is pooled and re-split.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where shards, labels.txt and manifest.json are written.")
_SPLIT_RATIOS = flags.DEFINE_string(
    "split_ratios", "0.8,0.1,0.1",
    "train,val,test shares of each class's images; splits are grouped by patient.")
_SEED = flags.DEFINE_integer("seed", 42, "Seed of the split and of the record order.")
_NUM_SHARDS = flags.DEFINE_integer(
    "num_shards", 0,
    "Shards of the train split (val and test get proportionally fewer, at least 1). "
    "0 sizes each split by --shard_size_mb.", lower_bound=0)
_SHARD_SIZE_MB = flags.DEFINE_float(
    "shard_size_mb", 16.0, "Target shard size when --num_shards=0.", lower_bound=0.001)
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None,
    "If set, images whose longer side exceeds it are downscaled to it (aspect kept) "
    "and re-encoded; by default the source bytes are stored unchanged.", lower_bound=1)
_NUM_WORKERS = flags.DEFINE_integer(
    "num_workers", None, "Worker processes for reading and decoding; default: all CPUs.",
    lower_bound=1)
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace a previous conversion in a non-empty --output_dir.")
_METADATA_CSV = flags.DEFINE_string(
    "metadata_csv", None,
    "A CSV with columns path (relative to --input_dir), patient_id, label (and optionally "
    "others, e.g. study_date): each file's patient and class, instead of file names and "
    "class folders. Files it does not list are rejected. Patient ids are stored hashed.")
_PATIENT_ID_SALT = flags.DEFINE_string(
    "patient_id_salt", None,
    "Secret key of the hash under which patient ids from --metadata_csv or DICOM "
    "PatientID tags are stored; default: a random one, not stored (the ids cannot be "
    "traced back, and another conversion hashes them differently).")
_RUNNER = flags.DEFINE_enum(
    "runner", "local", ["local", "beam"],
    "local: worker processes on this machine. beam: an Apache Beam pipeline (needs the "
    "'beam' extra), on --beam_runner; flags cxr-convert does not define are passed to "
    "Beam as pipeline options.")
_BEAM_RUNNER = flags.DEFINE_string(
    "beam_runner", "FnApiRunner",
    "With --runner=beam: FnApiRunner (this machine, --num_workers processes), "
    "DataflowRunner, FlinkRunner, SparkRunner, or any Beam runner name. DirectRunner "
    "first tries to download the Prism runner, which fails offline.")
_MAX_PIXELS = flags.DEFINE_integer(
    "max_pixels", schema.MAX_PIXELS,
    "Images with more pixels are rejected as decompression bombs.", lower_bound=1)


def _valid_ratios(text: str) -> bool:
  try:
    splits.parse_ratios(text)
  except ValueError as e:
    raise flags.ValidationError(str(e)) from None
  return True


flags.register_validator("split_ratios", _valid_ratios)


def main(argv):
  extra = argv[1:]
  if extra and _RUNNER.value != "beam":
    raise app.UsageError(f"unknown flag(s) or arguments: {' '.join(extra)}")
  if _RUNNER.value == "beam":
    try:
      from cxr_edge.pipeline import convert_beam  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise errors.CxrError(f"--runner=beam needs Apache Beam ({e.name} is missing): "
                            "pip install 'cxr-edge[beam]'") from None
    convert, runner_args = convert_beam.convert, {"beam_runner": _BEAM_RUNNER.value,
                                                  "beam_args": extra}
  else:
    convert, runner_args = convert_lib.convert, {}
  with cli.child_stderr_quiet(_RUNNER.value == "beam" and not cli.verbose()):
    result = convert(
        input_dir=_INPUT_DIR.value,
        output_dir=_OUTPUT_DIR.value,
        split_ratios=splits.parse_ratios(_SPLIT_RATIOS.value),
        seed=_SEED.value,
        num_shards=_NUM_SHARDS.value,
        shard_size_mb=_SHARD_SIZE_MB.value,
        image_size=_IMAGE_SIZE.value,
        num_workers=_NUM_WORKERS.value,
        overwrite=_OVERWRITE.value,
        max_pixels=_MAX_PIXELS.value,
        metadata_csv=_METADATA_CSV.value,
        patient_id_salt=_PATIENT_ID_SALT.value,
        **runner_args)
  print(f"cxr-convert: {result.summary()}; output in {_OUTPUT_DIR.value}")
  if result.num_written == 0:
    raise errors.CxrError("no image could be converted (see 'rejected' in the manifest)")


def run():
  """Console-script entry point."""
  cli.run(main, __name__, required=["input_dir", "output_dir"], prog="cxr-convert",
          pass_unknown=True)


if __name__ == "__main__":
  run()
