import json

import pytest

from tests.conftest import SAMPLE_DIR, run_main


def _main(**flag_values):
  run_main("cxr_edge.pipeline.benchmark_input", **flag_values)


def test_benchmark_smoke_on_sample(sample_records, capsys):
  _main(data_dir=sample_records, image_dir=SAMPLE_DIR, epochs=1, image_size=64)
  out = capsys.readouterr().out
  result = json.loads(out.strip().splitlines()[-1])
  for key in ("pipeline", "imagedatagenerator", "image_dataset_from_directory", "decode_bound"):
    assert result[f"{key}_images_per_s"] > 0
  assert result["pipeline_images"] == 241  # the sample's train split, once
  assert result["imagedatagenerator_images"] == 301
  assert 0 < result["peak_rss_mb"] < 3000
  row = next(l for l in out.splitlines() if l.startswith("imagedatagenerator "))
  assert row.endswith("x")  # the table's ratio column


def test_benchmark_rejects_folder_without_classes(sample_records, tmp_path):
  with pytest.raises(SystemExit) as e:
    _main(data_dir=sample_records, image_dir=str(tmp_path), epochs=1)
  assert str(e.value.code).startswith("cxr-benchmark-input: error:")
  assert "class folders" in str(e.value.code)
