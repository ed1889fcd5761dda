import pytest

pytest.importorskip("tensorflow", reason="TensorFlow is not installed (a device "
                    "install without the train extra): training-side tests")
# pylint: disable=wrong-import-position

import dataclasses
import json
import os
import shutil

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import config as tf_framework_config  # disable_op_determinism

import tf_keras as keras

from cxr_edge.core import metrics
from cxr_edge.core import thresholds
from cxr_edge.model import inference
from cxr_edge.model import model_dir as model_dir_lib
from cxr_edge.model import train_config
from cxr_edge.model import train_lib
from cxr_edge.model import training_model
from cxr_edge.pipeline import augment
from cxr_edge.pipeline import augment_config
from cxr_edge.pipeline import dataset
from cxr_edge.pipeline import records
from tests.conftest import parsed_flags, run_main, sample_subset

SIZE = 48


class StopAt(keras.callbacks.Callback):
  """Test hook: raises KeyboardInterrupt at a given (epoch, batch), like a kill."""

  def __init__(self, epoch: int, batch: int):
    super().__init__()
    self._at = (epoch, batch)
    self._epoch = 0

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch

  def on_train_batch_end(self, batch, logs=None):
    if (self._epoch, batch) == self._at:
      raise KeyboardInterrupt(f"simulated kill at epoch {self._epoch} batch {batch}")


def _config(data_dir, model_dir, **kw):
  # The binary task unless a test says otherwise (--task=auto would train the sample's
  # subtypes).
  base = dict(data_dir=data_dir, model_dir=str(model_dir), model="seed_cnn", image_size=SIZE,
              epochs=3, batch_size=16, width=0.25, steps_per_epoch=4, verbose=0, task="binary")
  base.update(kw)
  return train_config.TrainConfig(**base)


def test_default_augmentation_is_geometric_and_intensity():
  cfg = train_config.TrainConfig(data_dir="d", model_dir="m").augment
  assert cfg.names() == augment_config.DEFAULT_AUGMENT == ("rotation", "zoom", "brightness",
                                                      "contrast")
  assert cfg.rotation_deg == 20.0 and cfg.zoom == 0.3 and cfg.geometric
  assert cfg.brightness == (0.7, 1.3) and cfg.contrast == 0.2 and not cfg.translation


def test_train_writes_everything(sample_records, tmp_path):
  info = train_lib.train(_config(sample_records, tmp_path / "m"))
  names = set(os.listdir(tmp_path / "m"))
  assert {"model.keras", "model_info.json", "history.json", "training_log.csv",
          "learning_curves.png", "checkpoints", "logs"} <= names
  assert "backup" not in names  # removed after a finished run
  assert info["epochs"] == 3 and 0.0 <= info["threshold"] <= 1.0
  assert info["val_metrics"]["count"] == 30
  model, loaded = model_dir_lib.load_model_dir(str(tmp_path / "m"))
  assert loaded["threshold"] == info["threshold"] and model.output_shape == (None, 2)
  history = json.load(open(tmp_path / "m" / "history.json"))
  assert len(history["val_auc"]) == 3


def test_augmenting_step_changes_nothing_at_inference(sample_records, tmp_path):
  clf = train_lib.models.build("seed_cnn", SIZE, 0.25)
  wrapper = training_model.AugmentingModel(clf, augment_config.config_from_names(["rotation"]), 0)
  x = tf.random.uniform([2, SIZE, SIZE, 1])
  np.testing.assert_allclose(wrapper(x), clf(x))


@pytest.mark.slow
def test_resume_after_interruption(sample_records, tmp_path):
  cfg = _config(sample_records, tmp_path / "m", epochs=3)
  with pytest.raises(KeyboardInterrupt):
    train_lib.train(cfg, extra_callbacks=[StopAt(epoch=1, batch=1)])
  assert len(model_dir_lib.read_history(str(tmp_path / "m"))["epoch"]) == 1
  assert os.path.isdir(tmp_path / "m" / "backup")
  info = train_lib.train(cfg)
  history = model_dir_lib.read_history(str(tmp_path / "m"))
  assert history["epoch"] == [0.0, 1.0, 2.0]  # continued at epoch 2, ended at 3
  assert info["epochs"] == 3


class Steps(keras.callbacks.Callback):
  """Test hook: the optimizer step count and the steps per epoch Keras displays."""

  def on_train_begin(self, logs=None):
    self.displayed = self.params["steps"]

  def on_train_end(self, logs=None):
    self.iterations = int(self.model.optimizer.iterations.numpy())


@pytest.mark.slow
def test_resume_is_step_exact_over_whole_epochs(sample_records, tmp_path):
  # steps_per_epoch=None: whole passes over the 241 training records, 16 batches of 16.
  whole = Steps()
  train_lib.train(_config(sample_records, tmp_path / "a", steps_per_epoch=None),
                  extra_callbacks=[whole])
  assert (whole.displayed, whole.iterations) == (16, 48)
  with pytest.raises(KeyboardInterrupt):
    train_lib.train(_config(sample_records, tmp_path / "b", steps_per_epoch=None),
                    extra_callbacks=[StopAt(epoch=1, batch=3)])
  resumed = Steps()
  train_lib.train(_config(sample_records, tmp_path / "b", steps_per_epoch=None),
                  extra_callbacks=[resumed])
  assert (resumed.displayed, resumed.iterations) == (16, 48)


