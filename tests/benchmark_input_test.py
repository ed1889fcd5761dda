import json

from tests.conftest import SAMPLE_DIR, run_module


def test_benchmark_smoke_on_sample(sample_records):
  r = run_module("pipeline.benchmark_input", f"--data_dir={sample_records}",
                 f"--image_dir={SAMPLE_DIR}", "--epochs=1", "--image_size=64",
                 "--train_model=edge_cnn", "--train_steps=5")
  assert r.returncode == 0, r.stderr[-2000:]
  result = json.loads(r.stdout.strip().splitlines()[-1])
  for key in ("pipeline", "imagedatagenerator", "image_dataset_from_directory", "decode_bound"):
    assert result[f"{key}_images_per_s"] > 0
  assert result["pipeline_images"] == 241  # the sample's train split, once
  assert result["imagedatagenerator_images"] == 301
  assert 0 < result["peak_rss_mb"] < 3000
  assert result["train_steps_per_s_pipeline"] > 0 and result["input_bound_ratio"] > 0


def test_benchmark_rejects_folder_without_classes(sample_records, tmp_path):
  r = run_module("pipeline.benchmark_input", f"--data_dir={sample_records}",
                 f"--image_dir={tmp_path}", "--epochs=1", "--train_model=")
  assert r.returncode == 1 and "class folders" in r.stderr
