"""The Keras parts of training: the loss and metrics, the model whose train step
augments, and the moving average of the weights.

`AugmentingModel` wraps a classifier; its train step augments (and optionally mixes)
each batch on the device before the loss, so on a GPU the augmentation runs there.
`AveragedWeights` swaps the optimizer's moving average of the weights in and out around
what reads them (validation, checkpoints, the saved model).
"""
from typing import Optional

import tensorflow as tf
import tf_keras as keras

from cxr_edge.core import schema
from cxr_edge.pipeline import augment as augment_lib
from cxr_edge.pipeline import augment_config


def _pneumonia(y_true, y_pred):
  """(is PNEUMONIA, p_pneumonia) of either task's targets and softmax outputs: every
  class after NORMAL (index 0) is PNEUMONIA, and so is the unknown-subtype target."""
  y_pred = tf.convert_to_tensor(y_pred)
  truth = tf.cast(tf.reshape(y_true, [-1]) > 0, tf.float32)
  return truth, tf.reduce_sum(y_pred[:, 1:], axis=-1)


class PositiveAUC(keras.metrics.AUC):
  """ROC-AUC of the PNEUMONIA probability (the sum of the outputs after NORMAL)."""

  def update_state(self, y_true, y_pred, sample_weight=None):
    return super().update_state(*_pneumonia(y_true, y_pred), sample_weight=None)


class PneumoniaAccuracy(keras.metrics.BinaryAccuracy):
  """Accuracy of the binary decision at p_pneumonia 0.5 (the subtype task's "accuracy")."""

  def update_state(self, y_true, y_pred, sample_weight=None):
    truth, p = _pneumonia(y_true, y_pred)
    return super().update_state(truth, tf.where(p >= 0.5, 1.0, 0.0), sample_weight=None)


class SubtypeAUC(keras.metrics.AUC):
  """ROC-AUC of VIRAL vs BACTERIAL among PNEUMONIA films of known subtype, on
  p_viral / (p_bacterial + p_viral) (three-class outputs)."""

  def update_state(self, y_true, y_pred, sample_weight=None):
    y_true = tf.reshape(y_true, [-1])
    y_pred = tf.convert_to_tensor(y_pred)
    known = tf.cast((y_true == 1) | (y_true == 2), tf.float32)
    p_viral = y_pred[:, 2] / tf.maximum(y_pred[:, 1] + y_pred[:, 2], 1e-12)
    return super().update_state(tf.cast(y_true == 2, tf.float32), p_viral, sample_weight=known)


# Rows: the subtype task's targets (schema.subtype_target); columns: the classes each
# allows. Unknown subtype allows both PNEUMONIA classes.
_ALLOWED = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 1.0))


class SubtypeCrossentropy(keras.losses.Loss):
  """-log of the probability of the classes a target allows.

  A film of known class: ordinary cross-entropy. A PNEUMONIA film of unknown subtype:
  -log(p_bacterial + p_viral), the binary loss, so a site that knows only NORMAL vs
  PNEUMONIA for some films still trains the binary decision on them.
  """

  def __init__(self, name: str = "subtype_crossentropy", **kwargs):
    super().__init__(name=name, **kwargs)

  def call(self, y_true, y_pred):
    allowed = tf.gather(tf.constant(_ALLOWED, tf.float32),
                        tf.cast(tf.reshape(y_true, [-1]), tf.int32))
    p = tf.reduce_sum(allowed * tf.cast(y_pred, tf.float32), axis=-1)
    return -tf.math.log(tf.clip_by_value(p, keras.backend.epsilon(), 1.0))


def loss_and_metrics(task: str):
  """The loss and the metrics (accuracy, auc[, subtype_auc]) a task trains with."""
  if task == schema.TASK_SUBTYPE:
    return SubtypeCrossentropy(), [PneumoniaAccuracy(name="accuracy"),
                                   PositiveAUC(name="auc", num_thresholds=1000),
                                   SubtypeAUC(name="subtype_auc", num_thresholds=1000)]
  return keras.losses.SparseCategoricalCrossentropy(), [
      keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
      PositiveAUC(name="auc", num_thresholds=1000)]


