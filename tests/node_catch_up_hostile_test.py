"""Catch-up against a hostile or broken PACS, simulated with pynetdicom on loopback: one
study it cannot list (no answer in time, a flood of answers) stops nothing else; the
checkpoint is checked; a periodic full re-list finds a film whose study's count did not
change; a C-GET that never ends its sub-operations is bounded."""
import datetime
import io
import json
import os
import threading

import pydicom
import pytest

pynetdicom = pytest.importorskip("pynetdicom", reason="cxr-edge[node] is not installed")

# pylint: disable=g-import-not-at-top,wrong-import-position
from pynetdicom import AE, evt
from pynetdicom import sop_class

from cxr_edge.node import catch_up
from cxr_edge.node import spool as spool_lib
from tests import dicom_files
from tests.conftest import until
from tests.node_test import audit, running_node
# pylint: enable=g-import-not-at-top,wrong-import-position

TODAY = datetime.date.today().strftime("%Y%m%d")
_FIND = sop_class.StudyRootQueryRetrieveInformationModelFind
_GET = sop_class.StudyRootQueryRetrieveInformationModelGet


class HostilePacs:
  """A Query/Retrieve SCP holding `films` (study UID: [film bytes]); `broken` maps a
  study UID to what goes wrong when it is listed: "hang" (its SERIES query is never
  answered), "flood" (its IMAGE query answers more than MAX_ANSWERS), "endless" (a
  C-GET of its film keeps reporting pending sub-operations)."""

  def __init__(self, films, broken=None):
    self.films = {study: [pydicom.dcmread(io.BytesIO(f)) for f in data]
                  for study, data in films.items()}
    self.broken = broken or {}
    self.release = threading.Event()  # ends a hanging answer when the test is done
    self.queries = []
    ae = AE(ae_title="HOSTILE")
    ae.add_supported_context(_FIND)
    ae.add_supported_context(_GET)
    ae.add_supported_context(sop_class.DigitalXRayImageStorageForPresentation,
                             scu_role=True, scp_role=True)
    self._server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
        (evt.EVT_C_FIND, self._find), (evt.EVT_C_GET, self._get)])
    self.address = f"HOSTILE@127.0.0.1:{self._server.server_address[1]}"

  def stop(self):
    self.release.set()
    self._server.shutdown()

  def _find(self, event):
    query = event.identifier
    level = str(query.QueryRetrieveLevel)
    study = str(query.get("StudyInstanceUID", ""))
    self.queries.append((level, study))
    if level == "STUDY":
      for uid, films in (self.films.items() if str(query.StudyDate) == TODAY else ()):
        answer = pydicom.Dataset()
        answer.QueryRetrieveLevel = "STUDY"
        answer.StudyInstanceUID, answer.StudyDate = uid, TODAY
        answer.NumberOfStudyRelatedInstances = len(films)
        yield 0xFF00, answer
    elif level == "SERIES":
      if self.broken.get(study) == "hang":
        self.release.wait(60)
        return
      for series in sorted({str(f.SeriesInstanceUID) for f in self.films.get(study, [])}):
        answer = pydicom.Dataset()
        answer.QueryRetrieveLevel = "SERIES"
        answer.StudyInstanceUID, answer.SeriesInstanceUID = study, series
        answer.Modality = "DX"
        yield 0xFF00, answer
    elif level == "IMAGE":
      films = self.films.get(study, [])
      if self.broken.get(study) == "flood":
        films = films * (catch_up.MAX_ANSWERS + 1)
      for f in films:
        if str(f.SeriesInstanceUID) == str(query.SeriesInstanceUID):
          answer = pydicom.Dataset()
          answer.QueryRetrieveLevel = "IMAGE"
          answer.StudyInstanceUID, answer.SeriesInstanceUID = study, f.SeriesInstanceUID
          answer.SOPInstanceUID, answer.SOPClassUID = f.SOPInstanceUID, f.SOPClassUID
          yield 0xFF00, answer
    yield 0x0000, None

  def _get(self, event):
    wanted = str(event.identifier.SOPInstanceUID)
    study = str(event.identifier.StudyInstanceUID)
    found = [f for f in self.films.get(study, []) if str(f.SOPInstanceUID) == wanted]
    if self.broken.get(study) == "endless":
      yield 10**6
      while not self.release.is_set():
        yield 0xFF00, None  # "still working", for ever
      return
    yield len(found)
    for f in found:
      yield 0xFF00, f


def study_films(study: int, count: int = 1):
  return [dicom_files.study_film(600 + 10 * study + k, study=700 + study,
                                 StudyDate=TODAY) for k in range(count)]


