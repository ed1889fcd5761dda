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
  cxr-train --data_dir=/tmp/cxr_records --model_dir=/tmp/three --task=subtype

--task=subtype trains NORMAL / BACTERIAL / VIRAL (the conversion must have kept
subtypes): p_pneumonia = p_bacterial + p_viral takes the binary decision with the same
threshold rule, and the subtype is the likelier of the two; docs/subtype_study.md says
how it compares with the binary default.

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

from absl import app
from absl import flags

# Only TensorFlow-free modules here: flags and paths are checked before TensorFlow loads.
from cxr_edge.core import cli
from cxr_edge.core import config_flags
from cxr_edge.core import errors
from cxr_edge.core import metrics
from cxr_edge.core import schema
from cxr_edge.model import train_config
from cxr_edge.pipeline import augment_config
from cxr_edge.pipeline import records

# Every flag comes from a config's fields (core/config_flags.py): defaults, help, checks
# and the recipe are written there once.
for _options in train_config.OPTION_CLASSES:
  config_flags.define_flags(_options, required=train_config.REQUIRED)


def _config() -> train_config.TrainConfig:
  """The run's config from the flags (a QAT run's from its float run's recipe)."""
  values = config_flags.from_flags(train_config.TrainConfig)
  if flags.FLAGS.qat:
    given = [name for cls in train_config.OPTION_CLASSES for name in config_flags.present(
        cls, (config_flags.RECIPE, config_flags.REFUSED))]
    if given:
      raise app.UsageError(f"--qat reuses the --init_from run's recipe; drop {', '.join(given)}")
    from cxr_edge.model import train_lib  # pylint: disable=g-import-not-at-top
    passed = {k: values[k] for k in ("strategy", "cache", "steps_per_epoch", "external_dir",
                                      "no_verify", "deterministic")}
    return train_lib.qat_config(
        values["init_from"], values["model_dir"], values["data_dir"],
        epochs=values["epochs"] if flags.FLAGS["epochs"].present else None,
        learning_rate=(values["learning_rate"] if flags.FLAGS["learning_rate"].present
                       else None), **passed)
  augment = augment_config.AugmentOptions(
      **config_flags.from_flags(augment_config.AugmentOptions)).config()
  return train_config.TrainConfig(**values, augment=augment)


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
  records.load_manifest(flags.FLAGS.data_dir)  # its error says what is wrong
  if flags.FLAGS.init_from and not os.path.isdir(flags.FLAGS.init_from):
    raise errors.MissingInputError(f"--init_from {flags.FLAGS.init_from!r} is not a directory")
  if flags.FLAGS.external_dir and not os.path.isdir(flags.FLAGS.external_dir):
    raise errors.MissingInputError(
        f"--external_dir {flags.FLAGS.external_dir!r} is not a directory")
  if (flags.FLAGS.cache not in (schema.CACHE_MEMORY, schema.CACHE_NONE)
      and not os.path.isdir(flags.FLAGS.cache)):
    raise errors.MissingInputError(f"--cache {flags.FLAGS.cache!r} is not 'memory', 'none' or an "
                                   "existing directory")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  _check_paths()
  cli.import_tensorflow()
  # pylint: disable=g-import-not-at-top
  from cxr_edge.model import train_lib
  import tensorflow as tf
  # pylint: enable=g-import-not-at-top
  try:
    info = train_lib.train(_config(), overwrite=flags.FLAGS.overwrite)
  except tf.errors.UnimplementedError as e:
    if not flags.FLAGS.deterministic:
      raise
    # Op determinism stops at an op with no deterministic kernel on this device (GPU).
    reason = (e.message.strip().splitlines() or [type(e).__name__])[0].rstrip(".")
    raise errors.ConfigError(f"--deterministic: {reason}; run without --deterministic on "
                             "this device") from None
  if info.get("chief") is False:
    print("cxr-train: this worker is done; the chief worker writes the run to "
          f"{flags.FLAGS.model_dir}")
    return
  if info.get("already_finished"):
    print(f"cxr-train: {flags.FLAGS.model_dir} already holds this finished run; nothing to do "
          "(--overwrite starts over)")
  v = info["val_metrics"]
  d = v["at_threshold"]
  line = (f"validation: ROC-AUC {v['roc_auc']:.4f}, accuracy {d['accuracy']:.4f}, "
          f"sensitivity {d['sensitivity']:.4f}, specificity {d['specificity']:.4f} at "
          f"threshold {info['threshold']:.4f} ({_kept(info)})")
  print(f"cxr-train: {line}; model in {flags.FLAGS.model_dir}")
  if "val_subtype_metrics" in info:
    print(f"cxr-train: validation {metrics.format_subtype(info['val_subtype_metrics'])}")
  if "external_metrics" in info:
    print(f"cxr-train: {_describe('external', info['external_metrics'])}")
  if "external_subtype_metrics" in info:
    print(f"cxr-train: external {metrics.format_subtype(info['external_subtype_metrics'])}")


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
