"""A training run's configuration, defined once: cxr-train's flags, the recipe a QAT run
inherits, what identifies a run, model_info.json's "config" and BUILD.md's flag table all
come from TrainConfig's fields (core/config_flags.py).

TensorFlow-free, so the job checks its flags and paths before TensorFlow loads; the
training itself is model/train_lib.py.
"""
import dataclasses
from typing import Any, Dict, Optional

from cxr_edge.core import config_flags
from cxr_edge.core import schema
from cxr_edge.core import thresholds
from cxr_edge.core.config_flags import RECIPE, REFUSED, option
from cxr_edge.pipeline import augment_config

# Which epoch's weights a run keeps: the one with the best validation ROC-AUC, or the
# last (where a schedule that decays to zero has settled). The validation split is
# nearly saturated, so its best epoch is close to a draw among the late ones; the last
# was chosen on external films by a rule written before its runs (README).
KEEP_EPOCHS = ("best", "last")
DEFAULT_KEEP_EPOCH = "last"

# Decoupled (AdamW) weight decay, in Keras' units (per step, times the learning rate).
# Chosen on the external films (README); 0.5 is inside the AdamW paper's normalized range
# for batch 32, ~4,200 films and 30-40 epochs. The TrainConfig and --weight_decay default.
DEFAULT_WEIGHT_DECAY = 0.5

# What --task=auto trains: the three-class model where the conversion knows the subtypes
# (adopted on the external films by a rule written before its runs,
# docs/subtype_study.md), else the binary one.
TASK_AUTO = "auto"
TASK_CHOICES = (TASK_AUTO,) + schema.TASKS

# Training epochs (the cosine schedule spans them). Chosen on the external films by a
# rule written before its runs (README): longer training ranked them better, and 40
# epochs at the default input size fit the 30-minute budget on a 2-core CPU machine.
# The TrainConfig and --epochs default; quantization-aware fine-tuning has its own.
DEFAULT_EPOCHS = 40


def _models() -> list:
  # Evaluated when the flags are defined, so that a study registers its networks first.
  from cxr_edge.model import models  # pylint: disable=g-import-not-at-top
  return sorted(models.MODELS)