def uid_of(data: bytes) -> str:
  return str(pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID)


@pytest.mark.parametrize("behaviour", ["hang", "flood", "endless"])
def test_one_study_that_cannot_be_listed_or_sent_stops_no_other(released_model, tmp_path,
                                                                behaviour):
  bad, good = study_films(1), study_films(2, 2)
  pacs = HostilePacs({uid_of(bad[0]): bad, uid_of(good[0]): good},
                     broken={uid_of(bad[0]): behaviour})
  try:
    with running_node(released_model, tmp_path / "spool", query=pacs.address,
                      listen=False, catch_up_minutes=0, dimse_timeout=2) as node:
      # The round at start, then rounds run here one at a time.
      assert until(lambda: node.catch_up.last is not None, 60)
      rounds = [node.catch_up.last] + [node.catch_up.run_round()
                                       for _ in range(catch_up.GIVE_UP_ROUNDS - 1)]
      assert node.wait_idle(120)
      for done in rounds:
        assert done.error is None and done.failed == 1, done
      assert rounds[0].retrieved == 2  # the other study's films, in the first round
      assert len(audit(tmp_path / "spool")) == 2
      after = node.catch_up.run_round()  # given up: the checkpoint moves on
      assert (after.failed, after.error) == (0, None)
      assert node.catch_up.checkpoint() == (datetime.date.today() - datetime.timedelta(
          days=1)).strftime("%Y%m%d")
  finally:
    pacs.stop()


@pytest.mark.parametrize("saved, window", [
    ({"since": "00010101"}, "widest"), ({"since": "19000101"}, "widest"),
    ({"since": "2026-12-01"}, "widest"), (b'{"pacs": "HOS', "widest"),
    ({"since": "tomorrow"}, "widest")])
def test_a_checkpoint_out_of_bounds_or_damaged_is_said_and_bounded(released_model, tmp_path,
                                                                   caplog, saved, window):
  pacs = HostilePacs({})
  try:
    spool = tmp_path / "spool"
    os.makedirs(spool)
    with open(spool / catch_up.CHECKPOINT_NAME, "wb") as f:
      f.write(saved if isinstance(saved, bytes) else json.dumps(
          {"pacs": pacs.address, **saved}).encode())
    caplog.set_level("WARNING", logger="cxr_edge.node")
    with running_node(released_model, spool, query=pacs.address, listen=False,
                      catch_up_minutes=0, catch_up_max_days=7) as node:
      assert until(lambda: node.catch_up.last is not None, 60)
      done = node.catch_up.last
    assert done.error is None
    widest = datetime.date.today() - datetime.timedelta(days=7)
    assert done.since == widest.strftime("%Y%m%d")
    assert "--catch_up_max_days" in caplog.text
    days = sum(level == "STUDY" for level, _ in pacs.queries)
    assert days == 8  # the widest window's days, once each
  finally:
    pacs.stop()


def test_a_film_added_to_a_study_of_the_same_count_is_found_by_a_full_relist(
    released_model, tmp_path, monkeypatch):
  monkeypatch.setattr(catch_up, "FULL_RELIST_ROUNDS", 2)
  first, later = study_films(3), study_films(4)
  study = uid_of(first[0])
  pacs = HostilePacs({study: first})
  try:
    with running_node(released_model, tmp_path / "spool", query=pacs.address,
                      listen=False, catch_up_minutes=0) as node:
      assert until(lambda: node.catch_up.last is not None, 60)
      assert node.catch_up.last.retrieved == 1 and node.wait_idle(120)
      known = node.catch_up._known_studies  # pylint: disable=protected-access
      assert until(lambda: node.catch_up.run_round() and study in known, 10)
      # The PACS swaps the study's film for another: still one instance.
      replacement = pydicom.dcmread(io.BytesIO(later[0]))
      replacement.StudyInstanceUID = study
      pacs.films[study] = [replacement]
      retrieved = [node.catch_up.run_round().retrieved for _ in range(2)]
      assert retrieved == [0, 1]  # skipped while the count is the same, then re-listed
      assert node.wait_idle(120)
      assert len(audit(tmp_path / "spool")) == 2
  finally:
    pacs.stop()



def test_a_round_past_its_deadline_ends_with_that_error(released_model, tmp_path,
                                                        monkeypatch):
  monkeypatch.setattr(catch_up, "ROUND_DEADLINE_S", 0.0)
  films = study_films(5)
  pacs = HostilePacs({uid_of(films[0]): films})
  try:
    with running_node(released_model, tmp_path / "spool", query=pacs.address,
                      listen=False, catch_up_minutes=0) as node:
      assert until(lambda: node.catch_up.last is not None, 60)
      assert "ran over its 0-minute deadline" in node.catch_up.last.error
      assert node.catch_up.checkpoint() is None  # not moved by a round that did not finish
  finally:
    pacs.stop()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux's /proc")
