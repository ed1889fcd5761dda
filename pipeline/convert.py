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

from cxr_edge.core import cli
from cxr_edge.core import config_flags
from cxr_edge.core import errors
from cxr_edge.pipeline import convert_config
from cxr_edge.pipeline import convert_lib

# Every flag comes from the options' fields (pipeline/convert_config.py).
for _options in convert_config.OPTION_CLASSES:
  config_flags.define_flags(_options, required=convert_config.REQUIRED)


def main(argv):
  extra = argv[1:]
  runner = convert_config.RunnerOptions(**config_flags.from_flags(convert_config.RunnerOptions))
  if extra and runner.runner != "beam":
    raise app.UsageError(f"unknown flag(s) or arguments: {' '.join(extra)}")
  options = convert_config.ConvertOptions(
      **config_flags.from_flags(convert_config.ConvertOptions))
  if runner.runner == "beam":
    try:
      from cxr_edge.pipeline import convert_beam  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise errors.CxrError(f"--runner=beam needs Apache Beam ({e.name} is missing): "
                            "pip install 'cxr-edge[beam]'") from None
    with cli.child_stderr_quiet(not cli.verbose()):
      result = convert_beam.convert(options, runner.beam_runner, extra)
  else:
    result = convert_lib.convert(options)
  print(f"cxr-convert: {result.summary()}; output in {options.output_dir}")
  if result.num_written == 0:
    raise errors.CxrError("no image could be converted (see 'rejected' in the manifest)")


def run():
  """Console-script entry point."""
  cli.run(main, __name__, required=["input_dir", "output_dir"], prog="cxr-convert",
          pass_unknown=True)


if __name__ == "__main__":
  run()
