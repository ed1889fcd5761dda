"""Site calibration: a clinic's own labelled films choose the operating threshold.

TensorFlow-free (LiteRT, numpy, Pillow), so it runs on the device that will predict.
The model file is copied byte for byte into a new package whose metadata carries the
new threshold (and, if asked, a temperature refitted on the same films) with its
provenance; the original package is never altered.

The expected sensitivity and specificity it reports are measured on the same films the
threshold was chosen on, so they are optimistic by a little; the README's split-half
evaluation measures by how much.
"""
import dataclasses
import datetime
import hashlib
import json
import os
from typing import Any, Dict, List, Optional

from absl import logging
import numpy as np

from edge import package
from edge import runtime
from model import metrics
from pipeline import convert_lib
from pipeline import image_folder
from pipeline import schema

# Fewer films than this in a class make the intervals too wide to act on; calibrating
# still works, with a warning.
MIN_FILMS_PER_CLASS = 50


class CalibrationError(Exception):
  """The films or the output cannot be used; nothing was written."""


@dataclasses.dataclass
class LocalFilms:
  """A clinic's labelled films scored by the model."""
  relpaths: List[str]
  labels: np.ndarray
  patients: List[str]
  logits: np.ndarray  # [N, 2] for logit-output models, else probabilities


def score_films(model: runtime.LiteModel, image_dir: str) -> LocalFilms:
  """Runs the model on every labelled film below image_dir.

  Raises:
    CalibrationError: no labelled films, a class missing, or unreadable films.
  """
  try:
    items, skipped = image_folder.list_labelled_images(image_dir, check=False)
  except convert_lib.ConversionError as e:  # not a folder, or no class folders
    raise CalibrationError(str(e)) from None
  items_by_class = [sum(i.label == k for i in items) for k in range(schema.NUM_CLASSES)]
  if not items:
    raise CalibrationError(f"no labelled films in {image_dir!r}: put them in class folders "
                           f"named {' and '.join(schema.LABELS)}")
  if min(items_by_class) == 0:
    counts = ", ".join(f"{n} {label}" for n, label in zip(items_by_class, schema.LABELS))
    raise CalibrationError(f"films of both classes are needed to choose a threshold; found "
                           f"{counts} in {image_dir!r}")
  for s in skipped:
    logging.warning("skipping %s: %s", s["path"], s["reason"])
  outputs, failed = [], []
  for i, item in enumerate(items):
    try:
      with open(item.path, "rb") as f:
        data = f.read()
      outputs.append(model.outputs(runtime.preprocess(data, model.image_size, model.scale)))
    except (OSError, runtime.ImageError) as e:
      failed.append(f"{item.relpath}: {e}")
    if (i + 1) % 200 == 0:
      logging.info("scored %d/%d films", i + 1, len(items))
  if failed:
    raise CalibrationError(f"{len(failed)} film(s) could not be read (first: {failed[0]}); "
                           "fix or remove them: a threshold chosen without them would not "
                           "describe your films")
  return LocalFilms([i.relpath for i in items], np.array([i.label for i in items]),
                    [i.patient_id for i in items], np.stack(outputs))


def probabilities(model: runtime.LiteModel, outputs: np.ndarray,
                  temperature: Optional[float] = None) -> np.ndarray:
  """PNEUMONIA probabilities of model outputs, at the model's or the given temperature."""
  if model.output_kind != "logits":
    return outputs[:, 1].astype(np.float64)
  return runtime.softmax(outputs, temperature or model.temperature)[:, 1]


def choose(model: runtime.LiteModel, films: LocalFilms, target_sensitivity: Optional[float] = None,
           target_specificity: Optional[float] = None,
           fit_temperature: bool = False) -> Dict[str, Any]:
  """Chooses the temperature (optionally) and the threshold on the films.

  Returns:
    {"temperature", "threshold", "rule", "before": operating point at the model's own
    threshold and temperature, "after": at the chosen ones}.
  """
  temperature = model.temperature
  if fit_temperature:
    if model.output_kind != "logits":
      raise CalibrationError("this model outputs probabilities, not logits: re-export it "
                             "with this version to refit its temperature")
    temperature = metrics.fit_temperature(films.labels, films.logits[:, 1] - films.logits[:, 0])
  probs = probabilities(model, films.logits, temperature)
  threshold = metrics.choose_threshold(films.labels, probs, target_sensitivity,
                                       target_specificity)
  if target_sensitivity is not None:
    rule = f"highest threshold with local sensitivity >= {target_sensitivity}"
  elif target_specificity is not None:
    rule = f"lowest threshold with local specificity >= {target_specificity}"
  else:
    rule = "maximum Youden J on the local films"
  before = metrics.operating_point(films.labels, probabilities(model, films.logits),
                                   model.threshold, films.patients)
  return {"temperature": temperature, "threshold": threshold, "rule": rule,
          "before": before,
          "after": metrics.operating_point(films.labels, probs, threshold, films.patients)}