@dataclasses.dataclass
class TrainConfig:
  """Everything a training run needs: cxr-train's flags are its options (core/config_flags).

  `qat=RECIPE` marks the recipe, which a QAT run takes from its float run; `identity`
  False marks what does not change what is trained (a rerun may differ there and still
  resume the same run).
  """
  data_dir: str = option(help="A cxr-convert output directory.", doc="input conversion")
  model_dir: str = option(help="Where the model and logs are written.", identity=False,
                          doc="output directory")
  task: str = option(
      TASK_AUTO, choices=TASK_CHOICES, qat=RECIPE,
      help="auto: subtype when the conversion knows both subtypes in its train and val "
      "splits (the public release does), else binary; binary: NORMAL vs PNEUMONIA; "
      "subtype: NORMAL, BACTERIAL, VIRAL (p_pneumonia = bacterial + viral takes the binary "
      "decision). The run records which.",
      doc="`auto` (default): `subtype` when the conversion knows films of both subtypes in "
      "its train and val splits (the public release's names do), else `binary`; the run "
      "records which it trained. `binary`: NORMAL, PNEUMONIA. `subtype`: NORMAL, BACTERIAL, "
      "VIRAL: the binary decision on p_pneumonia = p_bacterial + p_viral with the same "
      "threshold rule, the subtype the likelier of the two; PNEUMONIA films of unknown "
      "subtype train the binary part only. Adopted as the default on the external films by "
      "a rule written before its runs (docs/subtype_study.md)")
  model: str = option(
      "edge_cnn", choices=_models, qat=RECIPE,
      help="seed_cnn: the source article's 4-block CNN; edge_cnn: compact plain 3x3 conv "
      "network for int8 edge devices.",
      doc="`edge_cnn` (compact plain-conv net for int8 devices), `seed_cnn` (the "
      "article's); the depthwise-separable alternative is a study (`studies/models.py`)")
  image_size: int = option(schema.DEFAULT_IMAGE_SIZE, lower_bound=32, qat=RECIPE,
                           help="Square model input side.", doc="input side")
  epochs: int = option(DEFAULT_EPOCHS, lower_bound=1, help="Training epochs.",
                       doc="epochs (with `--qat`: 2)")
  batch_size: int = option(32, lower_bound=1, qat=RECIPE, help="Batch size per replica.",
                           doc="per replica")
  learning_rate: float = option(1e-3, lower_bound=0.0, help="Adam learning rate.",
                                doc="Adam (with `--qat`: 1e-5)")
  lr_schedule: str = option(
      "cosine", choices=("cosine", "constant"), qat=RECIPE,
      help="cosine: decay to 0 over the run; constant: the source article's fixed rate.")
  # Built from the augmentation options below (augment_config.AugmentOptions).
  augment: augment_config.AugmentConfig = option(
      default_factory=lambda: augment_config.AugmentOptions().config(), flag=False,
      qat=RECIPE, help="The augmentation names and ranges.")
  class_weight: str = option(
      "balanced", choices=("balanced", "none"), qat=RECIPE,
      help="Weight examples inversely to class frequency (with --task=subtype: NORMAL and "
      "PNEUMONIA weigh half each, BACTERIAL and VIRAL half of PNEUMONIA each).")
  mixup: float = option(
      0.0, lower_bound=0.0, qat=RECIPE,
      help="mixup in the training step: each image blended with its partner in the "
      "shuffled batch, the loss with both labels; the Beta(alpha, alpha) parameter (0 = "
      "off; measured on the external films and not adopted, docs/results.md).")
  label_smoothing: float = option(
      0.0, lower_bound=0.0, upper_bound=0.99, qat=RECIPE,
      help="Label smoothing e: the loss's target is 1 - e/2 for the label and e/2 for the "
      "other class (0 = off); combines with --mixup (the blended target is smoothed); "
      "measured on the external films and not adopted (docs/results.md).")
  weight_decay: float = option(
      DEFAULT_WEIGHT_DECAY, lower_bound=0.0, qat=RECIPE,
      help="Decoupled (AdamW) weight decay of the convolution and dense kernels: each step "
      "shrinks them by weight_decay x the learning rate (batch-norm parameters and biases "
      "are not decayed); 0 = off. The default was chosen on external films (README).")
  ema_momentum: float = option(
      0.0, lower_bound=0.0, upper_bound=1.0, qat=RECIPE,
      help="Exponential moving average of the weights, momentum per step (e.g. 0.999; 0 = "
      "off): validation, external scoring, the best-epoch checkpoint and the saved model "
      "use the averaged weights, training and the resume backup the raw ones (the average "
      "is saved with the optimizer, so a resumed run continues it).")
  keep_epoch: str = option(
      DEFAULT_KEEP_EPOCH, choices=KEEP_EPOCHS, qat=RECIPE, identity=False,
      help="Which epoch's weights the run keeps: best = the highest validation ROC-AUC; "
      "last = the final epoch (where the cosine schedule has decayed to zero). Both are "
      "saved in checkpoints/. The default was chosen on external films (README).",
      doc="which epoch's weights the run keeps (`model.keras`, its threshold, its reported "
      "figures): `last` = the final epoch, where the cosine schedule has decayed to zero "
      "(default, chosen on external films by a rule written before its runs); `best` = "
      "the highest validation ROC-AUC (runs saved before the flag kept it; model_info's "
      "`kept_epoch` says which, `best_epoch` is always the validation best). It does not "
      "change what is trained: the same command on a finished run with the other value "
      "keeps that epoch instead, without training (copy the directory first to have both)")
  seed: int = option(42, qat=RECIPE, help="Seed of initialization, shuffling, augmentation.")
  strategy: str = option(
      "default", choices=("default", "mirrored", "multi_worker"), identity=False,
      help="tf.distribute strategy.",
      doc="`mirrored`, `multi_worker` (MultiWorkerMirroredStrategy: set `TF_CONFIG` in each "
      "worker's environment and give every worker the same `--model_dir` on a shared "
      "filesystem; only the chief writes the run; each worker reads its share of the "
      "shards, by file with at least two shards per worker, else by record; "
      "docs/scaling_out.md)")
  mixed_precision: bool = option(False, qat=REFUSED,
                                 help="float16 compute (GPU only; refused on CPU).")
  target_sensitivity: Optional[float] = option(
      None, lower_bound=0.0, upper_bound=1.0, qat=RECIPE,
      help="Choose the threshold in the highest score interval whose validation "
      "sensitivity reaches this (overrides --threshold_rule).",
      doc="instead of the rule: the threshold in the highest validation-score interval "
      "reaching this sensitivity. Thresholds are midpoints between validation scores, "
      "never a score itself")
  threshold_rule: str = option(
      thresholds.DEFAULT_RULE, choices=thresholds.RULES, qat=RECIPE,
      help="Decision threshold without --target_sensitivity: prevalence = the most "
      "accurate one where PNEUMONIA has --prevalence (Bayes' rule on the model's class "
      "prior; 1 - prevalence with balanced class weights); balanced = 0.5; youden = "
      "maximum Youden J on validation. Default chosen on external films (README).")
  prevalence: float = option(
      thresholds.DEFAULT_PREVALENCE, qat=RECIPE,
      help="With --threshold_rule=prevalence: the share of PNEUMONIA among the films the "
      "model will see. The default is the release's separately acquired test films' "
      "(README).",
      doc="with `--threshold_rule=prevalence`: the share of PNEUMONIA among the films the "
      "model will see (strictly between 0 and 1); the default is that of the release's "
      "separately acquired test films (the external films: 195 of 312), so chosen on "
      "them; a site with another share resets it with `cxr-calibrate --prevalence`")
  width: float = option(1.0, lower_bound=0.05, qat=RECIPE,
                        help="Width multiplier of the model's filters.")
  dropout: Optional[float] = option(None, lower_bound=0.0, upper_bound=0.95, qat=RECIPE,
                                    help="Dropout rate (default: the model's own).")
  cache: str = option(
      schema.CACHE_MEMORY, identity=False,
      help="Decoded-image cache: 'memory', 'none', or a directory (its files are named "
      "after the data and the preprocessing, so a cache of other data is never read; one "
      "left half-written by a killed run is removed).")
  steps_per_epoch: Optional[int] = option(None, lower_bound=1,
                                          help="Limit steps per epoch (smoke runs).")
  external_dir: Optional[str] = option(
      None, identity=False,
      help="A labelled class-folder tree from another source (external validation), "
      "scored after every epoch and for the saved model; never trained on, nothing chosen "
      "on it.")
  qat: bool = option(False, help="Quantization-aware fine-tuning of the float run in "
                     "--init_from, with its recipe.",
                     doc="quantization-aware fine-tuning of the float run in `--init_from`, "
                     "with that run's recipe (passing a recipe flag is refused)")
  init_from: Optional[str] = option(
      None, help="With --qat: the float cxr-train output to fine-tune.")
  verbose: int = 0  # Keras' own progress output; EpochProgress logs one line an epoch
  no_verify: bool = option(
      False, identity=False,
      help="Skip the sha256 check of the train and val shards against the manifest before "
      "training (their sizes are always checked).")
  # TensorFlow op determinism and ordered input: a rerun of the same config on the same
  # machine repeats the run bit for bit (process-wide, as TensorFlow's switch is).
  deterministic: bool = option(
      False, identity=False,
      help="Reproducible training: the same command on the same machine (same data, "
      "TensorFlow and thread count) repeats the run bit for bit, if it is not interrupted "
      "(TensorFlow op determinism and ordered input; may be slower, on a GPU especially). "
      "Without it, reruns of a seed are new draws of the recipe.",
      doc="reproducible training: TensorFlow op determinism and ordered input, so the same "
      "command on the same machine (same data, TensorFlow version and thread count) "
      "repeats an uninterrupted run bit for bit (a resumed run is not promised to match an "
      "uninterrupted one); its cost on this project's CPU was within the machine's noise "
      "(docs/results.md), and may be more on a GPU. Not part of the run's identity: a run "
      "may be resumed with or without it. On a GPU, an op with no deterministic kernel "
      "there stops the run with a one-line error naming it")


