"""What the clinic node sends back to the PACS: a DICOM Structured Report per film (and,
when asked, a Secondary Capture of the occlusion overlay), both in the film's study.

The report is a TID 1500 Measurement Report, as IHE AI Results and MONAI Deploy's SR
writer make them, built with highdicom (which keeps the template's structure and the
patient/study modules right): the procedure reported (plain chest X-ray); the film as
evidence and source image; the algorithm (cxr-edge's network, the package's version and
the model file's sha256), also as Contributing Equipment; a plain summary first; the finding
"Pneumonia" present or absent at the package threshold; p_pneumonia and the threshold
as numbers; the plausibility guard's warning; and the caution that it is a triage aid,
not for diagnostic use. A film the node could not analyse gets a report too, saying so
and why, so that no reader takes silence for a negative.

UIDs derive from the film's SOP Instance UID and the model's sha256, so a film redone
after a crash gets a report with the same UIDs (the PACS keeps one instance, not two).
"""
import copy
import datetime
import re
from typing import Dict, Optional, Tuple
import uuid
import warnings

import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from cxr_edge.core import package_info
from cxr_edge.core.version import __version__

MANUFACTURER = "cxr-edge"
CAUTION = ("CAUTION: Not for Diagnostic Use. Produced by cxr-edge, a triage aid that flags "
           "chest radiographs which may show pneumonia so that a clinician reads them "
           "first; the finding is a model's output, not a diagnosis.")
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
SR_SERIES_DESCRIPTION = "cxr-edge AI triage - not for diagnostic use"
SC_SERIES_DESCRIPTION = "cxr-edge occlusion map - not for diagnostic use"
CARD_SERIES_NUMBER = 9903
CARD_SERIES_DESCRIPTION = "cxr-edge AI result - not for diagnostic use"

# SNOMED CT and DCM codes of the report's content; the probability has none, so it is
# coded in a private scheme (99CXREDGE), as PS3.16 allows for local codes.
PLAIN_CHEST_XRAY = Code("399208008", "SCT", "Plain chest X-ray")
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("2667000", "SCT", "Absent")
P_PNEUMONIA = Code("p_pneumonia", "99CXREDGE", "Probability of pneumonia")
# A three-class model's: the two parts of p_pneumonia, and the likelier kind of a film
# it calls PNEUMONIA.
P_BACTERIAL = Code("p_bacterial", "99CXREDGE", "Probability of bacterial pneumonia")
P_VIRAL = Code("p_viral", "99CXREDGE", "Probability of viral pneumonia")
SUBTYPE = Code("subtype", "99CXREDGE", "Likelier kind of pneumonia")
SUBTYPE_CODES = {"BACTERIAL": Code("53084003", "SCT", "Bacterial pneumonia"),
                 "VIRAL": Code("75570004", "SCT", "Viral pneumonia")}
THRESHOLD = Code("threshold", "99CXREDGE", "Decision threshold")
PROBABILITY_UNIT = Code("1", "UCUM", "no units")
COMMENT = Code("121106", "DCM", "Comment")
SUMMARY = Code("121111", "DCM", "Summary")


def summary(result: Dict, info: package_info.ModelInfo) -> str:
  """The report's first line, in plain words, as a viewer shows it before anything else:
  nothing in it reads as a positive finding on a negative film."""
  if "error" in result:
    return f"AI triage: not analysed ({result['error']}). Not for diagnostic use."
  # A warning comes first, whole: the call after it, never a negative before it.
  warning = f"WARNING: {result['warning']}. " if result.get("warning") else ""
  p, threshold = result["p_pneumonia"], f"{result['threshold']:.3g}"
  # Two decimals, but never a rounded 1.00 or 0.00 that reads as certainty.
  p = ("above 0.99" if p > 0.99 else "below 0.01" if p < 0.01 else f"{p:.2f}")
  if result["prediction"] == info.labels[1]:
    kind = f"; likelier {result['subtype'].lower()}" if result.get("subtype") else ""
    text = (f"AI triage: {warning}pneumonia suspected, probability {p} at threshold "
            f"{threshold}{kind}.")
  else:
    text = (f"AI triage: {warning}no pneumonia suspected, probability {p}, below "
            f"threshold {threshold}.")
  return text + " Not for diagnostic use."


