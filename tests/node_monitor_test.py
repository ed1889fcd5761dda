"""The node at this site: readers' verdicts, figures with intervals against hand-computed
ones, drift alarms and their command, cxr-monitor's import and export, cxr-calibrate
--from_spool, and verdicts through a kill -9."""
import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pydicom
import pytest

pytest.importorskip("pynetdicom", reason="cxr-edge[node] is not installed")

# pylint: disable=g-import-not-at-top,wrong-import-position
from cxr_edge.core import errors
from cxr_edge.core import site_log
from cxr_edge.edge import calibrate_lib
from cxr_edge.edge import released
from cxr_edge.edge import runtime
from cxr_edge.node import monitor_lib
from cxr_edge.node import node_config
from cxr_edge.node import verdicts as verdicts_lib
from tests import dicom_files
from tests.conftest import ROOT, run_main, until
from tests.node_test import running_node, send
# pylint: enable=g-import-not-at-top,wrong-import-position

SHA = "a" * 64


def line(k: int, prediction: str, p: float, day: str = "2026-12-03", sha: str = SHA,
         **extra):
  """An audit line as the node writes it."""
  return {"time": f"{day}T10:00:00+00:00", "sop_instance_uid": f"1.2.{k}",
          "model_sha256": sha, "prediction": prediction, "p_pneumonia": p, "error": None,
          "warning": None, **extra}


def verdict(k: int, pneumonia, subtype=None):
  return verdicts_lib.Verdict(f"1.2.{k}", pneumonia, subtype, "Dr A", "t", "page")


def test_site_figures_are_the_hand_computed_ones_with_wilson_intervals():
  # 10 films with a verdict: 4 true positives, 1 false negative, 3 true negatives,
  # 2 false positives; film 10 has none, film 11's was withdrawn, film 12 is another
  # model's, film 13 is outside the period, film 14 was not analysed.
  lines = ([line(k, "PNEUMONIA", 0.9, subtype="BACTERIAL") for k in range(4)]
           + [line(4, "NORMAL", 0.2)] + [line(k, "NORMAL", 0.1) for k in range(5, 8)]
           + [line(k, "PNEUMONIA", 0.7, subtype="VIRAL") for k in (8, 9)]
           + [line(10, "NORMAL", 0.1), line(11, "NORMAL", 0.1),
              line(12, "PNEUMONIA", 0.9, sha="b" * 64),
              line(13, "PNEUMONIA", 0.9, day="2026-11-30"),
              {**line(14, None, None), "error": "unreadable"}])
  current = {f"1.2.{k}": verdict(k, k < 5, "BACTERIAL" if k < 3 else "VIRAL" if k == 3
                                  else None) for k in range(10)}
  current.update({"1.2.12": verdict(12, True), "1.2.13": verdict(13, True)})
  stated = {"source": "stated", "sensitivity": 0.964, "specificity": 0.5, "ppv": None,
            "npv": 0.9, "accuracy": 0.7, "roc_auc": 0.99, "kind_agreement": 0.9}
  found = monitor_lib.performance(list(map(monitor_lib.read_of, lines)), current, SHA,
                                  stated, "2026-12-01", "2026-12-31")
  assert found["confusion"] == {"tp": 4, "fp": 2, "tn": 3, "fn": 1}
  assert (found["films"], found["with_verdict"]) == (12, 10)  # 0-11: 11 lost its verdict
  assert found["verdict_share"] == pytest.approx(10 / 12)
  expected = {  # value, Wilson 95% interval (published tables: 4/5 -> 0.376-0.964)
      "sensitivity": (4 / 5, 0.37553, 0.96378), "specificity": (3 / 5, 0.23072, 0.88238),
      "ppv": (4 / 6, 0.29999, 0.90323), "npv": (3 / 4, 0.30064, 0.95441),
      "accuracy": (7 / 10, 0.39678, 0.89221)}
  for name, (value, low, high) in expected.items():
    figure = found[name]
    assert figure["value"] == pytest.approx(value)
    assert figure["ci95"] == pytest.approx([low, high], abs=1e-5)
  # 0.96378 < 0.964: the whole interval below the stated sensitivity.
  assert found["sensitivity"]["verdict"] == "worse than stated"
  assert found["specificity"]["verdict"] == "consistent"
  assert found["ppv"]["verdict"] == "nothing stated"
  # The kind: films 0-2 bacterial (model: bacterial, agreed), 3 viral (model: bacterial).
  assert (found["kind_agreement"]["value"], found["kind_agreement"]["n"]) == (0.75, 4)
  assert found["roc_auc"]["value"] is None  # 5 and 5: fewer than MIN_AUC_FILMS each


