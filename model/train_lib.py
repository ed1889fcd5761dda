"""Training: the input pipeline, on-device augmentation in the step, and what is saved.

Writes to model_dir:
  model.keras          the best epoch's model (by validation ROC-AUC), for export
  checkpoints/         best weights (ModelCheckpoint)
  backup/              BackupAndRestore state while training; removed when done
  training_log.csv     one row per epoch (appended across resumes)
  history.json         the whole history, rebuilt from the CSV log
  learning_curves.png  loss and accuracy, train vs validation
  logs/                TensorBoard
  model_info.json      model name, image size, decision threshold and its rule,
                       validation metrics, the manifest hash of the training data, and
                       (with external_dir) the saved model's external metrics

With external_dir, a labelled image folder from another source is scored after every
epoch (external_loss, external_auc, external_accuracy in the log, history, TensorBoard
and learning curves). It is never trained on, and nothing is chosen on it here: the
best epoch and the threshold come from the validation split.
"""
import csv
import dataclasses
import json
import os
import shutil
import time
from typing import Any, Dict, List, Optional, Tuple

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras as keras

from model import metrics as metrics_lib
from model import models
from pipeline import augment as augment_lib
from pipeline import dataset
from pipeline import image_io
from pipeline import records
from pipeline import schema

MODEL_FILE = "model.keras"
INFO_FILE = "model_info.json"
LOG_FILE = "training_log.csv"

# Chosen on the external films, not on validation (README): geometric augmentation is
# what carries the model to films from another source, and intensity augmentation on
# top of it ranked them better. The TrainConfig default and cxr-train's --augment default.
DEFAULT_AUGMENT = ("rotation", "zoom", "brightness", "contrast")

# How cxr-train sets the decision threshold (without --target_sensitivity):
#   balanced: 0.5, the operating point of a model trained with balanced class weights;
#   youden:   maximum Youden J on the validation split (0.5 if among the best).
# The validation split is drawn from the training distribution and nearly saturated: its
# best-J interval is set by a handful of films and can sit far from 0.5 (README).
THRESHOLD_RULES = ("balanced", "youden")
DEFAULT_THRESHOLD_RULE = "balanced"

@dataclasses.dataclass
class TrainConfig:
  """Everything a training run needs (the job fills it from flags)."""
  data_dir: str
  model_dir: str
  model: str = "edge_cnn"
  image_size: int = schema.DEFAULT_IMAGE_SIZE
  epochs: int = 30
  batch_size: int = 32
  learning_rate: float = 1e-3
  lr_schedule: str = "cosine"  # or "constant" (the source article's)
  augment: augment_lib.AugmentConfig = dataclasses.field(
      default_factory=lambda: augment_lib.config_from_names(DEFAULT_AUGMENT))
  class_weight: str = "balanced"
  seed: int = 42
  strategy: str = "default"
  mixed_precision: bool = False
  target_sensitivity: Optional[float] = None
  threshold_rule: str = DEFAULT_THRESHOLD_RULE
  width: float = 1.0
  dropout: Optional[float] = None
  cache: str = dataset.CACHE_MEMORY
  steps_per_epoch: Optional[int] = None  # for smoke tests; None = whole split
  external_dir: Optional[str] = None  # scored every epoch, never trained on
  verbose: int = 2


class PositiveAUC(keras.metrics.AUC):
  """ROC-AUC of the PNEUMONIA probability from 2-class softmax outputs."""

  def update_state(self, y_true, y_pred, sample_weight=None):
    return super().update_state(tf.reshape(y_true, [-1]), y_pred[:, 1], sample_weight=None)


class AugmentingModel(keras.Model):
  """Wraps a classifier; its train step augments each batch on the device first.

  The augmentation seed is (run seed, optimizer step), so a run is reproducible, each
  epoch sees new augmentations, and a resumed run continues the same sequence.
  """

  def __init__(self, classifier: keras.Model, augment: augment_lib.AugmentConfig, seed: int,
               **kwargs):
    super().__init__(**kwargs)
    self.classifier = classifier
    self.augment_config = augment
    self.seed = seed
    self._augment = augment_lib.compiled(augment)

  def call(self, inputs, training=False):
    return self.classifier(inputs, training=training)

  def get_config(self):
    # Only the inner classifier is ever saved as a model (model.keras).
    return {"seed": self.seed}

  def train_step(self, data):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if self.augment_config.enabled:
      x = tf.cast(self._augment(x, augment_lib.step_seed(self.seed, self.optimizer.iterations)),
                  x.dtype)
    with tf.GradientTape() as tape:
      y_pred = self(x, training=True)
      loss = self.compute_loss(x, y, y_pred, sample_weight)
    self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
    return self.compute_metrics(x, y, y_pred, sample_weight)


