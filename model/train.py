r"""cxr-train: train a pneumonia classifier on a cxr-convert output.

Usage:
  cxr-train --data_dir=/tmp/cxr_records --model_dir=/tmp/cxr_model
  cxr-train --data_dir=/tmp/cxr_records --model_dir=/tmp/cxr_model \
      --external_dir=../shared/data/chest_xray/external
  cxr-train --data_dir=/tmp/cxr_records --model_dir=/tmp/article --model=seed_cnn \
      --augment=rotation,zoom --lr_schedule=constant --class_weight=none
  cxr-train --data_dir=/tmp/cxr_records --model_dir=/tmp/m --augment=rotation,brightness \
      --target_sensitivity=0.95
  cxr-train --qat --init_from=/tmp/cxr_model --data_dir=/tmp/cxr_records --model_dir=/tmp/qat
  cxr-train --data_dir=/tmp/cxr_records --model_dir=/tmp/again --seed=7 --deterministic

--qat fine-tunes a finished float run quantization-aware (for cxr-export --qat_model_dir):
it reuses that run's recipe (model, augmentation ranges, class weights, schedule,
threshold rule) at learning rate 1e-5 for 2 epochs unless --learning_rate/--epochs say
otherwise, and writes its own model dir with its own threshold by that rule.

Run the same command again after an interruption: it resumes from the last finished
epoch; after it finished, it says so and does nothing. A --model_dir holding another run
(other config or data) is refused unless --overwrite. The train and val shards are
checked against the conversion's manifest first (sizes, and sha256 unless --no_verify).
By default a rerun of a seed is a new draw of the recipe (parallel input and kernels
reorder examples and float sums, for speed); with --deterministic the same command on
the same machine repeats an uninterrupted run bit for bit.
Logs one line per epoch. Writes model.keras, model_info.json (with the threshold
and its rule), history.json, training_log.csv, learning_curves.png,
checkpoints/ and logs/. --verbosity=1 shows TensorFlow's and Keras' own output too.
"""
import os
import sys

from absl import app
from absl import flags

# Only TensorFlow-free modules here: flags and paths are checked before TensorFlow loads.
from cxr_edge.core import cli
from cxr_edge.core import metrics
from cxr_edge.core import schema
from cxr_edge.core import thresholds
from cxr_edge.model import models
from cxr_edge.model import train_config
from cxr_edge.pipeline import augment_config
from cxr_edge.pipeline import records

_DATA_DIR = flags.DEFINE_string("data_dir", None, "A cxr-convert output directory.")
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Where the model and logs are written.")
_MODEL = flags.DEFINE_enum("model", "edge_cnn", sorted(models.MODELS),
                           "seed_cnn: the source article's 4-block CNN; edge_cnn: compact "
                           "plain 3x3 conv network for int8 edge devices.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", schema.DEFAULT_IMAGE_SIZE,
                                   "Square model input side.", lower_bound=32)
_EPOCHS = flags.DEFINE_integer("epochs", train_config.DEFAULT_EPOCHS, "Training epochs.",
                               lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Batch size per replica.", lower_bound=1)
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.",
                                    lower_bound=0.0)
_LR_SCHEDULE = flags.DEFINE_enum(
    "lr_schedule", "cosine", ["cosine", "constant"],
    "cosine: decay to 0 over the run; constant: the source article's fixed rate.")
_AUGMENT = flags.DEFINE_list(
    "augment", list(train_config.DEFAULT_AUGMENT),
    f"Augmentations ({', '.join(augment_config.AUGMENTATIONS)}) or 'none'; applied batched in the "
    "training step (on the GPU when there is one). The default "
    "was chosen on external films (README).")
_ROTATION = flags.DEFINE_float("rotation_deg", 20.0, "Rotation range, ± degrees.",
                               lower_bound=0.0)
_ZOOM = flags.DEFINE_float("zoom", 0.3, "Zoom range, ± fraction per axis.", lower_bound=0.0,
                           upper_bound=0.9)
_BRIGHTNESS = flags.DEFINE_list("brightness", ["0.7", "1.3"], "Brightness factor range.")
_CONTRAST = flags.DEFINE_float("contrast", 0.2, "Contrast range, ± fraction.", lower_bound=0.0)
_TRANSLATION = flags.DEFINE_float("translation", 0.1, "Shift range, ± fraction of the size.",
                                  lower_bound=0.0)
