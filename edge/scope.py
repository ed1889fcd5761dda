"""The image gate: is this picture a whole, upright frontal chest film, as the model knows
them? Answered by the model itself, in the same invoke as its prediction.

An exported model has a second output (`expose_features`): its last feature map, the
input of its global average pool ([H, W, C]). Two scores are read off it:

- **distance**: the Mahalanobis distance of the pooled features from the training films'
  (one Gaussian, shrunk covariance; Lee et al., NeurIPS 2018). Photographs, pages,
  screenshots, textures, other imaging and films turned by 90 degrees or inverted lie far
  out.
- **layout**: a linear score on the map's row and column profiles that tells a whole
  upright film from one upside down or cropped to a part. Pooling keeps no layout, so
  the distance alone cannot see those; the profiles do.

Both are fitted on the training split's films only (`fit`): the distance on the films as
they are, the layout score on the same films against copies of them turned upside down,
flipped and cropped (`layout_negatives`). Each limit is set on held-out films of the
training folder (never trained on) at a stated false-refusal rate. Nothing out of scope
is used to fit or choose either: such images only measure the gate
(studies/scope_study.py). The fitted gate travels in the model's entry of the package
metadata ("image_gate"), so every reader of the package applies the same one.
TensorFlow-free: numpy, and LiteRT's flatbuffer schema for the graph edit.
"""
import base64
import dataclasses
from typing import Any, Dict, Iterable, List, Mapping, Optional

import numpy as np

from cxr_edge.core.errors import PackageError
from cxr_edge.edge import package

# The stated false-refusal rates on held-out in-scope films, one per score; together at
# most their sum of such films is withheld.
DISTANCE_FALSE_REFUSAL = 0.01
LAYOUT_FALSE_REFUSAL = 0.005
# Covariance shrinkage towards its mean variance: keeps the inverse stable where films
# are few beside the feature count (a small model's test fit), and costs nothing here.
_SHRINK = 0.01
_LAYOUT_L2 = 1e-2
_LAYOUT_STEPS = 800
_LAYOUT_RATE = 0.5


def expose_features(data: bytes) -> bytes:
  """The model with its last feature map (the input of its last MEAN, the global average
  pool) added as a second output; a model that has it already is returned unchanged.

  Raises:
    PackageError: not a TFLite model, or a graph without a global average pool.
  """
  from ai_edge_litert import schema_py_generated as schema  # pylint: disable=g-import-not-at-top
  model = package.parse(data)
  graph = model.subgraphs[0]
  pooled = None
  for op in graph.operators:
    code = model.operatorCodes[op.opcodeIndex]
    if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.MEAN:
      pooled = int(op.inputs[0])
  if pooled is None:
    raise PackageError("the model has no global average pool whose features the image "
                       "gate could read")
  outputs = [int(i) for i in graph.outputs]
  if pooled in outputs:
    return data
  graph.outputs = outputs + [pooled]
  return package.pack(model)


def _pooled(maps: np.ndarray) -> np.ndarray:
  return maps.mean(axis=(-3, -2))


def _profiles(maps: np.ndarray) -> np.ndarray:
  """[N, H, W, C] -> [N, (H + W) * C]: the mean over columns of each row and over rows
  of each column; what tells an upright whole film from one upside down or cropped."""
  maps = np.asarray(maps, np.float32)
  n = len(maps)
  return np.concatenate([maps.mean(axis=2).reshape(n, -1), maps.mean(axis=1).reshape(n, -1)],
                        axis=1)


def _encode(array: np.ndarray) -> Dict[str, Any]:
  array = np.ascontiguousarray(array, "<f4")
  return {"shape": list(array.shape), "float32": base64.b64encode(array.tobytes()).decode()}


def _decode(field: Mapping[str, Any]) -> np.ndarray:
  raw = base64.b64decode(field["float32"], validate=True)
  return np.frombuffer(raw, "<f4").reshape([int(s) for s in field["shape"]]).astype(np.float64)


@dataclasses.dataclass(frozen=True)
class Scores:
  """A film's two gate scores, and why it is refused (None: in scope)."""
  distance: float
  layout: float
  refusal: Optional[str]


