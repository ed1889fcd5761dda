"""The node's Structured Report as a viewer renders it: DCMTK's dsr2html (what many PACS
viewers build on) shows the plain-language summary first, and a negative film's report
has no "Pneumonia" heading that reads as a finding."""
import io
import re
import html
import shutil
import subprocess

import pydicom
import pytest

pytest.importorskip("highdicom", reason="cxr-edge[node] is not installed")

# pylint: disable=g-import-not-at-top,wrong-import-position
from cxr_edge.core import film
from cxr_edge.edge import runtime
from cxr_edge.node import report
from tests import dicom_files
# pylint: enable=g-import-not-at-top,wrong-import-position

RESULTS = {
    "positive": {"prediction": "PNEUMONIA", "p_pneumonia": 0.8237, "p_bacterial": 0.61,
                 "p_viral": 0.2137, "subtype": "BACTERIAL", "threshold": 0.375,
                 "warning": None},
    "negative": {"prediction": "NORMAL", "p_pneumonia": 0.1234, "p_bacterial": 0.1,
                 "p_viral": 0.0234, "threshold": 0.375, "warning": None},
    "certain": {"prediction": "PNEUMONIA", "p_pneumonia": 0.99989, "threshold": 0.375,
                "warning": None},
    "not analysed": {"error": "colour DICOM: RGB with 3 samples per pixel"},
    "warned": {"prediction": "NORMAL", "p_pneumonia": 0.1234, "threshold": 0.375,
               "warning": "outside the model's intended use (patient aged 30 years "
                          "(PatientAge 030Y): the model is for children aged 1 to 5 years); "
                          "analysed because this site widened it to ages 0-40 years (the "
                          "model's: 1 to 5 years)"},
}
SUMMARIES = {
    "positive": "AI triage: pneumonia suspected, probability 0.82 at threshold 0.375; "
                "likelier bacterial. Not for diagnostic use.",
    "negative": "AI triage: no pneumonia suspected, probability 0.12, below threshold "
                "0.375. Not for diagnostic use.",
    "certain": "AI triage: pneumonia suspected, probability above 0.99 at threshold 0.375. "
               "Not for diagnostic use.",
    "not analysed": "AI triage: not analysed (colour DICOM: RGB with 3 samples per pixel). "
                    "Not for diagnostic use.",
    # The warning first, whole; the negative only after it.
    "warned": f"AI triage: WARNING: {RESULTS['warned']['warning']}. no pneumonia "
              "suspected, probability 0.12, below threshold 0.375. Not for diagnostic use.",
}


def _report(released_model, kind, tmp_path):
  lite = runtime.LiteModel(released_model)
  header, _ = film.dicom_header(io.BytesIO(dicom_files.study_film(90)))
  sr = report.structured_report(header, RESULTS[kind], lite.info, lite.sha256)
  path = tmp_path / f"{kind.replace(' ', '_')}.dcm"
  sr.save_as(str(path), enforce_file_format=True)
  return path


@pytest.mark.parametrize("kind", sorted(RESULTS))
def test_the_summary_is_the_reports_first_text(released_model, kind, tmp_path):
  sr = pydicom.dcmread(str(_report(released_model, kind, tmp_path)))
  found = report.describe(sr)
  assert found["summary"] == SUMMARIES[kind]
  first = sr.ContentSequence[0]
  assert first.ValueType == "TEXT" and first.TextValue == SUMMARIES[kind]


def _rendered(path) -> str:
  if not shutil.which("dsr2html"):
    pytest.skip("DCMTK is not installed (Debian: apt-get install dcmtk; .ci/run installs it)")
  out = subprocess.run(["dsr2html", str(path)], capture_output=True, text=True, timeout=60,
                       check=True).stdout
  return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", out)))


@pytest.mark.parametrize("kind", ["positive", "negative"])
def test_dcmtk_renders_the_summary_first_and_every_number_with_its_name(released_model, kind,
                                                                        tmp_path):
  text = _rendered(_report(released_model, kind, tmp_path))
  body = text[text.index("Imaging Measurement Report"):]
  assert body.startswith(f"Imaging Measurement Report Summary: {SUMMARIES[kind]}")
  for name, value in (("Probability of pneumonia", RESULTS[kind]["p_pneumonia"]),
                      ("Probability of viral pneumonia", RESULTS[kind]["p_viral"]),
                      ("Decision threshold", RESULTS[kind]["threshold"])):
    assert f"{name}: {value:g} " in body, name
  if kind == "negative":
    # The group's heading is the examination; pneumonia appears only as absent.
    assert "Finding: Plain chest X-ray" in body and "Pneumonia: Absent" in body
    assert "Finding: Pneumonia" not in body and "Present" not in body
  else:
    assert "Finding: Pneumonia" in body and "Pneumonia: Present" in body


def test_the_algorithm_is_contributing_equipment_and_the_procedure_a_chest_x_ray(
    released_model, tmp_path):
  """IHE AI Results: the algorithm as Contributing Equipment (Processing Equipment, with
  its name, version and sha256), the imaging procedure as Procedure Reported."""
  sr = pydicom.dcmread(str(_report(released_model, "positive", tmp_path)))
  lite = runtime.LiteModel(released_model)
  (item,) = sr.ContributingEquipmentSequence
  purpose = item.PurposeOfReferenceCodeSequence[0]
  assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("109102", "DCM")
  assert item.Manufacturer == report.MANUFACTURER and item.SoftwareVersions
  assert lite.sha256 in item.ContributionDescription
  assert lite.sha256.startswith(item.DeviceSerialNumber)
  procedure = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue
               == "121058"]  # Procedure reported
  assert procedure[0].ConceptCodeSequence[0].CodeMeaning == "Plain chest X-ray"
