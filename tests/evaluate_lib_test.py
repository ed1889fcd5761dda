import pytest

pytest.importorskip("tensorflow", reason="TensorFlow is not installed (a device "
                    "install without the train extra): training-side tests")
# pylint: disable=wrong-import-position

import csv
import json
import os

from absl import flags
import numpy as np
from PIL import Image

from cxr_edge.core import metrics
from cxr_edge.model import evaluate_lib
from cxr_edge.model import model_dir as model_dir_lib
from cxr_edge.pipeline import dataset
from tests.conftest import SAMPLE_DIR, image_bytes, run_main, write_file


def test_evaluate_split_matches_numpy_metrics(trained_model, sample_records, tmp_path):
  r = evaluate_lib.evaluate(trained_model, str(tmp_path), data_dir=sample_records, split="test")
  rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
  assert len(rows) == r["count"] == 30
  y = np.array([row["label"] == "PNEUMONIA" for row in rows], int)
  p = np.array([float(row["probability"]) for row in rows])
  assert r["roc_auc"] == pytest.approx(metrics.roc_auc(y, p), abs=1e-12)
  threshold = json.load(open(os.path.join(trained_model, "model_info.json")))["threshold"]
  for row in rows:  # probabilities are written exactly (repr), so ties at the threshold agree
    assert row["prediction"] == ("PNEUMONIA" if float(row["probability"]) >= threshold else "NORMAL")
  for name in ("metrics.json", "roc.png", "pr.png", "calibration.png", "confusion_matrix.png"):
    assert (tmp_path / name).stat().st_size > 0


def test_evaluate_image_folder_skips_bad_files(trained_model, tmp_path):
  folder = tmp_path / "imgs"
  for i, name in enumerate(sorted(os.listdir(os.path.join(SAMPLE_DIR, "NORMAL")))[:3]):
    write_file(str(folder / "normal" / name), open(os.path.join(SAMPLE_DIR, "NORMAL", name), "rb").read())
  write_file(str(folder / "PNEUMONIA" / "person1_virus_1.png"), image_bytes("PNG", "RGB", seed=3))
  write_file(str(folder / "PNEUMONIA" / "broken.jpeg"), b"nope")
  r = evaluate_lib.evaluate(trained_model, str(tmp_path / "out"), image_dir=str(folder))
  assert r["count"] == 4 and r["positives"] == 1
  assert r["skipped"] == [{"path": "PNEUMONIA/broken.jpeg", "reason": "not an image"}]


def test_evaluate_needs_exactly_one_source(trained_model, sample_records, tmp_path):
  with pytest.raises(ValueError, match="exactly one"):
    evaluate_lib.evaluate(trained_model, str(tmp_path))
  with pytest.raises(flags.IllegalFlagValueError, match="exactly one"):
    run_main("cxr_edge.model.evaluate", model_dir=trained_model, output_dir=str(tmp_path),
             data_dir=sample_records, image_dir=SAMPLE_DIR)
  with pytest.raises(SystemExit) as e:
    run_main("cxr_edge.model.evaluate", model_dir=f"{tmp_path}/none", output_dir=str(tmp_path),
             data_dir=sample_records)
  assert str(e.value.code).startswith("cxr-evaluate: error:")
  assert "not a finished cxr-train output" in str(e.value.code)


def test_an_earlier_evaluation_is_replaced_only_with_overwrite(trained_model, sample_records,
                                                               tmp_path):
  evaluate_lib.evaluate(trained_model, str(tmp_path), data_dir=sample_records, split="val")
  before = open(tmp_path / "metrics.json").read()
  with pytest.raises(ValueError, match="already holds an evaluation"):
    evaluate_lib.evaluate(trained_model, str(tmp_path), data_dir=sample_records, split="test")
  assert open(tmp_path / "metrics.json").read() == before
  r = evaluate_lib.evaluate(trained_model, str(tmp_path), data_dir=sample_records,
                            split="test", overwrite=True)
  assert json.load(open(tmp_path / "metrics.json"))["split"] == r["split"] == "test"


def test_image_dir_without_class_folders_names_the_flag(trained_model, tmp_path):
  os.makedirs(tmp_path / "films" / "misc")
  with pytest.raises(SystemExit) as e:
    run_main("cxr_edge.model.evaluate", model_dir=trained_model, output_dir=str(tmp_path / "out"),
             image_dir=str(tmp_path / "films"))
  assert str(e.value.code).startswith("cxr-evaluate: error: --image_dir ")
  assert "holds no class folders" in str(e.value.code)


def test_explain_writes_grad_cam_overlays_for_errors_and_correct_films(trained_model,
                                                                       sample_records, tmp_path):
  out = tmp_path / "ev"
  r = evaluate_lib.evaluate(trained_model, str(out), data_dir=sample_records, explain=1)
  films = r["explanations"]["films"]
  categories = [f["category"] for f in films]
  assert set(categories) <= {"error", "correct_normal", "correct_pneumonia"}
  assert categories.count("correct_normal") <= 1 and categories.count("error") <= 1
  assert len(films) >= 2  # the tiny model gets some films right in each class it predicts
  for f in films:
    with Image.open(out / "explanations" / f["png"]) as im:
      assert im.format == "PNG" and im.size[0] == 320
  assert r["explanations"]["seconds_per_film"] > 0
  json.load(open(out / "metrics.json"))["explanations"]  # recorded


def test_choose_films_to_explain_hand_computed():
  y = np.array([0, 0, 1, 1, 1, 0])
  p = np.array([0.9, 0.1, 0.8, 0.3, 0.99, 0.4])  # errors: 0 (conf .4), 3 (conf .2)
  chosen = evaluate_lib.choose_films_to_explain(y, p, 0.5, 1)
  assert chosen == [("error", 0), ("correct_normal", 1), ("correct_pneumonia", 4)]


def test_grad_cam_is_non_negative_and_follows_the_decision(trained_model, sample_records):
  model, info = model_dir_lib.load_model_dir(trained_model)
  images = dataset.read_split(sample_records, "val", info["image_size"]).images[:4]
  maps = evaluate_lib.grad_cam(model, images, info["threshold"])
  assert maps.shape[0] == 4 and maps.ndim == 3 and (maps >= 0).all()


def test_a_three_class_model_is_evaluated_with_its_subtypes(subtype_model, sample_records,
                                                            tmp_path):
  r = evaluate_lib.evaluate(subtype_model, str(tmp_path), data_dir=sample_records, split="test")
  rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
  y = np.array([row["label"] == "PNEUMONIA" for row in rows], int)
  probs = np.array([[1 - float(row["probability"]), float(row["p_bacterial"]),
                     float(row["p_viral"])] for row in rows])
  subtypes = [row["subtype"] for row in rows]
  threshold = model_dir_lib.read_info(subtype_model)["threshold"]
  want = metrics.subtype_summary(y, subtypes, probs, threshold, [row["patient"] for row in rows])
  assert r["subtype"]["bacterial_vs_viral"]["roc_auc"] == pytest.approx(
      want["bacterial_vs_viral"]["roc_auc"])
  assert r["subtype"]["three_class"]["confusion_matrix"] == want["three_class"]["confusion_matrix"]
  for row in rows:  # the subtype decision only for films predicted PNEUMONIA
    assert (row["predicted_subtype"] == "") == (row["prediction"] == "NORMAL")
  assert (tmp_path / "confusion_matrix_3class.png").stat().st_size > 0
