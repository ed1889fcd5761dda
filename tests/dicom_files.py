"""DICOM films written at test time, for tests and scripts/dicom_parity.py (never shipped)."""
import functools
import hashlib
import io
import os
from typing import Tuple

import numpy as np


def encode_dicom(pixels: np.ndarray, bits: int = 8, photometric: str = "MONOCHROME2",
                 window=None, rescale=None, voi_lut=None, modality: str = "DX",
                 patient_id: str = "PAT-001", syntax=None, frames: int = 1,
                 attributes=None) -> bytes:
  """Writes stored pixel values as a DICOM Part 10 file (a digital X-ray, for presentation).

  For tests and the DICOM parity measurement (scripts/dicom_parity.py); not shipped.
  Identifiers are placeholders.

  Args:
    pixels: stored values, [H, W] (or [frames, H, W]); uint8 for bits=8, else uint16.
    bits: BitsStored (8 allocates 8 bits, more allocate 16).
    photometric: MONOCHROME1 / MONOCHROME2 (RGB for a colour fixture: pixels [H, W, 3]).
    window: (centre, width) or None.
    rescale: (slope, intercept) or None.
    voi_lut: (first_mapped, lut_bits, lut values) or None.
    syntax: a transfer syntax UID to compress to (RLE, JPEG 2000...), None: uncompressed.
    attributes: more attributes, {keyword: value} (a study's UIDs, names, dates).
  """
  # pylint: disable=g-import-not-at-top
  from pydicom.dataset import Dataset, FileMetaDataset
  from pydicom.sequence import Sequence
  from pydicom import uid as dicom_uid
  # pylint: enable=g-import-not-at-top
  ds = Dataset()
  ds.file_meta = FileMetaDataset()
  ds.file_meta.TransferSyntaxUID = dicom_uid.ExplicitVRLittleEndian
  ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation
  # A UUID-derived UID (the 2.25 root) from the pixels: unique per film, reproducible.
  digest = hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()
  ds.file_meta.MediaStorageSOPInstanceUID = f"2.25.{int(digest[:30], 16)}"
  ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
  ds.Modality = modality
  ds.PatientID = patient_id
  ds.PatientName = "Anonymous"
  colour = photometric == "RGB"
  ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
  ds.SamplesPerPixel = 3 if colour else 1
  if colour:
    ds.PlanarConfiguration = 0
  ds.PhotometricInterpretation = photometric
  ds.BitsAllocated = 8 if bits == 8 else 16
  ds.BitsStored = bits
  ds.HighBit = bits - 1
  ds.PixelRepresentation = 0
  if frames > 1:
    ds.NumberOfFrames = frames
  if window is not None:
    ds.WindowCenter, ds.WindowWidth = window
  if rescale is not None:
    ds.RescaleSlope, ds.RescaleIntercept = rescale
  if voi_lut is not None:
    first, lut_bits, values = voi_lut
    item = Dataset()
    item.LUTDescriptor = [len(values), first, lut_bits]
    item.add_new(0x00283006, "US", [int(v) for v in values])  # LUTData
    ds.VOILUTSequence = Sequence([item])
  for keyword, value in (attributes or {}).items():
    setattr(ds, keyword, value)
  ds.PixelData = np.ascontiguousarray(
      pixels, np.uint8 if bits == 8 else np.uint16).tobytes()
  if syntax is not None:
    ds.compress(syntax)
  out = io.BytesIO()
  ds.save_as(out, enforce_file_format=True)
  return out.getvalue()


def rewritten(data: bytes, edit) -> bytes:
  """A DICOM file's bytes after `edit(ds)` changed its dataset."""
  import pydicom  # pylint: disable=g-import-not-at-top
  ds = pydicom.dcmread(io.BytesIO(data))
  edit(ds)
  out = io.BytesIO()
  ds.save_as(out, enforce_file_format=True)
  return out.getvalue()


def malformed(edit, pixels=None) -> bytes:
  """A valid 8-bit DICOM with one attribute rewritten by `edit(ds)`, as a device meets it."""
  if pixels is None:
    pixels = (np.arange(48 * 64) % 256).reshape(48, 64).astype(np.uint8)
  return rewritten(encode_dicom(pixels, window=(128, 256), rescale=(1, 0)), edit)


