"""Training: the input pipeline, on-device augmentation in the step, and what is saved.

`train(config)` runs a few named steps: datasets, model, callbacks, fit, finalize. What
it writes to config.model_dir, and which run a model_dir holds, is model/model_dir.py;
the Keras parts (the augmenting train step, the metric, weight averaging) are
model/training_model.py, the callbacks model/callbacks.py, inference model/inference.py.

Quantization-aware training is a training mode: `qat_config(float_run, ...)` reuses the
float run's saved config (class weights, augmentation ranges, schedule, threshold rule),
starts from its weights inside tfmot's fake-quantized copy, and fine-tunes at a small
learning rate; the QAT run chooses its own threshold on validation like any run.

With external_dir, a labelled image folder from another source is scored after every
epoch (external_loss, external_auc, external_accuracy in the log, history, TensorBoard
and learning curves). It is never trained on, and nothing is chosen on it here: the
best epoch and the threshold come from the validation split.
"""
import dataclasses
import os
import shutil
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras as keras

from cxr_edge.core import errors
from cxr_edge.core import locks
from cxr_edge.core import metrics as metrics_lib
from cxr_edge.core import schema
from cxr_edge.core import thresholds
from cxr_edge.model import callbacks as callbacks_lib
from cxr_edge.model import inference
from cxr_edge.model import model_dir as model_dir_lib
from cxr_edge.model import models
from cxr_edge.model import train_config
from cxr_edge.model import training_model
from cxr_edge.pipeline import augment_config
from cxr_edge.pipeline import dataset
from cxr_edge.pipeline import records


def qat_config(init_from: str, model_dir: str, data_dir: str, epochs: Optional[int] = None,
               learning_rate: Optional[float] = None, **overrides) -> train_config.TrainConfig:
  """The config of a QAT run fine-tuning the float run in `init_from`.

  Args:
    init_from: a finished float cxr-train output.
    model_dir: the QAT run's own output directory.
    data_dir: the conversion to fine-tune on (a warning if it is not the float run's).
    epochs: QAT epochs (default QAT_EPOCHS).
    learning_rate: default QAT_LEARNING_RATE, on the float run's schedule.
    **overrides: other TrainConfig fields that are not the recipe (strategy, cache,
      steps_per_epoch, external_dir, verbose).

  Raises:
    FileNotFoundError: init_from is not a finished run.
    ValueError: init_from is itself a QAT run, or an override changes the recipe.
  """
  info = model_dir_lib.read_info(init_from)
  if info.get("qat"):
    raise errors.ConfigError(
        f"--init_from {init_from!r} is a QAT run; give the float run it came from")
  recipe = sorted(set(overrides) & set(train_config.RECIPE_FIELDS))
  if recipe:
    raise errors.ConfigError(
        f"a QAT run reuses the float run's {', '.join(recipe)}; do not set them")
  if info.get("data_manifest_sha256") not in (None, model_dir_lib.manifest_sha256(data_dir)):
    logging.warning("QAT data %s is not the conversion the float run was trained on", data_dir)
  return train_config.config_from_info(
      info, data_dir=data_dir, model_dir=model_dir, qat=True, init_from=init_from,
      epochs=epochs or train_config.QAT_EPOCHS,
      learning_rate=learning_rate or train_config.QAT_LEARNING_RATE,
      mixed_precision=False, **overrides)


def _strategy(name: str) -> tf.distribute.Strategy:
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  raise errors.ConfigError(f"unknown strategy {name!r}")


def learning_rate(config: train_config.TrainConfig, replicas: int = 1):
  """A constant rate, or cosine decay to 0 over the whole run.

  The schedule is a function of the optimizer's step, which BackupAndRestore restores,
  so a resumed run continues on the same curve. One step consumes the global batch
  (batch_size per replica x replicas), so an epoch has that many fewer steps with more
  replicas; sized with the per-replica batch, the decay would never finish.
  """
  if config.lr_schedule == "constant":
    return config.learning_rate
  if config.lr_schedule != "cosine":
    raise errors.ConfigError(f"unknown lr_schedule {config.lr_schedule!r}")
  steps = steps_per_epoch(config, "train", replicas)
  return keras.optimizers.schedules.CosineDecay(config.learning_rate, steps * config.epochs)


