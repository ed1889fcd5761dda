"""cxr-node against a real PACS: Orthanc (Debian's package) on loopback routes films to
the node through its REST API, and gets the Structured Reports back in the same study;
they are read back from Orthanc and checked against cxr-predict on the same files."""
import io
import json
import os

import pydicom
import pytest

pytest.importorskip("pynetdicom", reason="cxr-edge[node] is not installed")

# pylint: disable=g-import-not-at-top,wrong-import-position
from cxr_edge.node import report
from scripts import orthanc
from tests import dicom_files
from tests.conftest import ROOT, run_main, until
from tests.node_test import HOSTILE_NAME, running_node
# pylint: enable=g-import-not-at-top,wrong-import-position

pytestmark = pytest.mark.skipif(
    orthanc.binary() is None,
    reason="Orthanc is not installed (Debian: apt-get install orthanc; .ci/run installs it)")


@pytest.fixture
def pacs(tmp_path):
  with orthanc.Orthanc(str(tmp_path / "orthanc")) as server:
    yield server


def test_orthanc_routes_films_to_the_node_and_gets_reports_cxr_predict_agrees_with(
    released_model, pacs, tmp_path):
  films = [dicom_files.study_film(70 + i, study=5 + i % 2) for i in range(4)]
  films.append(dicom_files.study_film(75, study=7, PatientName=HOSTILE_NAME))
  ids = [pacs.upload(f) for f in films]
  model = released_model
  with running_node(model, tmp_path / "spool", allow_ae=(pacs.ae_title,),
                    forward=f"{pacs.ae_title}@127.0.0.1:{pacs.dicom_port}") as node:
    pacs.add_modality("cxr", "CXR_EDGE", node.ports.dicom)
    assert pacs.post("/modalities/cxr/echo", {}) == {}
    pacs.store("cxr", ids)  # one association, as a routing rule sends them
    assert node.wait_idle(120)
  reports = [i for i in pacs.instances() if pacs.modality_of(i) == "SR"]
  assert len(reports) == len(films)
  by_film = {}
  for instance in reports:
    sr = pydicom.dcmread(io.BytesIO(pacs.file(instance)))
    by_film[report.describe(sr)["source"]] = (instance, sr)
  # cxr-predict, in-process, on the very files Orthanc sent.
  paths = []
  for k, data in enumerate(films):
    paths.append(str(tmp_path / f"film{k}.dcm"))
    with open(paths[-1], "wb") as f:
      f.write(data)
  out = str(tmp_path / "predict.jsonl")
  run_main("cxr_edge.edge.predict", *paths, model=model, output=out)
  predicted = [json.loads(line) for line in open(out, encoding="utf-8")]
  for data, line, film_id in zip(films, predicted, ids):
    film = pydicom.dcmread(io.BytesIO(data))
    instance, sr = by_film[film.SOPInstanceUID]
    found = report.describe(sr)
    assert found["Probability of pneumonia"] == pytest.approx(line["p_pneumonia"], abs=1e-6)
    assert found["Decision threshold"] == pytest.approx(line["threshold"])
    assert found["finding"] == ("Present" if line["prediction"] == "PNEUMONIA" else "Absent")
    # Orthanc files the report in the film's study, under the film's patient.
    assert (pacs.get(f"/instances/{instance}/study")["ID"]
            == pacs.get(f"/instances/{film_id}/study")["ID"])
    assert str(sr.PatientName) == str(film.PatientName)
  audit = open(tmp_path / "spool" / "audit.jsonl", encoding="utf-8").read()
  assert len(audit.splitlines()) == len(films) and "Test^Patient" not in audit


def test_the_documented_orthanc_routing_rule_sends_films_and_not_reports_back(
    released_model, tmp_path):
  """docs/orthanc_cxr_node.lua as a clinic would load it: films stored in Orthanc go to
  the node by themselves, and the reports coming back are not routed to it again."""
  port = orthanc.free_port()
  rule = os.path.join(ROOT, "docs", "orthanc_cxr_node.lua")
  with orthanc.Orthanc(str(tmp_path / "orthanc"), modalities={
      "cxr": ["CXR_EDGE", "127.0.0.1", port]}, lua_scripts=[rule]) as pacs:
    with running_node(released_model, tmp_path / "spool", port=port, result_card=True,
                      forward=f"{pacs.ae_title}@127.0.0.1:{pacs.dicom_port}") as node:
      for k in range(3):
        pacs.upload(dicom_files.study_film(90 + k))
      until(lambda: len(node.spool.recent(10)) == 3 and node.wait_idle(1), 120, poll=0.2)
      modalities = sorted(pacs.modality_of(i) for i in pacs.instances())
  # Each film's report and result card (a Secondary Capture, "OT") are in its study.
  assert modalities == ["DX"] * 3 + ["OT"] * 3 + ["SR"] * 3
  assert len(node.spool.recent(10)) == 3  # the reports were not read as films


def test_lateral_adult_and_abdomen_films_each_get_one_not_analysed_report_at_the_pacs(
    released_model, pacs, tmp_path):
  """What the header says is out of scope gets no finding: one NOT ANALYSED report and one
  result card that says so, the reason first, in the film's study."""
  films = {"view LL (left lateral)": dicom_files.study_film(130, study=31, ViewPosition="LL"),
           "patient aged 45 years": dicom_files.study_film(131, study=32, PatientAge="045Y"),
           "body part ABDOMEN": dicom_files.study_film(132, study=33,
                                                       BodyPartExamined="ABDOMEN")}
  in_scope = dicom_files.study_film(133, study=34, ViewPosition="PA", PatientAge="003Y")
  ids = [pacs.upload(f) for f in [*films.values(), in_scope]]
  with running_node(released_model, tmp_path / "spool", allow_ae=(pacs.ae_title,),
                    result_card=True,
                    forward=f"{pacs.ae_title}@127.0.0.1:{pacs.dicom_port}") as node:
    pacs.add_modality("cxr", "CXR_EDGE", node.ports.dicom)
    pacs.store("cxr", ids)
    assert node.wait_idle(120)
    assert until(lambda: pacs.modality_counts().get("SR") == 4, 60, poll=0.2)
  reports = {}
  for instance in pacs.instances():
    if pacs.modality_of(instance) == "SR":
      sr = pydicom.dcmread(io.BytesIO(pacs.file(instance)))
      reports.setdefault(sr.StudyInstanceUID, []).append(report.describe(sr))
  assert pacs.modality_counts()["OT"] == 4  # a result card for each film
  for reason, data in films.items():
    (found,) = reports[pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID]
    assert found["comments"][0].startswith(f"NOT ANALYSED: {reason}")
    assert found["summary"].startswith(f"AI triage: not analysed ({reason}")
    assert "finding" not in found and "Probability of pneumonia" not in found
  (found,) = reports[pydicom.dcmread(io.BytesIO(in_scope)).StudyInstanceUID]
  assert found["finding"] in ("Present", "Absent")