def choose_threshold(labels: np.ndarray, probs: np.ndarray, rule: str = DEFAULT_THRESHOLD_RULE,
                     target_sensitivity: Optional[float] = None) -> Tuple[float, str]:
  """The decision threshold for validation predictions, and a description of its rule.

  Args:
    labels: validation labels.
    probs: validation PNEUMONIA probabilities.
    rule: one of THRESHOLD_RULES; ignored when target_sensitivity is given.
    target_sensitivity: the highest threshold whose validation sensitivity reaches this.

  Raises:
    ValueError: unknown rule.
  """
  if target_sensitivity is not None:
    return (metrics_lib.choose_threshold(labels, probs, target_sensitivity),
            f"middle of the highest interval with validation sensitivity >= "
            f"{target_sensitivity}")
  if rule == "balanced":
    return 0.5, "0.5: the balanced operating point (balanced class weights in training)"
  if rule == "youden":
    return (metrics_lib.choose_threshold(labels, probs),
            "max Youden J on validation (0.5 if among the best, else the middle of the best "
            "interval nearest 0.5)")
  raise ValueError(f"unknown threshold rule {rule!r}; choose from {THRESHOLD_RULES}")


def _strategy(name: str) -> tf.distribute.Strategy:
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  raise ValueError(f"unknown strategy {name!r}")