@dataclasses.dataclass(frozen=True)
class ImageGate:
  """A fitted gate: the parameters of both scores and their limits."""
  map_shape: tuple  # [H, W, C] of the feature map it reads
  mean: np.ndarray  # [C]
  whitening: np.ndarray  # [C, C]: distance = |(x - mean) @ whitening|^2
  distance_limit: float
  layout_center: np.ndarray  # [(H + W) * C]
  layout_scale: np.ndarray
  layout_weights: np.ndarray
  layout_bias: float
  layout_limit: float
  fitted: Dict[str, Any]  # films, held-out films, stated and measured false refusal

  def scores(self, feature_map: np.ndarray) -> Scores:
    """A film's feature map [H, W, C] (dequantized) -> its scores and refusal."""
    maps = np.asarray(feature_map, np.float64)[None]
    centred = _pooled(maps)[0] - self.mean
    distance = float(np.sum((centred @ self.whitening) ** 2))
    layout = float(((_profiles(maps)[0] - self.layout_center) / self.layout_scale)
                   @ self.layout_weights + self.layout_bias)
    refusal = None
    if distance > self.distance_limit:
      refusal = ("does not look like a frontal chest film of the kind the model learned "
                 f"from (out-of-scope distance {distance:.0f}, limit "
                 f"{self.distance_limit:.0f})")
    elif layout > self.layout_limit:
      refusal = ("does not look like a whole upright chest film: upside down, flipped or "
                 f"cropped? (layout score {layout:.1f}, limit {self.layout_limit:.1f})")
    return Scores(round(distance, 3), round(layout, 3), refusal)

  def as_fields(self) -> Dict[str, Any]:
    """The model entry's "image_gate" field."""
    return {"map_shape": list(self.map_shape), "mean": _encode(self.mean),
            "whitening": _encode(self.whitening), "distance_limit": self.distance_limit,
            "layout_center": _encode(self.layout_center),
            "layout_scale": _encode(self.layout_scale),
            "layout_weights": _encode(self.layout_weights), "layout_bias": self.layout_bias,
            "layout_limit": self.layout_limit, "fitted": dict(self.fitted)}

  @classmethod
  def from_fields(cls, fields: Mapping[str, Any], name: str = "model") -> "ImageGate":
    """Reads and checks a model entry's "image_gate".

    Raises:
      PackageError: a field missing, mangled or of the wrong size.
    """
    try:
      shape = tuple(int(s) for s in fields["map_shape"])
      gate = cls(map_shape=shape, mean=_decode(fields["mean"]),
                 whitening=_decode(fields["whitening"]),
                 distance_limit=float(fields["distance_limit"]),
                 layout_center=_decode(fields["layout_center"]),
                 layout_scale=_decode(fields["layout_scale"]),
                 layout_weights=_decode(fields["layout_weights"]),
                 layout_bias=float(fields["layout_bias"]),
                 layout_limit=float(fields["layout_limit"]), fitted=dict(fields["fitted"]))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
      raise PackageError(f"{name}: its image gate lacks or mangles a field "
                         f"({type(e).__name__}: {e})") from None
    channels, profile = shape[-1], (shape[0] + shape[1]) * shape[-1]
    if (len(shape) != 3 or gate.mean.shape != (channels,)
        or gate.whitening.shape != (channels, channels)
        or any(a.shape != (profile,) for a in (gate.layout_center, gate.layout_scale,
                                               gate.layout_weights))
        or not np.all(gate.layout_scale > 0)):
      raise PackageError(f"{name}: its image gate's parameters do not fit a feature map "
                         f"of shape {list(shape)}")
    return gate


def layout_negatives(gray: np.ndarray, rng: np.random.Generator) -> List[np.ndarray]:
  """What a whole upright film is told from: the film flipped upside down, turned by
  180 degrees, and a random part of it (40-70% of each side)."""
  h, w = gray.shape
  ch, cw = int(h * rng.uniform(0.4, 0.7)), int(w * rng.uniform(0.4, 0.7))
  y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
  return [gray[::-1], np.rot90(gray, 2), gray[y:y + ch, x:x + cw]]


