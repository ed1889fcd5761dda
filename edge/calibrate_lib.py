"""Site calibration: a clinic's own films, or its share of PNEUMONIA, set the threshold.

TensorFlow-free (LiteRT, numpy, Pillow), so it runs on the device that will predict.
The model file is copied byte for byte into a new package whose metadata carries the
new threshold (and, if asked, a temperature refitted on the films) with its provenance;
the original package is never altered.

Two ways to choose:
  - on labelled local films (a rule such as a target sensitivity). The sensitivity and
    specificity it reports are measured on the films the threshold was chosen on, so
    they are optimistic by a little; the README's split-half evaluation measures by how
    much.
  - from the local prevalence alone (Bayes' rule on the class prior the model's
    probabilities assume; core/thresholds.py at_prevalence): no labelled film is
    needed; labelled films, if given, only measure it (and may refit the temperature).
"""
import dataclasses
import datetime
import hashlib
import json
import os
from typing import Any, Dict, List, Optional

from absl import logging
import numpy as np

from cxr_edge.core import errors
from cxr_edge.core import folders
from cxr_edge.core import metrics
from cxr_edge.core import package_info
from cxr_edge.core import schema
from cxr_edge.core import site_log
from cxr_edge.core import thresholds
from cxr_edge.core.errors import CalibrationError
from cxr_edge.edge import package
from cxr_edge.edge import released
from cxr_edge.edge import runtime

# Fewer films than this in a class make the intervals too wide to act on; calibrating
# still works, with a warning.
MIN_FILMS_PER_CLASS = 50
# A threshold chosen on films must have its sensitivity and specificity known to about
# this (the half-width of each 95% Wilson interval), or it is refused: a threshold moved
# on a handful of films moves on noise.
EVIDENCE_HALF_WIDTH = 0.10
# The default rule (RULES[0]) keeps the package's stated sensitivity; Youden's J, which
# weighs a missed pneumonia the same as a false alarm, is wrong for a triage aid by default.
RULES = ("stated_sensitivity", "youden")


@dataclasses.dataclass
class LocalFilms:
  """A clinic's labelled films scored by the model."""
  relpaths: List[str]
  labels: np.ndarray
  patients: List[str]
  logits: np.ndarray  # [N, classes] for logit-output models, else probabilities
  subtypes: List[str]  # a PNEUMONIA film's BACTERIAL or VIRAL where its name says, else ""
  # Films outside the intended use (the gate withheld them): (relpath, label, reason).
  # They have no output, so no figure counts them; measure() states their share.
  withheld: List[Any] = dataclasses.field(default_factory=list)


# Folders a user may sort pneumonia films into by subtype, which are not classes.
_SUBTYPE_FOLDERS = ("BACTERIAL", "VIRAL")