def steps_per_epoch(config: train_config.TrainConfig, split: str, replicas: int = 1) -> int:
  """Steps of one pass over a split at the global batch (batch_size x replicas).

  One replica ends an epoch at the end of the data (the last batch partial); several
  replicas read a repeated dataset for a fixed number of whole global batches, since
  every worker must take the same number of steps.
  """
  if split == "train" and config.steps_per_epoch:
    return config.steps_per_epoch
  n, batch = dataset.split_size(config.data_dir, split), config.batch_size * replicas
  return -(-n // batch) if replicas == 1 else max(1, n // batch)


def _check(config: train_config.TrainConfig) -> None:
  if config.threshold_rule not in thresholds.RULES:
    raise errors.ConfigError(f"unknown threshold rule {config.threshold_rule!r}; choose from "
                             f"{thresholds.RULES}")
  if config.keep_epoch not in train_config.KEEP_EPOCHS:
    raise errors.ConfigError(f"unknown keep_epoch {config.keep_epoch!r}; choose from "
                             f"{train_config.KEEP_EPOCHS}")
  if not 0.0 < config.prevalence < 1.0:
    raise errors.ConfigError(
        f"prevalence must be strictly between 0 and 1, not {config.prevalence}")
  if config.mixed_precision and not tf.config.list_physical_devices("GPU"):
    raise errors.ConfigError("--mixed_precision needs a GPU and none is visible; float16 on a CPU "
                             "is slower, not faster. Run without it.")
  if config.qat and (config.mixed_precision or not config.init_from):
    raise errors.ConfigError("a QAT run needs --init_from (a float run) and no --mixed_precision")
  if config.task not in schema.TASKS:  # resolve_task has replaced "auto"
    raise errors.ConfigError(f"unknown task {config.task!r}; choose from {schema.TASKS}")
  if config.task == schema.TASK_SUBTYPE and (config.mixup or config.label_smoothing):
    raise errors.ConfigError("--mixup and --label_smoothing need --task=binary (their "
                             "targets are the binary task's; the three-class task was asked "
                             "for, or chosen by --task=auto)")
  manifest = records.load_manifest(config.data_dir)
  records.check_shards(config.data_dir, ("train", "val"), hashes=not config.no_verify)
  for split in ("train", "val"):
    classes = manifest["splits"][split].get("classes", {})
    missing = [label for label in schema.LABELS
               if not classes.get(label, {}).get("images")]
    if missing:
      raise errors.ConfigError(
          f"the {split} split of {config.data_dir!r} has no {' or '.join(missing)} image: "
          "training and the threshold need both classes")
  if config.task == schema.TASK_SUBTYPE:
    counts = dataset.subtype_counts(config.data_dir, "train")
    missing = [s for s in schema.SUBTYPES if not counts[s]]
    if missing:
      raise errors.ConfigError(
          f"--task=subtype: the train split of {config.data_dir!r} has no film of known "
          f"subtype {' or '.join(missing)} ({counts}); convert again with subtypes (the "
          "public release's file names, or a subtype column in --metadata_csv)")


def resolve_task(config: train_config.TrainConfig) -> train_config.TrainConfig:
  """The config with --task=auto replaced by what it trains: subtype when the train and
  val splits both hold films of every subtype, else binary (logged either way)."""
  if config.task != train_config.TASK_AUTO:
    return config
  counts = {split: dataset.subtype_counts(config.data_dir, split) for split in ("train", "val")}
  known = all(counts[split][s] for split in counts for s in schema.SUBTYPES)
  task = schema.TASK_SUBTYPE if known else schema.TASK_BINARY
  logging.info("--task=auto: training the %s model (%s)", "three-class" if known else "binary",
               "the conversion knows both subtypes in train and val" if known else
               f"the conversion lacks known subtypes: train {counts['train']}, "
               f"val {counts['val']}")
  return dataclasses.replace(config, task=task)


def _datasets(config: train_config.TrainConfig, strategy: tf.distribute.Strategy):
  """(train, validation, train steps, validation steps), distributed with several replicas."""
  weights = (dataset.class_weights(config.data_dir, task=config.task)
             if config.class_weight == "balanced" else None)
  replicas = strategy.num_replicas_in_sync
  global_batch = config.batch_size * replicas
  distributed = replicas > 1

  def train_fn(ctx=None):
    return dataset.make_dataset(config.data_dir, "train", batch_size=global_batch,
                                image_size=config.image_size, seed=config.seed,
                                cache=config.cache, weights=weights, input_context=ctx,
                                deterministic=config.deterministic, task=config.task,
                                repeat=distributed or config.steps_per_epoch is not None)

  def val_fn(ctx=None):
    return dataset.make_dataset(config.data_dir, "val", batch_size=global_batch,
                                image_size=config.image_size, cache=config.cache,
                                input_context=ctx, repeat=distributed, task=config.task)

  if distributed:
    return (strategy.distribute_datasets_from_function(train_fn),
            strategy.distribute_datasets_from_function(val_fn),
            steps_per_epoch(config, "train", replicas), steps_per_epoch(config, "val", replicas))
  return train_fn(), val_fn(), config.steps_per_epoch, None


# Variable-name patterns --weight_decay leaves alone (batch norm as models.conv_bn_relu
# names it, and every bias).
NOT_DECAYED = ("_bn/", "bias")


def _build(config: train_config.TrainConfig, strategy: tf.distribute.Strategy
           ) -> Tuple[keras.Model, training_model.AugmentingModel]:
  """(classifier, compiled training wrapper); QAT starts from the float run's weights."""
  with strategy.scope():
    if config.qat:
      float_model, _ = model_dir_lib.load_model_dir(config.init_from)
      classifier = model_dir_lib.quantize(float_model)
    else:
      classifier = models.build(config.model, config.image_size, config.width, config.dropout,
                                config.task)
    model = training_model.AugmentingModel(classifier, config.augment, config.seed, config.mixup,
                            config.label_smoothing)
    # With ema_momentum the optimizer also keeps the weights' moving average (and fit
    # ends by writing it into the model).
    optimizer = keras.optimizers.Adam(learning_rate(config, strategy.num_replicas_in_sync),
                                      weight_decay=config.weight_decay or None,
                                      use_ema=config.ema_momentum > 0,
                                      ema_momentum=config.ema_momentum)
    # Decay only what sets capacity: batch norm's scale and shift and the biases are
    # offsets and scales the following layers depend on, as in the usual AdamW practice.
    optimizer.exclude_from_weight_decay(var_names=list(NOT_DECAYED))
    loss, metrics = training_model.loss_and_metrics(config.task)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
  model(tf.zeros([1, config.image_size, config.image_size, schema.CHANNELS]))
  return classifier, model


def _callbacks(config: train_config.TrainConfig, classifier: keras.Model,
               external: Optional[dataset.FolderImages],
               extra: Optional[List[keras.callbacks.Callback]],
               backup_dir: Optional[str] = None,
               run_dir: Optional[str] = None) -> List[keras.callbacks.Callback]:
  """External scoring (later callbacks log what it adds), best epoch, history, resume.

  The history row is written before the resume backup: killed between the two, the
  epoch is trained again and its row counted once (read_history), whereas a backup
  ahead of its row would lose the row. With ema_momentum the averaged weights are
  swapped in for validation, external scoring and the best-epoch checkpoint, and out
  before the backup, which holds the raw weights (the averages are optimizer state).

  run_dir is the run's model_dir (the chief's), whose history every worker reads: a
  worker that decided differently whether an epoch is the best so far would save
  weights when the others do not, and the workers' collective ops would part ways.
  """
  previous = model_dir_lib.read_history(run_dir or config.model_dir)
  best_weights = model_dir_lib.best_weights_path(config.model_dir)
  os.makedirs(os.path.dirname(best_weights), exist_ok=True)
  averaged = training_model.AveragedWeights() if config.ema_momentum > 0 else None
  return ([averaged.swap_in] if averaged else []) + (
      [callbacks_lib.ExternalValidation(classifier, external)] if external is not None else []) + [
      callbacks_lib.EpochProgress(config.epochs),
      keras.callbacks.ModelCheckpoint(
          best_weights, monitor="val_auc", mode="max", save_best_only=True,
          save_weights_only=True,
          # After a resume, only an epoch better than every earlier one replaces it.
          initial_value_threshold=(max(previous.get("val_auc", [float("-inf")]))
                                   if previous else None)),
      # Both are kept whichever keep_epoch is, so a run's other choice can be studied.
      keras.callbacks.ModelCheckpoint(model_dir_lib.last_weights_path(config.model_dir),
                                      save_weights_only=True),
  ] + ([averaged.swap_out] if averaged else []) + [
      keras.callbacks.CSVLogger(os.path.join(config.model_dir, model_dir_lib.LOG_FILE),
                                append=True),
      keras.callbacks.BackupAndRestore(backup_dir or os.path.join(config.model_dir, "backup")),
      keras.callbacks.TensorBoard(os.path.join(config.model_dir, "logs")),
  ] + list(extra or [])


def _fit(config: train_config.TrainConfig, model: training_model.AugmentingModel, datasets,
         callbacks: List[keras.callbacks.Callback]) -> float:
  """Trains (resuming if interrupted before); returns this run's training seconds."""
  start = time.monotonic()
  with dataset.naming_corrupt_shards(records.shard_paths(config.data_dir, "train")
                                     + records.shard_paths(config.data_dir, "val"),
                                     config.image_size):
    train_ds, val_ds, train_steps, val_steps = datasets
    model.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
              steps_per_epoch=train_steps, validation_steps=val_steps, callbacks=callbacks,
              verbose=config.verbose)
  return time.monotonic() - start