def test_mixed_precision_refused_on_cpu(sample_records, tmp_path):
  if tf.config.list_physical_devices("GPU"):
    pytest.skip("a GPU is present")
  with pytest.raises(ValueError, match="needs a GPU"):
    train_lib.train(_config(sample_records, tmp_path / "m", mixed_precision=True))


def _train_main(**flag_values):
  run_main("cxr_edge.model.train", **flag_values)


def test_cli_writes_the_flags_config_and_refuses_bad_input(sample_records, tmp_path, capsys):
  _train_main(data_dir=sample_records, model_dir=str(tmp_path / "m"), augment=["brightness"],
              epochs=1, steps_per_epoch=2, image_size=48, width=0.25)
  assert "validation: ROC-AUC" in capsys.readouterr().out
  info = json.load(open(tmp_path / "m" / "model_info.json"))
  assert info["augment"] == ["brightness"] and info["epochs"] == 1
  with pytest.raises(SystemExit) as e:
    _train_main(data_dir=str(tmp_path / "none"), model_dir=str(tmp_path / "m2"))
  assert str(e.value.code).startswith("cxr-train: error:") and "\n" not in str(e.value.code)
  with pytest.raises(flags.IllegalFlagValueError, match="unknown augmentation"):
    with parsed_flags("cxr_edge.model.train", augment="flip"):  # as on the command line
      pass


def test_external_dir_is_scored_every_epoch_and_never_trained_on(sample_records, tmp_path):
  external = sample_subset(str(tmp_path / "external"), 4)
  info = train_lib.train(_config(sample_records, tmp_path / "m", epochs=2,
                                 external_dir=str(external)))
  history = json.load(open(tmp_path / "m" / "history.json"))
  for key in ("external_loss", "external_auc", "external_accuracy"):
    assert len(history[key]) == 2, key
  header = open(tmp_path / "m" / "training_log.csv").readline()
  assert "external_auc" in header
  # The saved model's external metrics, recomputed here, with intervals.
  model, _ = model_dir_lib.load_model_dir(str(tmp_path / "m"))
  folder = dataset.load_image_folder(str(external), SIZE)
  p = inference.predict_images(model, folder.images)
  m = info["external_metrics"]
  assert m["count"] == 8 and m["positives"] == 4
  assert m["roc_auc"] == pytest.approx(metrics.roc_auc(folder.labels, p))
  assert m["at_threshold"]["threshold"] == info["threshold"]
  low, high = m["at_threshold"]["ci95"]["accuracy"]
  assert low <= m["at_threshold"]["accuracy"] <= high
  # Training saw only the train split: the same number of steps as without external_dir.
  assert info["external_dir"] == external


def test_default_threshold_rule_is_recorded(sample_records, tmp_path):
  info = train_lib.train(_config(sample_records, tmp_path / "m", epochs=1))
  assert info["threshold_rule_name"] == "prevalence" == thresholds.DEFAULT_RULE
  assert info["prevalence"] == thresholds.DEFAULT_PREVALENCE
  assert info["output_prior"] == 0.5  # balanced class weights
  assert info["threshold"] == pytest.approx(1 - thresholds.DEFAULT_PREVALENCE)
  assert info["val_metrics"]["at_threshold"]["threshold"] == info["threshold"]
  with pytest.raises(ValueError, match="unknown threshold rule"):
    train_lib.train(_config(sample_records, tmp_path / "n", threshold_rule="x"))
  with pytest.raises(ValueError, match="prevalence must be strictly between 0 and 1"):
    train_lib.train(_config(sample_records, tmp_path / "n", prevalence=1.0))


def test_output_prior_of_a_run_as_recorded_or_from_its_class_weights(sample_records):
  assert model_dir_lib.run_prior({"output_prior": 0.5, "class_weight": "none"},
                                    sample_records) == 0.5
  # Saved before the field: from the class weights it trained with.
  assert model_dir_lib.run_prior({"class_weight": "none"}, sample_records) == (
      dataset.trained_prior(sample_records, "none"))
  assert model_dir_lib.run_prior({}, sample_records) == 0.5


def test_the_whole_config_is_saved_and_read_back(trained_model):
  info = model_dir_lib.read_info(trained_model)
  config = train_config.config_from_info(info)
  assert json.loads(json.dumps(train_config.config_to_dict(config))) == info["config"]
  assert isinstance(config.augment, augment_config.AugmentConfig)
  assert config.augment.rotation_deg == 20.0 and config.augment.brightness == (0.7, 1.3)
  assert (config.model, config.image_size, config.width, config.threshold_rule) == (
      "seed_cnn", SIZE, 0.25, "youden")


def test_config_of_a_run_saved_before_the_whole_config():
  old = {"model": "edge_cnn", "image_size": 150, "augment": ["rotation", "zoom"],
         "class_weight": "balanced", "seed": 2, "threshold_rule_name": "balanced"}
  config = train_config.config_from_info(old, data_dir="d", model_dir="m")
  assert config.augment == augment_config.config_from_names(["rotation", "zoom"])
  assert (config.seed, config.threshold_rule, config.data_dir) == (2, "balanced", "d")