# Type 2 attributes of the patient and study modules: present in every film by the
# standard, possibly empty, yet some senders leave them out. The reports copy them.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
          "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")


# Dates and times the reports copy from the film. Real modalities write them in older or
# looser forms; a value that is not a valid DA / TM even after the standard's repairs is
# left empty (they are type 2 or 3 here), never guessed.
_DATES = ("PatientBirthDate", "StudyDate", "SeriesDate", "ContentDate", "AcquisitionDate")
_TIMES = ("PatientBirthTime", "StudyTime", "SeriesTime", "ContentTime", "AcquisitionTime")
# PatientSex is M, F or O (PS3.3 C.7.1.1); common spellings of these are repaired, any
# other value (U, unknown, a typo) is left empty: unknown, as the standard writes it.
_SEXES = {"M": "M", "F": "F", "O": "O", "MALE": "M", "FEMALE": "F", "OTHER": "O"}


def valid_date(text: object) -> str:
  """A DA value (YYYYMMDD) of a real date, from YYYYMMDD or the older YYYY.MM.DD (and
  YYYY-MM-DD); "" for anything else."""
  match = re.fullmatch(r"(\d{4})[.-]?(\d{2})[.-]?(\d{2})", str(text or "").strip())
  if not match:
    return ""
  try:
    datetime.date(*(int(g) for g in match.groups()))
  except ValueError:
    return ""
  return "".join(match.groups())


def valid_time(text: object) -> str:
  """A TM value (HH[MM[SS[.F{1,6}]]] within range), also from the older HH:MM:SS; ""
  for anything else."""
  text = str(text or "").strip()
  match = re.fullmatch(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(\.\d{1,6})?)?)?", text)
  if not match:
    return ""
  hh, mm, ss, fraction = match.groups()
  if int(hh) > 23 or (mm and int(mm) > 59) or (ss and int(ss) > 60):
    return ""
  return hh + (mm or "") + (ss or "") + (fraction or "")


def evidence(film: pydicom.Dataset) -> pydicom.Dataset:
  """What the reports copy from the film: its header, repaired where the standard says
  how and emptied where a value is invalid, in UTF-8.

  The patient and study modules' type 2 attributes are present (empty where the film
  lacks them or holds an invalid value); text is decoded with the film's character set
  (what pydicom cannot decode is replaced visibly) and the copy declares ISO_IR 192; the
  film's own dataset is not changed.
  """
  header = copy.deepcopy(film)  # a header (no pixels): cheap, and the film is not changed
  header.file_meta = getattr(film, "file_meta", pydicom.dataset.FileMetaDataset())
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # an unknown character set: pydicom's own fallback
    for tag in list(header.keys()):
      # Each value decoded with the film's character set (pydicom keeps the result); one
      # it cannot read at all is left out of the report, not fatal to it.
      try:
        header[tag]  # pylint: disable=pointless-statement
      except (ValueError, TypeError, LookupError, UnicodeError, OverflowError):
        del header[tag]
  header.SpecificCharacterSet = "ISO_IR 192"
  for keyword in _DATES:
    if keyword in header:
      setattr(header, keyword, valid_date(header.get(keyword)))
  for keyword in _TIMES:
    if keyword in header:
      setattr(header, keyword, valid_time(header.get(keyword)))
  if "PatientSex" in header:
    header.PatientSex = _SEXES.get(str(header.get("PatientSex") or "").strip().upper(), "")
  for keyword in _TYPE2:
    if keyword not in header:
      setattr(header, keyword, "")
  return header


# What a minimal report keeps of a film whose header a full report cannot be built from:
# the UIDs that put it in the film's study, and who the patient is.
_MINIMAL = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
            "PatientID", "PatientName")