def score_films(model: runtime.LiteModel, image_dir: str) -> LocalFilms:
  """Runs the model on every labelled film below image_dir.

  Raises:
    CalibrationError: no labelled films, a class missing, or unreadable films.
  """
  try:
    items, skipped = folders.list_labelled_images(image_dir, check=False)
  except errors.ConversionError as e:  # not a folder, or no class folders
    raise CalibrationError(str(e)) from None
  items_by_class = [sum(i.label == k for i in items) for k in range(schema.NUM_CLASSES)]
  if not items:
    raise CalibrationError(f"no labelled films in {image_dir!r}: put them in class folders "
                           f"named {' and '.join(schema.LABELS)}")
  if min(items_by_class) == 0:
    counts = ", ".join(f"{n} {label}" for n, label in zip(items_by_class, schema.LABELS))
    tops = {s["path"].replace(os.sep, "/").split("/")[0] for s in skipped}
    subtype_folders = sorted(t for t in tops if t.upper() in _SUBTYPE_FOLDERS)
    hint = (f": {' and '.join(f + '/' for f in subtype_folders)} are kinds of pneumonia; "
            f"move them into PNEUMONIA/ (e.g. PNEUMONIA/{subtype_folders[0]}/), where their "
            "names still give the subtype" if subtype_folders and items_by_class[
                schema.LABEL_TO_INDEX["PNEUMONIA"]] == 0 else "")
    raise CalibrationError(f"films of both classes are needed to choose a threshold; found "
                           f"{counts} in {image_dir!r}{hint}")
  for s in skipped:
    logging.warning("skipping %s: %s", s["path"], s["reason"])
  outputs, failed, analysed, withheld = [], [], [], []
  for i, item in enumerate(items):
    try:
      with open(item.path, "rb") as f:
        data = f.read()
      outputs.append(model.analyse(data)[0])
      analysed.append(item)
    except errors.OutOfScope as e:
      withheld.append((item.relpath, int(item.label), str(e)))
    except (OSError, runtime.ImageError) as e:
      failed.append(f"{item.relpath}: {e}")
    if (i + 1) % 200 == 0:
      logging.info("scored %d/%d films", i + 1, len(items))
  if failed:
    raise CalibrationError(f"{len(failed)} film(s) could not be read (first: {failed[0]}); "
                           "fix or remove them: a threshold chosen without them would not "
                           "describe your films")
  if withheld:
    logging.warning("%d film(s) outside the model's intended use are left out (first: %s: "
                    "%s)", len(withheld), withheld[0][0], withheld[0][2])
  left = [sum(i.label == k for i in analysed) for k in range(schema.NUM_CLASSES)]
  if min(left) == 0:
    raise CalibrationError(
        f"films of both classes are needed to choose a threshold; after {len(withheld)} "
        f"film(s) outside the model's intended use were left out (first: "
        f"{withheld[0][0]}: {withheld[0][2]}), "
        + ", ".join(f"{n} {label}" for n, label in zip(left, schema.LABELS)) + " remain")
  return LocalFilms([i.relpath for i in analysed], np.array([i.label for i in analysed]),
                    [i.patient_id for i in analysed], np.stack(outputs),
                    [i.subtype or "" for i in analysed], withheld)


def spool_films(model: runtime.LiteModel, spool_dir: str) -> LocalFilms:
  """The films this model read in a clinic node's spool that readers gave a verdict on,
  as labelled films: the node's recorded probabilities stand for the model's outputs
  (the same films need not be read again, nor kept).

  Raises:
    CalibrationError: not a node's spool, or no film of this model has a verdict.
  """
  if not os.path.exists(os.path.join(spool_dir, site_log.AUDIT_NAME)):
    raise CalibrationError(f"{spool_dir!r} is not a cxr-node spool (no "
                           f"{site_log.AUDIT_NAME})")
  films, models, damaged = site_log.labelled_films(spool_dir, model.sha256)
  if damaged:
    logging.warning("%d audit line(s) of this model left out: a probability in them is "
                    "not one (outside 0-1, NaN or text; first film %s): the log was "
                    "damaged or edited", len(damaged), damaged[0])
  if not films:
    other = (f"; its films were read by {', '.join(m[:12] for m in models)}: give that "
             "model as --model" if models and model.sha256 not in models else "")
    raise CalibrationError(f"no film this model ({model.sha256[:12]}) read in "
                           f"{spool_dir!r} has a reader's verdict{other}")
  three = len(model.classes) > len(schema.LABELS)
  rows = []
  for f in films:
    if three and f.p_bacterial is not None and f.p_viral is not None:
      rows.append([1.0 - f.p_pneumonia, f.p_bacterial, f.p_viral])
    elif three:
      raise CalibrationError(f"film {f.sop_instance_uid}: its audit line has no "
                             "p_bacterial/p_viral; was it read by this three-class model?")
    else:
      rows.append([1.0 - f.p_pneumonia, f.p_pneumonia])
  probs = np.clip(np.array(rows, np.float64), 1e-7, 1.0)
  # Logits up to a constant per film (which softmax ignores), at the model's temperature:
  # softmax(T * log(p) / T) gives back the recorded probabilities.
  outputs = model.temperature * np.log(probs) if model.output_kind == "logits" else probs
  positive = schema.LABEL_TO_INDEX["PNEUMONIA"]
  return LocalFilms([f.sop_instance_uid for f in films],
                    np.array([positive if f.pneumonia else 1 - positive for f in films]),
                    [f.patient for f in films], outputs, [f.subtype or "" for f in films])