def test_qat_run_reuses_the_float_recipe_and_chooses_its_own_threshold(trained_model,
                                                                       qat_model):
  float_info = model_dir_lib.read_info(trained_model)
  info = model_dir_lib.read_info(qat_model)
  assert info["qat"] and info["init_from"] == trained_model
  for key in ("model", "image_size", "width", "augment", "class_weight", "seed",
              "batch_size", "lr_schedule", "threshold_rule", "target_sensitivity"):
    assert info["config"][key] == float_info["config"][key], key
  assert info["config"]["learning_rate"] == train_config.QAT_LEARNING_RATE
  assert info["epochs"] == 1
  model, _ = model_dir_lib.load_model_dir(qat_model)
  assert any(layer.name.startswith("quant_") for layer in model.layers)
  # Its threshold is its own validation choice by the float run's rule.
  val = inference.predict_split(model, info["config"]["data_dir"], "val", SIZE)
  want, _ = thresholds.by_rule(val["label"], val["probability"], "youden")
  assert info["threshold"] == pytest.approx(want)


def test_qat_refuses_a_changed_recipe_or_a_qat_start(trained_model, qat_model, sample_records,
                                                     tmp_path):
  with pytest.raises(ValueError, match="reuses the float run's augment"):
    train_lib.qat_config(trained_model, str(tmp_path / "q"), sample_records,
                         augment=augment_config.AugmentConfig())
  with pytest.raises(ValueError, match="is a QAT run"):
    train_lib.qat_config(qat_model, str(tmp_path / "q"), sample_records)
  with parsed_flags("cxr_edge.model.train", qat="true", init_from=trained_model,
                    data_dir=sample_records, model_dir=str(tmp_path / "q"), augment="zoom"):
    from cxr_edge.model import train  # pylint: disable=g-import-not-at-top  (the job() re-import)
    with pytest.raises(app.UsageError, match="drop --augment"):
      train.main(["cxr-train"])
  with pytest.raises(flags.IllegalFlagValueError, match="go together"):
    with parsed_flags("cxr_edge.model.train", qat="true"):
      pass


def test_training_refuses_a_split_without_both_classes(tmp_path, image_tree):
  from cxr_edge.pipeline import convert_config  # pylint: disable=g-import-not-at-top
  from cxr_edge.pipeline import convert_lib  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / "rec")
  convert_lib.convert(convert_config.ConvertOptions(
      input_dir=image_tree, output_dir=out, split_ratios=(0.9, 0.0, 0.1), num_workers=1))  # no validation split
  with pytest.raises(ValueError, match="the val split .* has no NORMAL or PNEUMONIA image"):
    train_lib.train(_config(out, tmp_path / "m"))


def test_learning_curves_show_roc_auc_and_the_best_epoch():
  history = {"epoch": [0, 1, 2], "loss": [3, 2, 1], "val_loss": [3, 2, 2],
             "accuracy": [.5, .6, .7], "val_accuracy": [.5, .6, .6],
             "auc": [.6, .7, .8], "val_auc": [.6, .9, .8], "external_auc": [.5, .6, .7]}
  panels = dict(model_dir_lib.learning_curve_panels(history))
  assert list(panels) == ["loss", "accuracy", "ROC-AUC"]
  assert panels["ROC-AUC"] == {"train ROC-AUC": [.6, .7, .8], "validation ROC-AUC": [.6, .9, .8],
                               "external ROC-AUC": [.5, .6, .7]}
  assert model_dir_lib.best_epoch(history) == 2


def test_a_finished_run_is_not_redone_and_another_run_is_refused(sample_records, tmp_path):
  cfg = _config(sample_records, tmp_path / "m", epochs=2)
  first = train_lib.train(cfg)
  again = train_lib.train(cfg)
  assert again["already_finished"] and again["threshold"] == first["threshold"]
  assert model_dir_lib.read_history(str(tmp_path / "m"))["epoch"] == [0.0, 1.0]
  with pytest.raises(ValueError, match=r"differs in seed\); pass --overwrite"):
    train_lib.train(_config(sample_records, tmp_path / "m", epochs=2, seed=7))
  (tmp_path / "m" / "notes.txt").write_text("mine")
  info = train_lib.train(_config(sample_records, tmp_path / "m", epochs=2, seed=7),
                         overwrite=True)
  assert info["seed"] == 7 and "already_finished" not in info
  assert model_dir_lib.read_history(str(tmp_path / "m"))["epoch"] == [0.0, 1.0]  # not appended
  assert (tmp_path / "m" / "notes.txt").read_text() == "mine"


def test_killed_after_the_last_epoch_only_the_finishing_steps_run(sample_records, tmp_path):
  cfg = _config(sample_records, tmp_path / "m", epochs=2)
  train_lib.train(cfg)
  for name in (model_dir_lib.INFO_FILE, model_dir_lib.MODEL_FILE):
    os.remove(tmp_path / "m" / name)  # as if killed between fit and model_info.json
  info = train_lib.train(cfg)
  assert info["train_seconds_this_run"] == 0.0 and info["epochs"] == 2
  assert model_dir_lib.read_history(str(tmp_path / "m"))["epoch"] == [0.0, 1.0]
  assert os.path.isfile(tmp_path / "m" / model_dir_lib.MODEL_FILE)


