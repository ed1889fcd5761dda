import pytest

pytest.importorskip("tensorflow", reason="TensorFlow is not installed (a device "
                    "install without the train extra): training-side tests")
# pylint: disable=wrong-import-position

import json
import os

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

import tf_keras as keras

from cxr_edge.core import errors
from cxr_edge.core import image_io
from cxr_edge.core import metrics
from cxr_edge.core import package_info
from cxr_edge.core import schema
from cxr_edge.core.version import __version__
from cxr_edge.edge import package
from cxr_edge.edge import runtime
from cxr_edge.export import export_lib
from cxr_edge.export import variants as variant_names
from cxr_edge.model import model_dir as model_dir_lib
from cxr_edge.model import models
from cxr_edge.pipeline import preprocess
from cxr_edge.pipeline import records
from tests.conftest import SAMPLE_DIR


def _sample_bytes(n=6):
  out = []
  for label in schema.LABELS:
    folder = os.path.join(SAMPLE_DIR, label)
    out += [open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))[:n // 2]]
  return out


def test_every_variant_written_and_runs_under_litert(exported):
  export_dir, report = exported
  names = set(os.listdir(export_dir))
  assert {"saved_model", "labels.txt", "metadata.json", "export_report.json"} <= names
  meta = json.load(open(os.path.join(export_dir, "metadata.json")))
  x = np.random.default_rng(0).random((48, 48, 1), dtype=np.float32)
  for variant in variant_names.VARIANTS:
    name = export_lib.tflite_name(variant)
    assert name in names
    assert meta["models"][name]["sha256"] == image_io.sha256_file(os.path.join(export_dir, name))
    probs = runtime.LiteModel(os.path.join(export_dir, name)).probabilities(x)
    assert probs.shape == (2,) and abs(probs.sum() - 1) < 0.02, variant
    assert variant in report["variants"]
    entry = report["variants"][variant]
    for key in ("bytes", "accuracy", "roc_auc", "sensitivity", "specificity",
                "agreement_with_saved_model", "max_abs_delta_probability",
                "latency_1_thread", "latency_2_thread",
                "edge_predictor_agreement_with_saved_model_bytes"):
      assert key in entry, (variant, key)
  assert report["test_images"] == 30
  assert open(os.path.join(export_dir, "labels.txt")).read().split() == list(schema.LABELS)


@pytest.mark.parametrize("variant", ["int8", "qat_int8"])
def test_int8_models_are_integer_only_with_int8_io(exported, variant):
  path = os.path.join(exported[0], export_lib.tflite_name(variant))
  interp = Interpreter(model_path=path)
  interp.allocate_tensors()
  assert interp.get_input_details()[0]["dtype"] == np.int8
  assert interp.get_output_details()[0]["dtype"] == np.int8
  float_tensors = [t["name"] for t in interp.get_tensor_details()
                   if t["dtype"] not in (np.int8, np.int32)]
  assert not float_tensors, float_tensors
  ops = {op["op_name"] for op in interp._get_ops_details()}  # pylint: disable=protected-access
  assert not ops & {"DEQUANTIZE", "QUANTIZE"}, ops


def test_float_variants_keep_float_io(exported):
  meta = json.load(open(os.path.join(exported[0], "metadata.json")))
  for variant in ("float32", "float16", "dynamic_range"):
    assert meta["models"][export_lib.tflite_name(variant)]["input"]["dtype"] == "float32"
  int8 = meta["models"]["model_int8.tflite"]
  assert int8["input"]["dtype"] == "int8" and int8["input"]["scale"] > 0


def test_saved_model_signatures_match_keras(exported, trained_model):
  model, info = model_dir_lib.load_model_dir(trained_model)
  # TensorFlow Serving's layout: <base>/<version>/saved_model.pb.
  path = export_lib.saved_model_path(exported[0])
  assert path == os.path.join(exported[0], "saved_model", "1")
  assert os.path.isfile(os.path.join(path, "saved_model.pb"))
  loaded = tf.saved_model.load(path)
  assert set(loaded.signatures) == {"serving_default", "serving_images"}
  encoded = _sample_bytes()
  images = np.stack([preprocess.preprocess_image(b, 48).numpy() for b in encoded])
  want = model(images, training=False).numpy()
  serve_images = loaded.signatures["serving_images"]
  assert serve_images.structured_input_signature[1]["images"].shape.as_list() == [None, 48, 48, 1]
  got = serve_images(images=tf.constant(images))["probabilities"].numpy()
  np.testing.assert_allclose(got, want, atol=1e-5)
  # The default signature takes the encoded films (batchable; REST {"b64": ...}).
  out = loaded.signatures["serving_default"](image_bytes=tf.constant(encoded))
  np.testing.assert_allclose(out["p_pneumonia"].numpy(), want[:, 1], atol=1e-5)
  labels = [schema.LABELS[int(p >= info["threshold"])] for p in want[:, 1]]
  assert [l.decode() for l in out["prediction"].numpy()] == labels
  np.testing.assert_allclose(out["threshold"].numpy(), [info["threshold"]] * len(encoded))
  # Unscaled 0-255 pixels are refused, not read as PNEUMONIA.
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"in \[0, 1\]"):
    serve_images(images=tf.constant(images * 255.0))


