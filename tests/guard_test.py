"""core/guard.py: real films pass, what is not a chest radiograph is flagged."""
import io
import os

import numpy as np
from PIL import Image
import pytest

from cxr_edge.core import guard
from cxr_edge.edge import runtime
from tests.conftest import SAMPLE_DIR


def _check(data: bytes):
  return guard.check(runtime.decode_grayscale(data), guard.chroma(data), runtime.resize_bilinear)


def _jpeg(array) -> bytes:
  out = io.BytesIO()
  Image.fromarray(np.asarray(array).astype(np.uint8)).save(out, format="JPEG", quality=95)
  return out.getvalue()


def _sample():
  return [os.path.join(root, f) for root, _, files in os.walk(SAMPLE_DIR) for f in files
          if f.endswith(".jpeg")]


def test_the_embedded_sample_films_are_never_flagged():
  films = _sample()
  assert len(films) == 301
  flagged = {p: _check(open(p, "rb").read()) for p in films}
  assert not {p: r for p, r in flagged.items() if r}


_YY, _XX = np.mgrid[0:224, 0:224] / 223.0
_RNG = np.random.default_rng(0)


@pytest.mark.parametrize("name, image, reason", [
    ("black", np.zeros((224, 224)), "near-constant"),
    ("grey with faint noise", 128 + _RNG.normal(0, 2, (224, 224)), "near-constant"),
    ("uniform noise", _RNG.integers(0, 256, (224, 224)), "noise-like"),
    ("horizontal gradient", 255 * _XX, "too smooth"),
    ("colour field", np.stack([255 * _XX, 255 * _YY, 128 + 0 * _XX], -1), "colour image"),
    ("wide strip", 100 + 50 * np.sin(_XX[:60] * 40), "extreme aspect ratio"),
])
def test_synthetic_non_films_are_flagged(name, image, reason):
  got = _check(_jpeg(np.clip(image, 0, 255)))
  assert got is not None and got.startswith(reason), (name, got)


def test_inverted_films_are_flagged():
  films = _sample()[:40]
  flagged = [_check(_jpeg(255 - runtime.decode_grayscale(open(p, "rb").read())))
             for p in films]
  assert sum(bool(r) for r in flagged) >= 38, flagged  # scripts/guard_check.py: all films
  assert all(r.startswith("no chest structure") for r in flagged if r)
