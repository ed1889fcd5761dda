"""A cheap plausibility check: is this input a chest radiograph at all?

The classifier scores anything it is given: a blank image, noise or a photograph gets a
confident PNEUMONIA as readily as a film. Before a prediction is trusted, a few numpy
measurements on the decoded film (no model, a millisecond or two) flag what no chest
radiograph looks like:

- near-constant: the 1st-99th percentile range of the grey levels is tiny (blank,
  saturated or empty images);
- too smooth: almost no pixel-to-pixel variation relative to the contrast (synthetic
  gradients, heavily blurred images);
- noise: pixel-to-pixel variation as large as the contrast itself (static, random data);
- no chest structure: the middle band, where spine and mediastinum are, is not brighter
  than the lung fields either side (inverted films, MONOCHROME1 read as MONOCHROME2,
  most non-chest images);
- colour: saturated colour (photographs, screenshots);
- extreme aspect ratio.

The limits sit outside every one of the 5,216 training and 312 external films with a
margin (scripts/guard_check.py measures both that and what gets flagged). A flagged
film is not analysed (edge/runtime.py: LiteModel.analyse). These checks need no model
and give plain reasons; the model's own image gate (edge/scope.py) comes after them and
withholds what they cannot see (photographs in grey, pages, films turned, upside down
or cropped). TensorFlow-free.
"""
import io
from typing import Optional

import numpy as np
from PIL import Image

# Limits, set outside what scripts/guard_check.py measures on the training and external
# films, with a margin: a real film must never be flagged.
MIN_RANGE = 40.0
MIN_ROUGHNESS = 0.035
MAX_ROUGHNESS = 0.6
MIN_MEDIASTINUM_CONTRAST = -0.25
MAX_CHROMA = 12.0
MAX_ASPECT = 2.5
_SIDE = 128  # measured on a resized copy: cost and scale do not depend on the film's size


def chroma(data: bytes) -> float:
  """Mean (max - min) over R, G, B of a small copy: 0 for grey films; 0 if not RGB."""
  try:
    with Image.open(io.BytesIO(data)) as im:
      if im.mode not in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
        return 0.0
      im.draft("RGB", (64, 64))  # JPEG: decode at reduced size
      im = im.convert("RGB")
      im.thumbnail((64, 64))
      a = np.asarray(im, np.int16)
  except (OSError, ValueError, SyntaxError):
    return 0.0
  return float((a.max(axis=-1) - a.min(axis=-1)).mean())


def measure(gray: np.ndarray, resize) -> dict:
  """The measurements of a decoded film (uint8 [H, W]); resize(x, side) as the runtime's."""
  h, w = gray.shape
  x = resize(gray.astype(np.float32), _SIDE)
  low, high = np.percentile(x, [1, 99])
  std = float(x.std()) + 1e-6
  rows = x[int(0.3 * _SIDE):int(0.7 * _SIDE)]
  centre = rows[:, int(0.42 * _SIDE):int(0.58 * _SIDE)].mean()
  lungs = np.concatenate([rows[:, int(0.16 * _SIDE):int(0.34 * _SIDE)],
                          rows[:, int(0.66 * _SIDE):int(0.84 * _SIDE)]], axis=1).mean()
  return {"range": float(high - low),
          "roughness": float(np.mean(np.abs(np.diff(x, axis=1)))) / std,
          "mediastinum_contrast": float(centre - lungs) / std,
          "aspect": max(h, w) / max(1, min(h, w))}


def check(gray: np.ndarray, colour: float, resize) -> Optional[str]:
  """The first implausibility found, as a short reason, or None for a plausible film.

  Args:
    gray: the decoded film, uint8 [H, W].
    colour: chroma() of its bytes.
    resize: the runtime's resize (edge/runtime.resize_bilinear).
  """
  m = measure(gray, resize)
  if colour > MAX_CHROMA:
    return f"colour image (chroma {colour:.0f}): not a radiograph"
  if m["aspect"] > MAX_ASPECT:
    return f"extreme aspect ratio {m['aspect']:.1f}: not a chest film"
  if m["range"] < MIN_RANGE:
    return f"near-constant image (grey-level range {m['range']:.0f})"
  if m["roughness"] > MAX_ROUGHNESS:
    return f"noise-like image (roughness {m['roughness']:.2f})"
  if m["roughness"] < MIN_ROUGHNESS:
    return f"too smooth for a radiograph (roughness {m['roughness']:.3f})"
  if m["mediastinum_contrast"] < MIN_MEDIASTINUM_CONTRAST:
    return ("no chest structure: the middle is darker than the sides (an inverted film? "
            f"contrast {m['mediastinum_contrast']:.2f})")
  return None