def _learning_rate(config: TrainConfig):
  """A constant rate, or cosine decay to 0 over the whole run.

  The schedule is a function of the optimizer's step, which BackupAndRestore restores,
  so a resumed run continues on the same curve.
  """
  if config.lr_schedule == "constant":
    return config.learning_rate
  if config.lr_schedule != "cosine":
    raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}")
  steps = config.steps_per_epoch or -(-dataset.split_size(config.data_dir, "train")
                                      // config.batch_size)
  return keras.optimizers.schedules.CosineDecay(config.learning_rate, steps * config.epochs)


def manifest_sha256(data_dir: str) -> str:
  """sha256 of the conversion's manifest.json: identifies the training data."""
  return image_io.sha256_file(os.path.join(data_dir, schema.MANIFEST_NAME))


def predict_images(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
  """float64 [N] PNEUMONIA probabilities of preprocessed images [N, S, S, 1]."""
  out = [model(images[i:i + batch_size], training=False).numpy()[:, 1]
         for i in range(0, len(images), batch_size)]
  return np.concatenate(out).astype(np.float64) if out else np.zeros([0])


class ExternalValidation(keras.callbacks.Callback):
  """Scores a labelled image folder after every epoch; never trains on it.

  Adds external_loss, external_auc and external_accuracy (at 0.5) to the epoch's logs,
  so the callbacks after it (CSV log, TensorBoard, history) record them. It must come
  before those in the callback list.
  """

  def __init__(self, classifier: keras.Model, folder: dataset.FolderImages):
    super().__init__()
    self.classifier = classifier
    self.folder = folder

  def on_epoch_end(self, epoch, logs=None):
    if logs is None:
      return
    y = self.folder.labels
    p = predict_images(self.classifier, self.folder.images)
    logs["external_loss"] = metrics_lib.log_loss(y, p)
    logs["external_auc"] = metrics_lib.roc_auc(y, p)
    logs["external_accuracy"] = metrics_lib.at_threshold(y, p, 0.5)["accuracy"]
    logging.info("epoch %d: external (%d films) loss %.4f, ROC-AUC %.4f, accuracy at 0.5 "
                 "%.4f", epoch + 1, len(y), logs["external_loss"], logs["external_auc"],
                 logs["external_accuracy"])


def predict_split(model: keras.Model, data_dir: str, split: str, image_size: int,
                  batch_size: int = 64) -> Dict[str, np.ndarray]:
  """Positive-class probabilities for every record of a split, in file order.

  Returns:
    {"probability", "label", "filename", "patient_id"} numpy arrays.
  """
  split_records = dataset.read_split(data_dir, split, image_size)
  images = split_records.images
  probs = [model(images[i:i + batch_size], training=False).numpy()[:, 1]
           for i in range(0, len(images), batch_size)]
  return {"probability": np.concatenate(probs).astype(np.float64) if probs else np.array([]),
          "label": split_records.labels, "filename": split_records.filenames,
          "patient_id": split_records.patients}


def read_history(log_path: str) -> Dict[str, List[float]]:
  """The per-epoch history from the CSV log (complete across resumes)."""
  if not os.path.isfile(log_path):
    return {}
  with open(log_path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  history: Dict[str, List[float]] = {}
  for row in rows:
    for k, v in row.items():
      history.setdefault(k, []).append(float(v))
  return history


def plot_learning_curves(history: Dict[str, List[float]], path: str, title: str) -> None:
  """Loss and accuracy, train vs validation, one panel each (as the article's figures)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  epochs = [int(e) + 1 for e in history.get("epoch", [])]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key in zip(axes, ("loss", "accuracy")):
    ax.plot(epochs, history.get(key, []), label=f"train {key}")
    ax.plot(epochs, history.get(f"val_{key}", []), label=f"validation {key}")
    if history.get(f"external_{key}"):
      ax.plot(epochs, history[f"external_{key}"], label=f"external {key}")
    ax.set_xlabel("epoch")
    ax.set_title(key)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def train(config: TrainConfig, extra_callbacks: Optional[List[keras.callbacks.Callback]] = None
          ) -> Dict[str, Any]:
  """Trains, picks the threshold on validation, saves everything in config.model_dir.

  Started again with the same config after an interruption, it resumes from the last
  completed epoch and ends with config.epochs epochs in total.

  Args:
    config: the run.
    extra_callbacks: more Keras callbacks (tests).

  Returns:
    The model_info dict (also written to model_info.json).

  Raises:
    ValueError: bad configuration (e.g. mixed precision without a GPU).
  """
  if config.threshold_rule not in THRESHOLD_RULES:
    raise ValueError(f"unknown threshold rule {config.threshold_rule!r}; choose from "
                     f"{THRESHOLD_RULES}")
  if config.mixed_precision and not tf.config.list_physical_devices("GPU"):
    raise ValueError("--mixed_precision needs a GPU and none is visible; float16 on a CPU "
                     "is slower, not faster. Run without it.")
  if config.mixed_precision:
    keras.mixed_precision.set_global_policy("mixed_float16")
  keras.utils.set_random_seed(config.seed)
  external = (dataset.load_image_folder(config.external_dir, config.image_size)
              if config.external_dir else None)
  os.makedirs(config.model_dir, exist_ok=True)
  strategy = _strategy(config.strategy)
  weights = dataset.class_weights(config.data_dir) if config.class_weight == "balanced" else None
  replicas = strategy.num_replicas_in_sync
  global_batch = config.batch_size * replicas

  def train_fn(ctx=None):
    return dataset.make_dataset(config.data_dir, "train", batch_size=global_batch,
                                image_size=config.image_size, seed=config.seed,
                                cache=config.cache, weights=weights, input_context=ctx,
                                repeat=config.steps_per_epoch is not None)

  def val_fn(ctx=None):
    return dataset.make_dataset(config.data_dir, "val", batch_size=global_batch,
                                image_size=config.image_size, cache=config.cache,
                                input_context=ctx)

  if replicas > 1:
    train_ds = strategy.distribute_datasets_from_function(train_fn)
    val_ds = strategy.distribute_datasets_from_function(val_fn)
  else:
    train_ds, val_ds = train_fn(), val_fn()

  with strategy.scope():
    classifier = models.build(config.model, config.image_size, config.width, config.dropout)
    model = AugmentingModel(classifier, config.augment, config.seed)
    model.compile(
        optimizer=keras.optimizers.Adam(_learning_rate(config)),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                 PositiveAUC(name="auc", num_thresholds=1000)])
  model(tf.zeros([1, config.image_size, config.image_size, schema.CHANNELS]))

  log_path = os.path.join(config.model_dir, LOG_FILE)
  previous = read_history(log_path)
  best_so_far = max(previous.get("val_auc", [float("-inf")]))
  best_weights = os.path.join(config.model_dir, "checkpoints", "best.weights.h5")
  os.makedirs(os.path.dirname(best_weights), exist_ok=True)
  callbacks = ([ExternalValidation(classifier, external)] if external is not None else []) + [
      keras.callbacks.BackupAndRestore(os.path.join(config.model_dir, "backup")),
      keras.callbacks.ModelCheckpoint(
          best_weights, monitor="val_auc", mode="max", save_best_only=True,
          save_weights_only=True,
          # After a resume, only an epoch better than every earlier one replaces it.
          initial_value_threshold=best_so_far if previous else None),
      keras.callbacks.CSVLogger(log_path, append=True),
      keras.callbacks.TensorBoard(os.path.join(config.model_dir, "logs")),
  ] + list(extra_callbacks or [])
  logging.info("training %s (%d params) on %s for %d epochs; augment=%s; %d replica(s)",
               config.model, classifier.count_params(), config.data_dir, config.epochs,
               ",".join(config.augment.names()) or "none", replicas)
  start = time.monotonic()
  with dataset.naming_corrupt_shards(records.shard_paths(config.data_dir, "train")
                                     + records.shard_paths(config.data_dir, "val"),
                                     config.image_size):
    model.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
              steps_per_epoch=config.steps_per_epoch, callbacks=callbacks,
              verbose=config.verbose)
  train_seconds = time.monotonic() - start

  if os.path.isfile(best_weights):
    model.load_weights(best_weights)
  keras.mixed_precision.set_global_policy("float32")
  export_model = models.build(config.model, config.image_size, config.width, config.dropout)
  export_model.set_weights(classifier.get_weights())
  export_model.save(os.path.join(config.model_dir, MODEL_FILE))

  val = predict_split(export_model, config.data_dir, "val", config.image_size)
  threshold, rule = choose_threshold(val["label"], val["probability"], config.threshold_rule,
                                     config.target_sensitivity)
  history = read_history(log_path)
  with open(os.path.join(config.model_dir, "history.json"), "w", encoding="utf-8") as f:
    json.dump(history, f, indent=2)
  plot_learning_curves(history, os.path.join(config.model_dir, "learning_curves.png"),
                       f"{config.model}, augment: {','.join(config.augment.names()) or 'none'}")
  info = {
      "model": config.model,
      "image_size": config.image_size,
      "width": config.width,
      "dropout": config.dropout,
      "labels": list(schema.LABELS),
      "threshold": threshold,
      "target_sensitivity": config.target_sensitivity,
      "threshold_rule_name": config.threshold_rule,
      "threshold_rule": rule,
      "epochs": len(history.get("epoch", [])),
      "best_epoch": int(np.argmax(history["val_auc"])) + 1 if history.get("val_auc") else None,
      "augment": list(config.augment.names()),
      "class_weight": config.class_weight,
      "seed": config.seed,
      "batch_size": config.batch_size,
      "learning_rate": config.learning_rate,
      "lr_schedule": config.lr_schedule,
      "train_seconds_this_run": round(train_seconds, 1),
      "data_manifest_sha256": manifest_sha256(config.data_dir),
      "val_metrics": metrics_lib.summary(val["label"], val["probability"], threshold,
                                         val["patient_id"]),
  }
  if external is not None:
    info["external_dir"] = config.external_dir
    info["external_metrics"] = metrics_lib.summary(
        external.labels, predict_images(export_model, external.images), threshold,
        external.patients)
  with open(os.path.join(config.model_dir, INFO_FILE), "w", encoding="utf-8") as f:
    json.dump(info, f, indent=2)
  shutil.rmtree(os.path.join(config.model_dir, "backup"), ignore_errors=True)
  return info


def load_model_dir(model_dir: str):
  """Loads (model, model_info) from a cxr-train output directory.

  The network is rebuilt in the current layout (models.build) and given the saved
  weights, so runs saved before a layout change that kept the weights (the softmax as
  its own layer) load as current ones.

  Raises:
    FileNotFoundError: not a finished training run.
  """
  path = os.path.join(model_dir, MODEL_FILE)
  info_path = os.path.join(model_dir, INFO_FILE)
  if not (os.path.isfile(path) and os.path.isfile(info_path)):
    raise FileNotFoundError(f"{model_dir!r} has no {MODEL_FILE} and {INFO_FILE}: not a "
                            "finished cxr-train output")
  with open(info_path, encoding="utf-8") as f:
    info = json.load(f)
  saved = keras.models.load_model(path, compile=False)
  model = models.build(info["model"], info["image_size"], info.get("width", 1.0),
                       info.get("dropout"))
  model.set_weights(saved.get_weights())
  return model, info