def test_the_auc_interval_is_hanley_and_mcneils():
  # A = 0.9, 20 positives, 30 negatives: Q1 = 0.9/1.1, Q2 = 1.62/1.9, SE = 0.04913.
  low, high = monitor_lib.auc_interval(0.9, 20, 30)
  assert (low, high) == pytest.approx((0.80260, 0.99740), abs=1e-5)


def _stream(rng, n, start=0, p_mean=0.4, pixel=120.0, manufacturer="ACME", age=3.0,
            warned=0.02):
  out = []
  for k in range(start, start + n):
    p = float(np.clip(rng.beta(2 * p_mean / (1 - p_mean), 2), 0, 1))
    out.append(line(k, "PNEUMONIA" if p >= 0.375 else "NORMAL", p,
                    warning="not a chest radiograph" if rng.random() < warned else None,
                    inputs={"manufacturer": manufacturer, "unit_model": "X1",
                            "view_position": "PA", "age_years": age,
                            "pixel_mean": float(rng.normal(pixel, 8))}))
  return out


@pytest.mark.parametrize("change,rules", [
    ({}, set()),  # a stream like the baseline's raises nothing
    ({"pixel": 70.0}, {"pixel_shift"}),  # darkened films
    ({"manufacturer": "OTHERCO"}, {"new_equipment"}),
    ({"p_mean": 0.75}, {"positive_rate", "p_pneumonia_shift"}),  # an output drift
    ({"warned": 0.3}, {"warning_rate"}),  # inverted films: the guard warns
    ({"age": 40.0}, {"adults"})])
def test_each_drift_raises_its_alarm_and_none_other(change, rules):
  rng = np.random.default_rng(7)
  lines = _stream(rng, monitor_lib.BASELINE_FILMS) + _stream(rng, 300, 1000, **change)
  alarms, info = monitor_lib.drift(list(map(monitor_lib.read_of, lines)), SHA)
  assert {a.rule for a in alarms} == rules, (alarms, info)
  assert all(a.why for a in alarms)


def test_drift_waits_for_a_baseline_and_a_window():
  alarms, info = monitor_lib.drift(
      list(map(monitor_lib.read_of, _stream(np.random.default_rng(0), 250))), SHA)
  assert alarms == [] and "once 400 films are read" in info["note"]


def test_a_darkened_film_has_a_lower_pixel_mean_in_its_audit_inputs():
  header = pydicom.dcmread(io.BytesIO(dicom_files.study_film(3)))
  gray = runtime.film_gray(dicom_files.study_film(3))
  darker = monitor_lib.film_inputs(header, (gray * 0.5).astype(np.uint8))
  normal = monitor_lib.film_inputs(header, gray)
  assert darker["pixel_mean"] < 0.6 * normal["pixel_mean"]
  assert normal["manufacturer"] == "test" and monitor_lib.age_years("018M") == 1.5


def test_an_alarm_raised_and_cleared_runs_the_alert_command(tmp_path):
  out = tmp_path / "alerts.jsonl"
  command = (f"{sys.executable} -c \"import sys; open({str(out)!r}, 'a').write("
             f"sys.stdin.read() + chr(10))\"")
  state = {"dead_letters": 2}
  monitor = monitor_lib.Monitor(str(tmp_path), SHA, {}, status=lambda: dict(state),
                                alert_command=command)
  assert [a.rule for a in monitor.check()] == ["dead_letters"]
  assert monitor.check() and len(out.read_text().splitlines()) == 1  # raised once
  state["dead_letters"] = 0
  assert monitor.check() == []
  sent = [json.loads(l) for l in out.read_text().splitlines()]
  assert [(s["state"], s["rule"]) for s in sent] == [("raised", "dead_letters"),
                                                     ("cleared", "dead_letters")]
  assert sent[0]["why"] == monitor_lib.RULES["dead_letters"]