def calibrate(model_path: str, image_dir: str, output_dir: str,
              target_sensitivity: Optional[float] = None,
              target_specificity: Optional[float] = None, fit_temperature: bool = False,
              num_threads: int = 1) -> Dict[str, Any]:
  """Chooses a site threshold on local films and writes a new model package.

  Args:
    model_path: an exported .tflite with its metadata.json beside it.
    image_dir: the clinic's labelled films (NORMAL/, PNEUMONIA/ at any depth).
    output_dir: the new package (model + metadata.json); must not exist or be empty,
      and must not be the model's own folder.
    target_sensitivity: choose the most specific threshold keeping this sensitivity.
    target_specificity: choose the most sensitive threshold keeping this specificity.
    fit_temperature: refit the softmax temperature on the films first.
    num_threads: interpreter threads.

  Returns:
    The calibration record (also in the new metadata under "site_calibration").

  Raises:
    CalibrationError: bad films, targets or output directory.
    runtime.ModelError: the model cannot be used.
  """
  if target_sensitivity is not None and target_specificity is not None:
    raise CalibrationError("give at most one of --target_sensitivity and --target_specificity")
  model_dir = os.path.dirname(os.path.abspath(model_path))
  if os.path.abspath(output_dir) == model_dir:
    raise CalibrationError("--output_dir is the model's own folder; the original package "
                           "is never altered: choose a new folder")
  if os.path.isdir(output_dir) and os.listdir(output_dir):
    raise CalibrationError(f"--output_dir {output_dir!r} is not empty")
  model = runtime.LiteModel(model_path, num_threads)
  films = score_films(model, image_dir)
  per_class = np.bincount(films.labels, minlength=schema.NUM_CLASSES)
  if per_class.min() < MIN_FILMS_PER_CLASS:
    logging.warning("only %s films per class (%s): the intervals below are wide; %d or more "
                    "of each class are advised", per_class.tolist(), ", ".join(schema.LABELS),
                    MIN_FILMS_PER_CLASS)
  chosen = choose(model, films, target_sensitivity, target_specificity, fit_temperature)
  name = os.path.basename(model_path)
  record = {
      "tool": "cxr-calibrate",
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "image_dir": os.path.abspath(image_dir),
      "films": int(len(films.labels)),
      "films_per_class": dict(zip(schema.LABELS, per_class.tolist())),
      "patients": len(set(films.patients)),
      "rule": chosen["rule"],
      "temperature_refitted": fit_temperature,
      "previous": {"threshold": model.threshold, "temperature": model.temperature,
                   "threshold_source": model.entry.get("threshold_source")},
      "threshold": chosen["threshold"],
      "temperature": chosen["temperature"],
      "measured_on_the_same_films": {"at_previous": chosen["before"],
                                     "at_new": chosen["after"]},
  }
  fields = package.model_fields(json.loads(json.dumps(model.metadata)),
                                json.loads(json.dumps(model.entry)))
  metadata, entry = fields["package"], fields["model"]
  entry["threshold"] = chosen["threshold"]
  entry["temperature"] = chosen["temperature"]
  entry["threshold_source"] = (f"cxr-calibrate on {record['films']} local films "
                               f"({record['date']}): {chosen['rule']}")
  metadata["site_calibration"] = record
  with open(model_path, "rb") as f:  # the same graph and weights, new embedded metadata
    data = package.embed(f.read(), fields)
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, name), "wb") as f:
    f.write(data)
  metadata["models"] = {name: dict(entry, file=name, bytes=len(data),
                                   sha256=hashlib.sha256(data).hexdigest())}
  with open(os.path.join(output_dir, schema.METADATA_NAME), "w", encoding="utf-8") as f:
    json.dump(metadata, f, indent=2)
  return record