def class_probabilities(model: runtime.LiteModel, outputs: np.ndarray,
                        temperature: Optional[float] = None) -> np.ndarray:
  """Class probabilities of model outputs, at the model's or the given temperature."""
  if model.output_kind != "logits":
    return np.asarray(outputs, np.float64)
  return metrics.softmax(outputs, temperature or model.temperature)


def probabilities(model: runtime.LiteModel, outputs: np.ndarray,
                  temperature: Optional[float] = None) -> np.ndarray:
  """PNEUMONIA probabilities of model outputs, at the model's or the given temperature
  (a three-class model's: p_bacterial + p_viral)."""
  return metrics.p_pneumonia(class_probabilities(model, outputs, temperature))


def measure(model: runtime.LiteModel, films: LocalFilms) -> Dict[str, Any]:
  """The model's figures on labelled films at its own threshold, as a device computes
  them: metrics.operating_point (95% intervals), a three-class model's subtype summary,
  and how many films and patients. The released model's stated figures are these."""
  probs = class_probabilities(model, films.logits)
  out = {"images": int(len(films.labels)), "patients": int(len(set(films.patients))),
         **metrics.operating_point(films.labels, metrics.p_pneumonia(probs), model.threshold,
                                   films.patients)}
  if films.withheld:  # packages without a gate, and a spool's films, withhold none
    total = len(films.labels) + len(films.withheld)
    out["withheld"] = {"images": len(films.withheld), "of": total,
                       "share": len(films.withheld) / total,
                       "ci95": list(metrics.wilson_interval(len(films.withheld), total)),
                       "films": [{"file": f, "label": schema.LABELS[label], "reason": why}
                                 for f, label, why in films.withheld]}
  if len(model.classes) > len(schema.LABELS):
    out["subtype"] = metrics.subtype_summary(films.labels, films.subtypes, probs,
                                             model.threshold, films.patients)
  return out


def _temperature(model: runtime.LiteModel, films: Optional[LocalFilms],
                 fit_temperature: bool) -> float:
  """The model's temperature, or one refitted on the films."""
  if not fit_temperature:
    return model.temperature
  if films is None:
    raise CalibrationError("--fit_temperature needs labelled films (--image_dir)")
  if model.output_kind != "logits":
    raise CalibrationError("this model outputs probabilities, not logits: re-export it "
                           "with this version to refit its temperature")
  return metrics.fit_temperature(films.labels, films.logits)


def _measured(model: runtime.LiteModel, films: Optional[LocalFilms], temperature: float,
              threshold: float) -> Dict[str, Any]:
  """The operating points on the films at the model's own and the new settings."""
  if films is None:
    return {"before": None, "after": None}
  return {"before": metrics.operating_point(films.labels, probabilities(model, films.logits),
                                            model.threshold, films.patients),
          "after": metrics.operating_point(films.labels,
                                           probabilities(model, films.logits, temperature),
                                           threshold, films.patients)}