def test_an_alert_commands_endless_output_is_bounded_and_said_so(tmp_path, caplog):
  import tracemalloc  # pylint: disable=g-import-not-at-top
  command = (f"{sys.executable} -c \"import sys; sys.stdin.read(); "
             "[sys.stderr.write('x' * 2**20) for _ in range(64)]; print('y' * 2**20); "
             "sys.exit(3)\"")
  monitor = monitor_lib.Monitor(str(tmp_path), SHA, {}, status=lambda: {"dead_letters": 1},
                                alert_command=command)
  tracemalloc.start()
  try:
    with caplog.at_level("WARNING", logger="cxr_edge.node"):
      assert [a.rule for a in monitor.check()] == ["dead_letters"]
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 8 * 2**20  # 64 MiB written; a few KB kept
  line = next(r.getMessage() for r in caplog.records if "exited 3" in r.getMessage())
  assert line.endswith(f"({64 * 2**20 - monitor_lib.ALERT_OUTPUT_BYTES:,} more bytes of "
                       "its output dropped)")


def test_verdicts_are_appended_never_rewritten_and_the_last_one_counts(tmp_path):
  log = verdicts_lib.Verdicts(str(tmp_path))
  log.record(verdict(1, True, "VIRAL"))
  log.record(verdict(1, False, "VIRAL"))  # a subtype without pneumonia is dropped
  log.record(verdict(2, True))
  log.record(verdict(2, None))  # withdrawn
  assert set(log.current()) == {"1.2.1"}
  assert (log.current()["1.2.1"].pneumonia, log.current()["1.2.1"].subtype) == (False, None)
  assert [v.pneumonia for v in log.history("1.2.1")] == [True, False]
  # Another process's appends (an import) are seen by a running node's log.
  verdicts_lib.Verdicts(str(tmp_path)).record(verdict(3, True))
  assert set(log.current()) == {"1.2.1", "1.2.3"}
  with pytest.raises(verdicts_lib.VerdictError, match="not a SOP Instance UID"):
    log.record(verdicts_lib.Verdict("../x", True))
  assert site_log.current_verdicts(site_log.read_lines(log.path)[0]).keys() == {
      "1.2.1", "1.2.3"}


