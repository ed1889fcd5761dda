r"""cxr-export: SavedModel + quantized TFLite models, metadata and a parity report.

Usage:
  cxr-export --model_dir=/tmp/cxr_model --data_dir=/tmp/cxr_records --export_dir=/tmp/cxr_export
  cxr-train --qat --init_from=/tmp/cxr_model --data_dir=/tmp/cxr_records --model_dir=/tmp/qat
  cxr-export --model_dir=/tmp/cxr_model --qat_model_dir=/tmp/qat --data_dir=/tmp/cxr_records \
      --export_dir=/tmp/e --calibration_samples=500 --overwrite
  cxr-export --model_dir=/tmp/cxr_model --data_dir=/tmp/cxr_records --export_dir=/tmp/e \
      --external_dir=../shared/data/chest_xray/external

Writes saved_model/1/ (TensorFlow Serving's layout; signatures serving_default: encoded
JPEG/PNG -> p_pneumonia, label, threshold; serving_images: float images in [0, 1] ->
probabilities), model_float32.tflite, model_float16.tflite, model_dynamic_range.tflite,
model_int8.tflite (full integer, int8 I/O), with --qat_model_dir model_qat_int8.tflite (a
cxr-train --qat run, full integer), each with its metadata embedded; labels.txt,
metadata.json, export_report.json (accuracy, agreement with the SavedModel and latency of
every variant on the test split; with --external_dir, every variant's metrics with 95%
intervals on that folder), MODEL_CARD.md and model_card.json, and prints the report. The
TFLite models output logits; probabilities are softmax(logits / temperature) at the edge.
"""
import os

from absl import app
from absl import flags

# Only TensorFlow-free modules here: flags and paths are checked before TensorFlow loads.
from cxr_edge.core import cli
from cxr_edge.core import errors
from cxr_edge.core import package_info
from cxr_edge.export import variants as variant_names
from cxr_edge.pipeline import records

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "A cxr-train output directory.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "The model's cxr-convert output: train images calibrate int8, the "
    "test split is used only for the report.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Where the models are written.")
_CALIBRATION_SAMPLES = flags.DEFINE_integer(
    "calibration_samples", 300, "Train images (eval preprocessing, never augmented, never "
    "test) that calibrate full-integer quantization.", lower_bound=1)
_QAT_MODEL_DIR = flags.DEFINE_string(
    "qat_model_dir", None, "A cxr-train --qat run of --model_dir: also writes "
    "model_qat_int8.tflite, with the threshold that run chose.")
_LATENCY_RUNS = flags.DEFINE_integer("latency_runs", 200, "Timed single-image runs per "
                                     "variant and thread count.", lower_bound=5)
_VARIANTS = flags.DEFINE_multi_enum(
    "variants", None, variant_names.VARIANTS, "TFLite variants to write (repeatable); default: "
    "every post-training variant, and qat_int8 with --qat_model_dir.")
_EXTERNAL_DIR = flags.DEFINE_string(
    "external_dir", None, "A labelled class-folder tree from another source (external "
    "validation): every variant is scored on it in the report.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a non-empty --export_dir.")
_ALLOW_OTHER_DATA = flags.DEFINE_bool(
    "allow_other_data", False, "Export although --data_dir is not the conversion the model "
    "was trained on (refused otherwise: its test split may hold the model's training "
    "films). The report and the model card then say the test split is not held out.")
_MODEL_KIND = flags.DEFINE_enum(
    "model_kind", None, package_info.MODEL_KINDS,
    "What the package says it is, wherever a result appears: released (only "
    "scripts/release_model.sh), experimental, or smoke (a model for trying the software, "
    "not for films of patients). Default: smoke when the training split holds fewer than "
    f"{package_info.SMOKE_MAX_TRAINING_FILMS} films, else experimental.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # The cheap checks, before TensorFlow loads.
  records.load_manifest(_DATA_DIR.value)
  for flag in ("model_dir", "qat_model_dir", "external_dir"):
    path = flags.FLAGS[flag].value
    if path and not os.path.isdir(path):
      raise errors.MissingInputError(f"--{flag} {path!r} is not a directory")
  cli.import_tensorflow()
  # pylint: disable=g-import-not-at-top
  from cxr_edge.export import export_lib
  # pylint: enable=g-import-not-at-top
  report = export_lib.export(_MODEL_DIR.value, _DATA_DIR.value, _EXPORT_DIR.value,
                             _CALIBRATION_SAMPLES.value, _LATENCY_RUNS.value,
                             variants=_VARIANTS.value, overwrite=_OVERWRITE.value,
                             allow_other_data=_ALLOW_OTHER_DATA.value,
                             external_dir=_EXTERNAL_DIR.value,
                             qat_model_dir=_QAT_MODEL_DIR.value,
                             model_kind=_MODEL_KIND.value)
  print(export_lib.format_report(report))
  print(f"cxr-export: models, metadata.json and {variant_names.REPORT_NAME} in "
        f"{_EXPORT_DIR.value}")


def run():
  """Console-script entry point."""
  cli.run(main, __name__, required=["model_dir", "data_dir", "export_dir"], prog="cxr-export")


if __name__ == "__main__":
  run()
