"""A training run's configuration: what cxr-train's flags fill and model_info.json keeps.

TensorFlow-free, so the job checks its flags and paths before TensorFlow loads; the
training itself is model/train_lib.py.
"""
import dataclasses
from typing import Any, Dict, Optional

from cxr_edge.core import schema
from cxr_edge.core import thresholds
from cxr_edge.pipeline import augment_config

# Chosen on the external films, not on validation (README): geometric augmentation is
# what carries the model to films from another source, and intensity augmentation on
# top of it ranked them better. The TrainConfig default and cxr-train's --augment default.
DEFAULT_AUGMENT = ("rotation", "zoom", "brightness", "contrast")

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

# Training epochs (the cosine schedule spans them). Chosen on the external films by a
# rule written before its runs (README): longer training ranked them better, and 40
# epochs at the default input size fit the 30-minute budget on a 2-core CPU machine.
# The TrainConfig and --epochs default; quantization-aware fine-tuning has its own.
DEFAULT_EPOCHS = 40


@dataclasses.dataclass
class TrainConfig:
  """Everything a training run needs (the job fills it from flags)."""
  data_dir: str
  model_dir: str
  model: str = "edge_cnn"
  image_size: int = schema.DEFAULT_IMAGE_SIZE
  epochs: int = DEFAULT_EPOCHS
  batch_size: int = 32
  learning_rate: float = 1e-3
  lr_schedule: str = "cosine"  # or "constant" (the source article's)
  augment: augment_config.AugmentConfig = dataclasses.field(
      default_factory=lambda: augment_config.config_from_names(DEFAULT_AUGMENT))
  class_weight: str = "balanced"
  mixup: float = 0.0  # Beta(alpha, alpha) of mixup in the training step; 0 = off
  label_smoothing: float = 0.0  # target (1 - e/2, e/2) instead of (1, 0); 0 = off
  # Decoupled (AdamW) weight decay of the kernels, per step times the learning rate; 0 = off.
  weight_decay: float = DEFAULT_WEIGHT_DECAY
  # Exponential moving average of the weights, per step; 0 = off. When on, validation,
  # external scoring, the best epoch and the saved model use the averaged weights.
  ema_momentum: float = 0.0
  keep_epoch: str = DEFAULT_KEEP_EPOCH  # one of KEEP_EPOCHS
  seed: int = 42
  strategy: str = "default"
  mixed_precision: bool = False
  target_sensitivity: Optional[float] = None
  threshold_rule: str = thresholds.DEFAULT_RULE
  prevalence: float = thresholds.DEFAULT_PREVALENCE  # of PNEUMONIA, for the prevalence rule
  width: float = 1.0
  dropout: Optional[float] = None
  cache: str = schema.CACHE_MEMORY
  steps_per_epoch: Optional[int] = None  # for smoke tests; None = whole split
  external_dir: Optional[str] = None  # scored every epoch, never trained on
  qat: bool = False  # quantization-aware fine-tuning of the float run in init_from
  init_from: Optional[str] = None
  verbose: int = 0  # Keras' own progress output; EpochProgress logs one line an epoch
  verify_data: bool = True  # sha256 of the shards before training (sizes always)
  # TensorFlow op determinism and ordered input: a rerun of the same config on the same
  # machine repeats the run bit for bit (process-wide, as TensorFlow's switch is).
  deterministic: bool = False


# QAT fine-tunes an already trained network: a small rate keeps the weights near the
# validated float model while the quantization ranges settle.
QAT_EPOCHS = 2
QAT_LEARNING_RATE = 1e-5
# What a QAT run takes from its float run, unchanged (the recipe).
RECIPE_FIELDS = ("model", "image_size", "width", "dropout", "augment", "class_weight", "mixup",
                 "label_smoothing", "weight_decay", "ema_momentum", "keep_epoch", "seed",
                 "batch_size", "lr_schedule", "threshold_rule", "prevalence",
                 "target_sensitivity")


def config_to_dict(config: TrainConfig) -> Dict[str, Any]:
  """The whole resolved config, JSON-ready (model_info.json's "config")."""
  return dataclasses.asdict(config)


# A run saved before a field existed ran without it. Where "without" is not the field's
# default today, this is the value that reproduces what the run did.
BEFORE_THE_FIELD = {"weight_decay": 0.0, "keep_epoch": "best"}


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
