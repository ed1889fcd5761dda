"""edge/scope.py: the image gate, fitted on synthetic feature maps, and the released
model's gate on the out-of-scope set (tests/out_of_scope.py) and on in-scope films."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from cxr_edge.core import errors
from cxr_edge.edge import package
from cxr_edge.edge import released
from cxr_edge.edge import runtime
from cxr_edge.edge import scope
from tests import out_of_scope
from tests.conftest import SAMPLE_DIR


def maps(count, seed, flip=False, shift=0.0):
  """Feature maps [N, 4, 4, 6] whose rows brighten downwards (an upright film's layout)."""
  rng = np.random.default_rng(seed)
  base = np.linspace(0.0, 2.0, 4)[None, :, None, None] * np.ones((1, 4, 4, 6))
  out = base + rng.normal(0, 0.3, (count, 4, 4, 6)) + shift
  return out[:, ::-1] if flip else out


@pytest.fixture(scope="module")
def gate():
  return scope.fit(maps(400, 0), maps(400, 1, flip=True), maps(200, 2))


def test_the_gate_keeps_films_like_its_training_films_and_refuses_the_rest(gate):
  kept = [gate.scores(m).refusal for m in maps(500, 3)]
  assert np.mean([r is not None for r in kept]) < 0.05  # about the stated 1.5%
  assert gate.fitted["heldout_refused"] <= (scope.DISTANCE_FALSE_REFUSAL
                                            + scope.LAYOUT_FALSE_REFUSAL + 0.01)
  far = gate.scores(maps(1, 4, shift=3.0)[0])
  assert far.refusal.startswith("does not look like a frontal chest film")
  assert far.distance > gate.distance_limit
  flipped = [gate.scores(m) for m in maps(50, 5, flip=True)]
  assert all(s.refusal for s in flipped)
  assert all("upside down" in s.refusal for s in flipped if s.distance <= gate.distance_limit)


def test_the_gate_travels_in_the_metadata_and_mangled_fields_are_refused(gate):
  again = scope.ImageGate.from_fields(gate.as_fields())
  m = maps(1, 6)[0]
  assert again.scores(m) == gate.scores(m)
  fields = gate.as_fields()
  with pytest.raises(errors.PackageError, match="lacks or mangles"):
    scope.ImageGate.from_fields({**fields, "mean": {"shape": [6], "float32": "###"}})
  with pytest.raises(errors.PackageError, match="do not fit a feature map"):
    scope.ImageGate.from_fields({**fields, "map_shape": [5, 5, 6]})


def test_expose_features_adds_the_pooled_map_once():
  with open(released.path(), "rb") as f:
    data = f.read()
  graph = package.parse(data).subgraphs[0]
  assert len(graph.outputs) == 2  # the released model: its classes and its feature map
  assert scope.expose_features(data) == data
  model = package.parse(data)
  model.subgraphs[0].outputs = model.subgraphs[0].outputs[:1]
  bare = package.pack(model)
  assert len(package.parse(scope.expose_features(bare)).subgraphs[0].outputs) == 2


@pytest.fixture(scope="module")
def model():
  return runtime.LiteModel(released.path())


def _sample_films():
  for label in ("NORMAL", "PNEUMONIA"):
    for name in sorted(os.listdir(os.path.join(SAMPLE_DIR, label))):
      with open(os.path.join(SAMPLE_DIR, label, name), "rb") as f:
        yield name, f.read()


def _withheld(model, items):
  """{name: reason or None} for every item (reason: why it was not analysed)."""
  out = {}
  for name, data in items:
    try:
      model.analyse(data)
      out[name] = None
    except errors.OutOfScope as e:
      out[name] = str(e)
  return out


def test_the_released_gate_analyses_the_sample_films(model):
  assert model.gate is not None and model.gate.fitted["films"] > 4000
  found = _withheld(model, _sample_films())
  assert sum(r is not None for r in found.values()) <= 0.03 * len(found)


@pytest.mark.parametrize("kind", sorted(out_of_scope.kinds()))
def test_the_released_model_withholds_every_kind_of_image_that_is_not_a_film(model, kind):
  found = _withheld(model, out_of_scope.kinds()[kind])
  missed = [n for n, r in found.items() if r is None]
  assert len(missed) <= 0.05 * len(found), missed
  assert all(r for r in found.values() if r is not None)


def test_the_released_model_withholds_turned_upside_down_inverted_and_cropped_films(model):
  films = [(name, np.asarray(Image.open(io.BytesIO(data)).convert("L")))
           for name, data in _sample_films()]
  for kind, items in out_of_scope.film_kinds(films).items():
    found = _withheld(model, items)
    share = sum(r is not None for r in found.values()) / len(found)
    assert share >= 0.95, (kind, share)