def test_float32_tflite_matches_saved_model(exported):
  _, report = exported
  f32 = report["variants"]["float32"]
  assert f32["agreement_with_saved_model"] == 1.0
  assert f32["max_abs_delta_probability"] < 1e-4


def test_refuses_non_empty_export_dir(trained_model, sample_records, tmp_path):
  (tmp_path / "x").write_text("x")
  with pytest.raises(ValueError, match="not empty"):
    export_lib.export(trained_model, sample_records, str(tmp_path))


def test_another_conversion_than_the_models_is_refused_or_said_not_held_out(
    trained_model, tmp_path):
  from cxr_edge.pipeline import convert_config, convert_lib  # pylint: disable=g-import-not-at-top
  other = str(tmp_path / "other")  # the same films, split with another seed
  convert_lib.convert(convert_config.ConvertOptions(input_dir=SAMPLE_DIR, output_dir=other,
                                                    seed=7, num_workers=2))
  with pytest.raises(errors.ConfigError, match="not the conversion the model was trained on"):
    export_lib.export(trained_model, other, str(tmp_path / "e1"), variants=["float32"])
  report = export_lib.export(trained_model, other, str(tmp_path / "e2"), variants=["float32"],
                             latency_runs=5, allow_other_data=True)
  assert report["test_split_held_out"] is False
  card = open(os.path.join(tmp_path, "e2", "MODEL_CARD.md")).read()
  assert "NOT held out" in card


def test_calibration_uses_unaugmented_train_images(sample_records):
  calib = export_lib.calibration_images(sample_records, 48, 20)
  assert calib.shape == (20, 48, 48, 1)
  train = []
  for path in records.shard_paths(sample_records, "train"):
    for raw in tf.data.TFRecordDataset(path):
      ex = preprocess.parse_example(raw)
      train.append(float(preprocess.preprocess_image(ex[schema.KEY_ENCODED], 48).numpy().sum()))
  for image in calib:  # each is exactly a train image through the eval preprocessing
    assert np.min(np.abs(np.array(train) - image.sum())) < 1e-2


