"""The film reader's contract under fuzzing: every input gives a film or one of our errors.

Seeded mutations of valid PNG, 16-bit PNG, JPEG, TIFF and DICOM files (bytes flipped,
inserted or cut in their headers) and DICOMs whose attributes hold random garbage, read
as cxr-convert reads them (image_io.inspect_data) and as the device does
(runtime.film_gray). Never another exception, and never more
memory than a limit the subprocess sets on itself: a bomb would be a MemoryError there.
"""
import json
import subprocess
import sys

from tests.conftest import ROOT

CASES = 3000  # about five seconds on this machine
MEMORY_LIMIT_BYTES = 3 << 30  # the process's whole address space, libraries included

_FUZZ = r'''
import io, json, random, resource, sys
import numpy as np
from PIL import Image
resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
from cxr_edge.core import errors, film, image_io
from cxr_edge.edge import runtime
from tests import dicom_files

rng = random.Random(20261202)
pixels = (np.arange(48 * 64) % 256).reshape(48, 64).astype(np.uint8)

def saved(image, fmt):
  buf = io.BytesIO()
  image.save(buf, format=fmt)
  return buf.getvalue()

seeds = {
    "png": saved(Image.fromarray(pixels), "PNG"),
    "png16": saved(Image.fromarray((pixels.astype(np.uint16) * 16)), "PNG"),
    "jpeg": saved(Image.fromarray(pixels).convert("RGB"), "JPEG"),
    "tiff": saved(Image.fromarray(pixels), "TIFF"),
    "dicom": dicom_files.encode_dicom(pixels, window=(128, 256), rescale=(1, 0)),
    "dicom12": dicom_files.encode_dicom((pixels.astype(np.uint16) * 16), bits=12),
}
ATTRIBUTES = ["Rows", "Columns", "BitsStored", "BitsAllocated", "HighBit", "WindowCenter",
              "WindowWidth", "RescaleSlope", "RescaleIntercept", "PhotometricInterpretation",
              "NumberOfFrames", "SamplesPerPixel", "PixelRepresentation", "Modality"]
GARBAGE = ["0", "-1", "NaN", "inf", "-inf", "", "abc", "1e308", "65536", "4294967296",
           "1\\2", "MONOCHROME3", "RGB", "3", "0.5", " ", "\x00\x00"]

def mutated(data):
  data = bytearray(data)
  for _ in range(rng.randint(1, 4)):
    if not data:
      break
    kind = rng.random()
    at = rng.randrange(min(len(data), 512))  # headers, where the sizes and modes live
    if kind < 0.6:
      data[at] = rng.randrange(256)
    elif kind < 0.8:
      data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    else:
      del data[at:at + rng.randint(1, 64)]
  if data and rng.random() < 0.1:
    data = data[:rng.randrange(len(data))]
  return bytes(data)

ours = (errors.CxrError, runtime.ImageError)
outcomes, unexpected = {}, []
for case in range(NUM_CASES):
  name = rng.choice(sorted(seeds))
  if name.startswith("dicom") and rng.random() < 0.5:
    data = dicom_files.malformed(dicom_files.set_raw(rng.choice(ATTRIBUTES),
                                                     rng.choice(GARBAGE)), pixels)
  else:
    data = mutated(seeds[name])
  for reader in ("convert", "device"):
    try:
      if reader == "convert":
        result = image_io.inspect_data(data, max_pixels=1_000_000)
        outcome = "rejected" if isinstance(result, image_io.Rejection) else "film"
      else:
        runtime.film_gray(data)
        outcome = "film"
    except ours:
      outcome = "our error"
    except BaseException as e:  # the contract's breach: recorded, reported below
      outcome = "unexpected"
      unexpected.append(f"{name} case {case} ({reader}): {type(e).__name__}: {str(e)[:120]}")
    outcomes[outcome] = outcomes.get(outcome, 0) + 1
print(json.dumps({"outcomes": outcomes, "unexpected": unexpected[:20],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
'''


def test_every_input_gives_a_film_or_our_error_within_bounded_memory():
  code = (_FUZZ.replace("MEMORY_LIMIT", str(MEMORY_LIMIT_BYTES))
          .replace("NUM_CASES", str(CASES)))
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                     timeout=600, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  report = json.loads(r.stdout.strip().splitlines()[-1])
  assert report["unexpected"] == [], report
  # The mutations reach every outcome: the test would notice a reader that refuses all.
  assert report["outcomes"]["film"] > 0 and report["outcomes"]["our error"] > 0