def _finalize(config: train_config.TrainConfig, trained: List[np.ndarray],
              external: Optional[dataset.FolderImages], train_seconds: float) -> Dict[str, Any]:
  """The kept epoch's weights into a plain (float32) network, threshold, history, info.

  The kept epoch (config.keep_epoch: best by validation ROC-AUC, or last) is read back
  into a fresh copy, outside any strategy; `trained` (the last epoch's weights) serves
  when no checkpoint was saved.
  """
  keras.mixed_precision.set_global_policy("float32")
  final = models.build(config.model, config.image_size, config.width, config.dropout,
                       config.task)
  if config.qat:
    final = model_dir_lib.quantize(final)
  kept = model_dir_lib.kept_weights_path(config.model_dir, config.keep_epoch)
  if os.path.isfile(kept):
    # The checkpoint is the training wrapper's; a plain wrapper around `final` reads it
    # (loading into the distributed one fails under a multi-worker strategy).
    holder = training_model.AugmentingModel(final, augment_config.config_from_names(["none"]),
                                            config.seed)
    holder(tf.zeros([1, config.image_size, config.image_size, schema.CHANNELS]))
    holder.load_weights(kept)
  else:
    final.set_weights(trained)
  model_dir_lib.save_model(config.model_dir, final, config.qat)

  val = inference.predict_split(final, config.data_dir, "val", config.image_size)
  prior = dataset.trained_prior(config.data_dir, config.class_weight)
  threshold, rule = thresholds.by_rule(val["label"], val["probability"], config.threshold_rule,
                                     config.target_sensitivity, config.prevalence, prior)
  history = model_dir_lib.read_history(config.model_dir)
  epochs, best = len(history.get("epoch", [])), model_dir_lib.best_epoch(history)
  model_dir_lib.write_history(
      config.model_dir, history, f"{config.model}{' QAT' if config.qat else ''}, augment: "
      f"{','.join(config.augment.names()) or 'none'}")
  info = {
      "model": config.model,
      "image_size": config.image_size,
      "width": config.width,
      "dropout": config.dropout,
      "qat": config.qat,
      "init_from": config.init_from,
      "labels": list(schema.LABELS),
      "task": config.task,
      "classes": list(schema.TASK_CLASSES[config.task]),
      "threshold": threshold,
      "target_sensitivity": config.target_sensitivity,
      "threshold_rule_name": config.threshold_rule,
      "threshold_rule": rule,
      "prevalence": config.prevalence,
      "output_prior": prior,
      "epochs": epochs,
      "best_epoch": best,
      "keep_epoch": config.keep_epoch,
      "kept_epoch": epochs if config.keep_epoch == "last" else best,
      "augment": list(config.augment.names()),
      "mixup": config.mixup,
      "label_smoothing": config.label_smoothing,
      "weight_decay": config.weight_decay,
      "ema_momentum": config.ema_momentum,
      "class_weight": config.class_weight,
      "seed": config.seed,
      "batch_size": config.batch_size,
      "learning_rate": config.learning_rate,
      "lr_schedule": config.lr_schedule,
      "config": train_config.config_to_dict(config),
      "train_seconds_this_run": round(train_seconds, 1),
      "data_manifest_sha256": model_dir_lib.manifest_sha256(config.data_dir),
      "val_metrics": metrics_lib.summary(val["label"], val["probability"], threshold,
                                         val["patient_id"]),
  }
  if config.task == schema.TASK_SUBTYPE:
    info["val_subtype_metrics"] = metrics_lib.subtype_summary(
        val["label"], val["subtype"], val["probs"], threshold, val["patient_id"])
  if external is not None:
    info["external_dir"] = config.external_dir
    probs = inference.predict_probs(final, external.images)
    info["external_metrics"] = metrics_lib.summary(
        external.labels, metrics_lib.p_pneumonia(probs), threshold, external.patients)
    if config.task == schema.TASK_SUBTYPE:
      info["external_subtype_metrics"] = metrics_lib.subtype_summary(
          external.labels, external.subtypes, probs, threshold, external.patients)
  model_dir_lib.write_info(config.model_dir, info)
  shutil.rmtree(os.path.join(config.model_dir, "backup"), ignore_errors=True)
  return info


