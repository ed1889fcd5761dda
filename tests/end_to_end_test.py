"""convert -> train a few steps -> evaluate -> export -> predict, through the job CLIs."""
import json
import os

import pytest

from tests.conftest import SAMPLE_DIR, require_tensorflow, run_module


# What the jobs printed before they were made quiet: CUDA probing on
# machines without a GPU, absl/TensorFlow/Keras INFO lines, the TFLite converter's and
# LiteRT's native chatter, Keras' per-epoch progress lines.
NOISE = ("cuda", "absl::InitializeLog", "Assets written", "fully_quantize", "XNNPACK",
         "functional_saver", "signature_serialization", "fingerprint", "Epoch 1/", "/step")


def _assert_quiet(module, r):
  out = r.stdout + r.stderr
  noisy = [line for line in out.splitlines() if any(n in line for n in NOISE)]
  assert not noisy, (module, noisy[:5])
  own = [line for line in r.stderr.splitlines() if line.strip()]
  assert len(own) <= 12, (module, own)  # warnings, its own progress and summary


@pytest.mark.slow
def test_end_to_end_on_the_sample(tmp_path):
  require_tensorflow()
  rec, model, ev, ex = (str(tmp_path / d) for d in ("records", "model", "eval", "export"))
  steps = [
      ("cxr_edge.pipeline.convert", f"--input_dir={SAMPLE_DIR}", f"--output_dir={rec}"),
      ("cxr_edge.pipeline.verify", f"--tfrecord_dir={rec}"),
      ("cxr_edge.model.train", f"--data_dir={rec}", f"--model_dir={model}", "--epochs=2",
       "--steps_per_epoch=3", "--image_size=64"),
      ("cxr_edge.model.evaluate", f"--model_dir={model}", f"--data_dir={rec}", f"--output_dir={ev}"),
      ("cxr_edge.export.export", f"--model_dir={model}", f"--data_dir={rec}", f"--export_dir={ex}",
       "--variants=float32", "--variants=int8", "--calibration_samples=16",
       "--latency_runs=5"),
  ]
  for module, *args in steps:
    r = run_module(module, *args)
    assert r.returncode == 0, (module, r.stderr[-3000:])
    _assert_quiet(module, r)
  assert "int8" in r.stdout and "saved_model" in r.stdout  # the printed report table
  assert json.load(open(os.path.join(ev, "metrics.json")))["count"] == 30
  r = run_module("cxr_edge.edge.predict", f"--model={ex}/model_int8.tflite",
                 os.path.join(SAMPLE_DIR, "NORMAL"))
  assert r.returncode == 0, r.stderr[-2000:]
  _assert_quiet("cxr_edge.edge.predict", r)
  lines = [json.loads(l) for l in r.stdout.splitlines()]
  assert len(lines) == len(os.listdir(os.path.join(SAMPLE_DIR, "NORMAL"))) == 130
  # The export fitted an image gate (edge_cnn pools): a few films may be withheld, each
  # with its reason, the rest predicted.
  predicted = [l for l in lines if "prediction" in l]
  assert all(l["prediction"] in ("NORMAL", "PNEUMONIA") and 0 <= l["p_pneumonia"] <= 1
             for l in predicted)
  assert len(predicted) >= 0.9 * len(lines)
  assert all(l["not_analysed"] for l in lines if "prediction" not in l)
  info = json.load(open(os.path.join(ex, "metadata.json")))["models"]["model_int8.tflite"]
  assert info["image_gate"]["fitted"]["films"] == 241
  # Trained on the sample: a smoke-test model, and its summary says so.
  assert ("cxr-predict: SMOKE-TEST MODEL: trained on only 241 films; it is for trying the "
          "software, not for films of patients.") in r.stderr.splitlines()
  r = run_module("cxr_edge.edge.predict", f"--model={ex}/model_int8.tflite", "--info")
  assert "trained:      smoke model; 241 training films (of 301 converted" in r.stdout
  assert "SMOKE-TEST MODEL" in r.stdout
