"""Study helpers that README figures depend on (studies/ is not installed)."""
import pytest

pytest.importorskip("tensorflow", reason="TensorFlow is not installed (a device "
                    "install without the train extra): training-side tests")
# pylint: disable=wrong-import-position

import json
import os

import numpy as np
import tensorflow as tf

from cxr_edge.core import metrics
from cxr_edge.edge import runtime
from cxr_edge.pipeline import preprocess
from studies import equalize
from studies import external_study
from studies import same_weights
from tests.conftest import SAMPLE_DIR


def test_equalization_is_bit_identical_in_tensorflow_and_numpy():
  for label in ("NORMAL", "PNEUMONIA"):
    for name in sorted(os.listdir(os.path.join(SAMPLE_DIR, label)))[:3]:
      data = open(os.path.join(SAMPLE_DIR, label, name), "rb").read()
      gray = runtime.decode_grayscale(data)
      want = equalize.equalize_tf(preprocess.decode_grayscale(data)).numpy()[..., 0]
      got = equalize.equalize_np(gray)
      np.testing.assert_array_equal(got, want)
      assert got.min() == 0 and got.max() == 255  # the grey range is stretched
  flat = np.full((4, 5), 7, np.uint8)
  np.testing.assert_array_equal(equalize.equalize_np(flat), flat)
  np.testing.assert_array_equal(equalize.equalize_tf(tf.constant(flat[..., None])).numpy()[..., 0],
                                flat)


def test_operating_points_best_threshold_hand_computed():
  from studies import operating_points  # pylint: disable=g-import-not-at-top
  y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
  p = np.array([0.1, 0.2, 0.3, 0.7, 0.4, 0.6, 0.8, 0.9])
  # >= 0.4: every PNEUMONIA and the NORMAL at 0.7 called positive -> 7/8 correct.
  best = operating_points.best(y, p)
  assert best.pop("ci95")["accuracy"][0] < 0.875 < 1.0
  assert best == {"accuracy": 0.875, "sensitivity": 1.0, "specificity": 0.75, "threshold": 0.4}
  # Specificity 1 needs >= 0.8 (above the NORMAL at 0.7): 2 PNEUMONIA missed, 6/8.
  strict = operating_points.best(y, p, 0.0, 1.0)
  strict.pop("ci95")
  assert strict == {"accuracy": 0.75, "sensitivity": 0.5, "specificity": 1.0, "threshold": 0.8}
  # Both floors at 1 cannot hold together here.
  assert operating_points.best(y, p, 1.0, 1.0) is None


def test_site_accuracy_reweights_the_films_to_the_site_share():
  from studies import site_prevalence  # pylint: disable=g-import-not-at-top
  # 4 NORMAL (1 wrong at 0.5), 2 PNEUMONIA (1 wrong): sensitivity 0.5, specificity 0.75.
  y = np.array([0, 0, 0, 0, 1, 1])
  p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.9])
  assert site_prevalence.site_accuracy(y, p, 0.5, 0.5) == pytest.approx(0.625)
  assert site_prevalence.site_accuracy(y, p, 0.5, 0.2) == pytest.approx(0.2 * 0.5 + 0.8 * 0.75)
  # At the films' own share it is their plain accuracy (4 of 6 right).
  assert site_prevalence.site_accuracy(y, p, 0.5, 2 / 6) == pytest.approx(4 / 6)


def test_same_weights_largest_difference():
  a = [np.array([[1.0, 2.0]], np.float32), np.array([0.5], np.float32)]
  assert same_weights.largest_difference(a, [w.copy() for w in a]) == 0.0
  b = [np.array([[1.0, 2.25]], np.float32), np.array([0.0], np.float32)]
  assert same_weights.largest_difference(a, b) == 0.5
  assert same_weights.largest_difference(a, a[:1]) == float("inf")
  assert same_weights.largest_difference(a, [a[0].T, a[1]]) == float("inf")


def test_article_run_scores_its_predictions_at_one_half_by_patient(tmp_path):
  rows = [("test", "NORMAL/IM-0001-0001.jpeg", "NORMAL", 0.9),  # not the external set
          ("external", "NORMAL/IM-0001-0001.jpeg", "NORMAL", 0.2),
          ("external", "NORMAL/IM-0002-0001.jpeg", "NORMAL", 0.6),  # a false positive
          ("external", "PNEUMONIA/person1_virus_1.jpeg", "PNEUMONIA", 0.7),
          ("external", "PNEUMONIA/person1_virus_2.jpeg", "PNEUMONIA", 0.4),  # missed
          ("external", "PNEUMONIA/person2_bacteria_3.jpeg", "PNEUMONIA", 0.5)]  # 0.5 counts
  with open(tmp_path / "predictions.csv", "w", encoding="utf-8") as f:
    f.write("set,file,label,probability\n" + "".join(f"{','.join(map(str, r))}\n" for r in rows))
  result = {"seed": 3, "external": {"accuracy": 3 / 5}}
  (tmp_path / "article_baseline.json").write_text(json.dumps(result))
  seed, e = external_study.article_run(str(tmp_path / "article_baseline.json"))
  assert seed == 3 and e["threshold"] == 0.5
  assert (e["accuracy"], e["sensitivity"], e["specificity"]) == (3 / 5, 2 / 3, 1 / 2)
  assert e["ci95"]["accuracy"] == pytest.approx(metrics.wilson_interval(3, 5))
  result["external"]["accuracy"] = 4 / 5  # predictions of another run
  (tmp_path / "article_baseline.json").write_text(json.dumps(result))
  with pytest.raises(ValueError, match="gives external accuracy 0.6000, its JSON 0.8000"):
    external_study.article_run(str(tmp_path / "article_baseline.json"))