def test_films_brought_by_c_get_leave_no_file_open(released_model, tmp_path):
  from cxr_edge.node import review  # pylint: disable=g-import-not-at-top
  films = study_films(6, 12)
  pacs = HostilePacs({uid_of(films[0]): films})
  try:
    with running_node(released_model, tmp_path / "spool", query=pacs.address,
                      listen=False, catch_up_minutes=0) as node:
      assert until(lambda: node.catch_up.last is not None, 60)
      assert node.catch_up.last.retrieved == 12 and node.wait_idle(120)
      before = review.open_files()
      extra = study_films(9, 12)  # seeds apart from the first twelve
      for data in extra:  # more films in the study (its count changes: listed again)
        pacs.films[uid_of(films[0])].append(pydicom.dcmread(io.BytesIO(data)))
      assert node.catch_up.run_round().retrieved == 12 and node.wait_idle(120)
      assert review.open_files() <= before + 2  # not one more per film retrieved
      assert not os.listdir(tmp_path / "spool" / "receiving")
  finally:
    pacs.stop()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux's /proc")
def test_under_a_small_open_file_limit_more_films_than_the_limit_all_get_read(
    released_model, tmp_path):
  """cxr-node as a process with 160 descriptors at most, pulling 200 films by C-GET: each
  is read, and the node stays healthy (every film held one descriptor before, and the
  worker died at the limit while the process stayed up)."""
  import resource  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  import urllib.request  # pylint: disable=g-import-not-at-top
  from scripts import orthanc  # pylint: disable=g-import-not-at-top  # free_port
  from tests.conftest import ROOT  # pylint: disable=g-import-not-at-top
  limit, count = 160, 200
  films = {}
  for k in range(count):
    data = dicom_files.study_film(2000 + k, study=900 + k // 20, StudyDate=TODAY)
    films.setdefault(uid_of(data), []).append(data)
  pacs = HostilePacs(films)
  http_port = orthanc.free_port()
  spool = tmp_path / "spool"
  process = subprocess.Popen(
      [sys.executable, "-m", "cxr_edge.node.node", f"--spool_dir={spool}",
       f"--model={released_model}", "--nolisten", f"--query={pacs.address}",
       "--catch_up_minutes=0", f"--http_port={http_port}", "--noresult_card"],
      cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
      preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)))
  try:
    def status():
      try:
        return json.loads(urllib.request.urlopen(
            f"http://127.0.0.1:{http_port}/status.json", timeout=10).read())
      except OSError:
        return None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
      if len(audit(spool)) == count:
        break
      time.sleep(0.5)
    state = status()
    assert process.poll() is None, "the node exited"
    assert len(audit(spool)) == count
    assert state["healthy"] and state["open_files"] < limit - 20, state
  finally:
    process.terminate()
    process.wait(30)
    pacs.stop()


def test_a_pacs_that_answers_with_one_huge_pdu_is_dropped_at_its_header(released_model,
                                                                       tmp_path):
  """The catch-up's own association has the receiver's PDU guard: a PACS that answers
  the association request with a PDU claiming 300 MB is dropped when its header is read
  (it took the node from 112 MB to 1.3 GB)."""
  import socket  # pylint: disable=g-import-not-at-top
  import tracemalloc  # pylint: disable=g-import-not-at-top
  server = socket.create_server(("127.0.0.1", 0))
  sent = []

  def hostile():
    try:
      conn, _ = server.accept()
    except OSError:
      return
    with conn:
      conn.recv(1 << 16)  # the association request
      conn.sendall(b"\x02\x00" + (300 * 2**20).to_bytes(4, "big"))
      try:
        for _ in range(64):  # 64 MB of it, as long as the node reads
          conn.sendall(bytes(2**20))
          sent.append(1)
      except OSError:
        pass
  thread = threading.Thread(target=hostile, daemon=True)
  thread.start()
  address = f"HUGE@127.0.0.1:{server.getsockname()[1]}"
  try:
    tracemalloc.start()
    with running_node(released_model, tmp_path / "spool", query=address, listen=False,
                      catch_up_minutes=0) as node:
      assert until(lambda: node.catch_up.last is not None, 60)
      peak = tracemalloc.get_traced_memory()[1]
      assert node.catch_up.last.error  # the round failed; the node goes on
  finally:
    tracemalloc.stop()
    server.close()
  assert peak < 40 * 2**20 and len(sent) < 64
