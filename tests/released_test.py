"""edge/released.py and the released model in edge/released/: its files and figures are
the ones the docs state, the device jobs run it without --model, and a smoke-test model
says what it is wherever a result appears. No TensorFlow."""
import hashlib
import json
import logging
import os
import re
import sys

import pytest

from cxr_edge.core import errors
from cxr_edge.core import package_info
from cxr_edge.core import schema
from cxr_edge.edge import calibrate_lib
from cxr_edge.edge import package
from cxr_edge.edge import released
from cxr_edge.edge import runtime
from cxr_edge.export import model_card
from tests import dicom_files
from tests.conftest import ROOT, SAMPLE_DIR, job, require_shared, run_main


def _read(*parts: str) -> str:
  with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
    return f.read()


@pytest.fixture(scope="module")
def record():
  r = released.release()
  assert r is not None, "edge/released/RELEASE.json is missing"
  return r


def test_the_shipped_files_are_the_ones_the_docs_state(record):
  changelog, card = _read("CHANGELOG.md"), _read("edge", "released", released.CARD_NAME)
  assert set(record["files"]) == {released.file_name(v) for v in released.VARIANTS}
  for name, entry in record["files"].items():
    with open(os.path.join(released.FOLDER, name), "rb") as f:
      data = f.read()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
    assert f"`{name}`: {entry['bytes']:,} bytes, sha256 `{entry['sha256']}`" in changelog
    assert f"| {name} | {entry['bytes']} | `{entry['sha256']}` |" in card
  # Every earlier release's files stay listed, so an old report's model can be named.
  for old in record["history"]:
    for sha in old["files"].values():
      assert sha in changelog


def test_the_release_records_what_made_it(record):
  made = record["made_by"]
  assert made["command"].startswith("scripts/release_model.sh ")
  assert re.fullmatch(r"[0-9a-f]{40}", made["commit"]), "released from uncommitted code"
  assert made["seed"] == 42 and made["task"] == schema.TASK_SUBTYPE
  assert re.fullmatch(r"[0-9a-f]{64}", made["data_manifest_sha256"])
  assert made["training"]["kind"] == package_info.KIND_RELEASED
  assert made["training"]["films"] >= package_info.SMOKE_MAX_TRAINING_FILMS
  assert os.path.isfile(os.path.join(ROOT, "scripts", "release_model.sh"))


@pytest.mark.parametrize("variant", released.VARIANTS)
def test_the_released_packages_say_what_they_are(record, variant):
  model = runtime.LiteModel(released.path(variant))
  assert model.sha256 == record["files"][released.file_name(variant)]["sha256"]
  assert model.info.kind == package_info.KIND_RELEASED and model.info.notice is None
  assert model.info.training == record["made_by"]["training"]
  assert model.info.classes == schema.TASK_CLASSES[schema.TASK_SUBTYPE]
  card = _read("edge", "released", released.CARD_NAME)
  assert card.splitlines()[2].startswith("**The released model of cxr-edge**")
  assert "bacterial and viral pneumonia are pooled" not in card


def test_the_readme_shows_the_release_figures(record):
  readme = _read("README.md")
  for block, rows in released.readme_rows(record).items():
    begin, end = released.markers(block)
    assert f"{begin}\n{rows}\n{end}" in readme, block


@pytest.mark.parametrize("variant", released.VARIANTS)
def test_the_stated_external_figures_are_reproduced_digit_for_digit(record, variant):
  external = require_shared("external")
  model = runtime.LiteModel(released.path(variant))
  figures = calibrate_lib.measure(model, calibrate_lib.score_films(model, external))
  assert json.loads(json.dumps(figures)) == record["external"]["figures"][variant]
  # The card states the same figures (cxr-export scored the same files the same way).
  card = _read("edge", "released", released.CARD_NAME)
  assert model_card.table_rows({variant: figures})[-1] in card.splitlines()


def test_cxr_predict_without_model_runs_the_released_one(record, capsys):
  film = os.path.join(SAMPLE_DIR, "NORMAL", sorted(os.listdir(os.path.join(SAMPLE_DIR,
                                                                           "NORMAL")))[0])
  run_main("cxr_edge.edge.predict", film, model=None)
  out = capsys.readouterr()
  (line,) = out.out.splitlines()
  result = json.loads(line)
  sha = record["files"]["model_int8.tflite"]["sha256"]
  assert result["model_sha256"] == sha
  # The summary names the model and its kind.
  assert out.err.rstrip().endswith(f"; released model model_int8.tflite (sha256 {sha[:12]})")
  assert set(result) <= set(job("cxr_edge.edge.predict").RECORD_FIELDS)