def choose(model: runtime.LiteModel, films: LocalFilms, target_sensitivity: Optional[float] = None,
           target_specificity: Optional[float] = None,
           fit_temperature: bool = False, rule: str = RULES[0]) -> Dict[str, Any]:
  """Chooses the temperature (optionally) and the threshold on the films.

  Args:
    rule: without a target, "stated_sensitivity" (the most specific threshold keeping
      the package's stated sensitivity on the films) or "youden" (maximum Youden's J).

  Returns:
    {"temperature", "threshold", "rule", "before": operating point at the model's own
    threshold and temperature, "after": at the chosen ones}.

  Raises:
    CalibrationError: the default rule for a package that states no sensitivity.
  """
  if rule not in RULES:
    raise CalibrationError(f"unknown rule {rule!r}; choose from {', '.join(RULES)}")
  temperature = _temperature(model, films, fit_temperature)
  probs = probabilities(model, films.logits, temperature)
  stated = None
  if target_sensitivity is None and target_specificity is None and rule == RULES[0]:
    stated = released.stated_figures(model.sha256, model.metadata, released.release())
    if stated.get("sensitivity") is None:
      raise CalibrationError("this package states no sensitivity to keep: give "
                             "--target_sensitivity, --target_specificity or --rule=youden")
    target_sensitivity = float(stated["sensitivity"])
  threshold = thresholds.on_scores(films.labels, probs, target_sensitivity,
                                       target_specificity)
  if stated is not None:
    rule = (f"the most specific threshold keeping the stated sensitivity "
            f"{target_sensitivity:.3f} ({stated['source']}) on the local films")
  elif target_sensitivity is not None:
    rule = f"highest threshold with local sensitivity >= {target_sensitivity}"
  elif target_specificity is not None:
    rule = f"lowest threshold with local specificity >= {target_specificity}"
  else:
    rule = "maximum Youden J on the local films"
  return {"temperature": temperature, "threshold": threshold, "rule": rule,
          **_measured(model, films, temperature, threshold)}


def films_needed(successes: int, n: int, half_width: float = EVIDENCE_HALF_WIDTH) -> int:
  """How many films of a class put the 95% Wilson interval of a proportion measured as
  successes / n within +-half_width (at least n)."""
  share = successes / n if n else 0.5
  m = max(n, 1)
  while True:
    low, high = metrics.wilson_interval(round(share * m), m)
    if (high - low) / 2 <= half_width:
      return m
    m += 1


def thin_evidence(films: LocalFilms, at_new: Dict[str, Any]) -> Optional[str]:
  """Why a threshold chosen on these films is not known well enough to use, with how many
  more films each class needs; None when both intervals are within EVIDENCE_HALF_WIDTH."""
  (tn, fp), (fn, tp) = at_new["confusion_matrix"]
  lacking = []
  for name, label, hits, n in (("sensitivity", "PNEUMONIA", tp, tp + fn),
                               ("specificity", "NORMAL", tn, tn + fp)):
    low, high = at_new["ci95"][name]
    if (high - low) / 2 > EVIDENCE_HALF_WIDTH:
      more = films_needed(hits, n) - n
      lacking.append(f"its {name} is known only to +-{50 * (high - low):.0f} points on {n} "
                     f"{label} films (about {more} more needed)")
  if not lacking:
    return None
  return (f"too few films to move the threshold: {'; '.join(lacking)} for +-"
          f"{100 * EVIDENCE_HALF_WIDTH:.0f} points")


def package_prior(model: runtime.LiteModel) -> float:
  """The PNEUMONIA share the model's probabilities assume, as its package records it.

  Raises:
    CalibrationError: a package exported before the field existed.
  """
  prior = model.info.output_prior
  if prior is None:
    raise CalibrationError("this package does not record the class prior its probabilities "
                           "assume (it predates --prevalence): re-export it with this "
                           "version")
  return float(prior)


