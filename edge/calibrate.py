r"""cxr-calibrate: set a model's operating threshold for a clinic: on its own labelled
films, or from its share of PNEUMONIA.

Usage:
  cxr-calibrate --image_dir=local_films/ --output_dir=/tmp/site_model  # the released model
  cxr-calibrate --model=/tmp/cxr_export/model_int8.tflite --image_dir=local_films/ \
      --output_dir=/tmp/site_model
  cxr-calibrate --model=/tmp/cxr_export/model_int8.tflite --image_dir=local_films/ \
      --target_sensitivity=0.98 --fit_temperature --output_dir=/tmp/site_model
  cxr-calibrate --model=/tmp/cxr_export/model_int8.tflite --prevalence=0.3 \
      --output_dir=/tmp/site_model
  cxr-calibrate --from_spool=/var/lib/cxr-node --output_dir=/tmp/site_model

TensorFlow-free (LiteRT, numpy, Pillow): it runs on the device. --image_dir holds the
clinic's films in NORMAL/ and PNEUMONIA/ folders (any depth, any case); films outside
the model's intended use are left out, counted. On those films the threshold is, by
default, the most specific one that keeps the package's stated sensitivity (a triage
aid's worth is not missing pneumonia); or the most specific one keeping
--target_sensitivity, the most sensitive one keeping --target_specificity, or maximum
Youden J (--rule=youden); --fit_temperature also refits the probability scale on the
films. Prints the sensitivity and specificity at the old and new thresholds with 95%
intervals (measured on the same films, so slightly optimistic). A threshold whose
sensitivity or specificity the films cannot pin to +-10 points is refused, saying how
many more films are needed, and nothing is written (--allow_few_films: an experiment,
marked in the package).

--from_spool=DIR takes the labelled films from a clinic node's spool instead: the films
the same model read there that readers gave a verdict on (the review page, or
cxr-monitor --import_verdicts), with the probabilities the node recorded; never
automatic, and the node keeps its model until it is restarted with the new package.

--prevalence=P instead sets the most accurate threshold where a share P of the films
the model will see shows PNEUMONIA (Bayes' rule on the class prior the model was trained
to; no labelled film needed). With --image_dir as well, the films only measure it.

Writes --output_dir/<model>.tflite: the same graph and weights with the new threshold,
temperature and their provenance embedded (so the file and its sha256 change), and a
metadata.json copy of its metadata; cxr-predict --model=that file uses the new
threshold. The original package is never altered.
"""

from absl import app
from absl import flags

from cxr_edge.core import cli
from cxr_edge.core import metrics
from cxr_edge.edge import calibrate_lib
from cxr_edge.edge import released

_MODEL = flags.DEFINE_string("model", None, "A .tflite exported by cxr-export (its "
                             "metadata is embedded; a metadata.json beside it, if kept, "
                             "must agree). Default: the released int8 model shipped with "
                             "cxr-edge.")
_IMAGE_DIR = flags.DEFINE_string("image_dir", None, "The clinic's labelled films: NORMAL/ "
                                 "and PNEUMONIA/ folders (any depth). Required unless "
                                 "--prevalence is given.")