REQUIRED = ("data_dir", "model_dir")


@dataclasses.dataclass(frozen=True)
class JobOptions:
  """cxr-train's flags that steer the job, not the run."""
  overwrite: bool = option(
      False, help="Start over in a --model_dir that holds another run (removes only the "
      "files cxr-train writes).",
      doc="start over in a `--model_dir` that holds another run (other config or data; "
      "only cxr-train's files are removed). Without it such a dir is refused, the same run "
      "is resumed, and a finished one is left as it is")


# cxr-train's flags: these classes' options, in this order.
OPTION_CLASSES = (TrainConfig, augment_config.AugmentOptions, JobOptions)


# QAT fine-tunes an already trained network: a small rate keeps the weights near the
# validated float model while the quantization ranges settle.
QAT_EPOCHS = 2
QAT_LEARNING_RATE = 1e-5
# What a QAT run takes from its float run, unchanged (the recipe).
RECIPE_FIELDS = config_flags.names(TrainConfig, qat=RECIPE)
# Config fields that do not change what is trained (where it is logged, how it is fed,
# what else is scored, which epoch is kept): a rerun may differ in them and still resume
# the same run.
NOT_IDENTITY = tuple(f.name for f in dataclasses.fields(TrainConfig)
                     if f.metadata.get("identity") is False) + ("verbose",)


