"""cxr-calibrate: threshold choice on local films, the new package, and bad input."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from cxr_edge.core import errors
from cxr_edge.core import image_io
from cxr_edge.core import metrics
from cxr_edge.core import thresholds
from cxr_edge.edge import calibrate_lib
from cxr_edge.edge import package
from cxr_edge.edge import released
from cxr_edge.edge import runtime
from tests.conftest import (ROOT, SAMPLE_DIR, parsed_flags, run_main, run_module,
                            write_file)


def _films(root, per_class=40, classes=("NORMAL", "PNEUMONIA")):
  """The first per_class sample films of each class (40: enough for a threshold's figures
  to be known to +-10 points)."""
  for label in classes:
    names = sorted(os.listdir(os.path.join(SAMPLE_DIR, label)))[:per_class]
    for name in names:
      write_file(os.path.join(root, label.lower(), name),
                 open(os.path.join(SAMPLE_DIR, label, name), "rb").read())
  return str(root)


def _model(exported):
  return os.path.join(exported[0], "model_int8.tflite")


def _independent_probs(model_path, films_dir):
  lite = runtime.LiteModel(model_path)
  labels, probs = [], []
  for label_index, label in enumerate(("normal", "pneumonia")):
    for name in sorted(os.listdir(os.path.join(films_dir, label))):
      data = open(os.path.join(films_dir, label, name), "rb").read()
      try:  # as calibration reads them: a film outside the intended use is left out
        lite.analyse(data)
      except errors.OutOfScope:
        continue
      probs.append(metrics.p_pneumonia(
          lite.probabilities(runtime.preprocess(data, lite.image_size, lite.scale))))
      labels.append(label_index)
  return np.array(labels), np.array(probs, np.float64)


def _stated_sensitivity(model_path):
  lite = runtime.LiteModel(model_path)
  return released.stated_figures(lite.sha256, lite.metadata, released.release())["sensitivity"]


@pytest.mark.parametrize("targets", [{}, {"rule": "youden"}, {"target_specificity": 0.75},
                                     {"target_sensitivity": 1.0}])
def test_threshold_is_the_rule_on_the_local_films(released_model, tmp_path, targets):
  films = _films(tmp_path / "films", per_class=100)  # each rule's figures within +-10
  out = tmp_path / "site"
  record = calibrate_lib.calibrate(released_model, films, str(out), **targets)
  y, p = _independent_probs(released_model, films)
  if not targets:  # the default: the most specific threshold keeping the stated sensitivity
    want = thresholds.on_scores(y, p, target_sensitivity=_stated_sensitivity(released_model))
    assert "stated sensitivity" in record["rule"]
  else:
    want = thresholds.on_scores(y, p, **{k: v for k, v in targets.items() if k != "rule"})
  assert record["threshold"] == pytest.approx(want)
  assert record["chosen_on_the_films"] and record["prevalence"] is None
  at_new = record["measured"]["at_new"]
  assert at_new["sensitivity"] == pytest.approx(metrics.at_threshold(y, p, want)["sensitivity"])
  if "target_specificity" in targets:
    assert at_new["specificity"] >= 0.75
  if "target_sensitivity" in targets:
    assert at_new["sensitivity"] == 1.0
  low, high = at_new["ci95"]["specificity"]
  assert low <= at_new["specificity"] <= high
  # The new package: the same graph and weights, the new threshold with its provenance
  # embedded in the file (and in the optional metadata.json); the predictor uses it.
  new_model = out / "model_int8.tflite"
  new_data, old_data = new_model.read_bytes(), open(released_model, "rb").read()
  assert package.read(new_data)["model"]["threshold"] == pytest.approx(want)
  assert package.read(new_data)["package"]["site_calibration"]["films"] == len(y)
  assert package.read(new_data)["package"]["site_calibration"]["few_films"] is None
  assert _weights(new_data) == _weights(old_data)
  meta = json.load(open(out / "metadata.json"))
  assert meta["models"]["model_int8.tflite"]["sha256"] == image_io.sha256_file(str(new_model))
  assert list(meta["models"]) == ["model_int8.tflite"]
  assert meta["models"]["model_int8.tflite"]["threshold"] == pytest.approx(want)
  assert meta["threshold"] == pytest.approx(want)  # one threshold, not the export's too
  assert package.read(new_data)["package"]["threshold"] == pytest.approx(want)
  assert "cxr-calibrate" in meta["models"]["model_int8.tflite"]["threshold_source"]
  assert meta["site_calibration"]["films"] == len(y)
  assert runtime.LiteModel(str(new_model)).threshold == pytest.approx(want)
  os.remove(out / "metadata.json")  # the file alone carries it
  assert runtime.LiteModel(str(new_model)).threshold == pytest.approx(want)


def _weights(data: bytes):
  """The model's buffers other than the embedded metadata."""
  from ai_edge_litert import schema_py_generated as fb  # pylint: disable=g-import-not-at-top
  m = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
  ours = {e.buffer for e in m.metadata or [] if e.name in (b"cxr_edge", "cxr_edge")}
  return [None if b.data is None else bytes(b.data) for i, b in enumerate(m.buffers)
          if i not in ours]


