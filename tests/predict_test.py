"""The edge predictor: TF parity, no TensorFlow import, bad images and bad models."""
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys

from absl import flags
from absl.testing import flagsaver
import numpy as np
import pytest
from PIL import Image

from cxr_edge.core import errors
from cxr_edge.core import image_io
from cxr_edge.core import intended_use
from cxr_edge.core import package_info
from cxr_edge.edge import released
from cxr_edge.edge import runtime
from tests import dicom_files
from tests.conftest import ROOT, SAMPLE_DIR, image_bytes, job, run_main, write_file


def _tensorflow():
  """TensorFlow, for the parity tests; they skip in a device install without it."""
  return pytest.importorskip("tensorflow", reason="TensorFlow is not installed (a device "
                             "install): no training-side preprocessing to compare with")


def _preprocess():
  _tensorflow()
  from cxr_edge.pipeline import preprocess  # pylint: disable=g-import-not-at-top
  return preprocess


@pytest.mark.parametrize("shape, size", [((224, 224), 150), ((300, 200), 150), ((40, 64), 150),
                                         ((151, 149), 150), ((7, 5), 3)])
def test_resize_matches_tensorflow(shape, size):
  tf = _tensorflow()
  image = np.random.default_rng(0).random(shape, dtype=np.float32) * 255
  want = tf.image.resize(image[..., None], [size, size], method="bilinear",
                         antialias=False).numpy()[..., 0]
  np.testing.assert_allclose(runtime.resize_bilinear(image, size), want, atol=1e-3)


