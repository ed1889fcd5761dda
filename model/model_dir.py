"""A cxr-train output directory: what is in it, and reading it back.

  model.keras          the float run's best epoch (by validation ROC-AUC), for export
  model_qat.weights.h5 instead of model.keras, for a quantization-aware run (--qat)
  checkpoints/         best weights (ModelCheckpoint)
  backup/              BackupAndRestore state while training; removed when done
  training_log.csv     one row per epoch (appended across resumes)
  history.json         the whole history, rebuilt from the CSV log
  learning_curves.png  loss, accuracy and ROC-AUC per epoch (train, validation, external),
                       the best epoch marked
  logs/                TensorBoard
  run.json             written first: the run's identity (config and training data), so a
                       rerun resumes only the same run
  model_info.json      the whole resolved training config, the decision threshold and
                       its rule, validation (and external) metrics, the manifest hash
                       of the training data
"""
import csv
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from absl import logging
import tf_keras as keras

from cxr_edge.core import cli
from cxr_edge.core import errors
from cxr_edge.core import image_io
from cxr_edge.core import schema
from cxr_edge.model import models
from cxr_edge.model import train_config
from cxr_edge.pipeline import dataset

RUN_FILE = "run.json"
MODEL_FILE = "model.keras"
QAT_WEIGHTS_FILE = "model_qat.weights.h5"
INFO_FILE = "model_info.json"
LOG_FILE = "training_log.csv"
HISTORY_FILE = "history.json"
CURVES_FILE = "learning_curves.png"


def manifest_sha256(data_dir: str) -> str:
  """sha256 of the conversion's manifest.json: identifies the training data."""
  return image_io.sha256_file(os.path.join(data_dir, schema.MANIFEST_NAME))