def test_altered_shards_are_refused_before_training(sample_records, tmp_path):
  data = str(tmp_path / "rec")
  shutil.copytree(sample_records, data)
  open(records.shard_paths(data, "train")[0], "wb").close()
  with pytest.raises(ValueError, match="has 0 bytes"):
    train_lib.train(_config(data, tmp_path / "m"))
  assert not os.path.exists(tmp_path / "m")


def test_one_progress_line_per_epoch(sample_records, tmp_path, caplog):
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  with caplog.at_level(std_logging.INFO, logger="absl"):
    train_lib.train(_config(sample_records, tmp_path / "m", epochs=2))
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
  assert [l.split(":")[0] for l in lines] == ["epoch 1/2", "epoch 2/2"]
  assert all("val ROC-AUC" in l and "left)" in l for l in lines)


def test_mixup_trains_and_is_part_of_the_recipe(sample_records, tmp_path):
  info = train_lib.train(_config(sample_records, tmp_path / "m", epochs=1, mixup=0.4))
  assert info["mixup"] == 0.4 and info["config"]["mixup"] == 0.4
  history = model_dir_lib.read_history(str(tmp_path / "m"))
  assert np.isfinite(history["loss"]).all()
  qat = train_lib.qat_config(str(tmp_path / "m"), str(tmp_path / "q"), sample_records)
  assert qat.mixup == 0.4  # a QAT run keeps its float run's recipe


def _loss_probe(mixup=0.0, label_smoothing=0.0):
  """(classifier, wrapper) whose train step only reports its loss: SGD at rate 0, no
  augmentation, seed_cnn without dropout (no BN either: training = inference)."""
  clf = train_lib.models.build("seed_cnn", SIZE, 0.25, dropout=0.0)
  model = training_model.AugmentingModel(clf, augment_config.config_from_names(["none"]), 0, mixup,
                                    label_smoothing)
  model.compile(optimizer=keras.optimizers.SGD(0.0),
                loss=keras.losses.SparseCategoricalCrossentropy())
  return clf, model


def _loss_batch():
  """(images, labels, weights): two films of each class, class-weighted."""
  return (tf.random.stateless_uniform([4, SIZE, SIZE, 1], [0, 1]), tf.constant([0, 1, 1, 0]),
          tf.constant([1.0, 2.0, 2.0, 1.0]))


def test_mixup_loss_is_the_lam_weighted_pair_of_losses():
  clf, model = _loss_probe(mixup=0.4)
  x, y, w = _loss_batch()
  loss = float(model.train_on_batch(x, y, sample_weight=w))
  seed = tf.random.experimental.stateless_fold_in(augment.step_seed(0, 0), 1)
  mixed, lam = augment.mixup(x, seed, 0.4)
  ce = lambda labels: keras.losses.sparse_categorical_crossentropy(labels, clf(mixed)).numpy()
  want = np.mean(lam * w * ce(y) + (1 - lam) * w[::-1] * ce(y[::-1]))
  assert loss == pytest.approx(float(want), rel=1e-4)


def test_label_smoothing_loss_is_keras_smoothed_cross_entropy():
  clf, model = _loss_probe(label_smoothing=0.2)
  x, y, w = _loss_batch()
  loss = float(model.train_on_batch(x, y, sample_weight=w))
  # An independent reference: Keras' own smoothing of one-hot targets (also 0.9 / 0.1).
  smoothed = keras.losses.CategoricalCrossentropy(label_smoothing=0.2)
  want = float(smoothed(tf.one_hot(y, 2), clf(x), sample_weight=w))
  assert loss == pytest.approx(want, rel=1e-4)
  unsmoothed = float(keras.losses.SparseCategoricalCrossentropy()(y, clf(x), sample_weight=w))
  assert abs(want - unsmoothed) > 1e-3  # the case can tell smoothing from none


def test_label_smoothing_applies_to_mixup_blended_targets():
  clf, model = _loss_probe(mixup=0.4, label_smoothing=0.2)
  x, y, _ = _loss_batch()
  loss = float(model.train_on_batch(x, y))
  seed = tf.random.experimental.stateless_fold_in(augment.step_seed(0, 0), 1)
  mixed, lam = augment.mixup(x, seed, 0.4)
  target = (lam[:, None] * tf.one_hot(y, 2) + (1 - lam[:, None]) * tf.one_hot(y[::-1], 2))
  target = target * 0.8 + 0.1
  want = float(keras.losses.categorical_crossentropy(target, clf(mixed)).numpy().mean())
  assert loss == pytest.approx(want, rel=1e-4)


def test_label_smoothing_is_part_of_the_recipe(sample_records, tmp_path):
  info = train_lib.train(_config(sample_records, tmp_path / "m", epochs=1,
                                 label_smoothing=0.1))
  assert info["label_smoothing"] == 0.1 and info["config"]["label_smoothing"] == 0.1
  qat = train_lib.qat_config(str(tmp_path / "m"), str(tmp_path / "q"), sample_records)
  assert qat.label_smoothing == 0.1


