"""Catch-up against a real PACS: Orthanc (Debian's package) on loopback, with the
documented routing rule, holds films the node never got; the node finds them by C-FIND
and retrieves them by C-GET or C-MOVE, each analysed and reported once."""
import collections
import datetime
import io
import json
import os
import urllib.request

import pydicom
import pytest

pytest.importorskip("pynetdicom", reason="cxr-edge[node] is not installed")

# pylint: disable=g-import-not-at-top,wrong-import-position
from cxr_edge.node import catch_up
from cxr_edge.node import report
from cxr_edge.node import spool as spool_lib
from scripts import orthanc
from tests import dicom_files
from tests.conftest import ROOT, until
from tests.node_test import audit, running_node
# pylint: enable=g-import-not-at-top,wrong-import-position

pytestmark = pytest.mark.skipif(
    orthanc.binary() is None,
    reason="Orthanc is not installed (Debian: apt-get install orthanc; .ci/run installs it)")

TODAY = datetime.date.today().strftime("%Y%m%d")
RULE = os.path.join(ROOT, "docs", "orthanc_cxr_node.lua")


def film(k: int, **attributes) -> bytes:
  """A DX film of today, in study 500 + k // 3 (three films a study)."""
  return dicom_files.study_film(k, study=500 + k // 3, **{"StudyDate": TODAY,
                                                          **attributes})


def reports_by_film(pacs, studies=None) -> dict:
  """{film SOP Instance UID: [modalities of the node's objects for it]} at the PACS;
  with `studies` ({film UID: its study UID}), each object is checked to be in its film's
  study."""
  found = collections.defaultdict(list)
  for instance in pacs.instances():
    ds = pydicom.dcmread(io.BytesIO(pacs.file(instance)), stop_before_pixels=True)
    if report.is_own_output(ds):
      source = ds.SourceImageSequence[0].ReferencedSOPInstanceUID if (
          ds.Modality == "OT") else report.describe(
              pydicom.dcmread(io.BytesIO(pacs.file(instance))))["source"]
      found[str(source)].append(str(ds.Modality))
      if studies is not None:
        assert ds.StudyInstanceUID == studies[str(source)], "not in its film's study"
  return {uid: sorted(kinds) for uid, kinds in found.items()}


def wait_for(condition, timeout: float = 180.0) -> bool:
  """until(), asked less often: conditions here read Orthanc back over REST."""
  return until(condition, timeout, poll=0.3)


def test_films_routed_while_the_node_was_down_get_one_report_and_card_each(
    released_model, tmp_path):
  port = orthanc.free_port()
  with orthanc.Orthanc(str(tmp_path / "orthanc"), modalities={
      "cxr": ["CXR_EDGE", "127.0.0.1", port]}, lua_scripts=[RULE]) as pacs:
    films = [film(k) for k in range(30)]
    for data in films:  # the rule tries to send each to the node, which is down
      pacs.upload(data)
    assert pacs.modality_counts() == {"DX": 30}
    address = f"{pacs.ae_title}@127.0.0.1:{pacs.dicom_port}"
    with running_node(released_model, tmp_path / "spool", port=port, result_card=True,
                      forward=address, query=address, http_port=0) as node:
      uids = {str(pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID) for d in films}
      assert wait_for(lambda: set(reports_by_film(pacs)) >= uids and node.wait_idle(1))
      assert node.catch_up.last.retrieved == 30 and node.catch_up.last.error is None
      # What a monitoring script and the page see: the round, and each film delivered.
      base = f"http://127.0.0.1:{node.ports.http}"
      status = json.loads(urllib.request.urlopen(base + "/status.json", timeout=30).read())
      assert status["catch_up"]["last_round"]["retrieved"] == 30
      assert status["catch_up"]["pacs"] == address and status["catch_up"]["retrieve"] == "get"
      listed = json.loads(urllib.request.urlopen(base + "/worklist.json", timeout=30).read())
      assert {r["sop_instance_uid"]: r["delivery"] for r in listed} == dict.fromkeys(
          uids, "stored")
      page = urllib.request.urlopen(base + "/", timeout=30).read().decode()
      assert f"Catch-up from {address}: last round" in page and "30 retrieved" in page
      # Films pushed while it runs come by the routing rule, and a catch-up round after
      # them finds nothing to retrieve: nothing is analysed twice.
      later = [film(k) for k in range(30, 33)]
      for data in later:
        pacs.upload(data)
      uids |= {str(pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID) for d in later}
      assert wait_for(lambda: set(reports_by_film(pacs)) >= uids and node.wait_idle(1))
      again = node.catch_up.run_round()
      assert (again.studies, again.retrieved, again.error) == (11, 0, None)
      assert node.catch_up.checkpoint() == (datetime.date.today() - datetime.timedelta(
          days=1)).strftime("%Y%m%d")
    studies = {str(ds.SOPInstanceUID): ds.StudyInstanceUID for ds in (
        pydicom.dcmread(io.BytesIO(d)) for d in films + later)}
    by_film = reports_by_film(pacs, studies)
  # One SR and one result card each, in the film's own study.
  assert by_film == {uid: ["OT", "SR"] for uid in uids}
  lines = audit(tmp_path / "spool")
  assert sorted(line["sop_instance_uid"] for line in lines) == sorted(uids)