_CLASS_WEIGHT = flags.DEFINE_enum("class_weight", "balanced", ["balanced", "none"],
                                  "Weight examples inversely to class frequency.")
_MIXUP = flags.DEFINE_float(
    "mixup", 0.0, "mixup in the training step: each image blended with another, the loss "
    "with both labels; the Beta(alpha, alpha) parameter, 0 = off.", lower_bound=0.0)
_LABEL_SMOOTHING = flags.DEFINE_float(
    "label_smoothing", 0.0, "Label smoothing e: the loss's target is 1 - e/2 for the label "
    "and e/2 for the other class instead of 1 and 0; 0 = off.", lower_bound=0.0,
    upper_bound=0.99)
_WEIGHT_DECAY = flags.DEFINE_float(
    "weight_decay", train_config.DEFAULT_WEIGHT_DECAY, "Decoupled (AdamW) weight decay of "
    "the convolution and dense kernels: each step shrinks them by weight_decay x the "
    "learning rate (batch-norm parameters and biases are not decayed); 0 = off. The "
    "default was chosen on external films (README).", lower_bound=0.0)
_EMA_MOMENTUM = flags.DEFINE_float(
    "ema_momentum", 0.0, "Exponential moving average of the weights, momentum per step "
    "(e.g. 0.999), 0 = off: validation, external scoring, the best epoch and the saved "
    "model use the averaged weights.", lower_bound=0.0, upper_bound=1.0)
_KEEP_EPOCH = flags.DEFINE_enum(
    "keep_epoch", train_config.DEFAULT_KEEP_EPOCH, list(train_config.KEEP_EPOCHS),
    "Which epoch's weights the run keeps: best = the highest validation ROC-AUC; last = "
    "the final epoch (where the cosine schedule has decayed to zero). Both are saved in "
    "checkpoints/. The default was chosen on external films (README).")
_SEED = flags.DEFINE_integer("seed", 42, "Seed of initialization, shuffling, augmentation.")
_STRATEGY = flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                              "tf.distribute strategy.")
_MIXED_PRECISION = flags.DEFINE_bool("mixed_precision", False,
                                     "float16 compute (GPU only; refused on CPU).")
_TARGET_SENSITIVITY = flags.DEFINE_float(
    "target_sensitivity", None,
    "Choose the threshold in the highest score interval whose validation sensitivity "
    "reaches this (overrides --threshold_rule).", lower_bound=0.0, upper_bound=1.0)
_THRESHOLD_RULE = flags.DEFINE_enum(
    "threshold_rule", thresholds.DEFAULT_RULE, list(thresholds.RULES),
    "Decision threshold without --target_sensitivity: prevalence = the most accurate one "
    "where PNEUMONIA has --prevalence (Bayes' rule on the model's class prior; 1 - "
    "prevalence with balanced class weights); balanced = 0.5; youden = maximum Youden J "
    "on validation. Default chosen on external films (README).")
_PREVALENCE = flags.DEFINE_float(
    "prevalence", thresholds.DEFAULT_PREVALENCE,
    "With --threshold_rule=prevalence: the share of PNEUMONIA among the films the model "
    "will see. The default is the release's separately acquired test films' (README).")
_WIDTH = flags.DEFINE_float("width", 1.0, "Width multiplier of the model's filters.",
                            lower_bound=0.05)
_DROPOUT = flags.DEFINE_float("dropout", None, "Dropout rate (default: the model's own).",
                              lower_bound=0.0, upper_bound=0.95)
_CACHE = flags.DEFINE_string(
    "cache", schema.CACHE_MEMORY,
    "Decoded-image cache: 'memory', 'none', or a directory (its files are named after the "
    "data and the preprocessing, so a cache of other data is never read; one left "
    "half-written by a killed run is removed).")
_EXTERNAL_DIR = flags.DEFINE_string(
    "external_dir", None,
    "A labelled class-folder tree from another source (external validation), scored "
    "after every epoch and for the saved model; never trained on, nothing chosen on it.")
_QAT = flags.DEFINE_bool("qat", False, "Quantization-aware fine-tuning of the float run in "
                         "--init_from, with its recipe.")
