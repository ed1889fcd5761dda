"""The result card: one picture per film that says the model's result in words, for
viewers that show images and not Structured Reports (many PACS viewers show an SR as an
empty series, or not at all).

The film's thumbnail, the finding in large type ("PNEUMONIA SUSPECTED" / "NO PNEUMONIA
SUSPECTED" / "NOT ANALYSED"), p_pneumonia and the threshold, the likelier kind where the
model has one, the model's name, kind and version, and "not for diagnostic use", on a
square canvas whose largest line stays readable when a PACS shrinks it to a 128-pixel
thumbnail. Pillow only (its bundled FreeType font).
"""
import textwrap
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cxr_edge.core import package_info
from cxr_edge.core.version import __version__

# 768 px square: 1.7 MB uncompressed in the PACS (1024 px took 3 MB); the type below is
# sized for it.
SIDE = 768
_MARGIN = 24
_BACKGROUND = (18, 18, 18)
_FLAGGED = (255, 140, 60)
_PLAIN = (235, 235, 235)
_CAUTION = (255, 214, 90)
_QUIET = (170, 170, 170)


def _font(size: int) -> ImageFont.FreeTypeFont:
  return ImageFont.load_default(size=size)


def _px(size_at_1024: float) -> int:
  """A type size given for a 1024 px card, on this one."""
  return max(1, round(size_at_1024 * SIDE / 1024))


Line = Tuple[str, int, tuple]  # text, size in px, colour


def lines(result: Dict, info: package_info.ModelInfo) -> Tuple[List[Line], List[Line]]:
  """The card's text above the film and below it, each top to bottom."""
  if "error" in result:
    head = [("NOT ANALYSED", _px(96), _CAUTION)]
    head += [(line, _px(34), _PLAIN) for line in textwrap.wrap(result["error"], 50)]
  else:
    flagged = result["prediction"] == info.labels[1]
    head = []
    if result.get("warning"):  # first and whole: a call never leads past its warning
      head.append(("WARNING", _px(80), _CAUTION))
      head += [(line, _px(30), _CAUTION) for line in textwrap.wrap(result["warning"], 58)]
    head.append(("PNEUMONIA SUSPECTED" if flagged else "NO PNEUMONIA SUSPECTED",
                 _px(80 if flagged else 68) if not result.get("warning") else _px(52),
                 _FLAGGED if flagged else _PLAIN))
    p = result["p_pneumonia"]
    p = "> 0.99" if p > 0.99 else "< 0.01" if p < 0.01 else f"{p:.2f}"
    detail = f"p = {p}, threshold {result['threshold']:.3g}"
    if flagged and result.get("subtype"):
      detail += f"; likelier {result['subtype'].lower()}"
    head.append((detail, _px(44), _PLAIN))
  foot = [("AI triage aid - NOT FOR DIAGNOSTIC USE", _px(44), _CAUTION),
          (f"{info.model or 'model'} ({info.kind or 'kind not recorded'} model), "
           f"cxr-edge {__version__}", _px(28), _QUIET)]
  if info.notice:
    foot.insert(0, ("SMOKE-TEST MODEL: not for films of patients", _px(36), _CAUTION))
  return head, foot


def render(film_gray: np.ndarray, result: Dict, info: package_info.ModelInfo) -> np.ndarray:
  """The card as uint8 RGB [SIDE, SIDE, 3]."""
  head, foot = lines(result, info)
  canvas = Image.new("RGB", (SIDE, SIDE), _BACKGROUND)
  draw = ImageDraw.Draw(canvas)
  y = _MARGIN
  for text, size, colour in head:
    draw.text((SIDE // 2, y), text, font=_font(size), fill=colour, anchor="mt")
    y += int(size * 1.2)
  bottom = SIDE - _MARGIN - sum(int(size * 1.2) for _, size, _ in foot)
  thumbnail = Image.fromarray(np.asarray(film_gray, np.uint8), "L").convert("RGB")
  # The film fills the space between the words, enlarged or reduced, its shape kept.
  room = (SIDE - 2 * _MARGIN, max(1, bottom - y - _MARGIN))
  scale = min(room[0] / thumbnail.width, room[1] / thumbnail.height)
  thumbnail = thumbnail.resize((max(1, round(thumbnail.width * scale)),
                                max(1, round(thumbnail.height * scale))), Image.LANCZOS)
  canvas.paste(thumbnail, ((SIDE - thumbnail.width) // 2,
                           y + _MARGIN // 2 + (room[1] - thumbnail.height) // 2))
  y = bottom
  for text, size, colour in foot:
    draw.text((SIDE // 2, y), text, font=_font(size), fill=colour, anchor="mt")
    y += int(size * 1.2)
  return np.asarray(canvas)