def test_original_package_is_never_altered(exported, tmp_path):
  films = _films(tmp_path / "films")
  before = {n: open(os.path.join(exported[0], n), "rb").read() for n in
            ("metadata.json", "model_int8.tflite")}
  calibrate_lib.calibrate(_model(exported), films, str(tmp_path / "site"), fit_temperature=True,
                          rule="youden", allow_few_films=True)
  for name, data in before.items():
    assert open(os.path.join(exported[0], name), "rb").read() == data
  with pytest.raises(calibrate_lib.CalibrationError, match="own folder"):
    calibrate_lib.calibrate(_model(exported), films, exported[0])
  with pytest.raises(calibrate_lib.CalibrationError, match="not empty"):
    calibrate_lib.calibrate(_model(exported), films, str(tmp_path / "site"))


def test_prevalence_sets_the_bayes_threshold_without_films(exported, tmp_path, capsys):
  out = tmp_path / "site"
  assert json.load(open(os.path.join(exported[0], "metadata.json")))["output_prior"] == 0.5
  _main(model=_model(exported), prevalence=0.3, output_dir=str(out))
  # Balanced class weights: 1 - prevalence, embedded in the file with its provenance.
  lite = runtime.LiteModel(str(out / "model_int8.tflite"))
  assert lite.threshold == pytest.approx(0.7)
  record = lite.metadata["site_calibration"]
  assert record["films"] == 0 and record["measured"] is None and record["prevalence"] == 0.3
  assert not record["chosen_on_the_films"]
  assert "prevalence 0.3" in lite.entry["threshold_source"]
  assert _weights((out / "model_int8.tflite").read_bytes()) == _weights(
      open(_model(exported), "rb").read())
  text = capsys.readouterr().out
  assert "-> 0.7000" in text and "nothing measured" in text


def test_prevalence_with_films_only_measures_there(released_model, tmp_path):
  films = _films(tmp_path / "films")
  record = calibrate_lib.calibrate(released_model, films, str(tmp_path / "site"),
                                   prevalence=0.8)
  assert record["threshold"] == pytest.approx(0.2) and not record["chosen_on_the_films"]
  y, p = _independent_probs(released_model, films)
  want = metrics.at_threshold(y, p, 0.2)
  at_new = record["measured"]["at_new"]
  assert (at_new["sensitivity"], at_new["specificity"]) == pytest.approx(
      (want["sensitivity"], want["specificity"]))