def test_info_names_the_training_data_its_licence_and_use(record, capsys):
  run_main("cxr_edge.edge.predict", model=None, info=True)
  out = capsys.readouterr().out
  films = record["made_by"]["training"]
  assert (f"trained:      released model; {films['films']:,} training films (of "
          f"{films['converted_films']:,} converted") in out
  assert "Kermany et al. (2018)" in out and "CC BY 4.0" in out
  assert "Intended use: Second-reader triage aid" in out and "SMOKE" not in out


def test_version_names_the_released_model(record, monkeypatch, capsys):
  predict = job("cxr_edge.edge.predict")
  monkeypatch.setattr(sys, "argv", ["cxr-predict", "--version"])
  with pytest.raises(SystemExit) as exit_:
    predict.run()
  assert exit_.value.code == 0
  lines = capsys.readouterr().out.splitlines()
  sha = record["files"]["model_int8.tflite"]["sha256"]
  assert lines[1] == (f"released model: {record['name']} version {record['version']} "
                      f"({record['date']}), model_int8.tflite sha256 {sha[:12]} (checked)")


def test_build_md_lists_every_record_field():
  build = _read("BUILD.md")
  table = build[build.index("| field | meaning |"):]
  table = table[:table.index("\n\n")]
  named = set(re.findall(r"`([a-z_0-9]+)`", "\n".join(
      line.split("|")[1] for line in table.splitlines()[2:])))
  assert named == set(job("cxr_edge.edge.predict").RECORD_FIELDS)


# A smoke-test package made from the released one without TensorFlow: the same graph
# and weights, metadata saying it learned from the sample's 241 films.
SMOKE_FILMS = 241


@pytest.fixture(scope="module")
def smoke_model(tmp_path_factory):
  with open(released.path(), "rb") as f:
    data = f.read()
  fields = package.read(data)
  fields["package"]["training"] = package_info.training_fields(
      None, SMOKE_FILMS, 301, fields["package"]["training"]["source"])
  path = tmp_path_factory.mktemp("smoke") / "model_int8.tflite"
  path.write_bytes(package.embed(data, fields))
  return str(path)


NOTICE = ("SMOKE-TEST MODEL: trained on only 241 films; it is for trying the software, not "
          "for films of patients.")


def test_training_fields_decide_the_kind_by_the_films():
  assert package_info.training_fields(None, 241, 301, "s")["kind"] == "smoke"
  assert package_info.training_fields(None, 4174, 5216, "s")["kind"] == "experimental"
  assert package_info.training_fields("released", 4174, 5216, "s")["kind"] == "released"
  with pytest.raises(errors.ConfigError, match="can only be a smoke model"):
    package_info.training_fields("released", 241, 301, "s")
  with pytest.raises(errors.ConfigError, match="not one of"):
    package_info.training_fields("final", 4174, 5216, "s")


def test_a_smoke_model_says_so_in_info_and_in_the_summary(smoke_model, capsys):
  run_main("cxr_edge.edge.predict", model=smoke_model, info=True)
  out = capsys.readouterr().out
  assert NOTICE in out.splitlines()
  assert "trained:      smoke model; 241 training films (of 301 converted" in out
  film = os.path.join(SAMPLE_DIR, "PNEUMONIA")
  run_main("cxr_edge.edge.predict", film, model=smoke_model)
  assert f"cxr-predict: {NOTICE}" in capsys.readouterr().err.splitlines()


def test_the_node_refuses_a_smoke_model_unless_asked(smoke_model, tmp_path):
  pytest.importorskip("pynetdicom", reason="the node extra is not installed")
  from cxr_edge.node import node_config  # pylint: disable=g-import-not-at-top
  from cxr_edge.node import node_lib  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.ModelError, match="--allow_smoke_model"):
    node_lib.Node(node_config.NodeOptions(model=smoke_model, spool_dir=str(tmp_path / "s")))


def test_a_smoke_model_on_the_node_says_so_in_the_log_page_and_report(smoke_model, tmp_path,
                                                                    caplog):
  pytest.importorskip("pynetdicom", reason="the node extra is not installed")
  from cxr_edge.node import report  # pylint: disable=g-import-not-at-top
  from tests import node_test  # pylint: disable=g-import-not-at-top
  pacs = node_test.Pacs().start()
  caplog.set_level(logging.INFO, logger="cxr_edge.node")
  try:
    with node_test.running_node(smoke_model, tmp_path / "spool", forward=pacs.address,
                                http_port=0, allow_smoke_model=True) as node:
      film = dicom_files.study_film(0, study=1)
      assert node_test.send(node.ports.dicom, [film]) == [0x0000]
      assert node.wait_idle(120)
      page = node_test._get(f"http://127.0.0.1:{node.ports.http}/")[2].decode()
  finally:
    pacs.stop()
  assert NOTICE in caplog.text and "; smoke model model_int8.tflite (sha256 " in caplog.text
  assert f'<div class="notice">{NOTICE}</div>' in page
  assert "Results of the smoke model model_int8.tflite (sha256 " in page
  (sr,) = pacs.reports()
  assert report.describe(sr)["comments"][0] == NOTICE
  assert "model kind smoke" in str(sr)  # the algorithm's parameters name the kind