def test_qat_model_keeps_its_runs_validation_threshold(exported, qat_model, sample_records):
  export_dir, report = exported
  meta = json.load(open(os.path.join(export_dir, "metadata.json")))
  for variant in variant_names.VARIANTS:
    entry = meta["models"][export_lib.tflite_name(variant)]
    assert report["variants"][variant]["threshold"] == entry["threshold"]
    if variant != "qat_int8":
      assert entry["threshold"] == meta["threshold"], variant
  qat_info = model_dir_lib.read_info(qat_model)
  path = os.path.join(export_dir, export_lib.tflite_name("qat_int8"))
  lite = runtime.LiteModel(path)
  assert lite.threshold == meta["models"]["model_qat_int8.tflite"]["threshold"] == (
      qat_info["threshold"])
  # The report's validation accuracy is the QAT TFLite model's, at that threshold.
  images, labels, _, _ = export_lib._split_set(sample_records, 48, "val")
  probs = lite.positive_probabilities(images)
  assert report["variants"]["qat_int8"]["validation_accuracy"] == pytest.approx(
      np.mean((probs >= lite.threshold) == (labels == 1)))
  assert 0 <= report["saved_model"]["validation_accuracy"] <= 1
  # A metadata.json that lost the per-model threshold (so says the top-level one) now
  # disagrees with what the file itself carries: refused. (The top-level value is set
  # apart from the QAT one: on the tiny sample they can coincide.)
  del meta["models"]["model_qat_int8.tflite"]["threshold"]
  meta["threshold"] = lite.threshold + 0.125 if lite.threshold < 0.5 else lite.threshold - 0.125
  with pytest.raises(runtime.ModelError, match="says threshold"):
    runtime.LiteModel(path, 1, meta)


def test_qat_int8_needs_a_qat_run(trained_model, sample_records, tmp_path):
  with pytest.raises(ValueError, match="cxr-train --qat"):
    export_lib.export(trained_model, sample_records, str(tmp_path / "e"),
                      variants=["int8", "qat_int8"])
  with pytest.raises(ValueError, match="not a cxr-train --qat run"):
    export_lib.export(trained_model, sample_records, str(tmp_path / "e2"),
                      qat_model_dir=trained_model)


def test_external_report_scores_every_variant_with_intervals(exported):
  export_dir, report = exported
  ext = report["external"]
  assert ext["images"] == 20 and ext["skipped"] == []
  meta = json.load(open(os.path.join(export_dir, "metadata.json")))
  for variant in variant_names.VARIANTS:
    e = ext["variants"][variant]
    assert e["threshold"] == meta["models"][export_lib.tflite_name(variant)]["threshold"]
    for k in ("accuracy", "sensitivity", "specificity"):
      low, high = e["ci95"][k]
      assert low <= e[k] <= high
    assert e["roc_auc_minus_float32"] == pytest.approx(
        e["roc_auc"] - ext["variants"]["float32"]["roc_auc"])
  assert ext["variants"]["float32"]["roc_auc_minus_float32"] == 0
  assert "external:" in export_lib.format_report(report)


def test_tflite_models_output_logits_and_the_edge_applies_softmax(exported, tmp_path):
  export_dir, _ = exported
  meta = json.load(open(os.path.join(export_dir, "metadata.json")))
  x = np.random.default_rng(1).random((48, 48, 1), dtype=np.float32)
  lite = runtime.LiteModel(os.path.join(export_dir, "model_float32.tflite"))
  assert lite.output_kind == "logits" and lite.temperature == 1.0
  logits = lite.outputs(x)
  np.testing.assert_allclose(lite.probabilities(x), runtime.softmax(logits), atol=1e-12)
  # A temperature in the (embedded) metadata divides the logits, as cxr-calibrate sets it.
  data = open(os.path.join(export_dir, "model_float32.tflite"), "rb").read()
  fields = package.read(data)
  hot_path = os.path.join(str(tmp_path), "model_float32.tflite")
  for temperature in (2.0, 0):
    fields["model"]["temperature"] = temperature
    with open(hot_path, "wb") as f:
      f.write(package.embed(data, {k: v for k, v in fields.items() if k != "integrity"}))
    if temperature:
      hot = runtime.LiteModel(hot_path)
      np.testing.assert_allclose(hot.probabilities(x), runtime.softmax(logits / 2.0),
                                 atol=1e-12)
    else:
      with pytest.raises(runtime.ModelError, match="temperature"):
        runtime.LiteModel(hot_path)
  # ... and a metadata.json that says another temperature than the file is refused.
  meta["models"]["model_float32.tflite"]["temperature"] = 2.0
  with pytest.raises(runtime.ModelError, match="says temperature 2.0"):
    runtime.LiteModel(os.path.join(export_dir, "model_float32.tflite"), 1, meta)