def test_prevalence_needs_a_package_that_records_its_class_prior(released_model, tmp_path):
  fields = package.read(open(released_model, "rb").read())
  del fields["package"]["output_prior"]
  fields.pop("integrity", None)
  old = tmp_path / "old" / "model_int8.tflite"
  os.makedirs(old.parent)
  old.write_bytes(package.embed(open(released_model, "rb").read(), fields))
  films = tmp_path / "films"
  os.makedirs(films / "NORMAL")  # refused before the films are read (these would fail)
  with pytest.raises(SystemExit) as e:
    _main(model=str(old), prevalence=0.3, image_dir=str(films),
          output_dir=str(tmp_path / "site"))
  assert str(e.value.code) == (
      "cxr-calibrate: error: this package does not record the class prior its probabilities "
      "assume (it predates --prevalence): re-export it with this version")
  assert not (tmp_path / "site").exists()


def test_a_prevalence_that_would_set_an_unusable_threshold_writes_nothing(exported,
                                                                           tmp_path):
  out = tmp_path / "site"
  with pytest.raises(SystemExit) as e:
    _main(model=_model(exported), prevalence=1e-20, output_dir=str(out))
  assert str(e.value.code) == (
      "cxr-calibrate: error: --prevalence=1e-20 gives threshold 1: no film would ever be "
      "flagged; give the site's labelled films (--image_dir) instead")
  assert not out.exists()


def test_neither_films_nor_prevalence_is_refused_on_the_command_line(tmp_path):
  # Only a whole command line runs every validator (flagsaver checks the flags it sets).
  r = run_module("cxr_edge.edge.calibrate", "--model=m.tflite", f"--output_dir={tmp_path / 'o'}",
                 timeout=120)
  assert r.returncode == 1
  assert ("give --image_dir (labelled local films), --from_spool (a node's films with "
          "readers' verdicts) or --prevalence (the local share of PNEUMONIA)") in r.stderr
  assert not (tmp_path / "o").exists()
  with pytest.raises(calibrate_lib.CalibrationError, match="give --image_dir"):
    calibrate_lib.calibrate("m.tflite", None, str(tmp_path / "o"))


@pytest.mark.parametrize("flag_strings, message", [
    ({"image_dir": ""}, "give --image_dir (labelled local films), --from_spool"),
    ({"prevalence": "0.3", "target_sensitivity": "0.9"}, "give it or a target, not both"),
    ({"prevalence": "1"}, "strictly between 0 and 1"),
    ({"prevalence": "0.3", "fit_temperature": "true"}, "needs labelled films"),
])
def test_contradictory_or_missing_choice_flags_are_refused(flag_strings, message):
  with pytest.raises(Exception, match=re.escape(message)):
    with parsed_flags("cxr_edge.edge.calibrate", model="m.tflite", output_dir="o", **flag_strings):
      pass


def test_fit_temperature_minimizes_local_log_loss(released_model, tmp_path):
  films = _films(tmp_path / "films")
  record = calibrate_lib.calibrate(released_model, films, str(tmp_path / "site"),
                                   fit_temperature=True)
  lite = runtime.LiteModel(str(tmp_path / "site" / "model_int8.tflite"))
  assert lite.temperature == pytest.approx(record["temperature"])
  y, p = _independent_probs(str(tmp_path / "site" / "model_int8.tflite"), films)
  y1, p1 = _independent_probs(released_model, films)
  assert metrics.log_loss(y, p) <= metrics.log_loss(y1, p1) + 1e-9


def _main(**overrides):
  run_main("cxr_edge.edge.calibrate", **overrides)


