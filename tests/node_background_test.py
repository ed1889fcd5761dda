"""node/background.py: no part of the node dies quietly. An injected error in each part's
loop is survived (logged, started again, said in /status.json); a part that cannot go
on stops the node, and cxr-node exits non-zero."""
import io
import json
import os
import urllib.request

import pydicom
import pytest

pytest.importorskip("pynetdicom", reason="cxr-edge[node] is not installed")

# pylint: disable=g-import-not-at-top,wrong-import-position
from cxr_edge.node import background
from tests import dicom_files
from tests.conftest import until
from tests.node_test import Pacs, running_node, send
# pylint: enable=g-import-not-at-top,wrong-import-position


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
  monkeypatch.setattr(background, "FIRST_BACKOFF_S", 0.01)


class Flaky(background.Background):
  def __init__(self, failures):
    super().__init__("flaky", join_seconds=5)
    self.failures, self.rounds = failures, 0

  def _run(self):
    while not self._stop.is_set():
      self.rounds += 1
      if self.failures:
        self.failures -= 1
        raise OSError(24, "Too many open files")
      self._pause(0.01)


def test_a_part_whose_loop_fails_is_started_again_and_says_so(caplog):
  part = Flaky(failures=2)
  with caplog.at_level("ERROR", logger="cxr_edge.node"):
    part.start()
    assert until(lambda: part.rounds > 5)
  part.stop()
  assert part.health() == {"running": False, "restarts": 2, "dead": None,
                           "last_error": "OSError: [Errno 24] Too many open files"}
  assert "flaky failed (OSError: [Errno 24] Too many open files); started again" in caplog.text


def test_a_part_that_keeps_failing_is_dead_and_says_why():
  part = Flaky(failures=10**6)
  died = []
  part.on_death = died.append
  part.start()
  assert until(lambda: died == [part])
  assert part.dead.startswith(f"failed {background.FAILURES_TO_DIE} times in 10 minutes "
                              "(last: OSError: [Errno 24] Too many open files)")
  assert not part.health()["running"]


def _status(node):
  return json.loads(urllib.request.urlopen(
      f"http://127.0.0.1:{node.ports.http}/status.json", timeout=30).read())


def test_each_part_of_a_running_node_survives_an_error_that_ends_its_loop(
    released_model, tmp_path, monkeypatch):
  from cxr_edge.node import catch_up, dicom, limits, monitor_lib, node_lib  # pylint: disable=g-import-not-at-top
  for cls, loop in ((node_lib.Node, "_work"), (limits.Gate, "_run"), (dicom.Forwarder, "_run"),
                    (catch_up.CatchUp, "_run"), (monitor_lib.Monitor, "_run")):
    original, failed = getattr(cls, loop), set()

    def once(self, original=original, failed=failed):
      if id(self) not in failed:  # each part's first loop ends with an unexpected error
        failed.add(id(self))
        raise RuntimeError("injected")
      return original(self)
    monkeypatch.setattr(cls, loop, once)
  pacs = Pacs().start()
  try:
    with running_node(released_model, tmp_path / "spool", http_port=0, forward=pacs.address,
                      query=pacs.address) as node:
      assert set(node.parts) == {"cxr-node worker", "cxr-node gate", "cxr-node forwarder",
                                 "cxr-node catch-up", "cxr-node monitor"}
      assert until(lambda: all(p.health()["restarts"] == 1 for p in node.parts.values()), 30)
      status = _status(node)
      assert status["healthy"] is True
      assert all(p["running"] and p["last_error"] == "RuntimeError: injected"
                 for p in status["parts"].values()), status["parts"]
      film = dicom_files.study_film(150)
      assert send(node.ports.dicom, [film]) == [0]  # and the node still reads films
      assert node.wait_idle(120)
  finally:
    pacs.stop()
  uid = pydicom.dcmread(io.BytesIO(film)).SOPInstanceUID
  assert os.path.exists(tmp_path / "spool" / "results" / f"{uid}.json")
  assert len(pacs.reports()) == 1


def test_a_worker_that_cannot_list_its_queue_stops_the_node_visibly(released_model,
                                                                    tmp_path, monkeypatch):
  with running_node(released_model, tmp_path / "spool", http_port=0) as node:
    def no_files():
      raise OSError(24, "Too many open files")
    monkeypatch.setattr(node.spool, "pending", no_files)
    assert node.died.wait(60)
    assert node.death.startswith("cxr-node worker: failed 5 times in 10 minutes (last: "
                                 "OSError: [Errno 24] Too many open files)")
    monkeypatch.undo()
    parts = _status(node)["parts"]
    assert not parts["cxr-node worker"]["running"] and parts["cxr-node worker"]["dead"]
    assert _status(node)["healthy"] is False
    page = urllib.request.urlopen(f"http://127.0.0.1:{node.ports.http}/",
                                  timeout=30).read().decode()
    assert "cxr-node worker has stopped" in page


def test_cxr_node_exits_non_zero_when_a_part_cannot_go_on(released_model, tmp_path,
                                                          monkeypatch):
  from cxr_edge.node import spool as spool_lib  # pylint: disable=g-import-not-at-top
  from tests.conftest import run_main  # pylint: disable=g-import-not-at-top

  real = spool_lib.Spool.pending

  def no_files(self):  # the worker's own listing fails, as under an open-file limit
    if background.threading.current_thread().name == "cxr-node worker":
      raise OSError(24, "Too many open files")
    return real(self)
  monkeypatch.setattr(spool_lib.Spool, "pending", no_files)
  with pytest.raises(SystemExit) as e:
    run_main("cxr_edge.node.node", spool_dir=str(tmp_path / "spool"), model=released_model,
             host="127.0.0.1", port=0)
  assert str(e.value.code).startswith("cxr-node: error: stopped because a part cannot go "
                                      "on (cxr-node worker: failed 5 times")