_INIT_FROM = flags.DEFINE_string("init_from", None, "With --qat: the float cxr-train output "
                                 "to fine-tune.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Start over in a --model_dir that holds another run (removes only "
    "the files cxr-train writes).")
_NO_VERIFY = flags.DEFINE_bool(
    "no_verify", False, "Skip the sha256 check of the train and val shards against the "
    "manifest before training (their sizes are always checked).")
_DETERMINISTIC = flags.DEFINE_bool(
    "deterministic", False, "Reproducible training: the same command on the same machine "
    "(same data, TensorFlow and thread count) repeats the run bit for bit, if it is not "
    "interrupted (TensorFlow op determinism and ordered input; may be slower, on a GPU "
    "especially). Without it, reruns of a seed are new draws of the recipe.")
_STEPS_PER_EPOCH = flags.DEFINE_integer("steps_per_epoch", None,
                                        "Limit steps per epoch (smoke runs).", lower_bound=1)


# Flags that make the recipe; a QAT run takes them from its float run.
_RECIPE_FLAGS = ("model", "image_size", "augment", "rotation_deg", "zoom", "brightness",
                 "contrast", "translation", "class_weight", "mixup", "label_smoothing",
                 "weight_decay", "ema_momentum", "keep_epoch", "seed", "batch_size",
                 "lr_schedule", "target_sensitivity", "threshold_rule", "prevalence", "width",
                 "dropout", "mixed_precision")


def _qat_config() -> train_config.TrainConfig:
  given = [f"--{n}" for n in _RECIPE_FLAGS if flags.FLAGS[n].present]
  if given:
    raise app.UsageError(f"--qat reuses the --init_from run's recipe; drop {', '.join(given)}")
  present = lambda name: flags.FLAGS[name].present
  from cxr_edge.model import train_lib  # pylint: disable=g-import-not-at-top
  return train_lib.qat_config(
      _INIT_FROM.value, _MODEL_DIR.value, _DATA_DIR.value,
      epochs=_EPOCHS.value if present("epochs") else None,
      learning_rate=_LEARNING_RATE.value if present("learning_rate") else None,
      strategy=_STRATEGY.value, cache=_CACHE.value, steps_per_epoch=_STEPS_PER_EPOCH.value,
      external_dir=_EXTERNAL_DIR.value, verify_data=not _NO_VERIFY.value,
      deterministic=_DETERMINISTIC.value)


def _config() -> train_config.TrainConfig:
  if _QAT.value:
    return _qat_config()
  epochs, names = _EPOCHS.value, _AUGMENT.value
  low, high = (float(v) for v in _BRIGHTNESS.value)
  return train_config.TrainConfig(
      data_dir=_DATA_DIR.value, model_dir=_MODEL_DIR.value, model=_MODEL.value,
      image_size=_IMAGE_SIZE.value, epochs=epochs, batch_size=_BATCH_SIZE.value,
      learning_rate=_LEARNING_RATE.value, lr_schedule=_LR_SCHEDULE.value,
      augment=augment_config.config_from_names(names, _ROTATION.value, _ZOOM.value,
                                               (low, high), _CONTRAST.value,
                                               _TRANSLATION.value),
      class_weight=_CLASS_WEIGHT.value, mixup=_MIXUP.value,
      label_smoothing=_LABEL_SMOOTHING.value, weight_decay=_WEIGHT_DECAY.value,
      ema_momentum=_EMA_MOMENTUM.value, keep_epoch=_KEEP_EPOCH.value, seed=_SEED.value,
      strategy=_STRATEGY.value,
      mixed_precision=_MIXED_PRECISION.value, target_sensitivity=_TARGET_SENSITIVITY.value,
      threshold_rule=_THRESHOLD_RULE.value, prevalence=_PREVALENCE.value,
      width=_WIDTH.value, dropout=_DROPOUT.value, cache=_CACHE.value,
      steps_per_epoch=_STEPS_PER_EPOCH.value, external_dir=_EXTERNAL_DIR.value,
      verify_data=not _NO_VERIFY.value, deterministic=_DETERMINISTIC.value)


def _valid_augment(names):
  try:
    augment_config.config_from_names(names)
  except ValueError as e:
    raise flags.ValidationError(str(e)) from None
  return True