def config_to_dict(config: TrainConfig) -> Dict[str, Any]:
  """The whole resolved config, JSON-ready (model_info.json's "config")."""
  return dataclasses.asdict(config)


# A run saved before a field existed ran without it. Where "without" is not the field's
# default today, this is the value that reproduces what the run did.
BEFORE_THE_FIELD = {"weight_decay": 0.0, "keep_epoch": "best", "task": schema.TASK_BINARY}


def complete_saved(saved: Dict[str, Any]) -> Dict[str, Any]:
  """A saved config with the fields it predates filled in as that run had them."""
  defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)
              if f.default is not dataclasses.MISSING}
  return {**defaults, **BEFORE_THE_FIELD, **saved}


def config_from_info(info: Dict[str, Any], **overrides) -> TrainConfig:
  """A TrainConfig from a run's model_info, with overrides.

  Runs saved before the config was serialized whole give what their model_info names
  (augmentation ranges then were the flags' defaults).
  """
  saved = dict(info.get("config") or {})
  if not saved:
    saved = {k: info[k] for k in ("model", "image_size", "width", "dropout", "class_weight",
                                  "seed", "batch_size", "learning_rate", "lr_schedule",
                                  "target_sensitivity", "epochs") if k in info}
    saved["augment"] = dataclasses.asdict(augment_config.config_from_names(
        list(info.get("augment") or ["none"])))
    saved["threshold_rule"] = info.get("threshold_rule_name", "youden")
    saved.setdefault("data_dir", "")
    saved.setdefault("model_dir", "")
  saved = complete_saved(saved)
  augment = saved.pop("augment")
  if isinstance(augment, dict):
    augment = augment_config.AugmentConfig(**{**augment,
                                           "brightness": tuple(augment["brightness"])})
  known = {f.name for f in dataclasses.fields(TrainConfig)}
  return TrainConfig(augment=augment, **{**{k: v for k, v in saved.items() if k in known},
                                         **overrides})