def read_history(model_dir: str) -> Dict[str, List[float]]:
  """The per-epoch history from the CSV log (complete across resumes); {} if none."""
  log_path = os.path.join(model_dir, LOG_FILE)
  if not os.path.isfile(log_path):
    return {}
  with open(log_path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  # A run killed after an epoch's row was logged but before its backup was saved runs
  # that epoch again when resumed: the later row is the epoch that counts.
  by_epoch = {int(float(row["epoch"])): row for row in rows
              if row.get("epoch") not in (None, "")}
  history: Dict[str, List[float]] = {}
  for _, row in sorted(by_epoch.items()):
    for k, v in row.items():
      history.setdefault(k, []).append(float(v))
  return history


def write_history(model_dir: str, history: Dict[str, List[float]], title: str) -> None:
  """history.json and learning_curves.png."""
  with open(os.path.join(model_dir, HISTORY_FILE), "w", encoding="utf-8") as f:
    json.dump(history, f, indent=2)
  plot_learning_curves(history, os.path.join(model_dir, CURVES_FILE), title)


def learning_curve_panels(history: Dict[str, List[float]]) -> List[Tuple[str, Dict[str, List[float]]]]:
  """(panel title, {series label: values}) for loss, accuracy, ROC-AUC and, for a
  three-class model, the bacterial-vs-viral ROC-AUC."""
  panels = []
  for key, title in (("loss", "loss"), ("accuracy", "accuracy"), ("auc", "ROC-AUC"),
                     ("subtype_auc", "bacterial vs viral ROC-AUC")):
    series = {f"{who} {title}": history[name]
              for who, name in (("train", key), ("validation", f"val_{key}"),
                                ("external", f"external_{key}")) if history.get(name)}
    if series:
      panels.append((title, series))
  return panels


def best_epoch(history: Dict[str, List[float]]) -> Optional[int]:
  """The 1-based epoch with the highest validation ROC-AUC (the one model.keras keeps)."""
  if not history.get("val_auc"):
    return None
  return int(np.argmax(history["val_auc"])) + 1


def plot_learning_curves(history: Dict[str, List[float]], path: str, title: str) -> None:
  """Loss, accuracy and ROC-AUC per epoch (train, validation, external), best epoch marked."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  epochs = [int(e) + 1 for e in history.get("epoch", [])]
  panels = learning_curve_panels(history)
  best = best_epoch(history)
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
  for ax, (name, series) in zip(axes[0], panels):
    for label, values in series.items():
      ax.plot(epochs[:len(values)], values, label=label)
    if best:
      ax.axvline(best, color="k", ls=":", alpha=0.6, label=f"best epoch ({best})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(name)
    ax.set_title(name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


# Everything cxr-train writes into a model dir (and so may remove with --overwrite).
OWN_ARTIFACTS = (RUN_FILE, MODEL_FILE, QAT_WEIGHTS_FILE, INFO_FILE, LOG_FILE, HISTORY_FILE,
                 CURVES_FILE, "checkpoints", "backup", "logs")


def remove_run(model_dir: str) -> None:
  """Removes what cxr-train wrote in model_dir, and nothing else."""
  cli.remove_own(model_dir, OWN_ARTIFACTS)


def read_run(model_dir: str) -> Optional[Dict[str, Any]]:
  """run.json (the identity of the run started in model_dir), or None."""
  path = os.path.join(model_dir, RUN_FILE)
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def write_run(model_dir: str, identity: Dict[str, Any]) -> None:
  with open(os.path.join(model_dir, RUN_FILE), "w", encoding="utf-8") as f:
    json.dump(identity, f, indent=2)


def has_artifacts(model_dir: str) -> bool:
  return os.path.isdir(model_dir) and any(
      os.path.exists(os.path.join(model_dir, n)) for n in OWN_ARTIFACTS)


def write_info(model_dir: str, info: Dict[str, Any]) -> None:
  with open(os.path.join(model_dir, INFO_FILE), "w", encoding="utf-8") as f:
    json.dump(info, f, indent=2)


def read_info(model_dir: str) -> Dict[str, Any]:
  """model_info.json of a finished run.

  Raises:
    FileNotFoundError: not a finished cxr-train output.
  """
  path = os.path.join(model_dir, INFO_FILE)
  if not os.path.isfile(path):
    raise errors.MissingInputError(f"{model_dir!r} has no {INFO_FILE}: not a finished cxr-train "
                                   "output")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def run_prior(info: Dict[str, Any], data_dir: str) -> float:
  """The PNEUMONIA share a run's probabilities assume: as its model_info records it, or,
  for a run saved before the field, from its class weights (pipeline/dataset.py)."""
  if info.get("output_prior") is not None:
    return float(info["output_prior"])
  return dataset.trained_prior(data_dir, info.get("class_weight", "balanced"))


def quantize(model: keras.Model) -> keras.Model:
  """tfmot's quantization-aware copy of a float classifier (fake-quantized layers)."""
  import tensorflow_model_optimization as tfmot  # pylint: disable=g-import-not-at-top
  return tfmot.quantization.keras.quantize_model(model)


def build_from_info(info: Dict[str, Any]) -> keras.Model:
  """An untrained network in the current layout for a run's model_info (QAT or float)."""
  model = models.build(info["model"], info["image_size"], info.get("width", 1.0),
                       info.get("dropout"), info.get("task", schema.TASK_BINARY))
  return quantize(model) if info.get("qat") else model


def save_model(model_dir: str, model: keras.Model, qat: bool) -> None:
  """The float model as model.keras; a QAT model as weights (tfmot layers need a scope to
  deserialize, while rebuilding the network and loading weights needs nothing)."""
  if qat:
    model.save_weights(os.path.join(model_dir, QAT_WEIGHTS_FILE))
  else:
    model.save(os.path.join(model_dir, MODEL_FILE))


def load_model_dir(model_dir: str) -> Tuple[keras.Model, Dict[str, Any]]:
  """Loads (model, model_info) from a cxr-train output directory.

  The network is rebuilt in the current layout (models.build) and given the saved
  weights, so runs saved before a layout change that kept the weights (the softmax as
  its own layer) load as current ones. A QAT run gives its quantization-aware model.

  Raises:
    FileNotFoundError: not a finished training run.
  """
  qat_path = os.path.join(model_dir, QAT_WEIGHTS_FILE)
  path = os.path.join(model_dir, MODEL_FILE)
  if not (os.path.isfile(os.path.join(model_dir, INFO_FILE))
          and (os.path.isfile(path) or os.path.isfile(qat_path))):
    raise errors.MissingInputError(f"{model_dir!r} has no {MODEL_FILE} and {INFO_FILE}: not a "
                                   "finished cxr-train output")
  info = read_info(model_dir)
  model = build_from_info(info)
  if info.get("qat"):
    model.load_weights(qat_path)
  else:
    model.set_weights(keras.models.load_model(path, compile=False).get_weights())
  return model, info


# The run's ownership of model_dir: which run it holds, and its checkpoints.


def best_weights_path(model_dir: str) -> str:
  return os.path.join(model_dir, "checkpoints", "best.weights.h5")


def last_weights_path(model_dir: str) -> str:
  return os.path.join(model_dir, "checkpoints", "last.weights.h5")


def kept_weights_path(model_dir: str, keep_epoch: str) -> str:
  """The checkpoint of the epoch keep_epoch keeps."""
  return (last_weights_path if keep_epoch == "last" else best_weights_path)(model_dir)


def run_identity(config: train_config.TrainConfig) -> Dict[str, Any]:
  """What makes a run this run: its config and the training data's manifest."""
  cfg = json.loads(json.dumps(train_config.config_to_dict(config)))
  for key in train_config.NOT_IDENTITY:
    cfg.pop(key, None)
  return {"config": cfg, "data_manifest_sha256": manifest_sha256(config.data_dir)}


def claim(config: train_config.TrainConfig, overwrite: bool) -> Optional[Dict[str, Any]]:
  """Makes model_dir this run's: fresh, the same run resumed, or refused.

  A finished run asked to keep its other epoch (keep_epoch) is finished again with it.

  Returns:
    The model_info of this same run if it already finished (nothing to do), else None.

  Raises:
    ValueError: model_dir holds another run (other config or data) and not overwrite.
  """
  if overwrite:
    remove_run(config.model_dir)
  identity = run_identity(config)
  found = read_run(config.model_dir)
  if found is not None:
    # A run written before a config field existed ran as that field's absence means.
    filled = train_config.complete_saved(found["config"])
    found = dict(found, config={k: v for k, v in filled.items()
                                if k in identity["config"] or k in found["config"]})
  if found is None and has_artifacts(config.model_dir):
    raise errors.ConfigError(f"--model_dir {config.model_dir!r} holds a training run this version "
                             "cannot identify; pass --overwrite to replace it, or choose another "
                             "--model_dir")
  if found is not None and found != identity:
    differ = sorted(k for k in set(found["config"]) | set(identity["config"])
                    if found["config"].get(k) != identity["config"].get(k))
    if found["data_manifest_sha256"] != identity["data_manifest_sha256"]:
      differ.append("training data")
    raise errors.ConfigError(f"--model_dir {config.model_dir!r} holds another run (it differs in "
                             f"{', '.join(differ)}); pass --overwrite to start over, or choose "
                             "another --model_dir")
  os.makedirs(config.model_dir, exist_ok=True)
  write_run(config.model_dir, identity)
  if found is None or not os.path.isfile(os.path.join(config.model_dir,
                                                      INFO_FILE)):
    return None
  info = read_info(config.model_dir)
  kept = train_config.config_from_info(info).keep_epoch  # a run before the field: best
  if kept == config.keep_epoch:
    return info
  # Finished with the other epoch kept: only the finishing steps run again.
  logging.info("%s is a finished run: keeping its %s epoch instead of its %s, no training",
               config.model_dir, config.keep_epoch, kept)
  return None