def _valid_brightness(values):
  try:
    low, high = (float(v) for v in values)
  except ValueError:
    raise flags.ValidationError("--brightness takes two numbers, e.g. 0.7,1.3") from None
  if not 0 < low <= high:
    raise flags.ValidationError("--brightness needs 0 < low <= high")
  return True


flags.register_validator("augment", _valid_augment)
flags.register_multi_flags_validator(
    ["qat", "init_from"], lambda f: bool(f["qat"]) == bool(f["init_from"]),
    message="--qat and --init_from go together")
flags.register_validator("brightness", _valid_brightness)
flags.register_validator("prevalence", lambda v: 0.0 < v < 1.0,
                         message="--prevalence must be strictly between 0 and 1")


def _describe(name: str, m) -> str:
  d = m["at_threshold"]
  return (f"{name} ({m['count']} films): ROC-AUC "
          f"{metrics.format_interval(m['roc_auc'], m['roc_auc_ci95'], percent=False)}, "
          + ", ".join(f"{k} {metrics.format_interval(d[k], d['ci95'][k])}%"
                      for k in ("accuracy", "sensitivity", "specificity"))
          + f" at threshold {d['threshold']:.4f}")


def _check_paths() -> None:
  """The cheap checks, before TensorFlow loads (a typo costs no 20-second wait)."""
  records.load_manifest(_DATA_DIR.value)  # FileNotFoundError says what is wrong
  if _INIT_FROM.value and not os.path.isdir(_INIT_FROM.value):
    raise FileNotFoundError(f"--init_from {_INIT_FROM.value!r} is not a directory")
  if _EXTERNAL_DIR.value and not os.path.isdir(_EXTERNAL_DIR.value):
    raise FileNotFoundError(f"--external_dir {_EXTERNAL_DIR.value!r} is not a directory")
  if (_CACHE.value not in (schema.CACHE_MEMORY, schema.CACHE_NONE)
      and not os.path.isdir(_CACHE.value)):
    raise FileNotFoundError(f"--cache {_CACHE.value!r} is not 'memory', 'none' or an "
                            "existing directory")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    _check_paths()
  except FileNotFoundError as e:
    sys.exit(f"cxr-train: error: {e}")
  cli.import_tensorflow()
  # pylint: disable=g-import-not-at-top
  from cxr_edge.model import train_lib
  import tensorflow as tf
  # pylint: enable=g-import-not-at-top
  try:
    info = train_lib.train(_config(), overwrite=_OVERWRITE.value)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"cxr-train: error: {e}")
  except tf.errors.UnimplementedError as e:
    if not _DETERMINISTIC.value:
      raise
    # Op determinism stops at an op with no deterministic kernel on this device (GPU).
    reason = (e.message.strip().splitlines() or [type(e).__name__])[0].rstrip(".")
    sys.exit(f"cxr-train: error: --deterministic: {reason}; run without --deterministic "
             "on this device")
  if info.get("chief") is False:
    print("cxr-train: this worker is done; the chief worker writes the run to "
          f"{_MODEL_DIR.value}")
    return
  if info.get("already_finished"):
    print(f"cxr-train: {_MODEL_DIR.value} already holds this finished run; nothing to do "
          "(--overwrite starts over)")
  v = info["val_metrics"]
  d = v["at_threshold"]
  line = (f"validation: ROC-AUC {v['roc_auc']:.4f}, accuracy {d['accuracy']:.4f}, "
          f"sensitivity {d['sensitivity']:.4f}, specificity {d['specificity']:.4f} at "
          f"threshold {info['threshold']:.4f} ({_kept(info)})")
  print(f"cxr-train: {line}; model in {_MODEL_DIR.value}")
  if "external_metrics" in info:
    print(f"cxr-train: {_describe('external', info['external_metrics'])}")


def _kept(info) -> str:
  if info.get("keep_epoch") == "last":
    return (f"last epoch, {info['kept_epoch']} of {info['epochs']}; best by validation "
            f"was {info['best_epoch']}")
  return f"best epoch {info['best_epoch']} of {info['epochs']}"


def run():
  """Console-script entry point."""
  cli.run(main, __name__, required=["data_dir", "model_dir"], prog="cxr-train")


if __name__ == "__main__":
  run()
