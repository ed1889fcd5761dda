"""cxr-node in-process: pynetdicom as the sending modality and as the PACS it forwards to,
on loopback; the spool's crash repairs; the review page over HTTP."""
import concurrent.futures
import contextlib
import html
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pydicom
import pytest

pynetdicom = pytest.importorskip("pynetdicom", reason="cxr-edge[node] is not installed")
pytest.importorskip("highdicom", reason="cxr-edge[node] is not installed")

# pylint: disable=g-import-not-at-top,wrong-import-position
from pynetdicom import AE, evt
from pynetdicom import sop_class

from cxr_edge.core import errors
from cxr_edge.edge import runtime
from cxr_edge.node import dicom
from cxr_edge.node import node_config
from cxr_edge.node import node_lib
from cxr_edge.node import report
from cxr_edge.node import review
from cxr_edge.node import spool as spool_lib
from tests import dicom_files
from tests.conftest import ROOT, run_main
# pylint: enable=g-import-not-at-top,wrong-import-position


class Pacs:
  """A DICOM destination on loopback that keeps what it is sent (or refuses it)."""

  def __init__(self, status: int = 0x0000, ae_title: str = "PACS",
               classes=dicom.REPORT_CLASSES):
    self.status, self.ae_title, self.classes, self.received = status, ae_title, classes, []
    self._lock = threading.Lock()
    self._server = None

  def _on_store(self, event):
    with self._lock:
      if self.status == 0x0000:
        self.received.append(event.dataset)
    return self.status

  def start(self, port: int = 0) -> "Pacs":
    ae = AE(ae_title=self.ae_title)
    for cls in self.classes:
      ae.add_supported_context(cls)
    self._server = ae.start_server(("127.0.0.1", port), block=False,
                                   evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
    self.port = self._server.server_address[1]
    return self

  def stop(self) -> None:
    if self._server is not None:
      self._server.shutdown()
      self._server = None

  @property
  def address(self) -> str:
    return f"{self.ae_title}@127.0.0.1:{self.port}"

  def reports(self):
    return [d for d in self.received if d.Modality == "SR"]


@contextlib.contextmanager
def running_node(model, spool_dir, **options):
  """A node on loopback; without the result card unless asked (tests count reports)."""
  options = {"host": "127.0.0.1", "port": 0, "result_card": False, **options}
  node = node_lib.Node(node_config.NodeOptions(model=model, spool_dir=str(spool_dir),
                                               **options))
  node.ports = node.start()
  try:
    yield node
  finally:
    node.stop()


def send(port, films, calling="XRAY1", called="CXR_EDGE", classes=None):
  """C-STOREs each film (bytes) over one association; returns the statuses."""
  ae = AE(ae_title=calling)
  for cls in classes or (sop_class.DigitalXRayImageStorageForPresentation,
                         sop_class.SecondaryCaptureImageStorage):
    ae.add_requested_context(cls)
  assoc = ae.associate("127.0.0.1", port, ae_title=called)
  assert assoc.is_established, "association refused"
  try:
    return [assoc.send_c_store(pydicom.dcmread(io.BytesIO(f))).Status for f in films]
  finally:
    assoc.release()


def audit(spool_dir):
  return list(spool_lib.iter_lines(os.path.join(spool_dir, spool_lib.AUDIT_NAME)))


def test_films_in_reports_out_as_cxr_predict_decides(released_model, tmp_path):
  model = released_model
  films = [dicom_files.study_film(i, study=1 + i % 2) for i in range(4)]
  pacs = Pacs().start()
  try:
    with running_node(model, tmp_path / "spool", forward=pacs.address,
                      allow_ae=("XRAY1", "XRAY2")) as node:
      # Two modalities at once, and the first film sent twice.
      with concurrent.futures.ThreadPoolExecutor(2) as pool:
        a = pool.submit(send, node.ports.dicom, films[:2] + films[:1], "XRAY1")
        b = pool.submit(send, node.ports.dicom, films[2:], "XRAY2")
        statuses = a.result() + b.result()
      assert statuses == [0x0000] * 5
      assert node.wait_idle(120)
  finally:
    pacs.stop()
  lite = runtime.LiteModel(model)
  by_film = {report.describe(r)["source"]: r for r in pacs.reports()}
  assert len(pacs.reports()) == 4 and len(by_film) == 4  # one report per film, not five
  for data in films:
    film = pydicom.dcmread(io.BytesIO(data))
    sr = by_film[film.SOPInstanceUID]
    expected = lite.predict_bytes(data)
    found = report.describe(sr)
    assert found["Probability of pneumonia"] == pytest.approx(expected["p_pneumonia"],
                                                              abs=1e-6)
    assert found["Decision threshold"] == pytest.approx(lite.threshold)
    assert found["finding"] == ("Present" if expected["prediction"] == "PNEUMONIA"
                                else "Absent")
    assert any(c.startswith("CAUTION: Not for Diagnostic Use") for c in found["comments"])
    # In the film's study and patient, in a series of its own.
    assert sr.StudyInstanceUID == film.StudyInstanceUID
    assert sr.PatientName == film.PatientName and sr.PatientID == film.PatientID
    assert sr.SeriesInstanceUID != film.SeriesInstanceUID
    assert "not for diagnostic use" in sr.SeriesDescription
  lines = audit(tmp_path / "spool")
  assert sorted(line["sop_instance_uid"] for line in lines) == sorted(
      pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID for f in films)
  text = open(tmp_path / "spool" / spool_lib.AUDIT_NAME, encoding="utf-8").read()
  assert "Test^Patient" not in text and "TEST-1" not in text  # no name or id in clear
  assert {line["model_sha256"] for line in lines} == {lite.sha256}


def flat_film():
  """A grey DICOM that is no radiograph (one grey level): the guard flags it."""
  return dicom_files.encode_dicom(np.full((64, 64), 128, np.uint8), attributes={
      "StudyInstanceUID": "2.25.77", "SeriesInstanceUID": "2.25.78"})


def colour_film():
  """A colour DICOM: not a film the model can take at all."""
  return dicom_files.encode_dicom(
      np.stack([np.full((64, 64), v, np.uint8) for v in (200, 30, 30)], -1),
      photometric="RGB", attributes={"StudyInstanceUID": "2.25.79",
                                     "SeriesInstanceUID": "2.25.80"})


def test_what_is_refused_and_what_is_reported_and_the_node_goes_on(released_model, tmp_path):
  model = released_model
  good = dicom_files.study_film(10)
  no_study = dicom_files.rewritten(dicom_files.study_film(11),
                                   dicom_files.drop("StudyInstanceUID"))
  bad_uid = dicom_files.rewritten(dicom_files.study_film(12),
                                  lambda ds: setattr(ds, "SOPInstanceUID", "1.2.3/../x"))
  # Well-formed, but its pixel data is a third of what Rows x Columns need.
  truncated = dicom_files.rewritten(
      dicom_files.study_film(13), lambda ds: setattr(ds, "PixelData", ds.PixelData[:5000]))
  colour, flat = colour_film(), flat_film()
  with running_node(model, tmp_path / "spool", allow_ae=("XRAY1",)) as node:
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(sop_class.DigitalXRayImageStorageForPresentation)
    assert not ae.associate("127.0.0.1", node.ports.dicom, ae_title="CXR_EDGE").is_established
    assert not ae.associate("127.0.0.1", node.ports.dicom, ae_title="OTHER").is_established
    ct = AE(ae_title="XRAY1")
    ct.add_requested_context(sop_class.CTImageStorage)
    assoc = ct.associate("127.0.0.1", node.ports.dicom, ae_title="CXR_EDGE")
    assert assoc.accepted_contexts == []  # a CT is not a film for this node
    assoc.release()
    statuses = send(node.ports.dicom, [no_study, bad_uid, truncated, colour, flat, good])
    assert statuses == [dicom.NOT_A_FILM, dicom.NOT_A_FILM] + [0x0000] * 4
    assert node.wait_idle(120)
  records = {r["sop_instance_uid"]: r for r in audit(tmp_path / "spool")}
  assert len(records) == 4
  uid = lambda data: pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID  # noqa: E731
  assert records[uid(truncated)]["error"] and records[uid(truncated)]["prediction"] is None
  assert "colour" in records[uid(colour)]["error"]
  assert records[uid(flat)]["error"].startswith("near-constant image")
  assert records[uid(flat)]["prediction"] is None
  assert records[uid(good)]["prediction"] in ("NORMAL", "PNEUMONIA")
  for film, reason in ((truncated, ""), (flat, "near-constant image")):
    found = report.describe(pydicom.dcmread(
        tmp_path / "spool" / "reports" / f"{uid(film)}.sr.dcm"))
    assert "finding" not in found and "Probability of pneumonia" not in found
    assert found["comments"][0].startswith("NOT ANALYSED: " + reason)


def test_our_own_overlay_routed_back_is_acknowledged_and_not_read(released_model, tmp_path):
  with running_node(released_model, tmp_path / "spool", overlay=True) as node:
    film = dicom_files.study_film(45)
    assert send(node.ports.dicom, [film]) == [0x0000]
    assert node.wait_idle(120)
    uid = pydicom.dcmread(io.BytesIO(film)).SOPInstanceUID
    overlay = open(tmp_path / "spool" / "reports" / f"{uid}.sc.dcm", "rb").read()
    assert send(node.ports.dicom, [overlay]) == [0x0000]
    assert node.wait_idle(120)
  assert [line["sop_instance_uid"] for line in audit(tmp_path / "spool")] == [uid]


def test_a_widened_use_warns_first_and_strict_refuses_what_it_would_warn(released_model,
                                                                        tmp_path):
  adult = dicom_files.study_film(20, PatientAge="030Y")
  with running_node(released_model, tmp_path / "wide", intended_ages=(0, 40),
                    widen_intended_use=True) as node:
    assert send(node.ports.dicom, [adult]) == [0x0000]
    assert node.wait_idle(120)
  (line,) = audit(tmp_path / "wide")
  assert line["prediction"] and line["warning"].startswith("outside the model's intended use")
  uid = pydicom.dcmread(io.BytesIO(adult)).SOPInstanceUID
  found = report.describe(pydicom.dcmread(tmp_path / "wide" / "reports" / f"{uid}.sr.dcm"))
  assert found["comments"][0].startswith("WARNING: outside the model's intended use")
  assert found["summary"].startswith("AI triage: WARNING: outside the model's intended use")
  with running_node(released_model, tmp_path / "strict", intended_ages=(0, 40),
                    widen_intended_use=True, strict=True) as node:
    assert send(node.ports.dicom, [adult]) == [0x0000]
    assert node.wait_idle(120)
  (line,) = audit(tmp_path / "strict")
  assert line["prediction"] is None and "--strict" in line["error"]
  with pytest.raises(errors.ConfigError, match="--widen_intended_use"):
    node_lib.Node(node_config.NodeOptions(model=released_model, intended_ages=(0, 40),
                                          spool_dir=str(tmp_path / "refused"), port=0))


def test_a_spool_below_its_reserve_refuses_with_out_of_resources(released_model, tmp_path):
  with running_node(released_model, tmp_path / "spool", min_free_mb=2**40) as node:
    assert send(node.ports.dicom, [dicom_files.study_film(1)]) == [dicom.OUT_OF_RESOURCES]
    assert node.spool.pending() == [] and audit(tmp_path / "spool") == []
    ae = AE(ae_title="XRAY1")
    ae.add_requested_context(sop_class.Verification)
    assoc = ae.associate("127.0.0.1", node.ports.dicom, ae_title="CXR_EDGE")
    assert assoc.send_c_echo().Status == 0x0000  # still answering
    assoc.release()


def test_a_second_node_on_the_same_spool_is_refused(released_model, tmp_path):
  with running_node(released_model, tmp_path / "spool"):
    with pytest.raises(errors.CxrError, match="in use by another process"):
      node_lib.Node(node_config.NodeOptions(model=released_model,
                                            spool_dir=str(tmp_path / "spool"), port=0))


def test_reports_wait_for_a_pacs_that_is_down_also_across_a_restart(released_model, tmp_path):
  model, spool_dir = released_model, tmp_path / "spool"
  pacs = Pacs().start()
  port = pacs.port
  pacs.stop()  # down from the start
  films = [dicom_files.study_film(20 + i) for i in range(3)]
  with running_node(model, spool_dir, forward=f"PACS@127.0.0.1:{port}") as node:
    assert send(node.ports.dicom, films) == [0x0000] * 3
    assert not node.wait_idle(3)  # the films are read, the reports cannot leave
    assert len(node.spool.outbox()) == 3 and node.forwarder.backoff > 0
  pacs = Pacs().start(port)  # back up; the node is restarted
  try:
    with running_node(model, spool_dir, forward=f"PACS@127.0.0.1:{port}") as node:
      assert node.wait_idle(60)  # the forwarder found them waiting and sent them
  finally:
    pacs.stop()
  assert len(pacs.reports()) == 3
  sent = list(spool_lib.iter_lines(os.path.join(spool_dir, spool_lib.FORWARDED_NAME)))
  assert len(sent) == 3 and len(audit(spool_dir)) == 3


def _refused_by(pacs, released_model, tmp_path, refusals):
  """One film's report offered to `pacs` `refusals` times by a node whose forwarder is
  driven by hand (the node is not started); returns the outbox after each attempt and
  the dead-letter folder's files."""
  node = node_lib.Node(node_config.NodeOptions(
      model=released_model, spool_dir=str(tmp_path / "spool"), port=0,
      forward=pacs.address, forward_refusals=refusals, result_card=False))
  outboxes = []
  try:
    node.process(_queue(node.spool, dicom_files.study_film(30)))
    for _ in range(refusals):
      assert node.forwarder.send_pending() == 0
      outboxes.append(len(node.spool.outbox()))
  finally:
    node.stop()
    pacs.stop()
  folder = tmp_path / "spool" / "dead_letter"
  return outboxes, {name: (folder / name).read_bytes() for name in os.listdir(folder)}


def test_a_report_the_pacs_refuses_goes_to_the_dead_letter_folder(released_model, tmp_path):
  outboxes, dead = _refused_by(Pacs(status=0xA900).start(), released_model, tmp_path, 2)
  assert outboxes == [1, 0]  # refused once: it stays; twice: it goes
  (report_name,) = [n for n in dead if n.endswith(".sr.dcm")]
  reason = dead[report_name + ".reason.txt"].decode()
  assert "refused it 2 times" in reason and "status A900" in reason


def test_a_pacs_that_takes_no_structured_reports_is_a_refusal_not_an_outage(released_model,
                                                                            tmp_path):
  pacs = Pacs(classes=(sop_class.SecondaryCaptureImageStorage,)).start()
  outboxes, dead = _refused_by(pacs, released_model, tmp_path, 1)
  assert outboxes == [0]
  (reason,) = [v.decode() for n, v in dead.items() if n.endswith(".txt")]
  assert "accepts no presentation context" in reason


def test_overlay_goes_out_as_a_secondary_capture_in_the_study(released_model, tmp_path):
  pacs = Pacs().start()
  try:
    with running_node(released_model, tmp_path / "spool", forward=pacs.address,
                      overlay=True) as node:
      film = dicom_files.study_film(40)
      assert send(node.ports.dicom, [film]) == [0x0000]
      assert node.wait_idle(120)
  finally:
    pacs.stop()
  (sc,) = [d for d in pacs.received if d.Modality != "SR"]
  source = pydicom.dcmread(io.BytesIO(film))
  assert sc.SOPClassUID == sop_class.SecondaryCaptureImageStorage
  assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.BurnedInAnnotation == "YES"
  assert sc.pixel_array.ndim == 3 and sc.pixel_array.std() > 0


# The spool's crash repairs, state by state ----------------------------------------------

def _queue(spool, data):
  path = os.path.join(spool.root, "received.tmp")
  with open(path, "wb") as f:
    f.write(data)
  uid = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
  assert spool.admit(path, uid)
  os.unlink(path)
  return uid


def test_a_film_whose_result_was_written_before_a_crash_is_not_redone(released_model, tmp_path):
  model = released_model
  options = node_config.NodeOptions(model=model, spool_dir=str(tmp_path / "s"), port=0)
  node = node_lib.Node(options)
  uid = _queue(node.spool, dicom_files.study_film(50))
  record = node.process(uid)
  # A crash after the audit line and before the film left the queue: it is back in it.
  os.replace(node.spool.path("films", uid + ".dcm"), node.spool.path("incoming", uid + ".dcm"))
  os.unlink(node.spool.path("results", uid + ".json"))
  node.process_pending()
  assert [line["sop_instance_uid"] for line in audit(tmp_path / "s")] == [uid]
  assert node.spool.result(uid)["report_sop_instance_uid"] == record["report_sop_instance_uid"]
  node.stop()


def test_retention_removes_old_films_and_reports_and_keeps_records_and_the_queue(
    released_model, tmp_path):
  model = released_model
  node = node_lib.Node(node_config.NodeOptions(
      model=model, spool_dir=str(tmp_path / "s"), port=0, keep_days=2, overlay=True,
      result_card=False))
  try:
    old, new = (_queue(node.spool, dicom_files.study_film(s)) for s in (55, 56))
    node.process(old)
    node.process(new)
    queued = _queue(node.spool, dicom_files.study_film(57))
    three_days_ago = time.time() - 3 * 86400
    for folder, name in (("films", old + ".dcm"), ("reports", old + ".sr.dcm"),
                         ("reports", old + ".sc.dcm"), ("overlays", old + ".png"),
                         ("incoming", queued + ".dcm")):
      os.utime(node.spool.path(folder, name), (three_days_ago, three_days_ago))
    assert node.prune() == 4
    left = {f: sorted(os.listdir(node.spool.path(f))) for f in ("films", "reports")}
    assert left == {"films": [new + ".dcm"],
                    "reports": [new + ".sc.dcm", new + ".sr.dcm"]}
    assert node.spool.pending() == [queued]  # the queue is never pruned
    assert node.spool.result(old) is not None  # nor the records
  finally:
    node.stop()


def test_a_half_written_audit_line_is_cut_at_restart(tmp_path):
  spool = spool_lib.Spool(str(tmp_path))
  spool.audit_once({"sop_instance_uid": "1.2.3"})
  with open(tmp_path / spool_lib.AUDIT_NAME, "a", encoding="utf-8") as f:
    f.write('{"sop_instance_uid": "1.2.')  # kill -9 mid-write
  spool_lib.Spool(str(tmp_path))
  spool = spool_lib.Spool(str(tmp_path))
  spool.audit_once({"sop_instance_uid": "1.2.4"})
  assert [r["sop_instance_uid"] for r in spool_lib.iter_lines(
      str(tmp_path / spool_lib.AUDIT_NAME))] == ["1.2.3", "1.2.4"]
  assert (tmp_path / (spool_lib.AUDIT_NAME + ".damaged")).read_text() == (
      '{"sop_instance_uid": "1.2.\n')  # set aside, not lost


def test_a_verdict_cut_off_mid_line_is_set_aside_and_the_next_one_counts(tmp_path):
  from cxr_edge.node import verdicts as verdicts_lib  # pylint: disable=g-import-not-at-top
  log = verdicts_lib.Verdicts(str(tmp_path))
  log.record(verdicts_lib.Verdict("1.2.3", True, reader="a"))
  with open(log.path, "a", encoding="utf-8") as f:
    f.write('{"sop_instance_uid": "1.2.4", "pneu')  # kill -9 mid-write
  again = verdicts_lib.Verdicts(str(tmp_path))
  again.record(verdicts_lib.Verdict("1.2.5", False, reader="b"))
  assert set(again.current()) == {"1.2.3", "1.2.5"}
  assert all(line.endswith("}") for line in open(log.path).read().splitlines())
  assert open(log.path + ".damaged").read() == '{"sop_instance_uid": "1.2.4", "pneu\n'


def test_partial_datasets_of_cut_associations_are_cleared_and_others_kept(tmp_path):
  os.makedirs(tmp_path / "receiving")
  for name in ("tmpab12.dcm", "notes.txt"):
    (tmp_path / "receiving" / name).write_bytes(b"x")
  spool_lib.Spool(str(tmp_path))
  assert os.listdir(tmp_path / "receiving") == ["notes.txt"]


@pytest.mark.parametrize("text", ["1.2.840.10008", "2.25.1234"])
def test_uids_name_files_only_when_well_formed(text):
  assert spool_lib.is_uid(text)


@pytest.mark.parametrize("text", ["", "1..2", "../etc", "1.2.3/4", "1" * 65, None, "1.2\n"])
def test_malformed_uids_are_not_file_names(text):
  assert not spool_lib.is_uid(text)


@pytest.mark.parametrize("text,why", [("PACS@host", "AE@host:port"),
                                      ("@host:1", "AE@host:port"),
                                      ("PACS@host:70000", "outside"),
                                      ("WAY_TOO_LONG_AE_TITLE@h:1", "not an AE title")])
def test_a_malformed_destination_is_one_clear_error(text, why):
  with pytest.raises(errors.ConfigError, match=why):
    node_config.Destination.parse(text)


@pytest.mark.parametrize("flags,why", [
    ({"listen": False}, "--nolisten needs --query"),
    ({"listen": False, "query": "PACS@h:1", "retrieve": "move"}, "--retrieve=move needs"),
    ({"query": "PACS@h"}, "AE@host:port"),
    ({"query": "PACS@h:1", "query_ae_title": "A\\B"}, "not an AE title")])
def test_catch_up_flags_that_cannot_work_are_one_clear_error(flags, why):
  with pytest.raises(errors.ConfigError, match=why):
    node_config.NodeOptions(spool_dir="/nowhere", **flags)


def test_a_destination_parses_names_and_ipv6():
  assert str(node_config.Destination.parse("PACS@pacs.local:4242")) == "PACS@pacs.local:4242"
  assert node_config.Destination.parse("PACS@[::1]:104").host == "::1"


# The review page over HTTP --------------------------------------------------------------

HOSTILE_NAME = "<script>document.title='pwned'</script>^<img src=x onerror=alert(1)>"
HOSTILE_SERIES = "\"><b>bold</b><a href=\"javascript:alert(2)\">x</a>"


def hostile_film(seed=60):
  return dicom_files.study_film(seed, PatientName=HOSTILE_NAME,
                                SeriesDescription=HOSTILE_SERIES)


def _get(url, headers=None):
  request = urllib.request.Request(url, headers=headers or {})
  with urllib.request.urlopen(request, timeout=30) as response:
    return response.status, dict(response.headers), response.read()


def test_review_page_lists_films_newest_first_with_every_string_escaped(released_model, tmp_path):
  with running_node(released_model, tmp_path / "spool", http_port=0) as node:
    films = [dicom_files.study_film(61), hostile_film()]
    for film in films:  # one association each: the second arrives later
      assert send(node.ports.dicom, [film]) == [0x0000]
      assert node.wait_idle(120)
    base = f"http://127.0.0.1:{node.ports.http}"
    status, headers, body = _get(base + "/")
    page = body.decode()
    assert status == 200 and "default-src 'none'" in headers["Content-Security-Policy"]
    assert "<script" not in page and "<img src=x" not in page and "<b>bold" not in page
    # As a person name reads ("=" starts another group of a DICOM name), escaped.
    assert html.escape(review.person_name(HOSTILE_NAME)) in page
    assert "&lt;script&gt;document.title" in page
    assert "&quot;&gt;&lt;b&gt;bold&lt;/b&gt;" in page
    uids = [pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID for f in films]
    assert page.index(uids[1]) < page.index(uids[0])  # newest first
    assert 'http-equiv="refresh"' in page
    status, _, body = _get(f"{base}/film/{uids[1]}")
    assert status == 200 and f'src="/film/{uids[1]}.png"' in body.decode()
    status, headers, png = _get(f"{base}/film/{uids[1]}.png")
    assert headers["Content-Type"] == "image/png" and png.startswith(b"\x89PNG")
    for path in ("/film/..%2F..%2Fetc%2Fpasswd", "/film/1.2.3.png", "/overlay/x.png",
                 "/nothing"):
      with pytest.raises(urllib.error.HTTPError) as e:
        _get(base + path)
      assert e.value.code == 404


def test_the_worklist_reads_only_the_newest_records(tmp_path):
  spool = spool_lib.Spool(str(tmp_path))
  for k in range(5):
    uid = f"1.2.{k}"
    spool_lib.write_atomic(spool.path("results", uid + ".json"), json.dumps(
        {"sop_instance_uid": uid, "received_ns": k}).encode())
    os.utime(spool.path("results", uid + ".json"), ns=(k * 10**9, k * 10**9))
  assert [r["sop_instance_uid"] for r in spool.recent(2)] == ["1.2.4", "1.2.3"]


def test_review_page_off_loopback_needs_its_token(released_model, tmp_path):
  token_file = tmp_path / "token"
  token_file.write_text("a-long-enough-secret-token\n")
  # 127.0.0.2 is a loopback address too, but not the one the node treats as private.
  with running_node(released_model, tmp_path / "spool", http_port=0,
                    http_host="127.0.0.2", http_token_file=str(token_file)) as node:
    base = f"http://127.0.0.2:{node.ports.http}"
    with pytest.raises(urllib.error.HTTPError) as e:
      _get(base + "/")
    assert e.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as e:
      _get(base + "/?token=wrong")
    assert e.value.code == 401
    status, _, _ = _get(base + "/", {"Authorization": "Bearer a-long-enough-secret-token"})
    assert status == 200
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open(base + "/?token=a-long-enough-secret-token", timeout=30) as response:
      assert response.status == 200 and response.url == base + "/"  # token out of the URL
    with opener.open(base + "/worklist.json", timeout=30) as response:
      assert json.loads(response.read()) == []


def test_review_page_off_loopback_makes_a_private_token_when_none_is_given(released_model,
                                                                            tmp_path):
  with running_node(released_model, tmp_path / "spool", http_port=0,
                    http_host="127.0.0.2") as node:
    path = tmp_path / "spool" / node_lib.TOKEN_NAME
    token = path.read_text().strip()
    assert len(token) >= 16 and (os.stat(path).st_mode & 0o077) == 0
    status, _, _ = _get(f"http://127.0.0.2:{node.ports.http}/",
                        {"Authorization": f"Bearer {token}"})
    assert status == 200


# The job ------------------------------------------------------------------------------

@pytest.mark.parametrize("flags,says", [
    ({"forward": "PACS@nowhere"}, "is not AE@host:port"),
    ({"ae_title": "A\\B"}, "is not an AE title"),
])
def test_a_bad_option_is_one_line_before_anything_starts(flags, says, tmp_path):
  with pytest.raises(SystemExit, match=f"^cxr-node: error: .*{says}"):
    run_main("cxr_edge.node.node", model="m.tflite", spool_dir=str(tmp_path / "s"), **flags)
  assert not os.path.exists(tmp_path / "s")  # nothing was created


def test_a_bad_allow_list_is_one_line_on_the_command_line(tmp_path):
  r = subprocess.run([sys.executable, "-m", "cxr_edge.node.node", "--model=m.tflite",
                      f"--spool_dir={tmp_path}/s", "--allow_ae=PACS,THIS_TITLE_IS_TOO_LONG"],
                     cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  # absl's own flag error, as for every job's flags.
  assert r.returncode == 1 and "Traceback" not in r.stderr
  assert ("flag --allow_ae=PACS,THIS_TITLE_IS_TOO_LONG: 'THIS_TITLE_IS_TOO_LONG' is not an "
          "AE title") in r.stderr.splitlines()[0]


def test_a_missing_model_is_one_line(tmp_path):
  with pytest.raises(SystemExit, match="^cxr-node: error: model .*cannot be read"):
    run_main("cxr_edge.node.node", model=str(tmp_path / "none.tflite"),
             spool_dir=str(tmp_path / "s"))


def test_without_the_node_extra_the_job_names_it(tmp_path):
  code = ("import runpy, sys\n"
          "sys.modules['pynetdicom'] = None  # as in an [edge] install\n"
          f"sys.argv = ['cxr-node', '--model=m.tflite', '--spool_dir={tmp_path}/s']\n"
          "runpy.run_module('cxr_edge.node.node', run_name='__main__')\n")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                     timeout=120, check=False)
  assert r.returncode == 1 and r.stderr.strip().splitlines() == [
      "cxr-node: error: cxr-node needs the DICOM network libraries (pynetdicom is missing): "
      "pip install 'cxr-edge[node]'"]


def test_a_three_class_model_reports_its_subtype_in_the_sr_records_and_review(
    released_model, tmp_path):
  model = released_model
  films = [dicom_files.study_film(i, study=1) for i in range(3)]
  pacs = Pacs().start()
  try:
    with running_node(model, tmp_path / "spool", forward=pacs.address, http_port=0) as node:
      assert send(node.ports.dicom, films) == [0x0000] * 3
      assert node.wait_idle(120)
      page = _get(f"http://127.0.0.1:{node.ports.http}/")[2].decode()
  finally:
    pacs.stop()
  lite = runtime.LiteModel(model)
  by_film = {report.describe(r)["source"]: report.describe(r) for r in pacs.reports()}
  records = {line["sop_instance_uid"]: line for line in audit(tmp_path / "spool")}
  for data in films:
    uid = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
    expected = lite.predict_bytes(data)
    found = by_film[uid]
    assert found["Probability of bacterial pneumonia"] == pytest.approx(
        expected["p_bacterial"], abs=1e-6)
    assert found["Probability of viral pneumonia"] == pytest.approx(expected["p_viral"],
                                                                    abs=1e-6)
    assert found.get("subtype") == {"BACTERIAL": "Bacterial pneumonia", "VIRAL": "Viral pneumonia",
                                    None: None}[expected["subtype"]]
    assert records[uid]["subtype"] == expected["subtype"]
    if expected["subtype"]:
      assert f"PNEUMONIA ({expected['subtype'].lower()})" in page


def _edited(data: bytes, **edits) -> bytes:
  """A film with header values set (None: removed) as a non-conformant sender writes them."""
  ds = pydicom.dcmread(io.BytesIO(data))
  for keyword, value in edits.items():
    if value is None:
      if keyword in ds:
        delattr(ds, keyword)
    else:
      setattr(ds, keyword, value)
  out = io.BytesIO()
  ds.save_as(out, enforce_file_format=True)
  return out.getvalue()


# Headers as real modalities write them, and what the report carries of each.
ODD_HEADERS = [
    ({"PatientSex": "U"}, {"PatientSex": ""}),
    ({"PatientSex": "m"}, {"PatientSex": "M"}),
    ({"PatientSex": "FEMALE"}, {"PatientSex": "F"}),
    ({"PatientBirthDate": "1990-01-31"}, {"PatientBirthDate": "19900131"}),
    ({"PatientBirthDate": "1990.01.31"}, {"PatientBirthDate": "19900131"}),
    ({"PatientBirthDate": "0"}, {"PatientBirthDate": ""}),
    ({"StudyDate": "20231345"}, {"StudyDate": ""}),
    ({"StudyTime": "256199"}, {"StudyTime": ""}),
    ({"StudyTime": "10:15:00"}, {"StudyTime": "101500"}),
    ({"SpecificCharacterSet": "ISO_IR 999"}, {"SpecificCharacterSet": "ISO_IR 192"}),
    ({"SpecificCharacterSet": "ISO 2022 IR 149"}, {"SpecificCharacterSet": "ISO_IR 192"}),
    # No Modality: the film reader refuses it as no radiograph, so its report says NOT
    # ANALYSED and why (before, building that report crashed and nothing was sent).
    ({"Modality": None}, {"comment": "NOT ANALYSED: DICOM modality is not a radiograph: "
                                     "none (accepted: CR, DX, DR, RG, OT)"}),
    ({"PatientName": "A" * 70 + "^" + "B" * 70}, {"PatientName": "A" * 70 + "^" + "B" * 70}),
]


@pytest.mark.parametrize("edits, carried", ODD_HEADERS)
def test_an_odd_header_still_gives_a_full_report_with_what_is_valid(released_model, edits,
                                                                    carried):
  lite = runtime.LiteModel(released_model)
  data = _edited(dicom_files.study_film(0, study=1), **edits)
  header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
  try:
    result = lite.predict_bytes(data)
  except runtime.ImageError as e:
    result = {"error": str(e)}
  sr = report.structured_report(header, result, lite.info, lite.sha256)
  out = io.BytesIO()
  sr.save_as(out, enforce_file_format=True)
  back = pydicom.dcmread(io.BytesIO(out.getvalue()))
  carried = dict(carried)
  comment = carried.pop("comment", None)
  for keyword, value in carried.items():
    assert str(back.get(keyword)) == value, keyword
  assert back.StudyInstanceUID == header.StudyInstanceUID
  found = report.describe(back)
  if comment:
    assert found["comments"][0] == comment
  else:
    assert found["finding"] in ("Present", "Absent")  # analysed, in full


def test_a_japanese_name_is_decoded_and_carried_in_utf8(released_model):
  lite = runtime.LiteModel(released_model)
  name = "Yamada^Tarou=山田^太郎=やまだ^たろう"
  data = _edited(dicom_files.study_film(0, study=1),
                 SpecificCharacterSet=["", "ISO 2022 IR 87"], PatientName=name)
  header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
  sr = report.structured_report(header, lite.predict_bytes(data), lite.info, lite.sha256)
  out = io.BytesIO()
  sr.save_as(out, enforce_file_format=True)
  back = pydicom.dcmread(io.BytesIO(out.getvalue()))
  assert back.SpecificCharacterSet == "ISO_IR 192" and str(back.PatientName) == name


def test_odd_headers_through_the_node_each_get_exactly_one_report(released_model, tmp_path):
  films = [_edited(dicom_files.study_film(i, study=1), **edits)
           for i, (edits, _) in enumerate(ODD_HEADERS)]
  pacs = Pacs().start()
  try:
    with running_node(released_model, tmp_path / "spool", forward=pacs.address) as node:
      assert send(node.ports.dicom, films) == [0x0000] * len(films)
      assert node.wait_idle(120)
  finally:
    pacs.stop()
  sources = sorted(report.describe(r)["source"] for r in pacs.reports())
  assert sources == sorted(pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID for f in films)
  errors_ = [line["error"] for line in audit(tmp_path / "spool") if line.get("error")]
  assert errors_ == ["DICOM modality is not a radiograph: none (accepted: CR, DX, DR, RG, OT)"]


def test_a_header_no_report_can_carry_gets_a_minimal_not_analysed_report(
    released_model, tmp_path, monkeypatch, caplog):
  real = report.structured_report

  def refuse_full_headers(header, *args):
    if "StudyDate" in header:  # the full copy of the header; the minimal one has none
      raise ValueError("a value highdicom refuses")
    return real(header, *args)

  monkeypatch.setattr(report, "structured_report", refuse_full_headers)
  film = dicom_files.study_film(0, study=1)
  pacs = Pacs().start()
  try:
    with running_node(released_model, tmp_path / "spool", forward=pacs.address) as node:
      assert send(node.ports.dicom, [film]) == [0x0000]
      assert node.wait_idle(120)
  finally:
    pacs.stop()
  (sr,) = pacs.reports()
  found = report.describe(sr)
  why = "its header could not be copied into a report (ValueError: a value highdicom refuses)"
  assert found["comments"][0] == f"NOT ANALYSED: {why}" and "finding" not in found
  assert sr.StudyInstanceUID == pydicom.dcmread(io.BytesIO(film)).StudyInstanceUID
  (line,) = audit(tmp_path / "spool")
  assert line["error"] == why and why in caplog.text


def test_a_pacs_out_of_resources_for_a_while_gets_every_report_later(released_model,
                                                                      tmp_path):
  pacs = Pacs(status=0xA700).start()  # "Refused: Out of Resources": temporary
  node = node_lib.Node(node_config.NodeOptions(
      model=released_model, spool_dir=str(tmp_path / "spool"), port=0,
      forward=pacs.address, forward_refusals=1, result_card=False))
  try:
    node.process(_queue(node.spool, dicom_files.study_film(31)))
    for _ in range(3):  # a refusal would dead-letter it at once (forward_refusals=1)
      with pytest.raises(dicom.DestinationUnavailable, match="A700"):
        node.forwarder.send_pending()
      assert len(node.spool.outbox()) == 1 and not node.spool.dead_letters()
    pacs.status = 0x0000  # the PACS has room again
    assert node.forwarder.send_pending() == 1
  finally:
    node.stop()
    pacs.stop()
  assert len(pacs.reports()) == 1 and not node.spool.outbox()


def test_dead_letters_are_requeued_by_one_command_and_then_sent(released_model, tmp_path,
                                                                capsys):
  _refused_by(Pacs(status=0xA900).start(), released_model, tmp_path, 1)
  spool_dir = str(tmp_path / "spool")
  assert len(spool_lib.Spool(spool_dir).dead_letters()) == 1
  run_main("cxr_edge.node.node", spool_dir=spool_dir, requeue_dead_letters=True)
  assert capsys.readouterr().out.strip() == (
      f"cxr-node: 1 dead letter(s) moved back to the outbox of {spool_dir}")
  spool = spool_lib.Spool(spool_dir)
  assert len(spool.outbox()) == 1 and not spool.dead_letters()
  pacs = Pacs().start()
  try:
    with running_node(released_model, spool_dir, forward=pacs.address) as node:
      assert node.wait_idle(60)
  finally:
    pacs.stop()
  assert len(pacs.reports()) == 1


def test_a_port_in_use_names_the_port_and_the_flag_and_nothing_is_left_running(
    released_model, tmp_path):
  import socket  # pylint: disable=g-import-not-at-top
  taken = socket.socket()
  taken.bind(("127.0.0.1", 0))
  taken.listen()
  port = taken.getsockname()[1]
  try:
    for flags, flag in (({"port": port}, "--port"), ({"port": 0, "http_port": port},
                                                     "--http_port")):
      node = node_lib.Node(node_config.NodeOptions(
          model=released_model, spool_dir=str(tmp_path / "spool"), host="127.0.0.1",
          **flags))
      with pytest.raises(errors.CxrError, match=rf"^{flag}={port}: 127.0.0.1:{port} is "
                         rf"already in use .*give {flag} another port"):
        node.start()
      # Stopped whole: the spool is free for the next start.
      node_lib.Node(node_config.NodeOptions(model=released_model, port=0,
                                            spool_dir=str(tmp_path / "spool"))).stop()
  finally:
    taken.close()


def test_the_reader_name_lasts_and_a_node_without_forward_says_where_reports_go(
    released_model, tmp_path, caplog):
  caplog.set_level("WARNING", logger="cxr_edge.node")
  with running_node(released_model, tmp_path / "spool", http_port=0) as node:
    base = f"http://127.0.0.1:{node.ports.http}"
    page = urllib.request.urlopen(base + "/reader", timeout=30).read().decode()
    import re  # pylint: disable=g-import-not-at-top
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
      def redirect_request(self, *args, **kwargs):
        return None
    request = urllib.request.Request(
        base + "/reader", urllib.parse.urlencode({"reader": "Dr Long", "csrf": csrf}).encode(),
        {"Origin": base, "Content-Type": "application/x-www-form-urlencoded"}, method="POST")
    try:
      answer = urllib.request.build_opener(NoRedirect).open(request, timeout=30)
    except urllib.error.HTTPError as e:
      answer = e
  assert f"Max-Age={review.READER_COOKIE_DAYS * 86400};" in answer.headers["Set-Cookie"]
  assert f"no --forward: reports are written to {tmp_path / 'spool' / 'reports'}" in caplog.text