def _int8_outputs(model, images):
  interp = Interpreter(model_content=export_lib.convert_tflite(model, "int8", 32, images[:64]))
  interp.allocate_tensors()
  inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
  (si, zi), (so, zo) = inp["quantization"], out["quantization"]
  result = []
  for image in images:
    q = np.clip(np.round(image / si + zi), -128, 127).astype(np.int8)
    interp.set_tensor(inp["index"], q[None])
    interp.invoke()
    result.append((interp.get_tensor(out["index"])[0].astype(np.float64) - zo) * so)
  return np.array(result)


def test_int8_ranks_like_float_where_a_softmax_output_would_tie():
  # A confident model: most float probabilities are within 1/256 of 0 or 1, where an
  # int8 softmax output has a single level, so those films would tie. The exported int8
  # model outputs logits, which keep the float model's order.
  keras.utils.set_random_seed(0)
  model = models.build("edge_cnn", 32, width=0.25)
  rng = np.random.default_rng(0)
  images = (rng.random((300, 32, 32, 1)) * rng.random((300, 1, 1, 1))).astype(np.float32)
  # Scale and centre the logit margin so that it spreads over about +-20.
  margin = np.diff(models.logits_model(model).predict(images, verbose=0), axis=1)[:, 0]
  w, b = model.get_layer("logits").get_weights()
  k = 10 / np.std(margin)
  b = b * k + np.array([1, -1]) * k * np.mean(margin) / 2
  model.get_layer("logits").set_weights([w * k, b])
  p_float = model.predict(images, verbose=0)[:, 1].astype(np.float64)
  assert np.mean((p_float < 1 / 256) | (p_float > 1 - 1 / 256)) > 0.5
  labels = (p_float > np.median(p_float)).astype(int)
  noisy = labels.copy()
  noisy[::7] = 1 - noisy[::7]  # so that the float ROC-AUC is not 1
  logits = _int8_outputs(model, images)
  p_int8 = runtime.softmax(logits)[:, 1]
  auc_float = metrics.roc_auc(noisy, p_float)
  assert abs(metrics.roc_auc(noisy, p_int8) - auc_float) <= 0.005
  # What a uint8 softmax output (steps of 1/256) would have given: far more ties.
  p_softmax_q = np.round(p_float * 256) / 256
  assert len(np.unique(p_int8)) > 2 * len(np.unique(p_softmax_q))


def test_overwrite_replaces_only_what_export_wrote(trained_model, sample_records, tmp_path):
  out = tmp_path / "e"
  export_lib.export(trained_model, sample_records, str(out), calibration_samples=16,
                    latency_runs=5, variants=["float32"])
  (out / "notes.txt").write_text("mine")
  (out / "model_int8.tflite").write_bytes(b"stale")  # a name export owns
  with pytest.raises(ValueError, match="pass --overwrite"):
    export_lib.export(trained_model, sample_records, str(out), variants=["float32"])
  export_lib.export(trained_model, sample_records, str(out), calibration_samples=16,
                    latency_runs=5, variants=["float32"], overwrite=True)
  assert (out / "notes.txt").read_text() == "mine"
  assert not (out / "model_int8.tflite").exists()
  assert sorted(os.listdir(out)) == sorted(["notes.txt", "saved_model", "model_float32.tflite",
                                            "labels.txt", "metadata.json",
                                            "export_report.json", "MODEL_CARD.md",
                                            "model_card.json"])