def test_tta_views_fixed_warps_treat_every_film_alike():
  from studies import probe_tta_ensemble as probe  # pylint: disable=g-import-not-at-top
  film = np.random.default_rng(0).random((1, 24, 24, 1), dtype=np.float32)
  films = np.concatenate([film, film])
  fixed = probe.views(films, per_film=False)
  per_film = probe.views(films)
  assert len(fixed) == len(per_film) == probe.VARIANTS + 1
  np.testing.assert_array_equal(fixed[0], films)  # the film itself comes first
  for k in range(1, probe.VARIANTS + 1):
    np.testing.assert_array_equal(fixed[k][0], fixed[k][1])  # one warp for every film
    assert not np.array_equal(fixed[k], films)  # and it is a warp
    assert not np.array_equal(per_film[k][0], per_film[k][1])  # a warp of its own per film
  assert not np.array_equal(fixed[1], fixed[2])  # each copy draws its own warp
  assert all(v.min() >= 0.0 and v.max() <= 1.0 for v in fixed)


def test_external_study_shares_one_export_cache_and_refuses_clashing_run_names(
    tmp_path, monkeypatch, capsys):
  e = {"threshold": 0.375, "accuracy": 0.9, "sensitivity": 1.0, "specificity": 0.8,
       "ci95": {k: (0.8, 0.95) for k in ("accuracy", "sensitivity", "specificity")},
       "roc_auc": 0.98, "roc_auc_ci95": (0.97, 0.99), "ece": 0.02}
  report = {"variants": {"int8": e}, "external": {"variants": {"int8": e, "float32": e}}}
  exported = []
  monkeypatch.setattr(external_study, "apply_threshold_rule", lambda *args: None)
  monkeypatch.setattr(external_study, "export_run",
                      lambda d, data, ext, out: exported.append(out) or report)
  common = ["external_study.py", "--data_dir=rec", "--external_dir=ext",
            f"--exports={tmp_path / 'exports'}", "--calibrate_group=none"]
  monkeypatch.setattr("sys.argv", common + [f"--out={tmp_path / 'a'}",
                                            f"--group=x={tmp_path / 'runs' / 'r_1'}"])
  external_study.main()
  assert exported == [str(tmp_path / "exports" / "prevalence" / "export_r_1")]
  result = json.loads((tmp_path / "a" / "external_study.json").read_text())
  assert result["groups"]["x"]["external_int8"]["r_1"]["accuracy"] == 0.9
  assert not (tmp_path / "a" / "prevalence").exists()  # no exports beside the JSON
  # Two runs of one name would share (and overwrite) one cached export.
  monkeypatch.setattr("sys.argv", common + [
      f"--out={tmp_path / 'b'}", f"--group=x={tmp_path / 'runs' / 'r_1'}",
      f"--group=y={tmp_path / 'other' / 'r_1'}"])
  with pytest.raises(SystemExit):
    external_study.main()
  assert "share the name 'r_1'" in capsys.readouterr().err
  assert len(exported) == 1 and not (tmp_path / "b").exists()


def test_the_subtype_study_applies_the_rule_written_before_its_runs():
  from studies import subtype_study  # pylint: disable=g-import-not-at-top
  def run(accuracy, auc):
    return {"accuracy": accuracy, "roc_auc": auc, "subtype_auc": 0.9,
            "bacterial_sensitivity": 0.8, "viral_specificity": 0.8,
            "three_class_accuracy": 0.85, "subtype_accuracy": 0.85}
  # docs/subtype_study.md: adopt iff mean accuracy >= 94.7% and mean ROC-AUC >= 0.985.
  m = subtype_study.mean_of([run(0.96, 0.99), run(0.944, 0.981), run(0.95, 0.981)])
  assert m["accuracy"]["mean"] == pytest.approx(0.951333, abs=1e-6)
  assert (m["accuracy"]["min"], m["roc_auc"]["max"]) == (0.944, 0.99)
  assert not subtype_study.verdict(m)["adopted"]  # ROC-AUC mean 0.984
  m = subtype_study.mean_of([run(0.95, 0.99), run(0.95, 0.985), run(0.95, 0.986)])
  assert subtype_study.verdict(m)["adopted"]
  m = subtype_study.mean_of([run(0.946, 0.99)] * 3)
  assert not subtype_study.verdict(m)["adopted"]