@pytest.mark.parametrize("setup, message", [
    ("empty", "holds no class folders"),
    ("no_films", "no labelled films"),
    ("one_class", "films of both classes are needed to choose a threshold; found 40 NORMAL, "
     "0 PNEUMONIA"),
    ("unreadable", "1 film(s) could not be read (first: pneumonia/broken.jpeg: not an image)"),
    ("subtype_folders", "found 40 NORMAL, 0 PNEUMONIA in '{films}': BACTERIAL/ and VIRAL/ are "
     "kinds of pneumonia; move them into PNEUMONIA/ (e.g. PNEUMONIA/BACTERIAL/)"),
])
def test_bad_films_are_refused_in_one_line(released_model, tmp_path, setup, message):
  films = tmp_path / "films"
  os.makedirs(films)
  if setup == "no_films":
    os.makedirs(films / "NORMAL")
    os.makedirs(films / "PNEUMONIA")
  elif setup == "one_class":
    _films(films, classes=("NORMAL",))
  elif setup == "unreadable":
    _films(films)
    write_file(str(films / "pneumonia" / "broken.jpeg"), b"not a jpeg")
  elif setup == "subtype_folders":
    _films(films, classes=("NORMAL",))
    for subtype in ("BACTERIAL", "VIRAL"):
      _films(films / "tmp", classes=("PNEUMONIA",), per_class=2)
      os.rename(films / "tmp" / "pneumonia", films / subtype)
  message = message.format(films=films)
  with pytest.raises(SystemExit) as e:
    _main(model=released_model, image_dir=str(films), output_dir=str(tmp_path / "site"))
  text = str(e.value.code)
  assert text.startswith("cxr-calibrate: error: ") and "\n" not in text
  assert message in text
  assert not (tmp_path / "site").exists()


