"""The node's promise under fuzzed headers: a few hundred films, each with header values
perturbed at random (seeded) the ways real modalities and hand-edited files get them
wrong, go through the node; every film it acknowledges ends as exactly one report at the
PACS, and nothing else does."""
import collections
import io
import warnings

import numpy as np
import pydicom
import pytest

pytest.importorskip("pynetdicom", reason="cxr-edge[node] is not installed")
pytest.importorskip("highdicom", reason="cxr-edge[node] is not installed")

# pylint: disable=g-import-not-at-top,wrong-import-position
from cxr_edge.node import report
from tests import dicom_files
from tests.node_test import Pacs, _edited, audit, running_node, send
# pylint: enable=g-import-not-at-top,wrong-import-position

FILMS = 200
SEED = 20261205
_DATES = ["", "0", "19000101", "1990-01-31", "99999999", "abc", "2026", "20231345"]
_TIMES = ["", "25", "256199", "10:15", "101500.123456789", "x", "1015"]
_NUMBERS = ["", "abc", "-1", "99999999999", "1.5", " 7 "]
# Values by keyword (None: the element removed).
PERTURBATIONS = {
    "PatientName": ["", "A" * 200, "Doe^John^^^^", "=^=", "名前^太郎", "a\\b", "x\x1by",
                    "Müller^Jörg", None],
    "PatientID": ["", "X" * 100, "id with spaces  ", "ÄÖ", None],
    "PatientSex": ["U", "m", "MALE", "", "X", "femme", None],
    "PatientBirthDate": _DATES + [None],
    "PatientAge": ["", "045Y", "45", "old", None],
    "StudyDate": _DATES + [None],
    "SeriesDate": _DATES,
    "ContentDate": _DATES,
    "StudyTime": _TIMES + [None],
    "SeriesTime": _TIMES,
    "AccessionNumber": ["", "A" * 40, "ÄÄ", None],
    "StudyID": ["", "1" * 30, None],
    "SeriesDescription": ["", "x" * 200, "<b>", "PA\\LAT", None],
    "ReferringPhysicianName": ["", "Dr^Who" * 20, None],
    "Modality": ["CT", "dx", "", "DX", None],
    "SpecificCharacterSet": ["ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 87", "GB18030",
                             "ISO_IR 999", "", ["", "ISO 2022 IR 149"], None],
    "InstanceNumber": _NUMBERS + [None],
    "SeriesNumber": _NUMBERS + [None],
    "BodyPartExamined": ["", "CHEST", "chest", "THORAX" * 5, None],
    "PatientOrientation": [["L"], ["A", "F", "X"], "", None],
    "ImageType": ["DERIVED", ["ORIGINAL"], None],
    "Manufacturer": [report.MANUFACTURER, "", None],
    "PresentationIntentType": ["FOR PROCESSING", "", None],
}


def _perturbed(rng: np.random.Generator, seed: int) -> bytes:
  """A film with one to four header values perturbed; a perturbation pydicom cannot even
  write is left out (no sender could send it either)."""
  data = dicom_files.study_film(seed, study=seed % 7)
  keywords = rng.choice(sorted(PERTURBATIONS), size=int(rng.integers(1, 5)), replace=False)
  for keyword in keywords:
    values = PERTURBATIONS[keyword]
    value = values[int(rng.integers(len(values)))]
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = _edited(data, **{keyword: value})
    except Exception:  # pylint: disable=broad-except  # pydicom refuses many kinds
      continue
  return data


def test_every_acknowledged_fuzzed_film_gets_exactly_one_report(released_model, tmp_path):
  rng = np.random.default_rng(SEED)
  films = [_perturbed(rng, seed) for seed in range(FILMS)]
  uids = [str(pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID) for f in films]
  assert len(set(uids)) == FILMS
  pacs = Pacs().start()
  try:
    with running_node(released_model, tmp_path / "spool", forward=pacs.address) as node:
      statuses = []
      for start in range(0, FILMS, 50):  # associations of 50 films, as a modality batches
        statuses += send(node.ports.dicom, films[start:start + 50])
      assert node.wait_idle(600)
  finally:
    pacs.stop()
  acknowledged = {u for u, s in zip(uids, statuses) if s == 0x0000}
  own = {u for u, f in zip(uids, films)
         if report.is_own_output(pydicom.dcmread(io.BytesIO(f), stop_before_pixels=True))}
  # Every status is an answer the node documents: 0000, or a refusal the sender keeps.
  assert set(statuses) <= {0x0000, 0xA900, 0xC000}, collections.Counter(statuses)
  assert len(acknowledged) >= FILMS * 0.9  # the perturbations are of values, not UIDs
  reported = collections.Counter(report.describe(r)["source"] for r in pacs.reports())
  assert set(reported) == acknowledged - own
  assert set(reported.values()) == {1}
  lines = audit(tmp_path / "spool")
  assert sorted(line["sop_instance_uid"] for line in lines) == sorted(acknowledged - own)
  assert not any((line["error"] or "").startswith("internal error") for line in lines)