def minimal_header(film: pydicom.Dataset) -> pydicom.Dataset:
  """The film's UIDs and patient only: for the NOT ANALYSED report of a film whose
  header holds something no report can carry."""
  header = pydicom.Dataset()
  header.file_meta = getattr(film, "file_meta", pydicom.dataset.FileMetaDataset())
  for keyword in _MINIMAL:
    try:
      value = film.get(keyword)
      setattr(header, keyword, "" if value is None else str(value))
    except (ValueError, TypeError, LookupError, UnicodeError):
      setattr(header, keyword, "")
  return header


# Name-based UUIDs (RFC 4122 version 5) under the 2.25 root (PS3.5 B.2): the same
# names give the same UID, on any machine.
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/cxr-edge/cxr-edge")


def derived_uid(*parts: str) -> str:
  """A UID that depends only on `parts`."""
  return f"2.25.{uuid.uuid5(_NAMESPACE, '|'.join(parts)).int}"


def report_uids(film_uid: str, model_sha256: str, study_uid: str) -> Dict[str, str]:
  """The report's and overlay's UIDs: the same film and model always give the same ones.

  One series per study and model for the reports, one for the overlays.
  """
  uid = derived_uid
  return {"sr": uid("sr", film_uid, model_sha256),
          "sr_series": uid("sr-series", study_uid, model_sha256),
          "sc": uid("sc", film_uid, model_sha256),
          "sc_series": uid("sc-series", study_uid, model_sha256),
          "card": uid("card", film_uid, model_sha256),
          "card_series": uid("card-series", study_uid, model_sha256)}


def _device(info: package_info.ModelInfo, sha256: str):
  import highdicom as hd  # pylint: disable=g-import-not-at-top
  return hd.sr.DeviceObserverIdentifyingAttributes(
      uid=derived_uid("device", sha256),
      name=f"cxr-edge {__version__}", manufacturer_name=MANUFACTURER,
      model_name=info.model or "cxr-edge model", serial_number=sha256[:16])


def contributing_equipment(info: package_info.ModelInfo, sha256: str) -> pydicom.Dataset:
  """The algorithm as IHE AI Results names it: an item of Contributing Equipment
  Sequence (0018,A001) whose purpose is Processing Equipment (DCM 109102), with its
  name, version and model sha256."""
  item = pydicom.Dataset()
  item.Manufacturer = MANUFACTURER
  item.ManufacturerModelName = (info.model or "cxr-edge model")[:64]
  item.SoftwareVersions = [__version__]
  item.DeviceSerialNumber = sha256[:16]
  item.DeviceUID = derived_uid("device", sha256)
  item.ContributionDescription = (f"AI triage of pneumonia by cxr-edge {__version__}, "
                                  f"{info.model or 'model'} (sha256 {sha256})")
  purpose = pydicom.Dataset()
  purpose.CodeValue, purpose.CodingSchemeDesignator = "109102", "DCM"
  purpose.CodeMeaning = "Processing Equipment"
  item.PurposeOfReferenceCodeSequence = [purpose]
  return item


