r"""cxr-benchmark-input: images/s of this input pipeline vs the usual Keras loaders.

Usage:
  cxr-convert --input_dir=../shared/data/chest_xray/train --output_dir=/tmp/cxr_records
  cxr-benchmark-input --data_dir=/tmp/cxr_records --image_dir=../shared/data/chest_xray/train

Measures, in one run and in steady state: (1) this pipeline (TFRecords, cache, shuffle,
batch, plus the batched augmentation the training step runs); (2) the source article's
ImageDataGenerator.flow_from_directory; (3) image_dataset_from_directory with Keras
augmentation layers; (4) the decode bound (decode + resize only). Prints a table, then as
its last line one JSON object. Whether training is input-bound (steps/s with this
pipeline vs the same batches in memory) is a study: studies/input_bound.py.
"""
import json
import os

from absl import app
from absl import flags

from cxr_edge.core import cli
from cxr_edge.core import errors
from cxr_edge.core import schema
from cxr_edge.pipeline import records

_LOADERS = ("pipeline", "imagedatagenerator", "image_dataset_from_directory", "decode_bound")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "A cxr-convert output directory.")
_IMAGE_DIR = flags.DEFINE_string(
    "image_dir", None, "The same images as a class-folder tree (NORMAL/, PNEUMONIA/).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", schema.DEFAULT_IMAGE_SIZE,
                                   "Square input side for every loader.", lower_bound=8)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Batch size for every loader.",
                                   lower_bound=1)
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Timed epochs per loader, after warm-up.",
                               lower_bound=1)
_ONLY = flags.DEFINE_multi_enum("only", None, _LOADERS, "Run only these loaders (repeatable).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # The cheap checks, before TensorFlow loads.
  records.load_manifest(_DATA_DIR.value)
  if not os.path.isdir(_IMAGE_DIR.value):
    raise errors.MissingInputError(f"--image_dir {_IMAGE_DIR.value!r} is not a directory")
  cli.import_tensorflow()
  from cxr_edge.pipeline import benchmark_lib  # pylint: disable=g-import-not-at-top
  result = benchmark_lib.run_all(_DATA_DIR.value, _IMAGE_DIR.value, _IMAGE_SIZE.value,
                                 _BATCH_SIZE.value, _EPOCHS.value, _ONLY.value)
  print(f"{'loader':32s} {'images/s':>10s} {'this pipeline is':>18s}")
  for key in _LOADERS:
    if f"{key}_images_per_s" in result:
      ratio = result.get(f"pipeline_vs_{key}")
      print(f"{key:32s} {result[f'{key}_images_per_s']:10.0f} "
            f"{(f'{ratio:.2f}x' if ratio else ''):>18s}")
  print(f"peak RSS {result['peak_rss_mb']:.0f} MB")
  print(json.dumps(result, sort_keys=True))


def run():
  """Console-script entry point."""
  cli.run(main, __name__, required=["data_dir", "image_dir"], prog="cxr-benchmark-input")


if __name__ == "__main__":
  run()