class AugmentingModel(keras.Model):
  """Wraps a classifier; its train step augments each batch on the device first.

  The augmentation seed is (run seed, optimizer step), so a run is reproducible, each
  epoch sees new augmentations, and a resumed run continues the same sequence.
  """

  def __init__(self, classifier: keras.Model, augment: augment_config.AugmentConfig, seed: int,
               mixup: float = 0.0, label_smoothing: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    self.classifier = classifier
    self.augment_config = augment
    self.seed = seed
    self.mixup = mixup
    self.label_smoothing = label_smoothing
    self._augment = augment_lib.compiled(augment)

  def call(self, inputs, training=False):
    return self.classifier(inputs, training=training)

  def get_config(self):
    # Only the inner classifier is ever saved as a model (model.keras).
    return {"seed": self.seed}

  def train_step(self, data):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    seed = augment_lib.step_seed(self.seed, self.optimizer.iterations)
    if self.augment_config.enabled:
      x = tf.cast(self._augment(x, seed), x.dtype)
    x_seen, lam = x, None
    if self.mixup > 0:
      x_seen, lam = augment_lib.mixup(x, tf.random.experimental.stateless_fold_in(seed, 1),
                                      self.mixup)
    with tf.GradientTape() as tape:
      y_pred = self(x_seen, training=True)
      y_loss, w_loss, pred_loss = y, sample_weight, y_pred
      if self.mixup > 0:  # each image's target: lam of its label, 1 - lam of its partner's
        w = _weights(w_loss, y_loss)
        y_loss, w_loss, pred_loss = _blended_targets(
            y_loss, w, pred_loss, tf.reverse(y_loss, [0]), tf.reverse(w, [0]), lam)
      if self.label_smoothing > 0:  # of two classes: 1 - e/2 on the label, e/2 on the other
        w = _weights(w_loss, y_loss)
        y_loss, w_loss, pred_loss = _blended_targets(
            y_loss, w, pred_loss, 1 - y_loss, w, 1.0 - self.label_smoothing / 2)
      loss = self.compute_loss(x_seen, y_loss, pred_loss, w_loss)
    self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
    return self.compute_metrics(x, y, y_pred, sample_weight)


def _weights(sample_weight: Optional[tf.Tensor], y: tf.Tensor) -> tf.Tensor:
  """The per-example loss weights, ones when there are none."""
  if sample_weight is None:
    return tf.ones(tf.shape(y)[:1], tf.float32)
  return tf.cast(sample_weight, tf.float32)


def _blended_targets(y, w, y_pred, y_other, w_other, lam):
  """(labels, weights, predictions) whose mean loss is that of a blended target.

  Cross-entropy is linear in the target, so the target lam * y + (1 - lam) * y_other is
  the two losses weighted lam and 1 - lam: each prediction is paired with both labels.
  Doubled: the loss's mean runs over the 2B concatenated terms.
  """
  return (tf.concat([y, y_other], 0), 2.0 * tf.concat([lam * w, (1.0 - lam) * w_other], 0),
          tf.concat([y_pred, y_pred], 0))


class AveragedWeights:
  """Puts the optimizer's moving average of the weights into the model, and back.

  With ema_momentum, the network that is validated, scored on external films,
  checkpointed as the best epoch and saved is the averaged one, while the training steps
  and the resume backup keep the raw weights. The two callbacks `swap_in` and
  `swap_out` sit around the callbacks that read the weights (see _callbacks); swapping
  is idempotent, so each end may be reached twice.
  """

  def __init__(self):
    self._pairs = None
    self.averaged = False
    self.swap_in = _Swap(self, True)
    self.swap_out = _Swap(self, False)

  def _pairs_of(self, model: keras.Model):
    # The averages are the optimizer's own variables (tf_keras use_ema), built with its
    # slots at the first step and saved and restored with them by BackupAndRestore.
    if self._pairs is None:
      opt = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # loss scaling
      averages = opt._model_variables_moving_average  # pylint: disable=protected-access
      index = opt._index_dict  # pylint: disable=protected-access
      self._pairs = [(v, averages[index[opt._var_key(v)]])  # pylint: disable=protected-access
                     for v in model.trainable_variables]
    return self._pairs

  def set(self, model: keras.Model, averaged: bool) -> None:
    """Model variables hold the averaged (True) or the raw (False) weights."""
    if averaged == self.averaged:
      return
    for var, average in self._pairs_of(model):
      held = var.numpy()
      var.assign(average)
      average.assign(held)
    self.averaged = averaged


class _Swap(keras.callbacks.Callback):
  """One end of AveragedWeights: before validation and the epoch's end, or after."""

  def __init__(self, weights: AveragedWeights, averaged: bool):
    super().__init__()
    self._weights, self._averaged = weights, averaged

  def on_test_begin(self, logs=None):
    if self._averaged:
      self._weights.set(self.model, True)

  def on_test_end(self, logs=None):
    if not self._averaged:
      self._weights.set(self.model, False)

  def on_epoch_end(self, epoch, logs=None):
    self._weights.set(self.model, self._averaged)