def test_weight_decay_shrinks_kernels_by_lr_times_decay_and_spares_bn_and_biases(tmp_path):
  strategy = tf.distribute.get_strategy()
  built = {}
  for wd in (0.0, 0.5):
    cfg = _config("unused", tmp_path / "m", model="edge_cnn", augment=augment_config
                  .config_from_names(["none"]), dropout=0.0, weight_decay=wd)
    built[wd] = train_lib._build(cfg, strategy)  # pylint: disable=protected-access
  (plain_clf, plain), (decayed_clf, decayed) = built[0.0], built[0.5]
  decayed_clf.set_weights(plain_clf.get_weights())
  start = {v.name: v.numpy() for v in plain_clf.weights}
  x = tf.random.stateless_uniform([4, SIZE, SIZE, 1], [0, 1])
  y = tf.constant([0, 1, 1, 0])
  plain.train_on_batch(x, y)
  decayed.train_on_batch(x, y)
  # Same gradients (same weights, same batch): the runs differ by the decay alone, applied
  # at the first step's learning rate (1e-3) to the kernels and to nothing else.
  after = {v.name: v.numpy() for v in decayed_clf.trainable_weights}
  checked = set()
  for v in plain_clf.trainable_weights:
    diff = after[v.name] - v.numpy()
    if any(p in v.name for p in train_lib.NOT_DECAYED):
      np.testing.assert_allclose(diff, 0.0, atol=1e-7)
      checked.add("spared")
    else:
      np.testing.assert_allclose(diff, -1e-3 * 0.5 * start[v.name], atol=1e-7)
      checked.add("decayed")
  assert checked == {"spared", "decayed"}
  assert any("_bn/gamma" in v.name for v in plain_clf.trainable_weights)


def test_cosine_schedule_counts_global_batches(sample_records, tmp_path):
  cfg = _config(sample_records, tmp_path / "m", steps_per_epoch=None, epochs=3, batch_size=16)
  # 241 training records: 16 steps an epoch at one replica (the last batch partial); at
  # two, 7 whole global batches of 32 (every worker must take the same steps).
  assert train_lib.learning_rate(cfg, 1).decay_steps == 16 * 3
  assert train_lib.learning_rate(cfg, 2).decay_steps == 7 * 3
  assert train_lib.steps_per_epoch(cfg, "val", 2) == 1  # 30 records


def test_an_epoch_run_again_after_a_kill_counts_once(tmp_path):
  # Killed after epoch 1's row was logged but before its backup: the resumed run logs
  # epoch 1 again; the later row counts.
  (tmp_path / model_dir_lib.LOG_FILE).write_text(
      "epoch,loss\n0,0.9\n1,0.8\n1,0.7\n2,0.6\n")
  assert model_dir_lib.read_history(str(tmp_path)) == {"epoch": [0.0, 1.0, 2.0],
                                                        "loss": [0.9, 0.7, 0.6]}


class TrainableWeights(keras.callbacks.Callback):
  """Test hook: the model's trainable weights at the start and at each epoch's end."""

  def on_train_begin(self, logs=None):
    self.start = [w.numpy() for w in self.model.trainable_weights]
    self.epoch_ends = []

  def on_epoch_end(self, epoch, logs=None):
    self.epoch_ends.append([w.numpy() for w in self.model.trainable_weights])


def _same(a, b):
  return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_ema_saves_the_averaged_weights_while_training_moves_the_raw_ones(sample_records,
                                                                          tmp_path):
  # Momentum 1: the average never leaves the initial weights, so the averaged network
  # is known exactly; the raw weights that training moves must not be what is saved.
  seen = TrainableWeights()
  info = train_lib.train(_config(sample_records, tmp_path / "m", epochs=2, ema_momentum=1.0),
                         extra_callbacks=[seen])
  assert info["ema_momentum"] == 1.0 and info["config"]["ema_momentum"] == 1.0
  saved, _ = model_dir_lib.load_model_dir(str(tmp_path / "m"))
  assert _same([w.numpy() for w in saved.trainable_weights], seen.start)
  # Later callbacks see the raw weights again after each epoch, and they moved.
  assert not _same(seen.epoch_ends[-1], seen.start)
  # Validation scored the averaged (initial) network: the same AUC both epochs.
  history = model_dir_lib.read_history(str(tmp_path / "m"))
  assert history["val_auc"][0] == pytest.approx(history["val_auc"][1], abs=1e-6)


def test_ema_averages_are_resumed_from_the_backup(sample_records, tmp_path):
  # Killed in epoch 2 and resumed: had the averages restarted from the restored raw
  # weights, the saved (momentum 1) network would be those, not the initial weights.
  seen = TrainableWeights()
  cfg = _config(sample_records, tmp_path / "m", epochs=2, ema_momentum=1.0)
  with pytest.raises(KeyboardInterrupt):
    train_lib.train(cfg, extra_callbacks=[seen, StopAt(epoch=1, batch=1)])
  resumed = TrainableWeights()
  train_lib.train(cfg, extra_callbacks=[resumed])
  assert not _same(resumed.start, seen.start)  # the raw weights had moved
  saved, _ = model_dir_lib.load_model_dir(str(tmp_path / "m"))
  assert _same([w.numpy() for w in saved.trainable_weights], seen.start)