def test_model_card_is_written_from_the_measured_results(exported):
  export_dir, report = exported
  card = json.load(open(os.path.join(export_dir, "model_card.json")))
  text = open(os.path.join(export_dir, "MODEL_CARD.md")).read()
  meta = json.load(open(os.path.join(export_dir, "metadata.json")))
  assert card["intended_use"] == meta["intended_use"] == package_info.INTENDED_USE
  assert text.index("## Intended use") < text.index("## How to use") < text.index("## Files")
  assert "cxr-predict --model=model_int8.tflite --info" in text and "## Licence" in text
  assert card["versions"]["cxr-edge"] == __version__ and card["versions"]["ai-edge-litert"]
  assert meta["format_version"] == package_info.BINARY_FORMAT_VERSION
  int8_sha = meta["models"]["model_int8.tflite"]["sha256"]
  assert card["model_version"] == f"model_int8.tflite sha256 {int8_sha[:12]}"
  assert card["internal_test"]["models"]["int8"]["accuracy"] == report["variants"]["int8"][
      "accuracy"]
  for name, entry in meta["models"].items():  # every file, with its hash
    assert card["files"][name]["sha256"] == entry["sha256"] and entry["sha256"] in text
  # Each file says where its threshold came from: the training run's rule.
  assert meta["threshold_rule"] in meta["models"]["model_int8.tflite"]["threshold_source"]
  assert meta["output_prior"] == 0.5  # balanced class weights
  int8 = report["variants"]["int8"]
  low, high = int8["ci95"]["accuracy"]
  assert f"| int8 | {int8['threshold']:.4f} | {100 * int8['accuracy']:.1f}% " \
         f"({100 * low:.1f}-{100 * high:.1f})" in text
  assert "## Known failure modes and limits" in text and "Kermany" in text
  assert "bacterial and viral pneumonia are pooled" in text  # a binary model's limit
  # Trained on the sample's 241 films: a smoke-test model, first thing the card says.
  assert meta["training"] == {"kind": "smoke", "films": 241, "converted_films": 301,
                              "source": export_lib.CREDIT}
  assert text.splitlines()[2].startswith(f"**{package_info.smoke_notice(241)}**")


def test_a_model_of_few_films_cannot_be_exported_as_released(trained_model, sample_records,
                                                             tmp_path):
  with pytest.raises(errors.ConfigError, match="241 films .* can only be a smoke model"):
    export_lib.export(trained_model, sample_records, str(tmp_path / "e"),
                      model_kind="released")
  assert not (tmp_path / "e").exists()  # refused before anything was written


def test_a_three_class_package_agrees_from_saved_model_to_edge_runtime(subtype_exported,
                                                                       subtype_model):
  export_dir, report = subtype_exported
  meta = json.load(open(os.path.join(export_dir, "metadata.json")))
  assert meta["classes"] == ["NORMAL", "BACTERIAL", "VIRAL"] and meta["format_version"] == 3
  assert open(os.path.join(export_dir, "labels.txt")).read().split() == meta["classes"]
  int8 = runtime.LiteModel(os.path.join(export_dir, "model_int8.tflite"))
  f32 = runtime.LiteModel(os.path.join(export_dir, "model_float32.tflite"))
  assert int8.classes == meta["classes"] and int8.labels == list(schema.LABELS)
  serve = tf.saved_model.load(export_lib.saved_model_path(export_dir)).signatures[
      "serving_default"]
  names = sorted(os.listdir(os.path.join(SAMPLE_DIR, "PNEUMONIA")))[:6] + sorted(
      os.listdir(os.path.join(SAMPLE_DIR, "NORMAL")))[:6]
  paths = [os.path.join(SAMPLE_DIR, "PNEUMONIA" if "person" in n else "NORMAL", n)
           for n in names]
  data = [open(p, "rb").read() for p in paths]
  saved = {k: v.numpy() for k, v in serve(image_bytes=tf.constant(data)).items()}
  keras_model, info = model_dir_lib.load_model_dir(subtype_model)
  decoded = np.stack([runtime.preprocess(d, 48, schema.SCALE) for d in data])
  np.testing.assert_allclose(saved["probabilities"], keras_model(decoded).numpy(), atol=2e-3)
  for i, d in enumerate(data):
    r = f32.predict_bytes(d)
    assert r["p_bacterial"] + r["p_viral"] == pytest.approx(r["p_pneumonia"], abs=2e-6)
    assert r["p_pneumonia"] == pytest.approx(saved["p_pneumonia"][i], abs=2e-3)
    assert r["p_bacterial"] == pytest.approx(saved["p_bacterial"][i], abs=2e-3)
    assert r["p_viral"] == pytest.approx(saved["p_viral"][i], abs=2e-3)
    assert r["prediction"] == saved["prediction"][i].decode()
    # The subtype only for a film predicted PNEUMONIA; the SavedModel says "" there.
    assert (r["subtype"] or "") == saved["subtype"][i].decode()
    assert (r["subtype"] is None) == (r["prediction"] == "NORMAL")
    q = int8.predict_bytes(d)
    assert set(q) >= {"p_bacterial", "p_viral", "subtype"}
    assert abs(q["p_pneumonia"] - r["p_pneumonia"]) < 0.05
  # The report's subtype figures are the edge runtime's, recomputed.
  ext = report["external"]
  assert ext["variants"]["int8"]["subtype"]["three_class"]["count"] == 24
  assert "subtype" in report["variants"]["int8"] and "subtype" in report["saved_model"]
  card = open(os.path.join(export_dir, "MODEL_CARD.md")).read()
  assert "bacterial vs viral" in card and "`p_bacterial`" in card
  assert "bacterial vs viral" in export_lib.format_report(report)