def train(config: train_config.TrainConfig,
          extra_callbacks: Optional[List[keras.callbacks.Callback]] = None,
          overwrite: bool = False) -> Dict[str, Any]:
  """Trains, picks the threshold on validation, saves everything in config.model_dir.

  Started again with the same config after an interruption, it resumes from the last
  completed epoch (or, if every epoch had finished, only finishes) and ends with
  config.epochs epochs in total; started again after it finished, it does nothing.

  Args:
    config: the run (for QAT, from qat_config).
    extra_callbacks: more Keras callbacks (tests).
    overwrite: replace another run found in config.model_dir (only cxr-train's files).

  Returns:
    The model_info dict (also written to model_info.json); with "already_finished": True
    when the same run had finished before.

  Raises:
    ValueError: bad configuration (e.g. mixed precision without a GPU), or model_dir
      holds another run and not overwrite.
    FileNotFoundError: data_dir (or a QAT run's init_from) is not a finished output.
  """
  config = resolve_task(config)
  _check(config)
  if config.mixed_precision:
    keras.mixed_precision.set_global_policy("mixed_float16")
  if config.deterministic:
    # Without it, multi-threaded kernels and tf.data's parallel stages may reorder
    # float sums and examples, so reruns of a seed differ from the first step on.
    tf.config.experimental.enable_op_determinism()
  # Before any other TensorFlow op: a multi-worker strategy configures the runtime.
  strategy = _strategy(config.strategy)
  backup_dir = os.path.join(config.model_dir, "backup")  # shared by every worker
  if not _is_chief(strategy):
    # Only the chief writes the run; another worker's artifacts go to a scratch folder
    # that it removes (BackupAndRestore still reads the shared backup to resume).
    scratch = tempfile.mkdtemp(prefix="cxr-train-worker-")
    try:
        return _train(dataclasses.replace(config, model_dir=scratch), strategy, backup_dir,
                    extra_callbacks, run_dir=config.model_dir, chief=False)
    finally:
      shutil.rmtree(scratch, ignore_errors=True)
  # The chief alone holds the run's folder: a second cxr-train there is refused instead
  # of resuming from this one's backup while it runs.
  with locks.exclusive(config.model_dir, "cxr-train", "--model_dir"):
    finished = model_dir_lib.claim(config, overwrite)
    if finished is not None:
      logging.info("%s already holds this finished run; nothing to do", config.model_dir)
      return dict(finished, already_finished=True)
    return _train(config, strategy, backup_dir, extra_callbacks)


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
  """The chief task of a multi-worker cluster (worker 0 when there is no chief), or any
  single-process run."""
  resolver = getattr(strategy, "cluster_resolver", None)
  spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
  if not spec:
    return True
  if resolver.task_type == "chief":
    return True
  return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in spec