_FROM_SPOOL = flags.DEFINE_string(
    "from_spool", None, "A cxr-node spool: the films the model read there that readers "
    "gave a verdict on (review page or cxr-monitor --import_verdicts) are the labelled "
    "films, instead of --image_dir.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "The new model package (must not exist "
                                  "or be empty).")
_TARGET_SENSITIVITY = flags.DEFINE_float(
    "target_sensitivity", None, "Most specific threshold whose local sensitivity reaches "
    "this.", lower_bound=0.0, upper_bound=1.0)
_TARGET_SPECIFICITY = flags.DEFINE_float(
    "target_specificity", None, "Most sensitive threshold whose local specificity reaches "
    "this.", lower_bound=0.0, upper_bound=1.0)
_PREVALENCE = flags.DEFINE_float(
    "prevalence", None, "Set the threshold from the local share of PNEUMONIA (0 to 1, "
    "exclusive) instead of choosing it on films.")
_FIT_TEMPERATURE = flags.DEFINE_bool("fit_temperature", False, "Refit the softmax "
                                     "temperature on the films (calibrated probabilities).")
_RULE = flags.DEFINE_enum(
    "rule", calibrate_lib.RULES[0], calibrate_lib.RULES,
    "Without a target or --prevalence: stated_sensitivity, the most specific threshold "
    "that keeps the package's stated sensitivity on the local films (a triage aid's worth "
    "is not missing pneumonia); youden, the maximum of sensitivity + specificity - 1.")
_ALLOW_FEW_FILMS = flags.DEFINE_bool(
    "allow_few_films", False, "Write the package although the films are too few for the "
    "new threshold's sensitivity and specificity to be known to +-10 points (refused "
    "otherwise): an experiment, marked in the package and in --info.")
_THREADS = flags.DEFINE_integer("threads", 1, "Interpreter threads.", lower_bound=1)

flags.register_multi_flags_validator(
    ["target_sensitivity", "target_specificity"],
    lambda f: f["target_sensitivity"] is None or f["target_specificity"] is None,
    message="give at most one of --target_sensitivity and --target_specificity")
flags.register_multi_flags_validator(
    ["prevalence", "target_sensitivity", "target_specificity"],
    lambda f: f["prevalence"] is None or (f["target_sensitivity"] is None
                                          and f["target_specificity"] is None),
    message="--prevalence sets the threshold itself: give it or a target, not both")
flags.register_multi_flags_validator(
    ["prevalence", "image_dir", "from_spool"],
    lambda f: f["prevalence"] is not None or bool(f["image_dir"]) or bool(f["from_spool"]),
    message="give --image_dir (labelled local films), --from_spool (a node's films with "
            "readers' verdicts) or --prevalence (the local share of PNEUMONIA)")
flags.register_multi_flags_validator(
    ["image_dir", "from_spool"], lambda f: not (f["image_dir"] and f["from_spool"]),
    message="give --image_dir or --from_spool, not both")
flags.register_multi_flags_validator(
    ["fit_temperature", "image_dir", "from_spool"],
    lambda f: not f["fit_temperature"] or bool(f["image_dir"]) or bool(f["from_spool"]),
    message="--fit_temperature needs labelled films (--image_dir or --from_spool)")
flags.register_validator("prevalence", lambda v: v is None or 0.0 < v < 1.0,
                         message="--prevalence must be strictly between 0 and 1")


def _line(name: str, m) -> str:
  return (f"  {name} threshold {m['threshold']:.4f}: "
          + ", ".join(f"{k} {metrics.format_interval(m[k], m['ci95'][k])}%"
                      for k in ("sensitivity", "specificity", "accuracy")))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  r = calibrate_lib.calibrate(released.resolve(_MODEL.value), _IMAGE_DIR.value,
                              _OUTPUT_DIR.value,
                              _TARGET_SENSITIVITY.value, _TARGET_SPECIFICITY.value,
                              _FIT_TEMPERATURE.value, _THREADS.value, _PREVALENCE.value,
                              _FROM_SPOOL.value, _RULE.value, _ALLOW_FEW_FILMS.value)
  measured = r["measured"]
  if measured is None:
    print(f"cxr-calibrate: rule: {r['rule']}; threshold {r['previous']['threshold']:.4f} -> "
          f"{r['threshold']:.4f}; no labelled films given, so nothing measured: check it "
          "on local films when you have them (--image_dir)")
  else:
    new = measured["at_new"]
    counts = ", ".join(f"{v} {k}" for k, v in r["films_per_class"].items())
    auc = metrics.format_interval(new["roc_auc"], new["roc_auc_ci95"], percent=False)
    print(f"cxr-calibrate: {r['films']} films ({counts}), {r['patients']} patients; rule: "
          f"{r['rule']}; ROC-AUC {auc}")
    print(_line("previous", measured["at_previous"]))
    print(_line("new", new) + f"; temperature {r['temperature']:.3f}")
    if r["chosen_on_the_films"]:
      print("  (95% intervals, measured on the films the threshold was chosen on: expect a "
            "little less on new films)")
    else:
      print("  (95% intervals on these films; the threshold was not chosen on them, only "
            "from --prevalence)")
  if r["few_films"]:
    print(f"cxr-calibrate: AN EXPERIMENT (--allow_few_films): {r['few_films']}")
  print(f"cxr-calibrate: new package in {_OUTPUT_DIR.value}; the original is unchanged")


def run():
  """Console-script entry point."""
  cli.run(main, __name__, required=["output_dir"], prog="cxr-calibrate",
          about=released.describe)


if __name__ == "__main__":
  run()