def _sample_files(n=20):
  files = []
  for label in ("NORMAL", "PNEUMONIA"):
    folder = os.path.join(SAMPLE_DIR, label)
    files += [os.path.join(folder, f) for f in sorted(os.listdir(folder))[:n // 2]]
  return files


def test_preprocessing_parity_on_real_sample_images():
  preprocess = _preprocess()
  for path in _sample_files():
    data = open(path, "rb").read()
    want = preprocess.preprocess_image(data, 150).numpy()
    got = runtime.preprocess(data, 150, 1 / 255)
    assert got.shape == want.shape == (150, 150, 1) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5, err_msg=path)


@pytest.mark.parametrize("fmt, mode", [("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "L"),
                                       ("PNG", "RGB"), ("PNG", "RGBA")])
def test_preprocessing_parity_on_other_formats(fmt, mode):
  preprocess = _preprocess()
  data = image_bytes(fmt, mode, size=(97, 61), seed=4)
  want = preprocess.preprocess_image(data, 64).numpy()
  got = runtime.preprocess(data, 64, 1 / 255)
  # libpng's and Pillow's RGB->gray weights differ slightly: at most ~1 grey level.
  np.testing.assert_allclose(got, want, atol=1e-5 if fmt == "JPEG" else 1.5 / 255)


def _run_predict(*args, block_tf=True):
  code = ("import sys\n"
          + ("for m in ('tensorflow', 'tf_keras', 'keras', 'tensorflow_model_optimization'):\n"
             "  sys.modules[m] = None  # any import of them now fails\n" if block_tf else "")
          + "from cxr_edge.edge import predict\n"
          "sys.argv = ['cxr-predict'] + sys.argv[1:]\n"
          "try:\n"
          "  predict.run()\n"
          "finally:\n"
          "  loaded = [m for m in sys.modules if m.split('.')[0] in "
          "('tensorflow', 'tf_keras', 'keras') and sys.modules[m] is not None]\n"
          "  print('TF_MODULES=' + ','.join(loaded), file=sys.stderr)\n")
  env = dict(os.environ)
  env.pop("TF_USE_LEGACY_KERAS", None)
  return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120, check=False)


def test_info_describes_the_package_and_reads_no_image(released_model):
  model = released_model
  r = _run_predict(f"--model={model}", "--info")
  assert r.returncode == 0, r.stderr[-3000:]
  lite = runtime.LiteModel(model)
  assert f"sha256:       {lite.sha256}" in r.stdout
  assert f"p_pneumonia >= {lite.threshold:.4f}" in r.stdout
  assert "not calibrated for a site" in r.stdout
  assert ("Intended use: " + package_info.INTENDED_USE + "\n\n"
          + intended_use.IntendedUse().describe()) in r.stdout
  release = released.release()
  assert r.stdout.rstrip().endswith(intended_use.IntendedUse().describe() + "\n" + (
      f"release:      {release['name']} version {release['version']} ({release['date']})"))
  r = _run_predict(f"--model={model}", "--info", "film.jpeg")
  assert r.returncode == 1 and "--info describes the model and reads no image" in r.stderr


def test_predictor_runs_without_tensorflow_and_matches_the_report(exported, tmp_path):
  export_dir, _ = exported
  model = os.path.join(export_dir, "model_int8.tflite")
  files = _sample_files(6)
  r = _run_predict(f"--model={model}", *files)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "TF_MODULES=\n" in r.stderr or r.stderr.rstrip().endswith("TF_MODULES=")
  lines = [json.loads(l) for l in r.stdout.splitlines()]
  assert [l["path"] for l in lines] == files
  meta = json.load(open(os.path.join(export_dir, "metadata.json")))
  lite = runtime.LiteModel(model)
  sha = hashlib.sha256(open(model, "rb").read()).hexdigest()
  for line, path in zip(lines, files):
    assert set(line) == {"path", "prediction", "p_pneumonia", "threshold", "model_sha256",
                         "warning", "latency_ms"}
    assert line["warning"] is None  # real films: nothing implausible
    p = float(lite.probabilities(runtime.preprocess(open(path, "rb").read(), 48, 1 / 255))[1])
    assert line["p_pneumonia"] == pytest.approx(p, abs=1e-6)
    assert line["threshold"] == meta["models"]["model_int8.tflite"]["threshold"]
    assert line["prediction"] == ("PNEUMONIA" if p >= line["threshold"] else "NORMAL")
    assert line["model_sha256"] == sha == meta["models"]["model_int8.tflite"]["sha256"]
  assert "6 image(s) predicted, 0 failed" in r.stderr


def test_bad_images_get_error_lines_and_nonzero_exit(exported, tmp_path):
  model = os.path.join(exported[0], "model_float32.tflite")
  good = _sample_files(2)[0]
  write_file(str(tmp_path / "empty.jpeg"), b"")
  write_file(str(tmp_path / "text.png"), b"just text")
  write_file(str(tmp_path / "cut.jpeg"), image_bytes(size=(64, 64))[:200])
  import io
  from PIL import Image
  buf = io.BytesIO()
  Image.new("L", (8, 8)).save(buf, format="GIF")
  write_file(str(tmp_path / "anim.jpeg"), buf.getvalue())
  out = tmp_path / "results.jsonl"
  r = _run_predict(f"--model={model}", f"--output={out}", good, str(tmp_path / "*.jpeg"),
                   str(tmp_path / "text.png"), str(tmp_path / "missing.png"))
  assert r.returncode == 1
  lines = {os.path.basename(l["path"]): l for l in map(json.loads, out.read_text().splitlines())}
  assert "prediction" in lines[os.path.basename(good)]
  assert lines["empty.jpeg"]["error"] == "empty file"
  assert lines["text.png"]["error"] == "not an image"
  assert lines["cut.jpeg"]["error"].startswith("truncated or corrupt")
  assert lines["anim.jpeg"]["error"] == "unsupported format: GIF"
  assert lines["missing.png"]["error"] == "no such file"
  assert "1 image(s) predicted, 5 failed" in r.stderr


def test_a_malformed_dicom_is_its_own_error_and_the_run_goes_on(released_model, tmp_path):
  """One hostile attribute used to stop the run halfway, with no summary."""
  model = released_model
  folder = tmp_path / "films"
  for path in _sample_files(4):
    write_file(str(folder / os.path.basename(path)), open(path, "rb").read())
  write_file(str(folder / "b_slope_zero.dcm"),
             dicom_files.malformed(dicom_files.set_raw("RescaleSlope", "0")))
  write_file(str(folder / "c_no_lut.dcm"), dicom_files.malformed(dicom_files.voi_lut(None, None)))
  out = tmp_path / "r.jsonl"
  r = _run_predict(f"--model={model}", f"--output={out}", str(folder))
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
  lines = {os.path.basename(l["path"]): l for l in map(json.loads, out.read_text().splitlines())}
  assert lines["b_slope_zero.dcm"]["error"].startswith("invalid DICOM attribute: RescaleSlope")
  assert "VOILUTSequence" in lines["c_no_lut.dcm"]["error"]
  assert sum("prediction" in l for l in lines.values()) == 4
  assert "4 image(s) predicted, 2 failed" in r.stderr


def test_csv_output_and_folder_input(exported, tmp_path):
  model = os.path.join(exported[0], "model_int8.tflite")
  folder = tmp_path / "imgs"
  for path in _sample_files(4):
    write_file(str(folder / "sub" / os.path.basename(path)), open(path, "rb").read())
  write_file(str(folder / "notes.txt"), b"ignored: not an image extension")
  out = tmp_path / "r.csv"
  r = _run_predict(f"--model={model}", f"--output={out}", str(folder))
  assert r.returncode == 0, r.stderr[-2000:]
  assert "4 image(s) predicted, 0 failed, 1 skipped (not films)" in r.stderr
  rows = list(csv.DictReader(open(out)))
  films = [row for row in rows if not row["skipped"]]
  assert len(films) == 4 and all(row["prediction"] in ("NORMAL", "PNEUMONIA") for row in films)
  assert [row["path"] for row in rows if row["skipped"]] == [str(folder / "notes.txt")]


def _copy_export(exported, tmp_path):
  dest = tmp_path / "e"
  shutil.copytree(exported[0], dest)
  return dest


def _refused(model, image, message):
  r = _run_predict(f"--model={model}", image)
  assert r.returncode == 1 and not r.stdout, r.stderr[-2000:]
  errors = [l for l in r.stderr.splitlines() if l.startswith("cxr-predict: error:")]
  assert len(errors) == 1 and message in errors[0], r.stderr[-2000:]  # one line, no traceback
  assert "Traceback" not in r.stderr


def test_the_model_file_is_the_package_and_tampering_is_refused(exported, tmp_path):
  dest = _copy_export(exported, tmp_path)
  image = _sample_files(2)[0]
  model = dest / "model_int8.tflite"
  sidecar = json.load(open(dest / "metadata.json"))
  _refused(dest / "nope.tflite", image, "cannot be read")
  # The sidecar may go: the .tflite carries everything.
  os.remove(dest / "metadata.json")
  r = _run_predict(f"--model={model}", image)
  assert r.returncode == 0, r.stderr[-2000:]
  assert json.loads(r.stdout)["threshold"] == sidecar["models"]["model_int8.tflite"]["threshold"]
  # A sidecar that disagrees on anything that decides a prediction is refused.
  for what, edit in [("labels", lambda m: m.update(labels=m["labels"][::-1])),
                     ("threshold", lambda m: m["models"]["model_int8.tflite"].update(threshold=0.0)),
                     ("preprocessing scale", lambda m: m["preprocessing"].update(scale=1.0)),
                     ("input size", lambda m: m["input"].update(size=64))]:
    bad = json.loads(json.dumps(sidecar))
    edit(bad)
    json.dump(bad, open(dest / "metadata.json", "w"))
    _refused(model, image, f"says {what}")
  (dest / "metadata.json").write_text("{not json")
  _refused(model, image, "is not readable JSON")
  json.dump({"labels": ["NORMAL", "PNEUMONIA"]}, open(dest / "metadata.json", "w"))
  _refused(model, image, "does not describe it")
  json.dump(sidecar, open(dest / "metadata.json", "w"))
  # The model file changed after export: its sha256 no longer matches the sidecar's.
  data = model.read_bytes()
  model.write_bytes(data + b"\0")
  _refused(model, image, "sha256 differs")
  os.remove(dest / "metadata.json")
  # An embedded field edited in place (a hex editor's threshold 0.5 -> 0.0).
  at = data.index(b'"threshold": ')
  edited = bytearray(data)
  edited[at + 13] = ord("0") if data[at + 13] != ord("0") else ord("1")
  model.write_bytes(bytes(edited))
  _refused(model, image, "fails the integrity check")
  model.write_bytes(b"not a model at all")
  _refused(model, image, "not a TFLite model")


def test_a_model_without_embedded_metadata_needs_its_sidecar(exported, tmp_path):
  """Exports from before the metadata was embedded: the sidecar is all there is."""
  from ai_edge_litert import schema_py_generated as fb  # pylint: disable=g-import-not-at-top
  import flatbuffers  # pylint: disable=g-import-not-at-top
  dest = _copy_export(exported, tmp_path)
  image = _sample_files(2)[0]
  model = dest / "model_float32.tflite"
  m = fb.ModelT.InitFromPackedBuf(bytearray(model.read_bytes()), 0)
  m.metadata = [e for e in m.metadata if e.name not in (b"cxr_edge", "cxr_edge")]
  builder = flatbuffers.Builder(1 << 20)
  builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
  model.write_bytes(bytes(builder.Output()))
  sidecar = json.load(open(dest / "metadata.json"))
  sidecar["models"]["model_float32.tflite"]["sha256"] = hashlib.sha256(
      model.read_bytes()).hexdigest()
  json.dump(sidecar, open(dest / "metadata.json", "w"))
  r = _run_predict(f"--model={model}", image)
  assert r.returncode == 0, r.stderr[-2000:]
  sidecar["input"]["size"] = 64  # the old check: metadata that does not fit the model
  json.dump(sidecar, open(dest / "metadata.json", "w"))
  _refused(model, image, "does not match")
  os.remove(dest / "metadata.json")
  _refused(model, image, "has no embedded metadata")


def test_output_in_a_missing_folder_is_refused_in_one_line(released_model, tmp_path):
  model = released_model
  with pytest.raises(SystemExit) as e:
    run_main("cxr_edge.edge.predict", _sample_files(2)[0], model=model,
             output=str(tmp_path / "missing" / "out.jsonl"))
  assert str(e.value.code) == (f"cxr-predict: error: --output's folder {tmp_path / 'missing'} "
                               "does not exist")


def test_progress_with_rate_and_time_left_on_stderr(released_model, monkeypatch, capsys):
  predict = job("cxr_edge.edge.predict")
  monkeypatch.setattr(predict, "PROGRESS_SECONDS", 0.0)  # a line after every image
  model = released_model
  files = _sample_files(4)
  with flagsaver.flagsaver(model=model):  # not run_main: it would re-import the module
    flags.FLAGS.mark_as_parsed()
    predict.main(["cxr-predict", *files])
  captured = capsys.readouterr()
  progress = [l for l in captured.err.splitlines() if "s left" in l]
  assert [l.split()[1] for l in progress] == ["1/4", "2/4", "3/4"]  # not after the last
  assert all("/s, about " in l for l in progress)
  assert len(captured.out.splitlines()) == 4  # results stay on stdout


def _film_variants(jpeg_path):
  """The film of a JPEG as a clinic might hold it: DICOM 8/12-bit, MONOCHROME1/2, with and
  without a VOI window covering the data, and as a 12-bit-in-16 PNG."""
  from tests.conftest import dicom_bytes  # pylint: disable=g-import-not-at-top
  v = runtime.decode_grayscale(open(jpeg_path, "rb").read())
  twelve = np.round(v.astype(np.float64) * 4095 / 255).astype(np.uint16)
  png16 = io.BytesIO()
  Image.fromarray(twelve).save(png16, format="PNG")
  return {
      "dicom8.dcm": dicom_bytes(v),
      "dicom12_mono1.dcm": dicom_bytes(4095 - twelve, bits=12, photometric="MONOCHROME1"),
      "dicom12_window": dicom_bytes(twelve, bits=12, window=(2048, 4096)),  # no extension
      "film16.png": png16.getvalue(),
  }


def test_dicom_and_16_bit_films_predict_like_their_jpeg(released_model, tmp_path):
  model_path = released_model
  model = runtime.LiteModel(model_path)
  for jpeg in _sample_files(4):
    want = model.predict_bytes(open(jpeg, "rb").read())
    for name, data in _film_variants(jpeg).items():
      got = model.predict_bytes(data)
      assert got["prediction"] == want["prediction"], (jpeg, name)
      tolerance = 1e-9 if name == "dicom8.dcm" else 0.02  # 12-bit round trip: +-1 grey level
      assert abs(got["p_pneumonia"] - want["p_pneumonia"]) <= tolerance, (jpeg, name)


def test_folder_of_dicom_is_read_whole_and_bad_films_say_why(released_model, tmp_path):
  from pydicom.data import get_testdata_file  # pylint: disable=g-import-not-at-top
  model = released_model
  folder = tmp_path / "study"
  for name, data in _film_variants(_sample_files(2)[0]).items():
    write_file(str(folder / name), data)
  write_file(str(folder / "ct.dcm"), open(get_testdata_file("CT_small.dcm", download=False),
                                          "rb").read())
  r = _run_predict(f"--model={model}", str(folder))
  lines = {os.path.basename(l["path"]): l for l in map(json.loads, r.stdout.splitlines())}
  assert set(lines) == {"dicom8.dcm", "dicom12_mono1.dcm", "dicom12_window", "film16.png",
                        "ct.dcm"}
  # A CT is outside the intended use: not analysed, which is not a failure.
  assert lines["ct.dcm"]["not_analysed"].startswith("modality CT is not a radiograph")
  assert ("4 image(s) predicted, 1 not analysed (outside the intended use), 0 failed"
          in r.stderr and r.returncode == 0)


@pytest.mark.slow
def test_dicom_parity_script_on_a_few_films(released_model, tmp_path):
  folder = tmp_path / "films"
  for path in _sample_files(2):
    write_file(str(folder / os.path.basename(os.path.dirname(path)) / os.path.basename(path)),
               open(path, "rb").read())
  out = tmp_path / "parity.json"
  r = subprocess.run([sys.executable, "-m", "scripts.dicom_parity",
                      f"--model={released_model}", f"--image_dir={folder}",
                      f"--out={out}"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                     check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  variants = json.load(open(out))["variants"]
  assert len(variants) == 9
  for v in variants:
    assert v["films"] == 2 and v["same_decision"] == 2, v
    assert v["max_abs_delta"] <= 0.02, v


def test_csv_on_stdout_with_format(released_model):
  model = released_model
  r = _run_predict(f"--model={model}", "--format=csv", *_sample_files(2))
  assert r.returncode == 0, r.stderr[-2000:]
  rows = list(csv.DictReader(io.StringIO(r.stdout)))
  assert len(rows) == 2 and {"p_pneumonia", "threshold", "model_sha256"} <= set(rows[0])
  r = _run_predict(f"--model={model}", "--format=csv", "--output=x.jsonl", *_sample_files(2))
  assert r.returncode == 1 and "--format=csv but --output ends in .jsonl" in r.stderr


def test_what_is_not_a_film_is_not_analysed_and_counted_not_failed(released_model, tmp_path):
  model = released_model
  film = _sample_files(2)[0]
  black = write_file(str(tmp_path / "black.png"), _png(np.zeros((64, 64), np.uint8)))
  r = _run_predict(f"--model={model}", film, black)
  lines = {os.path.basename(l["path"]): l for l in map(json.loads, r.stdout.splitlines())}
  assert r.returncode == 0 and lines[os.path.basename(film)]["warning"] is None
  assert lines["black.png"]["not_analysed"].startswith("near-constant image")
  assert "prediction" not in lines["black.png"] and "p_pneumonia" not in lines["black.png"]
  assert lines["black.png"]["model_sha256"] == lines[os.path.basename(film)]["model_sha256"]
  assert ("1 image(s) predicted, 1 not analysed (outside the intended use), 0 failed"
          in r.stderr)


def test_a_widened_use_is_named_on_every_record_and_warns_first(released_model, tmp_path):
  adult = write_file(str(tmp_path / "adult.dcm"), dicom_files.study_film(3, PatientAge="030Y"))
  child = write_file(str(tmp_path / "child.dcm"), dicom_files.study_film(4, PatientAge="004Y"))
  r = _run_predict(f"--model={released_model}", adult, child)
  lines = {os.path.basename(l["path"]): l for l in map(json.loads, r.stdout.splitlines())}
  assert r.returncode == 0
  assert lines["adult.dcm"]["not_analysed"].startswith("patient aged 30 years (PatientAge 030Y)")
  assert lines["child.dcm"]["prediction"] and "widened_use" not in lines["child.dcm"]
  r = _run_predict(f"--model={released_model}", "--intended_ages=0,17", adult)
  assert r.returncode == 1 and "--widen_intended_use" in r.stderr.splitlines()[-1]
  r = _run_predict(f"--model={released_model}", "--intended_ages=0,40", "--widen_intended_use",
                   adult, child)
  lines = {os.path.basename(l["path"]): l for l in map(json.loads, r.stdout.splitlines())}
  assert {l["widened_use"] for l in lines.values()} == {
      "ages 0-40 years (the model's: 1 to 5 years)"}
  assert lines["adult.dcm"]["warning"].startswith("outside the model's intended use (patient "
                                                  "aged 30 years")
  assert lines["adult.dcm"]["prediction"] and lines["child.dcm"]["warning"] is None
  r = _run_predict(f"--model={released_model}", "--intended_ages=0,40", "--widen_intended_use",
                   "--strict", adult)
  assert r.returncode == 1 and json.loads(r.stdout)["error"].startswith("rejected (--strict)")
  r = _run_predict(f"--model={released_model}", "--intended_ages=2,4", child, adult)
  lines = {os.path.basename(l["path"]): l for l in map(json.loads, r.stdout.splitlines())}
  assert lines["child.dcm"]["prediction"]  # 4 years: inside the narrowed range
  assert "children aged 2 to 4 years" in lines["adult.dcm"]["not_analysed"]


def _png(array) -> bytes:
  out = io.BytesIO()
  Image.fromarray(array).save(out, format="PNG")
  return out.getvalue()


def test_explain_writes_an_occlusion_overlay_with_the_model_itself(exported, tmp_path):
  from cxr_edge.edge import explain  # pylint: disable=g-import-not-at-top
  model_path = os.path.join(exported[0], "model_int8.tflite")  # 48 px: a small map
  lite = runtime.LiteModel(model_path)
  film = _sample_files(2)[1]
  heat = explain.occlusion_map(lite, runtime.preprocess(open(film, "rb").read(), 48, 1 / 255))
  assert heat.shape == (15, 15) and (heat >= 0).all()  # 6-px squares every 3 px on 48 px
  r = _run_predict(f"--model={model_path}", f"--explain={tmp_path / 'why'}", film)
  assert r.returncode == 0, r.stderr[-2000:]
  line = json.loads(r.stdout)
  with Image.open(line["explanation"]) as im:
    assert im.format == "PNG"
  assert line["explain_ms"] > 0 and "1 explanation(s)" in r.stderr


def test_ctrl_c_prints_the_summary_so_far_and_exits_130(released_model, tmp_path, monkeypatch, capsys):
  predict = job("cxr_edge.edge.predict")
  model = released_model
  real = runtime.LiteModel.predict_bytes
  calls = []

  def interrupt_at_third(self, data, strict=False):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt
    return real(self, data, strict)

  monkeypatch.setattr(runtime.LiteModel, "predict_bytes", interrupt_at_third)
  out = tmp_path / "r.jsonl"
  with flagsaver.flagsaver(model=model, output=str(out)):
    flags.FLAGS.mark_as_parsed()
    with pytest.raises(SystemExit) as e:
      predict.main(["cxr-predict", *_sample_files(6)])
  assert e.value.code == 130
  assert "cxr-predict: interrupted after 2 of 6: 2 image(s) predicted" in capsys.readouterr().err
  assert len(out.read_text().splitlines()) == 2  # what was done is kept


def test_special_files_linked_and_unreadable_folders_are_never_silent(released_model, tmp_path,
                                                                      monkeypatch):
  films = _sample_files(2)
  top = tmp_path / "in"
  write_file(str(top / "own" / "a.jpeg"), open(films[0], "rb").read())
  write_file(str(tmp_path / "elsewhere" / "b.jpeg"), open(films[1], "rb").read())
  (top / "linked").symlink_to(tmp_path / "elsewhere")  # followed, once
  (top / "own" / "loop").symlink_to(top)  # a loop: reported, not followed forever
  os.mkfifo(top / "fifo.png")
  (top / "zero.png").symlink_to("/dev/zero")
  (top / "locked").mkdir()
  real_scandir = os.scandir

  def scandir(path="."):
    if os.fspath(path).endswith("locked"):  # as root, chmod cannot make it unreadable
      raise PermissionError(13, "Permission denied", os.fspath(path))
    return real_scandir(path)

  monkeypatch.setattr(os, "scandir", scandir)
  found = {os.path.relpath(i.path.rstrip(os.sep), top): i
           for i in runtime.expand_paths([str(top)])}
  monkeypatch.undo()
  assert found["locked"].error == "unreadable folder: Permission denied"
  assert "a.jpeg" in str(found) and os.path.join("linked", "b.jpeg") in found
  assert found[os.path.join("own", "loop")].skipped.startswith("folder already read")
  model = runtime.LiteModel(released_model)
  results = {os.path.basename(r["path"]): r for r in runtime.predict_paths(
      model, [i for k, i in found.items() if k.endswith(".png")])}
  assert results["fifo.png"]["error"] == "not a regular file (a FIFO)"
  assert results["zero.png"]["error"] == "not a regular file (a character device)"


def test_output_naming_an_input_is_refused_before_it_is_opened(exported, tmp_path):
  target = tmp_path / "a.csv"
  target.write_bytes(open(_sample_files(2)[0], "rb").read())
  before = target.read_bytes()
  with pytest.raises(SystemExit) as e:
    run_main("cxr_edge.edge.predict", str(target), model=os.path.join(
        exported[0], "model_int8.tflite"), output=str(target))
  assert "is one of the inputs" in str(e.value.code)
  assert target.read_bytes() == before


def test_a_model_litert_cannot_allocate_is_one_line(released_model, monkeypatch):
  from ai_edge_litert import interpreter  # pylint: disable=g-import-not-at-top

  def fail(self):
    raise RuntimeError("tensor arena exhausted\nmore detail")

  monkeypatch.setattr(interpreter.Interpreter, "allocate_tensors", fail)
  with pytest.raises(runtime.ModelError, match="LiteRT cannot allocate its tensors "
                     r"\(tensor arena exhausted\)$"):
    runtime.LiteModel(released_model)


def test_colour_tiff_is_not_analysed_and_cmyk_jpeg_refused_as_conversion_refuses_it(released_model,
                                                                              tmp_path):
  model = runtime.LiteModel(released_model)
  rgb = np.zeros((64, 64, 3), np.uint8)
  rgb[..., 0] = 200  # a red photograph, stored as TIFF
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format="TIFF")
  with pytest.raises(errors.OutOfScope, match="colour"):
    model.predict_bytes(buf.getvalue())
  buf = io.BytesIO()
  Image.new("CMYK", (64, 64), (0, 0, 0, 100)).save(buf, format="JPEG")
  assert image_io.inspect_data(buf.getvalue()).reason == "unsupported colour mode: CMYK"
  with pytest.raises(runtime.ImageError, match="^unsupported colour mode: CMYK$"):
    model.predict_bytes(buf.getvalue())


def test_our_own_overlay_fed_back_as_a_film_is_not_analysed(released_model):
  from cxr_edge.core import overlay  # pylint: disable=g-import-not-at-top
  model = runtime.LiteModel(released_model)
  film = open(_sample_files(2)[0], "rb").read()
  gray = runtime.decode_grayscale(film)
  drawn = overlay.heat_overlay(gray, np.ones((7, 7), np.float32), "PNEUMONIA (p 0.9)")
  assert overlay.is_overlay(drawn) and not overlay.is_overlay(film)
  with pytest.raises(errors.OutOfScope, match="^a cxr-edge explanation overlay, not a film$"):
    model.predict_bytes(drawn)
  assert model.predict_bytes(film)["warning"] is None


def test_a_film_stored_rotated_with_an_exif_orientation_is_not_analysed_nor_converted(released_model):
  """Viewers show it upright; TensorFlow's decoder and the device see it sideways."""
  film = np.asarray(Image.open(_sample_files(2)[1]).convert("L"))
  exif = Image.Exif()
  exif[0x0112] = 6  # stored rotated: display turns it 90 degrees clockwise
  buf = io.BytesIO()
  Image.fromarray(np.rot90(film)).save(buf, format="JPEG", exif=exif)
  model = runtime.LiteModel(released_model)
  with pytest.raises(errors.OutOfScope, match=r"^stored rotated \(EXIF orientation 6\)"):
    model.predict_bytes(buf.getvalue())
  assert image_io.inspect_data(buf.getvalue()).reason.startswith(
      "stored rotated (EXIF orientation 6)")


@pytest.mark.parametrize("edit, says", [
    (lambda p, m: m.update(temperature=float("inf")), "temperature inf"),
    (lambda p, m: p.update(labels=["PNEUMONIA", "NORMAL"]), "in that order"),
])
def test_re_signed_metadata_with_impossible_values_is_refused(released_model, tmp_path, edit, says):
  """The digest is not a signature: whoever re-signs is stopped by the range checks."""
  from cxr_edge.edge import package  # pylint: disable=g-import-not-at-top
  data = open(released_model, "rb").read()
  fields = package.read(data)
  fields.pop("integrity")
  edit(fields["package"], fields["model"])
  path = tmp_path / "m.tflite"
  path.write_bytes(package.embed(data, fields))  # a valid digest over impossible values
  with pytest.raises(runtime.ModelError, match="metadata out of range") as e:
    runtime.LiteModel(str(path))
  assert says in str(e.value)
