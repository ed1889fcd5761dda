"""Occlusion sensitivity with the deployed TFLite model itself (no TensorFlow).

Each square of the model's input is covered in turn with the film's mean grey level and
the change in P(pneumonia) recorded: where covering lowers the predicted class's
probability, that region supported the decision. It costs one invoke per position (about
200 for a 150-px input), so it is slow on purpose and only runs when asked
(cxr-predict --explain=DIR). It shows what the model used, not where disease is.
"""
from typing import Dict, Optional

import numpy as np

from cxr_edge.core import metrics
from cxr_edge.core import overlay
from cxr_edge.edge import runtime


def occlusion_map(model: runtime.LiteModel, image: np.ndarray, patch: int = 0,
                  stride: int = 0) -> np.ndarray:
  """Evidence map for the predicted class, [n, n] >= 0, from occluding `patch`-px squares.

  Args:
    model: the TFLite model.
    image: float32 [S, S, 1] in [0, 1], as the model takes it.
    patch: square side in input pixels (default S / 7.5, 20 px at 150).
    stride: step (default patch / 2).
  """
  side = image.shape[0]
  patch = patch or max(4, round(side / 7.5))
  stride = stride or max(1, patch // 2)
  p0 = float(metrics.p_pneumonia(model.probabilities(image)))
  sign = 1.0 if p0 >= model.threshold else -1.0  # evidence for what was decided
  fill = float(image.mean())
  starts = range(0, side - patch + 1, stride)
  heat = np.zeros((len(starts), len(starts)), np.float32)
  for i, y in enumerate(starts):
    for j, x in enumerate(starts):
      covered = image.copy()
      covered[y:y + patch, x:x + patch] = fill
      heat[i, j] = sign * (p0 - float(metrics.p_pneumonia(model.probabilities(covered))))
  return np.maximum(heat, 0.0)


def overlay_png(model: runtime.LiteModel, data: bytes, result: Dict,
                gray: Optional[np.ndarray] = None) -> bytes:
  """A film's occlusion overlay as a captioned PNG (cxr-predict --explain, cxr-node
  --overlay).

  Args:
    model: the model that predicted the film.
    data: the film's bytes (any format the runtime reads).
    result: its prediction record (runtime.LiteModel.predict_bytes).
    gray: the film as already decoded (runtime.film_gray), if it was.
  """
  if gray is None:
    gray = runtime.film_gray(data)
  heat = occlusion_map(model, runtime.preprocess_gray(gray, model.image_size, model.scale))
  caption = (f"{result['prediction']} (p_pneumonia {result['p_pneumonia']:.3f}, threshold "
             f"{result['threshold']:.3f})\nocclusion sensitivity, deployed model: "
             f"{overlay.NOT_A_LOCALISATION}")
  return overlay.heat_overlay(gray, heat, caption)