def test_runs_without_tensorflow_and_prints_intervals(released_model, tmp_path):
  films = _films(tmp_path / "films")
  code = ("import sys\n"
          "for m in ('tensorflow', 'tf_keras', 'keras', 'tensorflow_model_optimization'):\n"
          "  sys.modules[m] = None\n"
          "from cxr_edge.edge import calibrate\n"
          "sys.argv = ['cxr-calibrate'] + sys.argv[1:]\n"
          "calibrate.run()\n")
  env = dict(os.environ)
  env.pop("TF_USE_LEGACY_KERAS", None)
  r = subprocess.run([sys.executable, "-c", code, f"--model={released_model}",
                      f"--image_dir={films}", f"--output_dir={tmp_path / 'site'}",
                      "--target_sensitivity=0.9"], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=120, check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "80 films (40 NORMAL, 40 PNEUMONIA)" in r.stdout
  assert "new threshold" in r.stdout and "sensitivity" in r.stdout and "(" in r.stdout
  assert (tmp_path / "site" / "metadata.json").is_file()


def test_a_three_class_model_is_calibrated_on_p_pneumonia(subtype_exported, tmp_path):
  films = _films(tmp_path / "films")
  model = _model(subtype_exported)
  record = calibrate_lib.calibrate(model, films, str(tmp_path / "site"), rule="youden",
                                   allow_few_films=True)
  lite = runtime.LiteModel(model)
  y, p = [], []
  for label_index, label in enumerate(("normal", "pneumonia")):
    for name in sorted(os.listdir(os.path.join(films, label))):
      data = open(os.path.join(films, label, name), "rb").read()
      p.append(lite.predict_bytes(data)["p_pneumonia"])
      y.append(label_index)
  # The threshold is the rule on p_bacterial + p_viral (rounded as records are).
  assert record["threshold"] == pytest.approx(thresholds.on_scores(np.array(y), np.array(p)),
                                              abs=1e-5)
  site = runtime.LiteModel(os.path.join(tmp_path / "site", os.path.basename(model)))
  assert site.classes == ["NORMAL", "BACTERIAL", "VIRAL"]
  assert site.threshold == pytest.approx(record["threshold"])
  # The temperature fit works on p_pneumonia too: none does better on the films.
  fitted = calibrate_lib.calibrate(model, films, str(tmp_path / "site2"), fit_temperature=True,
                                   rule="youden", allow_few_films=True)
  scored = calibrate_lib.score_films(lite, films)
  def local_loss(t):
    return metrics.log_loss(scored.labels, metrics.p_pneumonia(metrics.softmax(scored.logits, t)))
  assert all(local_loss(fitted["temperature"]) <= local_loss(t) + 1e-9
             for t in (0.1, 0.5, 1.0, 2.0, 5.0, 10.0))


def test_a_threshold_on_too_few_films_is_refused_and_nothing_written(released_model, tmp_path):
  films = _films(tmp_path / "films", per_class=8)
  with pytest.raises(SystemExit) as e:
    _main(model=released_model, image_dir=films, output_dir=str(tmp_path / "site"))
  text = str(e.value.code)
  assert text.startswith("cxr-calibrate: error: too few films to move the threshold: its "
                         "sensitivity is known only to +-") and "\n" not in text
  assert re.search(r"on 8 PNEUMONIA films \(about \d+ more needed\)", text)
  assert "nothing was written" in text and "--allow_few_films" in text
  assert not (tmp_path / "site").exists()
  # An experiment, if asked: written, and marked in the package and its --info.
  record = calibrate_lib.calibrate(released_model, films, str(tmp_path / "site"),
                                   allow_few_films=True)
  assert record["few_films"].startswith("too few films")
  site = runtime.LiteModel(str(tmp_path / "site" / "model_int8.tflite"))
  assert site.metadata["site_calibration"]["few_films"] == record["few_films"]
  assert "AS AN EXPERIMENT (too few films" in site.info.describe(site.sha256)


def test_films_needed_puts_the_interval_within_ten_points():
  def half_width(share, m):
    low, high = metrics.wilson_interval(round(share * m), m)
    return (high - low) / 2
  for hits, n in ((8, 8), (6, 8), (1, 2)):
    m = calibrate_lib.films_needed(hits, n)
    assert m > n and half_width(hits / n, m) <= 0.10 < half_width(hits / n, m - 1)
  assert calibrate_lib.films_needed(95, 100) == 100  # known well enough already
  assert calibrate_lib.films_needed(45, 50) == 50


def test_a_package_that_states_no_sensitivity_needs_a_rule(exported, tmp_path):
  with pytest.raises(calibrate_lib.CalibrationError, match="states no sensitivity to keep"):
    calibrate_lib.calibrate(_model(exported), _films(tmp_path / "films"),
                            str(tmp_path / "site"))
  assert not (tmp_path / "site").exists()


def test_the_default_rule_keeps_the_stated_sensitivity_on_the_external_films(released_model,
                                                                             tmp_path):
  from tests.conftest import require_shared  # pylint: disable=g-import-not-at-top
  external = require_shared("external")
  record = calibrate_lib.calibrate(released_model, external, str(tmp_path / "site"))
  stated = _stated_sensitivity(released_model)
  assert record["measured"]["at_new"]["sensitivity"] >= stated
  assert record["few_films"] is None
  youden = calibrate_lib.calibrate(released_model, external, str(tmp_path / "youden"),
                                   rule="youden")
  assert record["threshold"] <= youden["threshold"] or (
      youden["measured"]["at_new"]["sensitivity"] >= stated)


def test_films_all_outside_the_intended_use_in_one_class_are_refused(released_model, tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  films = _films(tmp_path / "films", per_class=40, classes=("NORMAL",))
  os.makedirs(tmp_path / "films" / "pneumonia")
  for k in range(3):  # "pneumonia films" that are colour pictures: all withheld
    Image.fromarray(np.full((64, 64, 3), (200, 30 * k, 30), np.uint8)).save(
        tmp_path / "films" / "pneumonia" / f"photo{k}.png")
  with pytest.raises(calibrate_lib.CalibrationError, match="after 3 film.s. outside the "
                     "model's intended use were left out .*40 NORMAL, 0 PNEUMONIA remain"):
    calibrate_lib.calibrate(released_model, films, str(tmp_path / "site"))
  assert not (tmp_path / "site").exists()