def _train(config: train_config.TrainConfig, strategy: tf.distribute.Strategy,
           backup_dir: str, extra_callbacks, run_dir: Optional[str] = None,
           chief: bool = True) -> Dict[str, Any]:
  """train() once model_dir is settled: datasets, model, callbacks, fit, finalize.

  run_dir: the run's model_dir when config.model_dir is a non-chief worker's scratch;
  every worker takes its resume decisions from the run's history there.
  chief: False for the other workers of a cluster: they train, then stop (returning
  {"chief": False}); only the chief finalizes.
  """
  run_dir = run_dir or config.model_dir
  keras.utils.set_random_seed(config.seed)
  external = (dataset.load_image_folder(config.external_dir, config.image_size)
              if config.external_dir else None)
  datasets = _datasets(config, strategy)
  classifier, model = _build(config, strategy)
  callbacks = _callbacks(config, classifier, external, extra_callbacks, backup_dir, run_dir)
  logging.info("training %s%s (%d params) on %s for %d epochs; augment=%s; %d replica(s)",
               config.model, " (QAT)" if config.qat else "", classifier.count_params(),
               config.data_dir, config.epochs, ",".join(config.augment.names()) or "none",
               strategy.num_replicas_in_sync)
  done = len(model_dir_lib.read_history(run_dir).get("epoch", []))
  if done >= config.epochs:
    # Killed after the last epoch, before model_info.json, or finished with the other
    # epoch kept: only the finishing steps remain, and they read the kept epoch's weights
    # (without them they would save an untrained network).
    if not os.path.isfile(model_dir_lib.kept_weights_path(run_dir, config.keep_epoch)):
      raise errors.ConfigError(f"--model_dir {run_dir!r} has all {config.epochs} epochs trained, "
                               f"without the {config.keep_epoch} epoch's weights (a run trained "
                               "before cxr-train kept both has only its best epoch's)")
    logging.info("all %d epochs had finished; finishing the run", config.epochs)
    train_seconds = 0.0
  else:
    train_seconds = _fit(config, model, datasets, callbacks)
  # Every worker reads the trained weights, together: batch-norm statistics are
  # synchronized on read (a collective op), so a worker reading them alone would wait
  # for the others forever.
  trained = classifier.get_weights()
  if not chief:
    return {"chief": False, "train_seconds_this_run": round(train_seconds, 1)}
  return _finalize(config, trained, external, train_seconds)