def test_a_run_from_before_a_config_field_resumes_with_its_default(sample_records, tmp_path):
  cfg = _config(sample_records, tmp_path / "m", epochs=1)
  train_lib.train(cfg)
  run = model_dir_lib.read_run(str(tmp_path / "m"))
  del run["config"]["ema_momentum"]  # written before the field existed
  model_dir_lib.write_run(str(tmp_path / "m"), run)
  assert train_lib.train(cfg)["already_finished"]
  with pytest.raises(ValueError, match="ema_momentum"):
    train_lib.train(_config(sample_records, tmp_path / "m", epochs=1, ema_momentum=0.5))


def test_a_run_from_before_weight_decay_resumes_and_fine_tunes_without_it(sample_records,
                                                                        tmp_path):
  # Weight decay's default is on, but a run saved before the field existed trained
  # without it: resuming it must not turn decay on, nor must its QAT fine-tuning.
  cfg = _config(sample_records, tmp_path / "m", epochs=1, weight_decay=0.0)
  train_lib.train(cfg)
  run = model_dir_lib.read_run(str(tmp_path / "m"))
  del run["config"]["weight_decay"]
  model_dir_lib.write_run(str(tmp_path / "m"), run)
  info = model_dir_lib.read_info(str(tmp_path / "m"))
  del info["config"]["weight_decay"]
  model_dir_lib.write_info(str(tmp_path / "m"), info)
  assert train_lib.train(cfg)["already_finished"]
  with pytest.raises(ValueError, match="weight_decay"):
    train_lib.train(_config(sample_records, tmp_path / "m", epochs=1))  # today's default
  assert train_lib.qat_config(str(tmp_path / "m"), str(tmp_path / "q"),
                              sample_records).weight_decay == 0.0
  assert train_config.TrainConfig(data_dir="d", model_dir="m").weight_decay > 0


def test_the_history_row_is_written_before_the_resume_backup(sample_records, tmp_path):
  # Killed between the two, the epoch is trained again and its row counted once; the
  # other way round the backup would skip an epoch whose row was never written.
  kinds = [type(c) for c in train_lib._callbacks(  # pylint: disable=protected-access
      _config(sample_records, tmp_path / "m", ema_momentum=0.9), keras.Sequential(), None,
      None)]
  assert kinds.index(keras.callbacks.CSVLogger) < kinds.index(keras.callbacks.BackupAndRestore)
  # The averaged weights are swapped out again before the backup saves the raw ones.
  swaps = [i for i, k in enumerate(kinds) if k is training_model._Swap]  # pylint: disable=protected-access
  assert len(swaps) == 2 and swaps[1] < kinds.index(keras.callbacks.BackupAndRestore)


def test_deterministic_reruns_repeat_the_run_bit_for_bit(sample_records, tmp_path, capfd):
  flag_values = dict(data_dir=sample_records, epochs=2, steps_per_epoch=3, image_size=SIZE,
                     width=0.25, batch_size=16, deterministic=True)
  try:
    for name in ("a", "b"):
      _train_main(model_dir=str(tmp_path / name), **flag_values)
  finally:
    # TensorFlow's switch is process-wide: leave the other tests as they were.
    tf_framework_config.disable_op_determinism()
  # No TensorFlow error lines: a stateful op in the input pipeline would make op
  # determinism rewrite its parallel maps, which logs one per map.
  assert "NodeDef" not in capfd.readouterr().err
  (a, info_a), (b, info_b) = (model_dir_lib.load_model_dir(str(tmp_path / n)) for n in "ab")
  assert info_a["config"]["deterministic"] is True
  assert _same([w.numpy() for w in a.weights], [w.numpy() for w in b.weights])
  assert (model_dir_lib.read_history(str(tmp_path / "a"))["loss"]
          == model_dir_lib.read_history(str(tmp_path / "b"))["loss"])
  # How the run was executed is not what it is: without the flag it is the same run.
  cfg = train_config.config_from_info(info_a, deterministic=False)
  assert train_lib.train(cfg)["already_finished"]


def test_deterministic_without_a_deterministic_kernel_is_a_one_line_error(sample_records,
                                                                          tmp_path,
                                                                          monkeypatch):
  # On a GPU, op determinism stops at an op that has no deterministic kernel there.
  def no_kernel(*unused_args, **unused_kwargs):
    raise tf.errors.UnimplementedError(
        None, None, "A deterministic GPU implementation of Foo is not currently available.\n"
        "\t [[node Foo]]")

  monkeypatch.setattr(train_lib, "train", no_kernel)
  with pytest.raises(SystemExit) as e:
    _train_main(data_dir=sample_records, model_dir=str(tmp_path / "m"), deterministic=True)
  assert str(e.value.code) == (
      "cxr-train: error: --deterministic: A deterministic GPU implementation of Foo is not "
      "currently available; run without --deterministic on this device")
  with pytest.raises(tf.errors.UnimplementedError):  # not ours to explain without the flag
    _train_main(data_dir=sample_records, model_dir=str(tmp_path / "m"))


