r"""cxr-evaluate: metrics of a trained model on a held-out split or an image folder.

Usage:
  cxr-evaluate --model_dir=/tmp/cxr_model --data_dir=/tmp/cxr_records --split=test \
      --output_dir=/tmp/cxr_eval
  cxr-evaluate --model_dir=/tmp/cxr_model --image_dir=/data/chest_xray/test \
      --output_dir=/tmp/cxr_eval_official

Reports accuracy, precision, sensitivity, specificity, F1 and the confusion matrix at the
run's saved threshold (set by its threshold rule) and at 0.5, plus ROC-AUC, PR-AUC, Brier score and expected
calibration error. Accuracy, sensitivity and specificity carry 95% Wilson intervals,
ROC-AUC a 95% bootstrap interval over patients. Writes metrics.json, predictions.csv,
roc.png, pr.png, calibration.png (reliability), confusion_matrix.png; with --explain=N,
Grad-CAM overlays in explanations/ (what the model used, not a diagnostic localisation).
"""
import os

from absl import app
from absl import flags

# Only TensorFlow-free modules here: flags and paths are checked before TensorFlow loads.
from cxr_edge.core import cli
from cxr_edge.core import errors
from cxr_edge.core import metrics
from cxr_edge.core import schema
from cxr_edge.pipeline import records

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "A cxr-train output directory.")
_DATA_DIR = flags.DEFINE_string("data_dir", None,
                                "A cxr-convert output (use with --split); or --image_dir.")
_SPLIT = flags.DEFINE_enum("split", "test", list(schema.SPLITS), "Split of --data_dir.")
_IMAGE_DIR = flags.DEFINE_string(
    "image_dir", None, "A class-folder tree (NORMAL/, PNEUMONIA/ at any depth) instead of "
    "--data_dir; unreadable files are skipped and listed in metrics.json.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the reports are written.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Inference batch size.", lower_bound=1)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an earlier evaluation's reports "
                               "in --output_dir.")
_EXPLAIN = flags.DEFINE_integer(
    "explain", 0, "Write Grad-CAM overlays (explanations/) for the N most confident errors "
    "and the N most confident correct films of each class; 0: none.", lower_bound=0)

flags.register_multi_flags_validator(
    ["data_dir", "image_dir"], lambda f: (f["data_dir"] is None) != (f["image_dir"] is None),
    message="give exactly one of --data_dir or --image_dir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # The cheap checks, before TensorFlow loads.
  if not os.path.isdir(_MODEL_DIR.value):
    raise errors.MissingInputError(f"--model_dir {_MODEL_DIR.value!r} is not a finished "
                                   "cxr-train output (no such directory)")
  if _DATA_DIR.value:
    records.load_manifest(_DATA_DIR.value)
  elif not os.path.isdir(_IMAGE_DIR.value):
    raise errors.MissingInputError(f"--image_dir {_IMAGE_DIR.value!r} is not a directory")
  cli.import_tensorflow()
  # pylint: disable=g-import-not-at-top
  from cxr_edge.model import evaluate_lib
  # pylint: enable=g-import-not-at-top
  r = evaluate_lib.evaluate(_MODEL_DIR.value, _OUTPUT_DIR.value, _DATA_DIR.value,
                            _SPLIT.value, _IMAGE_DIR.value, _BATCH_SIZE.value,
                            _OVERWRITE.value, _EXPLAIN.value)
  fmt = metrics.format_interval
  print(f"cxr-evaluate: {r['count']} images, {r['patients']} patients; ROC-AUC "
        f"{fmt(r['roc_auc'], r['roc_auc_ci95'], percent=False)} (95% interval, bootstrap over "
        f"patients), PR-AUC {r['pr_auc']:.4f}, Brier {r['brier']:.4f}, ECE {r['ece']:.4f}")
  at = [r["at_threshold"]] + ([r["at_0_5"]] if r["at_threshold"]["threshold"] != 0.5 else [])
  for m in at:
    print(f"  threshold {m['threshold']:.4f}: "
          + ", ".join(f"{k} {fmt(m[k], m['ci95'][k])}%"
                      for k in ("accuracy", "sensitivity", "specificity"))
          + f" (95% Wilson intervals), precision {m['precision']:.4f}, F1 {m['f1']:.4f}, "
          f"confusion [[TN FP] [FN TP]] {m['confusion_matrix']['rows_true_cols_pred']}")
  if "subtype" in r:
    print(f"  {metrics.format_subtype(r['subtype'])} (95% intervals); three-class confusion "
          f"(rows truth, columns decision: NORMAL, BACTERIAL, VIRAL) "
          f"{r['subtype']['three_class']['confusion_matrix']['rows_true_cols_pred']}")
  if "explanations" in r:
    e = r["explanations"]
    print(f"  {len(e['films'])} Grad-CAM overlays in {e['folder']} "
          f"({e['seconds_per_film']:.2f} s each; not a diagnostic localisation)")
  print(f"  reports in {_OUTPUT_DIR.value}")


def run():
  """Console-script entry point."""
  cli.run(main, __name__, required=["model_dir", "output_dir"], prog="cxr-evaluate")


if __name__ == "__main__":
  run()
