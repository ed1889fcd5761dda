"""Callbacks of a training run: external validation after every epoch, and its log line."""
import time

from absl import logging
import tf_keras as keras

from cxr_edge.core import metrics as metrics_lib
from cxr_edge.core import schema
from cxr_edge.model import inference
from cxr_edge.pipeline import dataset


class ExternalValidation(keras.callbacks.Callback):
  """Scores a labelled image folder after every epoch; never trains on it.

  Adds external_loss, external_auc and external_accuracy (at 0.5) to the epoch's logs,
  and for a three-class model external_subtype_auc (bacterial vs viral), so the
  callbacks after it (CSV log, TensorBoard, history) record them. It must come before
  those in the callback list.
  """

  def __init__(self, classifier: keras.Model, folder: dataset.FolderImages):
    super().__init__()
    self.classifier = classifier
    self.folder = folder

  def on_epoch_end(self, epoch, logs=None):
    if logs is None:
      return
    y = self.folder.labels
    probs = inference.predict_probs(self.classifier, self.folder.images)
    p = metrics_lib.p_pneumonia(probs)
    logs["external_loss"] = metrics_lib.log_loss(y, p)
    logs["external_auc"] = metrics_lib.roc_auc(y, p)
    logs["external_accuracy"] = metrics_lib.at_threshold(y, p, 0.5)["accuracy"]
    if probs.shape[1] > len(schema.LABELS):  # a three-class model
      logs["external_subtype_auc"] = metrics_lib.subtype_auc(y, self.folder.subtypes, probs)


class EpochProgress(keras.callbacks.Callback):
  """One log line per epoch: what the best epoch is chosen on, time and time left.

  Keras' own verbose=2 output is two unlogged lines an epoch; verbose=1 redraws a bar
  every step, which fills log files.
  """

  def __init__(self, epochs: int):
    super().__init__()
    self._epochs = epochs
    self._start = self._epoch_start = 0.0
    self._done = 0

  def on_train_begin(self, logs=None):
    self._start = time.monotonic()
    self._done = 0

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch_start = time.monotonic()

  def on_epoch_end(self, epoch, logs=None):
    logs = logs or {}
    self._done += 1
    now = time.monotonic()
    left = (now - self._start) / self._done * (self._epochs - epoch - 1)
    parts = [f"loss {logs.get('loss', float('nan')):.4f}",
             f"val ROC-AUC {logs.get('val_auc', float('nan')):.4f}",
             f"val loss {logs.get('val_loss', float('nan')):.4f}"]
    if "val_subtype_auc" in logs:
      parts.append(f"val subtype ROC-AUC {logs['val_subtype_auc']:.4f}")
    if "external_auc" in logs:
      parts.append(f"external ROC-AUC {logs['external_auc']:.4f}")
    if "external_subtype_auc" in logs:
      parts.append(f"external subtype ROC-AUC {logs['external_subtype_auc']:.4f}")
    logging.info("epoch %d/%d: %s (%.0f s; about %.0f s left)", epoch + 1, self._epochs,
                 ", ".join(parts), now - self._epoch_start, left)
