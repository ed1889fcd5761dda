"""The device install's check (scripts/device_check.py) and the bundle script's refusals
(scripts/device_bundle.sh; building a bundle downloads wheels, so no test does)."""
import json
import os
import subprocess
import sys

import pytest

from scripts import device_check
from tests.conftest import ROOT


def _write(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def _record(name, p, threshold=0.375):
  return {"path": f"/somewhere/{name}", "p_pneumonia": p, "threshold": threshold,
          "prediction": "PNEUMONIA" if p >= threshold else "NORMAL"}


@pytest.mark.parametrize("here,passes,says", [
    ([_record("a.jpeg", 0.90), _record("b.dcm", 0.10)], True, "largest |p_pneumonia "
     "difference| 0.000000"),
    ([_record("a.jpeg", 0.905), _record("b.dcm", 0.10)], True, "0.005000 (a.jpeg)"),
    ([_record("a.jpeg", 0.95), _record("b.dcm", 0.10)], False, "MISMATCH a.jpeg: "
     "p_pneumonia 0.9 vs 0.95"),
    ([_record("a.jpeg", 0.90), _record("b.dcm", 0.38)], False, "MISMATCH b.dcm: NORMAL"),
    ([_record("a.jpeg", 0.90)], False, "only in"),
    ([_record("a.jpeg", 0.90), {"path": "/x/b.dcm", "error": "no decoder"}], False,
     "'no decoder'"),
])
def test_compare_passes_only_on_the_same_decisions_within_the_tolerance(
    here, passes, says, tmp_path, capsys):
  expected = _write(tmp_path / "expected.jsonl", [_record("a.jpeg", 0.90),
                                                  _record("b.dcm", 0.10)])
  assert device_check.compare(expected, _write(tmp_path / "here.jsonl", here), 0.02) is passes
  assert says in capsys.readouterr().out


def test_compare_holds_a_three_class_model_to_its_subtypes(tmp_path, capsys):
  def three(p_bacterial, p_viral, subtype):
    return {**_record("a.jpeg", p_bacterial + p_viral), "p_bacterial": p_bacterial,
            "p_viral": p_viral, "subtype": subtype}
  expected = _write(tmp_path / "expected.jsonl", [three(0.6, 0.3, "BACTERIAL")])
  assert device_check.compare(expected, _write(tmp_path / "same.jsonl",
                                               [three(0.605, 0.3, "BACTERIAL")]), 0.02)
  assert not device_check.compare(expected, _write(tmp_path / "other.jsonl",
                                                   [three(0.3, 0.6, "VIRAL")]), 0.02)
  out = capsys.readouterr().out
  assert "MISMATCH a.jpeg: p_bacterial 0.6 vs 0.3" in out
  assert "MISMATCH a.jpeg: subtype BACTERIAL vs VIRAL" in out


def test_the_check_films_are_jpeg_and_four_kinds_of_dicom(tmp_path):
  assert device_check.films(str(tmp_path), per_class=1) == 10
  names = sorted(p.name for p in tmp_path.iterdir())
  assert sum(n.endswith(".jpeg") for n in names) == 2
  assert {n.split(".")[-2] for n in names if n.endswith(".dcm")} == {
      "dx12", "mono1", "j2k", "jpegls"}


@pytest.mark.parametrize("args,says", [
    (["--platform=armv7l", "--python=3.11"], "32-bit ARM has no LiteRT wheel"),
    (["--platform=riscv64", "--python=3.11"], "--platform must be aarch64 or x86_64"),
    (["--platform=aarch64", "--python=3.9"], "--python must be 3.10, 3.11 or 3.12"),
    (["--platform=aarch64", "--python=3.11", "--model=/nonexistent.tflite"], "does not exist"),
])
def test_the_bundle_script_refuses_what_cannot_work_in_one_line(args, says, tmp_path):
  r = subprocess.run(["bash", "scripts/device_bundle.sh", *args, str(tmp_path / "out")],
                     cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
  assert r.returncode == 1 and r.stderr.strip().splitlines() == [
      next(line for line in r.stderr.splitlines() if says in line)]
  assert "device_bundle: error: " in r.stderr


def test_compare_refuses_a_tolerance_that_compares_false(tmp_path):
  expected = _write(tmp_path / "expected.jsonl", [_record("a.jpeg", 0.90)])
  with pytest.raises(ValueError, match="finite number >= 0"):
    device_check.compare(expected, expected, float("nan"))
  r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "device_check.py"),
                      "compare", expected, expected, "--tolerance=nan"],
                     capture_output=True, text=True, timeout=60, check=False)
  assert r.returncode == 2 and "must be a finite number >= 0, not 'nan'" in r.stderr


def test_compare_misses_no_film_of_the_same_name(tmp_path, capsys):
  expected = _write(tmp_path / "expected.jsonl", [_record("a.jpeg", 0.90),
                                                  {**_record("a.jpeg", 0.10), "path": "/y/a.jpeg"}])
  here = _write(tmp_path / "here.jsonl", [_record("a.jpeg", 0.10)])
  assert not device_check.compare(expected, here, 0.02)
  assert f"two films named a.jpeg in {expected}" in capsys.readouterr().out