def _logistic(features: np.ndarray, targets: np.ndarray):
  """A class-balanced, L2-regularised logistic regression by full-batch gradient descent:
  deterministic, numpy only, seconds for a few thousand films."""
  center = features.mean(axis=0)
  scale = features.std(axis=0) + 1e-3
  z = (features - center) / scale
  weight = np.where(targets > 0, len(targets) / (2 * targets.sum()),
                    len(targets) / (2 * (len(targets) - targets.sum())))
  w, b = np.zeros(z.shape[1]), 0.0
  for _ in range(_LAYOUT_STEPS):
    p = 1 / (1 + np.exp(-np.clip(z @ w + b, -30, 30)))
    g = (p - targets) * weight
    w -= _LAYOUT_RATE * (z.T @ g / len(targets) + _LAYOUT_L2 * w)
    b -= _LAYOUT_RATE * float(g.mean())
  return center, scale, w, b


def fit(train_maps: np.ndarray, negative_maps: np.ndarray, heldout_maps: np.ndarray,
        distance_rate: float = DISTANCE_FALSE_REFUSAL,
        layout_rate: float = LAYOUT_FALSE_REFUSAL) -> ImageGate:
  """Fits the gate.

  Args:
    train_maps: feature maps [N, H, W, C] of the training split's films.
    negative_maps: feature maps of layout_negatives() of those films.
    heldout_maps: feature maps of in-scope films never trained on (the training folder's
      validation and test splits), which set each limit.
    distance_rate, layout_rate: the false-refusal rate each limit is set at.
  """
  train = np.asarray(train_maps, np.float64)
  heldout = np.asarray(heldout_maps, np.float64)
  if len(train) < 2 or len(heldout) < 1 or len(negative_maps) < 1:
    raise ValueError("the image gate needs training, negative and held-out films")
  pooled = _pooled(train)
  mean = pooled.mean(axis=0)
  cov = np.cov(pooled - mean, rowvar=False, bias=True)
  cov = (1 - _SHRINK) * cov + (_SHRINK * np.trace(cov) / len(cov) + 1e-9) * np.eye(len(cov))
  whitening = np.linalg.cholesky(np.linalg.inv(cov))
  center, scale, weights, bias = _logistic(
      np.concatenate([_profiles(train), _profiles(negative_maps)]),
      np.r_[np.zeros(len(train)), np.ones(len(negative_maps))])
  gate = ImageGate(map_shape=tuple(train.shape[1:]), mean=mean, whitening=whitening,
                   distance_limit=0.0, layout_center=center, layout_scale=scale,
                   layout_weights=weights, layout_bias=bias, layout_limit=0.0, fitted={})
  held = [gate.scores(m) for m in heldout]
  distance_limit = float(np.quantile([s.distance for s in held], 1 - distance_rate,
                                     method="higher"))
  layout_limit = float(np.quantile([s.layout for s in held], 1 - layout_rate,
                                   method="higher"))
  gate = dataclasses.replace(gate, distance_limit=distance_limit, layout_limit=layout_limit)
  refused = sum(gate.scores(m).refusal is not None for m in heldout)
  return dataclasses.replace(gate, fitted={
      "films": len(train), "negatives": len(negative_maps), "heldout_films": len(heldout),
      "distance_false_refusal": distance_rate, "layout_false_refusal": layout_rate,
      "heldout_refused": round(refused / len(heldout), 4)})


def fit_model(model, train: Iterable[np.ndarray], heldout: Iterable[np.ndarray],
              seed: int = 0) -> ImageGate:
  """Fits the gate of a model (runtime.LiteModel with its features output) from decoded
  films (uint8 [H, W]): the training split's, and held-out in-scope ones."""
  rng = np.random.default_rng(seed)
  train_maps, negative_maps = [], []
  for gray in train:
    train_maps.append(model.invoke_gray(gray)[1])
    negative_maps += [model.invoke_gray(np.ascontiguousarray(g))[1]
                      for g in layout_negatives(gray, rng)]
  heldout_maps = [model.invoke_gray(gray)[1] for gray in heldout]
  return fit(np.array(train_maps), np.array(negative_maps), np.array(heldout_maps))