def at_prevalence(model: runtime.LiteModel, prevalence: float,
                  films: Optional[LocalFilms] = None,
                  fit_temperature: bool = False) -> Dict[str, Any]:
  """The threshold for a site's prevalence; films, if given, only measure it.

  Returns:
    As choose(); "before" and "after" are None without films.

  Raises:
    CalibrationError: a prevalence not strictly between 0 and 1, or a package that does
      not record its class prior.
  """
  if not 0.0 < prevalence < 1.0:
    raise CalibrationError(f"--prevalence must be strictly between 0 and 1, not {prevalence}")
  prior = package_prior(model)
  temperature = _temperature(model, films, fit_temperature)
  threshold = thresholds.at_prevalence(prevalence, prior)
  if not 0.0 < threshold < 1.0:  # 1 - 1e-20 is 1.0 in floating point
    raise CalibrationError(
        f"--prevalence={prevalence:g} gives threshold {threshold:g}: "
        f"{'no film would ever be flagged' if threshold >= 1 else 'every film would be flagged'}"
        "; give the site's labelled films (--image_dir) instead")
  rule = (f"the most accurate threshold at local PNEUMONIA prevalence {prevalence:g} "
          f"(Bayes' rule on the model's class prior {prior:g})")
  return {"temperature": temperature, "threshold": threshold, "rule": rule,
          **_measured(model, films, temperature, threshold)}


def calibrate(model_path: str, image_dir: Optional[str], output_dir: str,
              target_sensitivity: Optional[float] = None,
              target_specificity: Optional[float] = None, fit_temperature: bool = False,
              num_threads: int = 1, prevalence: Optional[float] = None,
              from_spool: Optional[str] = None, rule: str = RULES[0],
              allow_few_films: bool = False) -> Dict[str, Any]:
  """Sets a site threshold and writes a new model package.

  Args:
    model_path: an exported .tflite (its metadata embedded; a metadata.json beside it, if
      kept, must agree).
    image_dir: the clinic's labelled films (NORMAL/, PNEUMONIA/ at any depth); may be None
      with prevalence.
    output_dir: the new package (model + metadata.json); must not exist or be empty,
      and must not be the model's own folder.
    target_sensitivity: choose the most specific threshold keeping this sensitivity.
    target_specificity: choose the most sensitive threshold keeping this specificity.
    fit_temperature: refit the softmax temperature on the films first.
    num_threads: interpreter threads.
    prevalence: set the threshold from the local share of PNEUMONIA instead (the films,
      if any, then only measure it).
    from_spool: a clinic node's spool: the films this model read there with a reader's
      verdict are the labelled films (instead of image_dir).
    rule: the rule without a target or a prevalence (RULES; choose()).
    allow_few_films: write a package whose threshold was chosen on too few films
      (thin_evidence) anyway, as an experiment: the package then says so.

  Returns:
    The calibration record (also in the new metadata under "site_calibration").

  Raises:
    CalibrationError: bad films, targets or output directory.
    runtime.ModelError: the model cannot be used.
  """
  _check_request(model_path, image_dir, output_dir, target_sensitivity, target_specificity,
                 prevalence, from_spool)
  model = runtime.LiteModel(model_path, num_threads)
  if prevalence is not None:
    package_prior(model)  # refuse an old package before scoring any film
  films = (spool_films(model, from_spool) if from_spool else
           score_films(model, image_dir) if image_dir else None)
  per_class = (np.bincount(films.labels, minlength=schema.NUM_CLASSES) if films is not None
               else np.zeros(schema.NUM_CLASSES, int))
  if prevalence is not None:
    chosen = at_prevalence(model, prevalence, films, fit_temperature)
  else:
    chosen = choose(model, films, target_sensitivity, target_specificity, fit_temperature,
                    rule)
  thin = thin_evidence(films, chosen["after"]) if prevalence is None else None
  if thin and not allow_few_films:
    raise CalibrationError(f"{thin}; nothing was written (--allow_few_films writes it as "
                           "an experiment, marked in the package)")
  if films is not None and per_class.min() < MIN_FILMS_PER_CLASS:
    logging.warning("only %s films: the intervals below are wide; %d or more of each class "
                    "are advised", " and ".join(f"{n} {label}" for label, n in
                                                zip(schema.LABELS, per_class.tolist())),
                    MIN_FILMS_PER_CLASS)
  record = {
      "tool": "cxr-calibrate",
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "image_dir": os.path.abspath(image_dir) if image_dir else None,
      "from_spool": os.path.abspath(from_spool) if from_spool else None,
      "films": int(per_class.sum()),
      "films_per_class": dict(zip(schema.LABELS, per_class.tolist())),
      "patients": len(set(films.patients)) if films is not None else 0,
      "prevalence": prevalence,
      "rule": chosen["rule"],
      "chosen_on_the_films": prevalence is None,
      "temperature_refitted": fit_temperature,
      "previous": {"threshold": model.threshold, "temperature": model.temperature,
                   "threshold_source": model.entry.get("threshold_source")},
      "threshold": chosen["threshold"],
      "temperature": chosen["temperature"],
      "measured": (None if films is None
                   else {"at_previous": chosen["before"], "at_new": chosen["after"]}),
      # An experiment on too few films (allow_few_films): every reader of the package
      # sees it (--info, the node's page).
      "few_films": thin,
  }
  _write_package(model, model_path, output_dir, record)
  return record