@pytest.mark.parametrize("retrieve,listen", [("move", True), ("get", False)])
def test_catch_up_by_c_move_and_pull_only_by_c_get(released_model, tmp_path, retrieve,
                                                   listen):
  """C-MOVE sends the films to the node's own AE (Orthanc must know its address);
  --nolisten needs nothing of the PACS but the node's AE title."""
  port = orthanc.free_port()
  with orthanc.Orthanc(str(tmp_path / "orthanc"), modalities={
      "cxr": ["CXR_EDGE", "127.0.0.1", port]}) as pacs:
    films = [film(k) for k in range(4)]
    films.append(dicom_films_cr())
    for data in films:
      pacs.upload(data)
    address = f"{pacs.ae_title}@127.0.0.1:{pacs.dicom_port}"
    with running_node(released_model, tmp_path / "spool", port=port, forward=address,
                      query=address, retrieve=retrieve, listen=listen,
                      catch_up_minutes=0) as node:
      assert wait_for(lambda: node.catch_up.last is not None and node.wait_idle(1))
      assert node.catch_up.last.retrieved == 5 and len(audit(tmp_path / "spool")) == 5
      assert node.ports.dicom == (port if listen else None)
    assert pacs.modality_counts() == {"CR": 1, "DX": 4, "SR": 5}


def dicom_films_cr() -> bytes:
  """A computed radiography film (another SOP class and modality), also of today."""
  return dicom_files.study_film(
      40, study=540, StudyDate=TODAY, Modality="CR",
      SOPClassUID=pydicom.uid.ComputedRadiographyImageStorage)


def test_checkpoint_window_batches_and_a_film_the_pacs_cannot_send(
    released_model, tmp_path):
  # Orthanc answers queries only from the AE titles it knows; the address is not used.
  with orthanc.Orthanc(str(tmp_path / "orthanc"), modalities={
      "cxr": ["CXR_EDGE", "127.0.0.1", 1]}) as pacs:
    old = (datetime.date.today() - datetime.timedelta(days=5)).strftime("%Y%m%d")
    pacs.upload(film(0, StudyDate=old))  # before the first window: never looked at
    for k in range(3, 10):
      pacs.upload(film(k))
    pacs.upload(film(20, Modality="MR"))  # not a chest radiograph's modality
    address = f"{pacs.ae_title}@127.0.0.1:{pacs.dicom_port}"
    with running_node(released_model, tmp_path / "spool", query=address, listen=False,
                      catch_up_minutes=0, catch_up_batch=3, catch_up_days=2) as node:
      # Three rounds: 3 films, 3 more once the worker has read them, then the last one.
      assert wait_for(lambda: node.catch_up.last is not None and not node.catch_up.last.more
                      and len(audit(tmp_path / "spool")) == 7 and node.wait_idle(1))
      last = node.catch_up.last
      assert (last.studies, last.retrieved, last.more, last.error) == (3, 1, False, None)
      state = node.catch_up_state()
      assert state["checkpoint"] == (datetime.date.today() - datetime.timedelta(
          days=1)).strftime("%Y%m%d")
      # Another PACS (a new address) starts from the first window again.
      node.catch_up.pacs = "OTHER@127.0.0.1:1"
      assert node.catch_up.checkpoint() is None
      node.catch_up.pacs = state["pacs"]
    # A study the PACS cannot list (a file gone from its storage) holds the checkpoint
    # back until it is given up; the other studies go on.
    stuck = pacs.upload(film(30))
    os.remove(pacs.storage_file(stuck))
    pacs.upload(film(33))
    with running_node(released_model, tmp_path / "spool", query=address, listen=False,
                      catch_up_minutes=0) as node:
      assert wait_for(lambda: node.catch_up.last is not None)
      first = node.catch_up.last
      assert (first.retrieved, first.failed, first.error) == (1, 1, None)
      assert node.catch_up.checkpoint() == state["checkpoint"]  # saved, not moved
      for _ in range(catch_up.GIVE_UP_ROUNDS - 1):
        assert node.catch_up.run_round().failed == 1
      given_up = node.catch_up.run_round()
      assert (given_up.studies, given_up.failed, given_up.error) == (5, 0, None)
    saved = spool_lib.read_json(str(tmp_path / "spool" / catch_up.CHECKPOINT_NAME))
    assert saved["pacs"] == address


def test_an_unreachable_or_refusing_pacs_is_a_round_error_and_the_node_goes_on(
    released_model, tmp_path):
  with running_node(released_model, tmp_path / "spool", catch_up_minutes=0,
                    query=f"PACS@127.0.0.1:{orthanc.free_port()}") as node:
    assert wait_for(lambda: node.catch_up.last is not None, 60)
    assert "cannot connect" in node.catch_up.last.error
    assert node.catch_up.checkpoint() is None  # nothing seen: the window stays
  # A PACS that does not know the node's AE title: the round says so.
  with orthanc.Orthanc(str(tmp_path / "orthanc")) as pacs:
    pacs.upload(film(0))
    with running_node(released_model, tmp_path / "spool2", catch_up_minutes=0,
                      query=f"{pacs.ae_title}@127.0.0.1:{pacs.dicom_port}") as node:
      assert wait_for(lambda: node.catch_up.last is not None, 60)
      assert "does it know the calling AE title CXR_EDGE?" in node.catch_up.last.error
      assert node.receiver.on_store and not audit(tmp_path / "spool2")