def test_keep_epoch_last_saves_the_final_weights_and_both_are_checkpointed(sample_records,
                                                                          tmp_path):
  seen = TrainableWeights()
  info = train_lib.train(_config(sample_records, tmp_path / "m", epochs=3, keep_epoch="last"),
                         extra_callbacks=[seen])
  assert info["keep_epoch"] == "last" and info["kept_epoch"] == 3
  saved, _ = model_dir_lib.load_model_dir(str(tmp_path / "m"))
  assert _same([w.numpy() for w in saved.trainable_weights], seen.epoch_ends[-1])
  assert {"best.weights.h5", "last.weights.h5"} <= set(os.listdir(tmp_path / "m" / "checkpoints"))
  best = train_lib.train(_config(sample_records, tmp_path / "b", epochs=3, keep_epoch="best"))
  assert best["keep_epoch"] == "best" and best["kept_epoch"] == best["best_epoch"]
  assert train_config.TrainConfig(data_dir="d", model_dir="m").keep_epoch == "last"
  with pytest.raises(ValueError, match="unknown keep_epoch 'first'"):
    train_lib.train(_config(sample_records, tmp_path / "x", keep_epoch="first"))


def test_cli_keep_epoch_last_says_which_epoch_it_kept(sample_records, tmp_path, capsys):
  _train_main(data_dir=sample_records, model_dir=str(tmp_path / "m"), keep_epoch="last",
              epochs=2, steps_per_epoch=2, image_size=SIZE, width=0.25)
  out = capsys.readouterr().out
  assert "(last epoch, 2 of 2; best by validation was " in out
  assert json.load(open(tmp_path / "m" / "model_info.json"))["config"]["keep_epoch"] == "last"


def test_a_finished_run_keeps_its_other_epoch_without_training(sample_records, tmp_path):
  seen = TrainableWeights()
  first = train_lib.train(_config(sample_records, tmp_path / "m", epochs=3, keep_epoch="best"),
                          extra_callbacks=[seen])
  again = TrainableWeights()
  info = train_lib.train(_config(sample_records, tmp_path / "m", epochs=3, keep_epoch="last"),
                         extra_callbacks=[again])
  assert not hasattr(again, "start")  # no training started
  assert not info.get("already_finished") and info["kept_epoch"] == 3
  assert info["best_epoch"] == first["best_epoch"]
  saved, _ = model_dir_lib.load_model_dir(str(tmp_path / "m"))
  assert _same([w.numpy() for w in saved.trainable_weights], seen.epoch_ends[-1])
  assert train_lib.train(_config(sample_records, tmp_path / "m", epochs=3,
                                 keep_epoch="last"))["already_finished"]
  # A run from before both epochs were kept cannot keep the one it lacks.
  os.remove(tmp_path / "m" / "checkpoints" / "best.weights.h5")
  with pytest.raises(ValueError, match="without the best epoch's weights"):
    train_lib.train(_config(sample_records, tmp_path / "m", epochs=3, keep_epoch="best"))


def test_a_run_from_before_keep_epoch_kept_its_best_epoch(sample_records, tmp_path):
  # The default is now the last epoch; a run saved before the field kept its best, and
  # run again with today's default it is finished, not re-finished (it has no last).
  cfg = _config(sample_records, tmp_path / "m", epochs=2, keep_epoch="best")
  train_lib.train(cfg)
  os.remove(tmp_path / "m" / "checkpoints" / "last.weights.h5")
  for read, write in ((model_dir_lib.read_run, model_dir_lib.write_run),
                      (model_dir_lib.read_info, model_dir_lib.write_info)):
    saved = read(str(tmp_path / "m"))
    saved["config"].pop("keep_epoch", None)
    saved.pop("keep_epoch", None)
    write(str(tmp_path / "m"), saved)
  assert train_lib.train(cfg)["already_finished"]
  assert train_lib.qat_config(str(tmp_path / "m"), str(tmp_path / "q"),
                              sample_records).keep_epoch == "best"
  with pytest.raises(ValueError, match="without the last epoch's weights"):
    train_lib.train(dataclasses.replace(cfg, keep_epoch="last"))


def test_killed_after_the_last_epoch_without_the_kept_weights_is_refused(sample_records,
                                                                        tmp_path):
  # A run from before both epochs were kept, killed before model_info.json, then run
  # with today's default: finishing would otherwise save an untrained network.
  cfg = _config(sample_records, tmp_path / "m", epochs=2, keep_epoch="best")
  train_lib.train(cfg)
  for name in (model_dir_lib.INFO_FILE, model_dir_lib.MODEL_FILE,
               os.path.join("checkpoints", "last.weights.h5")):
    os.remove(tmp_path / "m" / name)
  with pytest.raises(ValueError, match="without the last epoch's weights"):
    train_lib.train(dataclasses.replace(cfg, keep_epoch="last"))
  assert not os.path.isfile(tmp_path / "m" / model_dir_lib.MODEL_FILE)
  assert train_lib.train(cfg)["best_epoch"] in (1, 2)  # its best epoch it can keep