def test_a_binary_package_keeps_format_2_and_no_classes_field(exported):
  export_dir, _ = exported
  meta = json.load(open(os.path.join(export_dir, "metadata.json")))
  assert meta["format_version"] == 2 and "classes" not in meta
  r = runtime.LiteModel(os.path.join(export_dir, "model_int8.tflite")).predict_bytes(
      open(os.path.join(SAMPLE_DIR, "NORMAL", sorted(os.listdir(
          os.path.join(SAMPLE_DIR, "NORMAL")))[0]), "rb").read())
  assert "subtype" not in r and "p_bacterial" not in r


def test_an_export_fits_each_files_image_gate_on_its_own_features(tmp_path):
  """fit_gates on a network with a global average pool (the released edge_cnn's file,
  standing in for a fresh export): the gate is embedded, fitted on the films given, and
  the file still computes the same outputs."""
  from cxr_edge.edge import released  # pylint: disable=g-import-not-at-top
  fields = package.read(open(released.path(), "rb").read())
  entry = {k: v for k, v in fields["model"].items() if k != "image_gate"}
  path = str(tmp_path / "model_int8.tflite")
  with open(path, "wb") as f:
    f.write(package.embed(open(released.path(), "rb").read(),
                          {**{k: v for k, v in fields.items() if k not in ("integrity",
                                                                          "integrity_scope")},
                           "model": entry}))
  assert runtime.LiteModel(path).gate is None
  metadata = {**fields["package"], "models": {"model_int8.tflite": dict(entry)}}
  films = [runtime.film_gray(open(os.path.join(SAMPLE_DIR, label, name), "rb").read())
           for label in ("NORMAL", "PNEUMONIA")
           for name in sorted(os.listdir(os.path.join(SAMPLE_DIR, label)))[:40]]
  export_lib.fit_gates({"int8": path}, metadata, films[:60], films[60:])
  gated = runtime.LiteModel(path)
  assert gated.gate.fitted["films"] == 60 and gated.gate.fitted["heldout_films"] == 20
  assert gated.gate.fitted["negatives"] == 180  # upside down, turned, a part of each
  assert metadata["models"]["model_int8.tflite"]["sha256"] == gated.sha256
  image = runtime.preprocess_gray(films[0], gated.image_size, gated.scale)
  assert np.array_equal(gated.outputs(image), runtime.LiteModel(released.path()).outputs(image))


def test_a_network_without_a_global_average_pool_is_exported_without_a_gate(exported):
  export_dir, _ = exported  # seed_cnn: Flatten, no pool
  model = runtime.LiteModel(os.path.join(export_dir, "model_int8.tflite"))
  assert not model.has_features and model.gate is None
  assert "image_gate" not in json.load(open(os.path.join(export_dir, "metadata.json")))[
      "models"]["model_int8.tflite"]