def structured_report(film: pydicom.Dataset, result: Dict,
                      info: package_info.ModelInfo, sha256: str) -> pydicom.Dataset:
  """The film's report as a Comprehensive SR dataset.

  Args:
    film: the film's dataset (its header is enough: pixels are not read).
    result: the runtime's record ({"prediction", "p_pneumonia", "threshold", "warning"}),
      or {"error": why} for a film that could not be analysed.
    info: the model package's metadata.
    sha256: the model file's sha256.
  """
  import highdicom as hd  # pylint: disable=g-import-not-at-top
  film = evidence(film)
  uids = report_uids(film.SOPInstanceUID, sha256, film.StudyInstanceUID)
  context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
      observer_type=codes.DCM.Device,
      observer_identifying_attributes=_device(info, sha256)))
  analysed = "error" not in result
  algorithm = hd.sr.AlgorithmIdentification(
      name=f"cxr-edge {info.model or 'model'}", version=__version__,
      parameters=[f"model sha256 {sha256}", f"model kind {info.kind or 'not recorded'}",
                  f"threshold {info.threshold:.6f}"],
      manufacturer=MANUFACTURER)
  measurements, evaluations, positive = None, None, False
  if analysed:
    # The group names the algorithm once; each measurement repeating it buried the
    # numbers in a viewer's rendering.
    measurements = [
        hd.sr.Measurement(name=name, value=float(value), unit=PROBABILITY_UNIT)
        for name, value in ((P_PNEUMONIA, result["p_pneumonia"]),
                            (P_BACTERIAL, result.get("p_bacterial")),
                            (P_VIRAL, result.get("p_viral")),
                            (THRESHOLD, result["threshold"])) if value is not None]
    positive = result["prediction"] == info.labels[1]
    finding = PRESENT if positive else ABSENT
    evaluations = [hd.sr.QualitativeEvaluation(PNEUMONIA, finding)]
    if result.get("subtype"):
      evaluations.append(hd.sr.QualitativeEvaluation(SUBTYPE, SUBTYPE_CODES[result["subtype"]]))
  # A film not analysed still gets its group (algorithm, source image), with no finding.
  groups = [hd.sr.MeasurementsAndQualitativeEvaluations(
      tracking_identifier=hd.sr.TrackingIdentifier(
          uid=derived_uid("tracking", uids["sr"]),
          identifier="cxr-edge pneumonia triage"),
      # A viewer shows the finding type as the group's heading: "Pneumonia" only where
      # it is suspected, the examination otherwise.
      finding_type=PNEUMONIA if analysed and positive else PLAIN_CHEST_XRAY,
      algorithm_id=algorithm, measurements=measurements,
      qualitative_evaluations=evaluations,
      # Named by its UIDs: from_source_image would also need a Modality, which some
      # films lack.
      source_images=[hd.sr.SourceImageForMeasurementGroup(
          referenced_sop_class_uid=film.SOPClassUID,
          referenced_sop_instance_uid=film.SOPInstanceUID)])]
  report = hd.sr.MeasurementReport(observation_context=context,
                                   procedure_reported=PLAIN_CHEST_XRAY,
                                   imaging_measurements=groups)
  comments = [CAUTION]
  if info.notice:  # a smoke-test model: said before anything else
    comments.insert(0, info.notice)
  if not analysed:
    comments.insert(0, f"NOT ANALYSED: {result['error']}")
  elif result.get("warning"):
    comments.insert(0, f"WARNING: {result['warning']}")
  root = report[0]
  root.ContentSequence.insert(0, hd.sr.TextContentItem(
      name=SUMMARY, value=summary(result, info)[:1024],
      relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
  for text in comments:
    root.ContentSequence.append(hd.sr.TextContentItem(
        name=COMMENT, value=text[:1024],
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
  # "SEPARATE": viewers (DCMTK's renderer among them) then show each item with its name
  # ("Probability of pneumonia = 0.82"); CONTINUOUS ran the values together as prose,
  # numbers without names and "Present" without what.
  for container in [report[0], *(i for i in _walk(report[0].ContentSequence)
                                 if i.ValueType == "CONTAINER")]:
    container.ContinuityOfContent = "SEPARATE"
  sr = hd.sr.ComprehensiveSR(
      evidence=[film], content=report, series_instance_uid=uids["sr_series"],
      series_number=SR_SERIES_NUMBER, sop_instance_uid=uids["sr"],
      instance_number=_instance_number(film), manufacturer=MANUFACTURER,
      is_complete=True, is_final=False, is_verified=False,
      series_description=SR_SERIES_DESCRIPTION)
  sr.ContributingEquipmentSequence = [contributing_equipment(info, sha256)]
  return sr


def overlay_capture(film: pydicom.Dataset, rgb: np.ndarray, sha256: str) -> pydicom.Dataset:
  """The occlusion overlay (an RGB drawing, uint8 [H, W, 3]) as a Secondary Capture in
  the film's study."""
  return _secondary_capture(film, rgb, sha256, "sc", SC_SERIES_NUMBER,
                            SC_SERIES_DESCRIPTION)


def result_card(film: pydicom.Dataset, rgb: np.ndarray, sha256: str) -> pydicom.Dataset:
  """The result card (node/card.py's drawing) as a Secondary Capture in the film's study."""
  return _secondary_capture(film, rgb, sha256, "card", CARD_SERIES_NUMBER,
                            CARD_SERIES_DESCRIPTION)


def _secondary_capture(film: pydicom.Dataset, rgb: np.ndarray, sha256: str, kind: str,
                       series_number: int, description: str) -> pydicom.Dataset:
  import highdicom as hd  # pylint: disable=g-import-not-at-top
  film = evidence(film)
  uids = report_uids(film.SOPInstanceUID, sha256, film.StudyInstanceUID)
  sc = hd.sc.SCImage.from_ref_dataset(
      ref_dataset=film, pixel_array=np.ascontiguousarray(rgb, np.uint8),
      photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
      series_instance_uid=uids[f"{kind}_series"], series_number=series_number,
      sop_instance_uid=uids[kind], instance_number=_instance_number(film),
      manufacturer=MANUFACTURER, series_description=description,
      patient_orientation=_orientation(film),
      transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian)
  sc.BurnedInAnnotation = "YES"  # the words are drawn into the pixels
  # The film it was made from: a viewer (and a script) can go from the picture to it.
  source = pydicom.Dataset()
  source.ReferencedSOPClassUID = film.SOPClassUID
  source.ReferencedSOPInstanceUID = film.SOPInstanceUID
  sc.SourceImageSequence = [source]
  return sc


def is_own_output(ds: pydicom.Dataset) -> bool:
  """Whether a received dataset is one of this software's own objects (an overlay a PACS
  rule routed back): a Secondary Capture or SR in our series, by our manufacturer. A
  modality's film that merely names "cxr-edge" as its manufacturer is read as any film."""
  return (str(ds.get("Manufacturer", "")) == MANUFACTURER
          and ds.get("SOPClassUID") in (pydicom.uid.SecondaryCaptureImageStorage,
                                        pydicom.uid.ComprehensiveSRStorage)
          and str(ds.get("SeriesDescription", "")) in (
              SC_SERIES_DESCRIPTION, SR_SERIES_DESCRIPTION, CARD_SERIES_DESCRIPTION))


def _orientation(film: pydicom.Dataset) -> Tuple[str, str]:
  """The film's PatientOrientation, which the overlay keeps (it is drawn upright as the
  film is); without one, a frontal chest film's display convention (patient's left to
  the right, feet down)."""
  value = film.get("PatientOrientation")
  try:
    row, column = (str(v) for v in value)
  except (TypeError, ValueError):
    return "L", "F"
  valid = set("LRAPHF")
  if row and column and set(row) <= valid and set(column) <= valid:
    return row, column
  return "L", "F"


def _instance_number(film: pydicom.Dataset) -> int:
  try:
    number = int(film.get("InstanceNumber") or 1)
  except (TypeError, ValueError):
    return 1
  return number if 0 < number < 2**31 else 1


def describe(sr: pydicom.Dataset) -> Optional[Dict[str, object]]:
  """The finding, probabilities, threshold, subtype and comments read back from one of
  our reports (for tests and for checking what a PACS holds)."""
  out: Dict[str, object] = {"comments": []}
  for item in _walk(sr.ContentSequence):
    name = item.ConceptNameCodeSequence[0].CodeMeaning
    if item.ValueType == "NUM":
      out[name] = float(item.MeasuredValueSequence[0].NumericValue)
    elif item.ValueType == "CODE" and name == PNEUMONIA.meaning:
      out["finding"] = item.ConceptCodeSequence[0].CodeMeaning
    elif item.ValueType == "CODE" and name == SUBTYPE.meaning:
      out["subtype"] = item.ConceptCodeSequence[0].CodeMeaning
    elif item.ValueType == "TEXT" and name == COMMENT.meaning:
      out["comments"].append(item.TextValue)
    elif item.ValueType == "TEXT" and name == SUMMARY.meaning:
      out["summary"] = item.TextValue
    elif item.ValueType == "IMAGE":
      out["source"] = item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
  return out


def _walk(items):
  for item in items:
    yield item
    if "ContentSequence" in item:
      yield from _walk(item.ContentSequence)