def test_a_second_training_on_the_same_model_dir_is_refused(sample_records, tmp_path):
  """It used to resume from the first one's backup while that one ran."""
  from cxr_edge.core import errors, locks  # pylint: disable=g-import-not-at-top
  model_dir = str(tmp_path / "m")
  with locks.exclusive(model_dir, "cxr-train", "--model_dir"):  # the first, still running
    with pytest.raises(errors.CxrError, match="in use by another process"):
      train_lib.train(_config(sample_records, model_dir, epochs=1, steps_per_epoch=1))
  assert os.listdir(model_dir) == []


def test_the_subtype_task_trains_three_classes_and_reports_subtypes(subtype_model):
  info = model_dir_lib.read_info(subtype_model)
  assert info["task"] == "subtype" and info["classes"] == ["NORMAL", "BACTERIAL", "VIRAL"]
  assert info["labels"] == ["NORMAL", "PNEUMONIA"]
  model, _ = model_dir_lib.load_model_dir(subtype_model)
  assert model.output_shape == (None, 3)
  # The saved figures are those of the saved model, recomputed here.
  val = inference.predict_split(model, info["config"]["data_dir"], "val", SIZE)
  np.testing.assert_allclose(val["probability"], val["probs"][:, 1:].sum(axis=1), atol=1e-6)
  assert info["val_metrics"]["roc_auc"] == pytest.approx(
      metrics.roc_auc(val["label"], val["probability"]))
  v = info["val_subtype_metrics"]
  assert json.dumps(v, sort_keys=True) == json.dumps(metrics.subtype_summary(
      val["label"], val["subtype"], val["probs"], info["threshold"], val["patient_id"]),
      sort_keys=True)  # as JSON: a class never called has a NaN precision
  assert v["bacterial_vs_viral"]["count"] == int(np.sum(val["subtype"] != ""))
  e = info["external_subtype_metrics"]
  assert e["three_class"]["count"] == 24 and e["bacterial_vs_viral"]["count"] == 12
  history = json.load(open(os.path.join(subtype_model, "history.json")))
  for key in ("subtype_auc", "val_subtype_auc", "external_subtype_auc"):
    assert len(history[key]) == 2, key
  titles = [t for t, _ in model_dir_lib.learning_curve_panels(history)]
  assert "bacterial vs viral ROC-AUC" in titles
  assert info["config"]["task"] == "subtype"  # part of the recipe a QAT run inherits
  assert "task" in train_config.RECIPE_FIELDS


def test_the_subtype_task_refuses_a_conversion_without_both_subtypes(tmp_path, image_tree):
  from cxr_edge.pipeline import convert_config, convert_lib  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / "rec")  # image_tree's PNEUMONIA films are all personN_virus_K
  convert_lib.convert(convert_config.ConvertOptions(input_dir=image_tree, output_dir=out,
                                                    num_workers=1))
  with pytest.raises(ValueError, match="no film of known subtype BACTERIAL"):
    train_lib.train(_config(out, tmp_path / "m", task="subtype"))
  with pytest.raises(ValueError, match="--mixup and --label_smoothing need --task=binary"):
    train_lib.train(_config(out, tmp_path / "m2", task="subtype", mixup=0.2))


def test_subtype_loss_and_metrics_by_hand():
  y = tf.constant([0, 1, 2, 3])  # NORMAL, BACTERIAL, VIRAL, PNEUMONIA of unknown subtype
  p = tf.constant([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8], [0.4, 0.3, 0.3]])
  loss = training_model.SubtypeCrossentropy(reduction="none")(y, p).numpy()
  np.testing.assert_allclose(loss, -np.log([0.5, 0.6, 0.8, 0.6]), rtol=1e-6)
  auc = training_model.SubtypeAUC(num_thresholds=200)
  # NORMAL and unknown films are left out: on the two known ones viral ranks first.
  auc.update_state(y, p)
  assert float(auc.result()) == pytest.approx(1.0)
  accuracy = training_model.PneumoniaAccuracy()
  accuracy.update_state(y, p)  # p_pneumonia 0.5, 0.8, 0.9, 0.6: NORMAL's is called PNEUMONIA
  assert float(accuracy.result()) == pytest.approx(0.75)


def test_task_auto_trains_subtypes_where_the_conversion_knows_them(sample_records, tmp_path,
                                                                     image_tree):
  from cxr_edge.pipeline import convert_config, convert_lib  # pylint: disable=g-import-not-at-top
  auto = _config(sample_records, tmp_path / "m", task="auto")
  assert train_config.TrainConfig(data_dir="d", model_dir="m").task == "auto"
  assert train_lib.resolve_task(auto).task == "subtype"  # the sample's names say
  out = str(tmp_path / "rec")  # image_tree's PNEUMONIA films are all personN_virus_K
  convert_lib.convert(convert_config.ConvertOptions(input_dir=image_tree, output_dir=out,
                                                    num_workers=1))
  assert train_lib.resolve_task(_config(out, tmp_path / "m2", task="auto")).task == "binary"
  assert train_lib.resolve_task(_config(out, tmp_path / "m3")).task == "binary"  # as given