def _check_request(model_path: str, image_dir: Optional[str], output_dir: str,
                   target_sensitivity: Optional[float], target_specificity: Optional[float],
                   prevalence: Optional[float], from_spool: Optional[str] = None) -> None:
  """Refuses contradictory choices and an output folder that is not new, before any work."""
  if target_sensitivity is not None and target_specificity is not None:
    raise CalibrationError("give at most one of --target_sensitivity and --target_specificity")
  if prevalence is not None and (target_sensitivity, target_specificity) != (None, None):
    raise CalibrationError("--prevalence sets the threshold itself: give it or a target, "
                           "not both")
  if image_dir and from_spool:
    raise CalibrationError("give --image_dir or --from_spool, not both")
  if prevalence is None and not image_dir and not from_spool:
    raise CalibrationError("give --image_dir (labelled local films), --from_spool (a "
                           "node's films with readers' verdicts) or --prevalence (the "
                           "local share of PNEUMONIA)")
  if os.path.abspath(output_dir) == os.path.dirname(os.path.abspath(model_path)):
    raise CalibrationError("--output_dir is the model's own folder; the original package "
                           "is never altered: choose a new folder")
  if os.path.isdir(output_dir) and os.listdir(output_dir):
    raise CalibrationError(f"--output_dir {output_dir!r} is not empty")


def _write_package(model: runtime.LiteModel, model_path: str, output_dir: str,
                   record: Dict[str, Any]) -> None:
  """The same graph and weights with the new threshold embedded, and its metadata.json."""
  name = os.path.basename(model_path)
  fields = package.model_fields(json.loads(json.dumps(model.metadata)),
                                json.loads(json.dumps(model.entry)))
  metadata, entry = fields["package"], fields["model"]
  entry["threshold"], entry["temperature"] = record["threshold"], record["temperature"]
  on_films = f" on {record['films']} local films" if record["measured"] is not None else ""
  entry["threshold_source"] = f"cxr-calibrate{on_films} ({record['date']}): {record['rule']}"
  # The package-level threshold is the one model's here: one value, not two that differ.
  metadata["threshold"], metadata["threshold_rule"] = record["threshold"], record["rule"]
  metadata["site_calibration"] = record
  try:  # what cxr-predict will check on loading it, checked before anything is written
    package_info.ModelInfo.from_metadata(metadata, entry, name)
  except errors.PackageError as e:
    raise CalibrationError(f"the calibrated package would be refused on loading: {e}; "
                           "nothing was written") from None
  with open(model_path, "rb") as f:
    data = package.embed(f.read(), fields)
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, name), "wb") as f:
    f.write(data)
  metadata["models"] = {name: dict(entry, file=name, bytes=len(data),
                                   sha256=hashlib.sha256(data).hexdigest())}
  with open(os.path.join(output_dir, schema.METADATA_NAME), "w", encoding="utf-8") as f:
    json.dump(metadata, f, indent=2)