@pytest.fixture
def install(tmp_path, monkeypatch):
  """A copy of the released folder that a test may damage, used as the install's."""
  import shutil  # pylint: disable=g-import-not-at-top
  folder = tmp_path / "released"
  shutil.copytree(released.FOLDER, folder)
  monkeypatch.setattr(released, "FOLDER", str(folder))
  return folder


def _rethresholded(data: bytes) -> bytes:
  fields = package.read(data)
  fields["model"]["threshold"] = 0.9
  return package.embed(data, {k: v for k, v in fields.items()
                              if k not in ("integrity", "integrity_scope")})


@pytest.mark.parametrize("swap", ["the float32 file", "a re-thresholded package"])
def test_a_released_file_that_is_not_the_released_one_is_refused_in_one_line(
    install, tmp_path, swap):
  int8 = install / "model_int8.tflite"
  int8.write_bytes((install / "model_float32.tflite").read_bytes() if swap.startswith("the")
                   else _rethresholded(int8.read_bytes()))
  with pytest.raises(errors.ModelError, match=r"model_int8.tflite is not the released file "
                     r"\(sha256 [0-9a-f]{12}, RELEASE.json says [0-9a-f]{12}\): reinstall"):
    released.path()
  assert released.describe().startswith("released model: NOT USABLE: ")
  with pytest.raises(SystemExit) as e:  # cxr-predict without --model: one line
    run_main("cxr_edge.edge.predict", os.path.join(SAMPLE_DIR, "NORMAL",
                                                   sorted(os.listdir(os.path.join(
                                                       SAMPLE_DIR, "NORMAL")))[0]))
  assert str(e.value.code).startswith("cxr-predict: error: ") and "\n" not in str(e.value.code)
  assert "is not the released file" in str(e.value.code)
  assert released.path("float32")  # the other file is still the released one


@pytest.mark.parametrize("damage", [b"{\"files\": ", b"[]", b"{\"files\": {}}",
                                    b"\xff\xfe", b"{\"files\": {\"model_int8.tflite\": 1}}"])
def test_a_damaged_release_json_is_one_line_not_a_traceback(install, damage):
  (install / released.RELEASE_NAME).write_bytes(damage)
  with pytest.raises(errors.ModelError, match=r"RELEASE.json is damaged .*reinstall cxr-edge"):
    released.release()
  with pytest.raises(errors.ModelError, match="reinstall cxr-edge"):
    released.path()
  assert released.describe().startswith("released model: NOT USABLE: ")
  assert "sha256" not in released.describe()  # it claims no sha256 it did not check


@pytest.mark.parametrize("module, flags", [
    ("cxr_edge.node.node", {"port": 0, "host": "127.0.0.1"}),
    ("cxr_edge.node.monitor", {}),
])
def test_the_node_and_the_monitor_say_a_damaged_release_in_one_line(install, tmp_path,
                                                                     module, flags):
  pytest.importorskip("pynetdicom", reason="cxr-edge[node] is not installed")
  (install / released.RELEASE_NAME).write_bytes(b"{\"files\": ")
  spool = tmp_path / "spool"
  os.makedirs(spool)
  with pytest.raises(SystemExit) as e:
    run_main(module, spool_dir=str(spool), **flags)
  text = str(e.value.code)
  assert "\n" not in text and "RELEASE.json is damaged" in text and "reinstall" in text


def test_a_files_release_is_named_by_its_sha256(record, install):
  assert released.version_of(record["files"]["model_int8.tflite"]["sha256"]) == (
      f"release:      {record['name']} version {record['version']} ({record['date']})")
  old = record["history"][-1]
  assert released.version_of(old["files"]["model_int8.tflite"]) == (
      f"release:      {record['name']} version {old['version']} ({old['date']}), superseded "
      f"by version {record['version']}")
  assert "not a released file" in released.version_of("0" * 64)
  (install / released.RELEASE_NAME).write_bytes(b"[")
  assert released.version_of("0" * 64).startswith("release:      unknown (")
