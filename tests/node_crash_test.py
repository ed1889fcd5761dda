"""cxr-node as a process killed with SIGKILL mid-stream and started again: every film it
acknowledged is processed exactly once and its report reaches the PACS. The subprocess
is the point here (a kill -9 cannot be had in-process)."""
import io
import os
import signal
import subprocess
import sys
import time

import pydicom
import pytest

pytest.importorskip("pynetdicom", reason="cxr-edge[node] is not installed")

# pylint: disable=g-import-not-at-top,wrong-import-position
from pynetdicom import AE
from pynetdicom import sop_class

from cxr_edge.node import report
from cxr_edge.node import spool as spool_lib
from scripts import orthanc
from tests import dicom_files
from tests.conftest import ROOT
from tests.node_test import Pacs
# pylint: enable=g-import-not-at-top,wrong-import-position


def start_node(model, spool_dir, port, forward):
  log = open(os.path.join(os.path.dirname(spool_dir), "node.log"), "ab")
  process = subprocess.Popen(
      [sys.executable, "-m", "cxr_edge.node.node", f"--model={model}",
       f"--spool_dir={spool_dir}", f"--port={port}", "--host=127.0.0.1",
       f"--forward={forward}"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
  ae = AE(ae_title="XRAY1")
  ae.add_requested_context(sop_class.Verification)
  deadline = time.monotonic() + 120
  while time.monotonic() < deadline:
    assert process.poll() is None, open(log.name, encoding="utf-8").read()[-3000:]
    assoc = ae.associate("127.0.0.1", port, ae_title="CXR_EDGE")
    if assoc.is_established:
      assoc.release()
      return process
    time.sleep(0.2)
  raise AssertionError("the node did not answer C-ECHO in 120 s")


def send_until(port, films, kill_after=None, process=None):
  """Sends films one by one; with kill_after, SIGKILLs the node right after that many
  acknowledgements. Returns the SOP Instance UIDs acknowledged."""
  ae = AE(ae_title="XRAY1")
  ae.add_requested_context(sop_class.DigitalXRayImageStorageForPresentation)
  assoc = ae.associate("127.0.0.1", port, ae_title="CXR_EDGE")
  acked = []
  try:
    for data in films:
      ds = pydicom.dcmread(io.BytesIO(data))
      status = assoc.send_c_store(ds)
      if getattr(status, "Status", None) != 0x0000:
        break
      acked.append(ds.SOPInstanceUID)
      if kill_after is not None and len(acked) == kill_after:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        break
  finally:
    if assoc.is_established:
      assoc.release()
  return acked


@pytest.mark.slow
def test_kill_9_mid_stream_loses_nothing_acknowledged_and_does_nothing_twice(released_model,
                                                                              tmp_path):
  model = released_model
  spool_dir = str(tmp_path / "spool")
  films = [dicom_files.study_film(100 + i, study=20 + i % 3) for i in range(30)]
  uids = [pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID for f in films]
  pacs = Pacs().start()
  port = orthanc.free_port()
  try:
    node = start_node(model, spool_dir, port, pacs.address)
    acked = send_until(port, films, kill_after=12, process=node)
    assert node.returncode == -signal.SIGKILL and acked == uids[:12]
    # Started again, the sender sends everything once more (it cannot know what the
    # node had), as a PACS retrying its queue would.
    node = start_node(model, spool_dir, port, pacs.address)
    try:
      assert send_until(port, films) == uids
      audit_path = os.path.join(spool_dir, spool_lib.AUDIT_NAME)
      deadline = time.monotonic() + 300
      while time.monotonic() < deadline:
        done = len(list(spool_lib.iter_lines(audit_path)))
        sent = {report.describe(r)["source"] for r in pacs.reports()}
        if done >= len(films) and len(sent) >= len(films):
          break
        time.sleep(0.5)
    finally:
      node.send_signal(signal.SIGTERM)
      assert node.wait(timeout=120) == 0
  finally:
    pacs.stop()
  audited = [line["sop_instance_uid"] for line in spool_lib.iter_lines(audit_path)]
  assert sorted(audited) == sorted(uids)  # each film once: none lost, none twice
  assert {report.describe(r)["source"] for r in pacs.reports()} == set(uids)
  # A report sent twice (a kill between its delivery and its log line) is the same
  # instance, which the PACS keeps once.
  assert len({r.SOPInstanceUID for r in pacs.reports()}) == len(uids)
  assert os.listdir(os.path.join(spool_dir, "incoming")) == []
  assert os.listdir(os.path.join(spool_dir, "outbox")) == []