def set_raw(name, value):
  """Writes `value`'s bytes as `name`, unchecked, as a careless writer would."""
  def edit(ds):
    from pydicom import datadict  # pylint: disable=g-import-not-at-top
    from pydicom.dataelem import RawDataElement  # pylint: disable=g-import-not-at-top
    tag = datadict.tag_for_keyword(name)
    raw = value.encode("ascii")
    raw += b" " * (len(raw) % 2)  # DICOM values have an even length
    ds[tag] = RawDataElement(tag, datadict.dictionary_VR(tag), len(raw), raw, 0, False, True)
  return edit


def drop(name):
  def edit(ds):
    del ds[name]
  return edit


def voi_lut(descriptor, data):
  def edit(ds):
    from pydicom.dataset import Dataset  # pylint: disable=g-import-not-at-top
    from pydicom.sequence import Sequence  # pylint: disable=g-import-not-at-top
    items = []
    if descriptor is not None:
      item = Dataset()
      item.LUTDescriptor = descriptor
      if data is not None:
        item.add_new(0x00283006, "US", data)
      items.append(item)
    ds.VOILUTSequence = Sequence(items)
  return edit


SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "data", "sample")


def _sample_pixels(index: int, seed: int) -> np.ndarray:
  """Sample film number `index` (both classes, by name) as 12-bit stored values, with
  seeded noise in the low bits so that every seed is a film of its own (its UIDs come from
  its pixels)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  names = sorted(os.path.join(label, n) for label in ("NORMAL", "PNEUMONIA")
                 for n in os.listdir(os.path.join(SAMPLE_DIR, label)))
  with Image.open(os.path.join(SAMPLE_DIR, names[index % len(names)])) as im:
    gray = np.asarray(im.convert("L"), np.uint16)
  return gray * 16 + np.random.default_rng(seed).integers(0, 16, gray.shape).astype(np.uint16)


@functools.lru_cache(maxsize=None)
def _in_scope() -> Tuple[int, ...]:
  """The sample films the released model analyses as study films (its image gate holds
  back about one in a hundred in-scope films: the tests that need a finding use the
  others; the gate's own tests use films made out of scope on purpose)."""
  from cxr_edge.core import errors  # pylint: disable=g-import-not-at-top
  from cxr_edge.edge import released, runtime  # pylint: disable=g-import-not-at-top
  model = runtime.LiteModel(released.path())
  kept = []
  for index in range(len(os.listdir(os.path.join(SAMPLE_DIR, "NORMAL")))
                     + len(os.listdir(os.path.join(SAMPLE_DIR, "PNEUMONIA")))):
    try:
      model.analyse(encode_dicom(_sample_pixels(index, index), bits=12, window=(2048, 4096)))
      kept.append(index)
    except errors.OutOfScope:
      pass
  return tuple(kept)


def study_film(seed: int, study: int = 1, **attributes) -> bytes:
  """A DX film as a modality sends it (a real chest film of the embedded sample, 12 bits,
  one the released model analyses): in study number `study` (its UIDs derived from it),
  with a patient, dates and a series; `attributes` override any of them."""
  films = _in_scope()
  pixels = _sample_pixels(films[seed % len(films)], seed)
  fields = {"StudyInstanceUID": f"2.25.{1000 + study}", "SeriesInstanceUID":
            f"2.25.{2000 + study}.{seed}", "PatientName": f"Test^Patient{study}",
            "PatientID": f"TEST-{study}", "StudyDate": "20261201", "StudyTime": "101500",
            "SeriesDescription": "PA chest", "InstanceNumber": seed + 1,
            "Manufacturer": "test", "AccessionNumber": f"ACC{study}",
            "ReferringPhysicianName": "", "PatientBirthDate": "", "PatientSex": "O",
            "StudyID": str(study), "SeriesNumber": 1, "PatientOrientation": ["L", "F"],
            "ImageType": ["ORIGINAL", "PRIMARY"], "PresentationIntentType": "FOR PRESENTATION",
            "BodyPartExamined": "CHEST"}
  fields.update(attributes)
  return encode_dicom(pixels, bits=12, window=(2048, 4096), patient_id=fields["PatientID"],
                      attributes=fields)
