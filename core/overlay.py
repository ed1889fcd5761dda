"""Heat-map overlays of explanations on a film, as PNG. TensorFlow-free (Pillow, numpy).

One drawing for both kinds: cxr-evaluate's Grad-CAM (float model) and cxr-predict's
occlusion sensitivity (the deployed TFLite model), each captioned with what it is and
that it is not a diagnostic localisation.
"""
import io

import numpy as np
from PIL import Image, ImageDraw, PngImagePlugin

NOT_A_LOCALISATION = "not a diagnostic localisation"
# A PNG text chunk on every overlay, so that one fed back in as a film is recognised.
MARK_KEY, MARK_VALUE = "Software", "cxr-edge explanation overlay"


def _colormap(h: np.ndarray) -> np.ndarray:
  """[0, 1] -> RGB in [0, 1], blue (low) through green and yellow to red (high)."""
  four = 4.0 * h[..., None]
  return np.clip(1.5 - np.abs(four - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)


def heat_overlay(gray: np.ndarray, heat: np.ndarray, caption: str, side: int = 320,
                 alpha: float = 0.55) -> bytes:
  """A PNG of the film with `heat` blended on top and a caption strip below.

  Args:
    gray: the film, uint8 or float [H, W] (float in [0, 1]).
    heat: [h, w] >= 0, any scale; normalised to its maximum and resized to the film.
    caption: one or two short lines.
    side: the longer side of the drawing.
    alpha: opacity of the heat at its maximum.
  """
  g = np.asarray(gray, np.float32)
  g = g * 255.0 if g.max() <= 1.0 else g
  h, w = g.shape
  scale = side / max(h, w)
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  base = Image.fromarray(np.clip(g, 0, 255).astype(np.uint8)).resize(size, Image.BILINEAR)
  heat = np.asarray(heat, np.float32)
  top = float(heat.max())
  heat = heat / top if top > 0 else np.zeros_like(heat)
  heat_img = Image.fromarray(heat).resize(size, Image.BILINEAR)
  hv = np.clip(np.asarray(heat_img, np.float32), 0.0, 1.0)
  rgb = np.repeat(np.asarray(base, np.float32)[..., None] / 255.0, 3, axis=-1)
  weight = alpha * hv[..., None]
  blended = (1 - weight) * rgb + weight * _colormap(hv)
  lines = caption.split("\n")
  canvas = Image.new("RGB", (size[0], size[1] + 14 * len(lines) + 6), "black")
  canvas.paste(Image.fromarray((blended * 255).astype(np.uint8)), (0, 0))
  draw = ImageDraw.Draw(canvas)
  for k, line in enumerate(lines):
    draw.text((4, size[1] + 3 + 14 * k), line, fill="white")
  out = io.BytesIO()
  info = PngImagePlugin.PngInfo()
  info.add_text(MARK_KEY, MARK_VALUE)  # is_overlay() knows it again
  canvas.save(out, format="PNG", pnginfo=info)
  return out.getvalue()


def is_overlay(data: bytes) -> bool:
  """Whether the bytes are one of our explanation overlays (a PNG carrying our mark)."""
  if not data.startswith(b"\x89PNG"):
    return False
  try:
    with Image.open(io.BytesIO(data)) as im:
      return im.info.get(MARK_KEY) == MARK_VALUE
  except (OSError, ValueError, SyntaxError):
    return False
