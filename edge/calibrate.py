r"""cxr-calibrate: choose a model's operating threshold on a clinic's own labelled films.

Usage:
  cxr-calibrate --model=/tmp/cxr_export/model_int8.tflite --image_dir=local_films/ \
      --output_dir=/tmp/site_model
  cxr-calibrate --model=/tmp/cxr_export/model_int8.tflite --image_dir=local_films/ \
      --target_sensitivity=0.98 --fit_temperature --output_dir=/tmp/site_model

TensorFlow-free (LiteRT, numpy, Pillow): it runs on the device. --image_dir holds the
clinic's films in NORMAL/ and PNEUMONIA/ folders (any depth, any case). The threshold is
chosen by maximum Youden J, or as the most specific one keeping --target_sensitivity, or
the most sensitive one keeping --target_specificity; --fit_temperature also refits the
probability scale on the films. Prints the sensitivity and specificity at the old and
new thresholds with 95% intervals (measured on the same films, so slightly optimistic),
and writes --output_dir/<model>.tflite (an unchanged copy) with a metadata.json that
holds the new threshold and its provenance; cxr-predict --model=that copy uses it. The
original package is never altered.
"""
import sys

from absl import app
from absl import flags

from edge import calibrate_lib
from edge import runtime
from model import metrics
from pipeline import cli

_MODEL = flags.DEFINE_string("model", None, "A .tflite exported by cxr-export, with its "
                             "metadata.json beside it.")
_IMAGE_DIR = flags.DEFINE_string("image_dir", None, "The clinic's labelled films: NORMAL/ "
                                 "and PNEUMONIA/ folders (any depth).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "The new model package (must not exist "
                                  "or be empty).")
_TARGET_SENSITIVITY = flags.DEFINE_float(
    "target_sensitivity", None, "Most specific threshold whose local sensitivity reaches "
    "this.", lower_bound=0.0, upper_bound=1.0)
_TARGET_SPECIFICITY = flags.DEFINE_float(
    "target_specificity", None, "Most sensitive threshold whose local specificity reaches "
    "this.", lower_bound=0.0, upper_bound=1.0)
_FIT_TEMPERATURE = flags.DEFINE_bool("fit_temperature", False, "Refit the softmax "
                                     "temperature on the films (calibrated probabilities).")
_THREADS = flags.DEFINE_integer("threads", 1, "Interpreter threads.", lower_bound=1)

flags.register_multi_flags_validator(
    ["target_sensitivity", "target_specificity"],
    lambda f: f["target_sensitivity"] is None or f["target_specificity"] is None,
    message="give at most one of --target_sensitivity and --target_specificity")


def _line(name: str, m) -> str:
  return (f"  {name} threshold {m['threshold']:.4f}: "
          + ", ".join(f"{k} {metrics.format_interval(m[k], m['ci95'][k])}%"
                      for k in ("sensitivity", "specificity", "accuracy")))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    r = calibrate_lib.calibrate(_MODEL.value, _IMAGE_DIR.value, _OUTPUT_DIR.value,
                                _TARGET_SENSITIVITY.value, _TARGET_SPECIFICITY.value,
                                _FIT_TEMPERATURE.value, _THREADS.value)
  except (calibrate_lib.CalibrationError, runtime.ModelError) as e:
    sys.exit(f"cxr-calibrate: error: {e}")
  same = r["measured_on_the_same_films"]
  print(f"cxr-calibrate: {r['films']} films ({', '.join(f'{v} {k}' for k, v in r['films_per_class'].items())}), "
        f"{r['patients']} patients; rule: {r['rule']}; ROC-AUC "
        f"{metrics.format_interval(same['at_new']['roc_auc'], same['at_new']['roc_auc_ci95'], percent=False)}")
  print(_line("previous", same["at_previous"]))
  print(_line("new", same["at_new"]) + f"; temperature {r['temperature']:.3f}")
  print("  (95% intervals, measured on the films the threshold was chosen on: expect a "
        "little less on new films)")
  print(f"cxr-calibrate: new package in {_OUTPUT_DIR.value}; the original is unchanged")


def run():
  """Console-script entry point."""
  cli.run(main, __name__, required=["model", "image_dir", "output_dir"], prog="cxr-calibrate")


if __name__ == "__main__":
  run()