@pytest.fixture
def node_spool(released_model, tmp_path):
  """A spool with 6 films read by the released model (3 studies of 2)."""
  films = [dicom_files.study_film(120 + k, study=70 + k // 2) for k in range(6)]
  with running_node(released_model, tmp_path / "spool") as node:
    assert send(node.ports.dicom, films) == [0] * 6
    assert node.wait_idle(120)
  return str(tmp_path / "spool"), [str(pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID)
                                   for f in films]


def test_cxr_monitor_imports_readings_and_exports_no_patient_data(node_spool, tmp_path,
                                                                  capsys):
  spool, uids = node_spool
  readings = tmp_path / "ris.csv"
  readings.write_text("Accession_Number,Pneumonia,Subtype\nACC70,yes,viral\n"
                      "ACC71,no,\nACC99,yes,\n", encoding="utf-8")
  out = tmp_path / "site.json"
  run_main("cxr_edge.node.monitor", spool_dir=spool, import_verdicts=str(readings),
           since="2000-01-01", export=str(out))
  printed = capsys.readouterr().out
  assert "4 verdict(s) recorded from 3 row(s); 1 row(s) match no film read here" in printed
  report = json.loads(out.read_text())
  (model,) = report["models"]
  assert report["format"] == monitor_lib.EXPORT_FORMAT and report["films"] == 6
  assert (model["films"], model["with_verdict"]) == (6, 4)
  analysed = released.release()["external"]["figures"]["int8"]["images"]
  assert model["stated_source"].startswith(f"the released model's {analysed} external films")
  text = out.read_text()
  for secret in ("Test^Patient", "TEST-7", "ACC7", uids[0]):
    assert secret not in text  # counts and figures only
  csv_out = tmp_path / "site.csv"
  run_main("cxr_edge.node.monitor", spool_dir=spool, since="2000-01-01",
           export=str(csv_out))
  rows = list(csv.DictReader(open(csv_out, encoding="utf-8")))
  assert [r["figure"] for r in rows] == list(monitor_lib.FIGURES)
  bad = tmp_path / "bad.csv"
  bad.write_text("sop_instance_uid,pneumonia\n" + uids[0] + ",maybe\n", encoding="utf-8")
  with pytest.raises(SystemExit, match="line 2: .maybe. is not a verdict"):
    run_main("cxr_edge.node.monitor", spool_dir=spool, import_verdicts=str(bad))
  assert len(verdicts_lib.Verdicts(spool).current()) == 4  # nothing of it recorded


@pytest.mark.parametrize("text, says", [
    ("sop_instance_uid,pneumonia\n{0},yes\n{1},\n", "line 3: '' is not a verdict on "
     "pneumonia (yes or no; 'withdrawn' withdraws one)"),
    ("sop_instance_uid,pneumonia\n{0},yes\n{1},no\n{0},no\n", "lines 2 and 4 give "
     "sop_instance_uid '{0}' different verdicts"),
    ("sop_instance_uid,pneumonia,reader\n{0},yes,\"" + "x" * 200_000 + "\"\n",
     "line 2: not a CSV row (field larger than field limit"),
])
def test_an_import_that_is_not_clear_records_nothing(node_spool, tmp_path, text, says):
  spool, uids = node_spool
  bad = tmp_path / "bad.csv"
  bad.write_text(text.format(*uids), encoding="utf-8")
  with pytest.raises(SystemExit) as e:
    run_main("cxr_edge.node.monitor", spool_dir=spool, import_verdicts=str(bad))
  message = str(e.value.code)
  assert "\n" not in message and says.format(*uids) in message
  assert message.endswith("nothing was imported")
  assert verdicts_lib.Verdicts(spool).current() == {}


def test_an_import_withdraws_only_when_it_says_so_and_reads_as_it_goes(node_spool, tmp_path):
  import tracemalloc  # pylint: disable=g-import-not-at-top
  spool, uids = node_spool
  log = verdicts_lib.Verdicts(spool)
  log.record(verdicts_lib.Verdict(uids[0], True, reader="a"))
  big = tmp_path / "ris.csv"
  with open(big, "w", encoding="utf-8") as f:
    f.write(f"sop_instance_uid,pneumonia\n{uids[0]},withdrawn\n{uids[1]},no\n{uids[1]},no\n")
    f.writelines(f"2.25.{k},yes\n" for k in range(300_000))  # 9 MB of films not read here
  tracemalloc.start()
  try:
    done = verdicts_lib.import_csv(log, str(big), {}, uids)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert (done.recorded, done.rows, done.unmatched_count) == (2, 300_003, 300_000)
  assert len(done.unmatched) == 20 and peak < 4 * 2**20
  assert set(log.current()) == {uids[1]}  # the first withdrawn, the second once


def test_calibrate_from_spool_agrees_with_the_same_films_as_a_folder(
    released_model, tmp_path, capsys):
  # The sample's films as DICOM, sent to the node, their folders' labels as verdicts.
  sample = os.path.join(ROOT, "data", "sample")
  folder = tmp_path / "films"
  films, labels = [], []
  for label in ("NORMAL", "PNEUMONIA"):
    names = sorted(n for n in os.listdir(os.path.join(sample, label)) if n.endswith(
        ".jpeg"))[:12]
    os.makedirs(folder / label)
    for k, name in enumerate(names):
      from PIL import Image  # pylint: disable=g-import-not-at-top
      pixels = np.asarray(Image.open(os.path.join(sample, label, name)).convert("L"),
                          np.uint16) * 16
      data = dicom_files.encode_dicom(pixels, bits=12, window=(2048, 4096), attributes={
          "SOPInstanceUID": f"2.25.{5000 + len(films)}", "StudyInstanceUID":
          f"2.25.{6000 + len(films)}", "SeriesInstanceUID": f"2.25.{7000 + len(films)}",
          "PatientID": f"P{len(films)}"})
      data = dicom_files.rewritten(data, _same_meta)
      (folder / label / f"{label}_{k}.dcm").write_bytes(data)
      films.append(data)
      labels.append(label == "PNEUMONIA")
  with running_node(released_model, tmp_path / "spool") as node:
    assert send(node.ports.dicom, films) == [0] * len(films)
    assert node.wait_idle(180)
  log = verdicts_lib.Verdicts(str(tmp_path / "spool"))
  log.append(verdicts_lib.Verdict(f"2.25.{5000 + k}", truth, None, "test")
             for k, truth in enumerate(labels))
  model = runtime.LiteModel(released_model)
  # 12 + 12 films are too few to move a threshold for patients: an experiment here.
  from_folder = calibrate_lib.calibrate(released_model, str(folder), str(tmp_path / "a"),
                                        allow_few_films=True)
  from_spool = calibrate_lib.calibrate(released_model, None, str(tmp_path / "b"),
                                       from_spool=str(tmp_path / "spool"),
                                       allow_few_films=True)
  assert from_spool["few_films"] == from_folder["few_films"] and from_spool["few_films"]
  assert from_spool["films"] == from_folder["films"] == 24
  assert from_spool["threshold"] == pytest.approx(from_folder["threshold"], abs=1e-5)
  for at in ("at_previous", "at_new"):
    for k in ("sensitivity", "specificity", "accuracy"):
      assert from_spool["measured"][at][k] == pytest.approx(from_folder["measured"][at][k])
  assert from_spool["from_spool"] and model.sha256
  other = tmp_path / "other_spool"  # another model's films only
  other.mkdir()
  (other / site_log.AUDIT_NAME).write_text(json.dumps(line(1, "NORMAL", 0.1)) + "\n")
  with pytest.raises(errors.CalibrationError, match=f"has a reader's verdict; its films "
                     f"were read by {SHA[:12]}: give that model as --model"):
    calibrate_lib.calibrate(released_model, None, str(tmp_path / "c"),
                            from_spool=str(other))


def _same_meta(ds) -> None:
  ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def test_a_verdict_posted_survives_a_kill_9_and_a_restart(released_model, tmp_path):
  """The node as a process: a reader's verdict, acknowledged by the page, is on disk."""
  from scripts import orthanc  # pylint: disable=g-import-not-at-top  # free_port
  spool = str(tmp_path / "spool")
  dicom_port, http_port = orthanc.free_port(), orthanc.free_port()
  args = [sys.executable, "-m", "cxr_edge.node.node", f"--spool_dir={spool}",
          f"--model={released_model}", "--host=127.0.0.1", f"--port={dicom_port}",
          f"--http_port={http_port}"]
  base = f"http://127.0.0.1:{http_port}"

  def start():
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
      try:
        urllib.request.urlopen(base + "/status.json", timeout=5).read()
        return process
      except OSError:
        time.sleep(0.2)
    process.kill()
    raise AssertionError("the node did not start")

  process = start()
  try:
    film = dicom_files.study_film(140)
    uid = str(pydicom.dcmread(io.BytesIO(film)).SOPInstanceUID)
    assert send(dicom_port, [film]) == [0]
    assert until(lambda: os.path.exists(os.path.join(spool, "results", uid + ".json")), 60)
    page = urllib.request.urlopen(base + "/reader", timeout=30).read().decode()
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    opener = urllib.request.build_opener(_NoRedirect)
    headers = {"Origin": base, "Content-Type": "application/x-www-form-urlencoded"}

    def post(path, fields, cookie=""):
      request = urllib.request.Request(base + path, urllib.parse.urlencode(
          fields).encode(), {**headers, "Cookie": cookie}, method="POST")
      try:
        return opener.open(request, timeout=30)
      except urllib.error.HTTPError as e:
        return e
    answer = post("/reader", {"reader": "Dr Kill", "csrf": csrf})
    cookie = answer.headers["Set-Cookie"].split(";")[0]
    assert answer.status == 303
    assert post("/verdict", {"uid": uid, "verdict": "no", "csrf": "wrong"},
                cookie).status == 403
    assert post("/verdict", {"uid": uid, "verdict": "bacterial", "csrf": csrf},
                cookie).status == 303
    process.send_signal(signal.SIGKILL)
    process.wait()
    process = start()
    page = urllib.request.urlopen(f"{base}/film/{uid}", timeout=30).read().decode()
    assert "pneumonia (bacterial)" in page and "Dr Kill" in page
  finally:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
  def redirect_request(self, *args, **kwargs):  # the 303 itself is the answer
    return None


def test_calibrate_from_a_tampered_audit_log_uses_only_real_probabilities(released_model,
                                                                          tmp_path, caplog):
  sha = runtime.LiteModel(released_model).sha256
  spool = tmp_path / "spool"
  os.makedirs(spool)
  rng = np.random.default_rng(0)
  lines, verdicts = [], []
  for k in range(120):
    truth = k % 2 == 1
    p = float(np.clip(rng.normal(0.8 if truth else 0.2, 0.1), 0.01, 0.99))
    lines.append({"sop_instance_uid": f"2.25.{k}", "model_sha256": sha, "prediction":
                  "PNEUMONIA" if p >= 0.375 else "NORMAL", "p_pneumonia": p,
                  "p_bacterial": p / 2, "p_viral": p / 2})
    verdicts.append(verdicts_lib.Verdict(f"2.25.{k}", truth, None, "test"))
  for k, (p, b) in enumerate([(1.7, 0.85), (-0.2, 0.1), (float("nan"), 0.1), (True, 0.5),
                              ("0.5", 0.25), (0.9, "x")]):
    uid = f"2.25.{900 + k}"
    lines.append({"sop_instance_uid": uid, "model_sha256": sha, "prediction": "NORMAL",
                  "p_pneumonia": p, "p_bacterial": b, "p_viral": 0.1})
    verdicts.append(verdicts_lib.Verdict(uid, True, None, "test"))  # would drag AUC down
  with open(spool / site_log.AUDIT_NAME, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(line) + "\n" for line in lines)
  verdicts_lib.Verdicts(str(spool)).append(verdicts)
  with caplog.at_level("WARNING"):
    record = calibrate_lib.calibrate(released_model, None, str(tmp_path / "site"),
                                     from_spool=str(spool), rule="youden")
  assert record["films"] == 120
  assert record["measured"]["at_new"]["roc_auc"] == pytest.approx(1.0)
  assert "6 audit line(s) of this model left out" in caplog.text
  # The site figures leave out a p_pneumonia that is not a probability too.
  assert not any(monitor_lib.read_of(json.loads(json.dumps(line))).analysed
                 for line in lines[-6:-1])


def test_forms_work_behind_the_stated_reverse_proxy_and_go_back_only_to_own_pages(
    released_model, tmp_path):
  public = "https://pacs-ai.hospital.example"
  film = dicom_files.study_film(141)
  uid = str(pydicom.dcmread(io.BytesIO(film)).SOPInstanceUID)
  with running_node(released_model, tmp_path / "spool", http_port=0,
                    public_url=node_config.public_origin(public + "/")) as node:
    assert send(node.ports.dicom, [film]) == [0]
    assert node.wait_idle(120)
    base = f"http://127.0.0.1:{node.ports.http}"
    page = urllib.request.urlopen(base + "/reader", timeout=30).read().decode()
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    opener = urllib.request.build_opener(_NoRedirect)

    def post(path, fields, origin, host=None, cookie=""):
      headers = {"Origin": origin, "Content-Type": "application/x-www-form-urlencoded",
                 "Cookie": cookie, **({"Host": host} if host else {})}
      request = urllib.request.Request(base + path, urllib.parse.urlencode(fields).encode(),
                                       headers, method="POST")
      try:
        return opener.open(request, timeout=30)
      except urllib.error.HTTPError as e:
        return e

    # As a proxy sends it: the browser's Origin, and the upstream or the public Host.
    answer = post("/reader", {"reader": "Dr Proxy", "csrf": csrf}, public)
    assert answer.status == 303
    cookie = answer.headers["Set-Cookie"].split(";")[0]
    for host in (None, "pacs-ai.hospital.example"):
      answer = post("/verdict", {"uid": uid, "verdict": "no", "csrf": csrf,
                                 "back": "/?flagged=1"}, public, host, cookie)
      assert (answer.status, answer.headers["Location"]) == (303, "/?flagged=1")
    for origin in ("https://evil.example", "http://pacs-ai.hospital.example",
                   "https://pacs-ai.hospital.example:8443"):
      assert post("/verdict", {"uid": uid, "verdict": "no", "csrf": csrf}, origin,
                  cookie=cookie).status == 403
    for back in ("//other.host/", "https://other.host/", "/\r\nSet-Cookie: x=1",
                 "/film/1.2.3/../../x", "/nowhere"):
      answer = post("/verdict", {"uid": uid, "verdict": "no", "csrf": csrf, "back": back},
                    public, cookie=cookie)
      assert (answer.status, answer.headers["Location"]) == (303, "/"), back
      assert "x=1" not in str(answer.headers)
  with pytest.raises(ValueError, match="not the page's public address"):
    node_config.public_origin("pacs-ai.hospital.example/review")
  assert node_config.public_origin("HTTPS://Pacs-AI.example:443/") == "https://pacs-ai.example"
