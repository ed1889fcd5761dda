"""The TensorFlow-free edge runtime: decode, preprocess, run a TFLite model, read results.

LiteRT + numpy + Pillow only; never TensorFlow. Used by cxr-predict and cxr-calibrate
on the device, and by cxr-export's report (so its numbers are what a device gets).
Constants (formats, pixel limit, metadata name) come from core/schema.py, the one
TensorFlow-free home of the project's constants.

LiteModel reads metadata.json beside the model (labels, input size, preprocessing,
quantization, threshold, temperature, the model's sha256) and refuses a missing model,
a model whose sha256 differs from the metadata, or metadata that does not match the
model's input. Before a film gets a finding it must be within the package's intended
use (LiteModel.analyse: the DICOM header's rules, core/intended_use.py; the plausibility
checks, core/guard.py; the image gate read off the model's own feature map in the same
invoke, edge/scope.py); otherwise OutOfScope says why.

The preprocessing re-implements pipeline/preprocess.py in numpy (grayscale decode as
libjpeg's luma, bilinear half-pixel resize without antialiasing, x/255); a test proves
they agree. Models exported by this version output logits; the probability is
softmax(logits / temperature), computed here in float64 (the temperature is in the
metadata: 1 unless a calibration set it).
"""
import dataclasses
import glob
import hashlib
import io
import json
import os
import time
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from cxr_edge.core import cli
from cxr_edge.core import film
from cxr_edge.core import guard
from cxr_edge.core import image_io
from cxr_edge.core import intended_use as intended_use_lib
from cxr_edge.core import metrics
from cxr_edge.core import overlay
from cxr_edge.core import package_info
from cxr_edge.core import schema
from cxr_edge.core.errors import ModelError, ImageError, OutOfScope, PackageError
from cxr_edge.edge import package
from cxr_edge.edge import scope



def decode_grayscale(data: bytes) -> np.ndarray:
  """JPEG/PNG bytes -> uint8 [H, W], as tf.io.decode_jpeg(channels=1) decodes them.

  Raises:
    ImageError: empty, not an image, unsupported format, too large, or corrupt.
  """
  if not data:
    raise ImageError("empty file")
  try:
    with film.opened_image(data) as im:
      if im.format not in schema.IMAGE_FORMATS:
        raise ImageError(f"unsupported format: {im.format}")
      if not image_io.supported_mode(schema.IMAGE_FORMATS[im.format], im.mode):  # as cxr-convert
        raise ImageError(f"{image_io.REASON_MODE}: {im.mode}")
      if im.size[0] * im.size[1] > schema.MAX_PIXELS:
        raise ImageError(f"{film.REASON_BOMB}: {im.size[0]}x{im.size[1]} exceeds "
                         f"{schema.MAX_PIXELS} pixels")
      if im.format != "PNG":
        # libjpeg's own colour->luma conversion, the one TensorFlow's decoder uses.
        im.draft("L", im.size)
      if im.mode.startswith("I"):  # 16-bit PNG: TF scales to 8 bits
        return (np.asarray(im, dtype=np.uint32) >> 8).astype(np.uint8)
      if im.mode == "P":
        im = im.convert("RGBA")
      return np.asarray(im.convert("L"), dtype=np.uint8)
  except film.UnreadableImage as e:
    raise ImageError(str(e)) from None


def _resize_axis(in_size: int, out_size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Lower/upper source indices and weights of TF's half-pixel bilinear resize."""
  scale = np.float32(in_size / out_size)
  src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  floor = np.floor(src)
  lower = np.maximum(floor, 0).astype(np.int64)
  upper = np.minimum(np.ceil(src), in_size - 1).astype(np.int64)
  return lower, upper, (src - floor).astype(np.float32)


def resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
  """float32 [H, W] -> [size, size], like tf.image.resize(bilinear, antialias=False)."""
  y0, y1, wy = _resize_axis(image.shape[0], size)
  x0, x1, wx = _resize_axis(image.shape[1], size)
  top_left, top_right = image[y0][:, x0], image[y0][:, x1]
  bottom_left, bottom_right = image[y1][:, x0], image[y1][:, x1]
  top = top_left + (top_right - top_left) * wx
  bottom = bottom_left + (bottom_right - bottom_left) * wx
  return top + (bottom - top) * wy[:, None]


def film_gray(data: bytes) -> np.ndarray:
  """A file's bytes -> uint8 [H, W], as the model's preprocessing takes them: DICOM, TIFF
  and 16-bit PNG windowed by core/film.py (the very pixels cxr-convert stores as a
  lossless PNG, without the PNG's encoding and decoding), JPEG/PNG decoded as
  TensorFlow decodes them (decode_grayscale).

  Raises:
    ImageError: not a film the model can take (the reason says why).
  """
  if film.needs_windowing(data):
    try:
      return film.read_film(data, schema.MAX_PIXELS).pixels
    except film.FilmError as e:
      raise ImageError(str(e)) from None
  return decode_grayscale(data)


def preprocess_gray(gray: np.ndarray, image_size: int, scale: float) -> np.ndarray:
  """uint8 [H, W] -> float32 [image_size, image_size, 1] in [0, 1]."""
  resized = resize_bilinear(gray.astype(np.float32), image_size) * np.float32(scale)
  return np.clip(resized, 0.0, 1.0)[..., None]


def preprocess(data: bytes, image_size: int, scale: float) -> np.ndarray:
  """A file's bytes -> float32 [image_size, image_size, 1] in [0, 1] (training's preprocessing).

  Raises:
    ImageError: unreadable, or not a film the model can take (the reason says why).
  """
  return preprocess_gray(film_gray(data), image_size, scale)


# One softmax for the device and the metrics (core/metrics.py).
softmax = metrics.softmax

# What a three-class model's records add (LiteModel.decide): p_bacterial, p_viral and
# the likelier subtype of a film predicted PNEUMONIA.
SUBTYPE_FIELDS = tuple(f"p_{c.lower()}" for c in schema.SUBTYPES) + ("subtype",)


class LiteModel:
  """A TFLite model with its metadata: float images in, PNEUMONIA probability out.

  Quantizes the input and dequantizes the output as the model's tensors require; a
  model that outputs logits (metadata "output_kind") gets softmax(logits / temperature).
  """

  def __init__(self, model_path: str, num_threads: int = 1,
               metadata: Optional[Dict] = None):
    """Loads and checks a model.

    Args:
      model_path: a .tflite file exported by cxr-export: its metadata is embedded in it
        (edge/package.py); metadata.json beside it is optional and, if present, must
        agree. Models from before embedding need metadata.json.
      num_threads: interpreter threads.
      metadata: the metadata.json dict, if not read from beside the model.

    Raises:
      ModelError: a missing or corrupt model, unusable metadata, an embedded/sidecar
        disagreement, or a model that does not match its metadata (one line each).
    """
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
    name = os.path.basename(model_path)
    try:
      with open(model_path, "rb") as f:
        data = f.read()
    except OSError as e:
      raise ModelError(f"model {model_path!r} cannot be read: {e.strerror or e}") from None
    try:
      embedded = package.read(data)
    except package.PackageError as e:
      raise ModelError(f"{name}: {e}") from None
    sidecar = metadata if metadata is not None else _read_sidecar(model_path)
    sha = hashlib.sha256(data).hexdigest()
    try:
      if embedded is not None:
        metadata, entry = embedded["package"], embedded["model"]
        if sidecar is not None:
          _check_sidecar(name, sha, sidecar, metadata, entry)
      else:  # exported before metadata was embedded: the sidecar is all there is
        if sidecar is None:
          raise ModelError(f"{name} has no embedded metadata and no {schema.METADATA_NAME} "
                           "beside it: export it again with cxr-export")
        metadata, entry = sidecar, sidecar.get("models", {}).get(name)
        if entry is None:
          raise ModelError(f"{schema.METADATA_NAME} does not describe {name}")
        if sha != entry["sha256"]:
          raise ModelError(f"{name}: sha256 differs from {schema.METADATA_NAME}; the model "
                           "file was changed or belongs to another export")
    except (KeyError, TypeError, AttributeError) as e:
      raise ModelError(f"{name}: its metadata lacks or mangles a field ({type(e).__name__}: "
                       f"{e})") from None
    self.sha256 = sha
    self.path = model_path
    self.metadata, self.entry = metadata, entry  # as stored: cxr-calibrate re-embeds them
    self.info = package_info.ModelInfo.from_metadata(metadata, entry, name)
    self.image_size, self.scale = self.info.image_size, self.info.scale
    self.labels: List[str] = list(self.info.labels)
    self.classes: List[str] = list(self.info.classes)
    # Per model: a QAT model carries its own run's threshold.
    self.threshold, self.temperature = self.info.threshold, self.info.temperature
    self.output_kind = self.info.output_kind
    want_dtype = self.info.input_dtype
    # LiteRT announces its CPU delegate on stderr ("INFO: Created TensorFlow Lite XNNPACK
    # delegate"); load errors still arrive as the exception.
    with cli.native_stderr_quiet(not cli.verbose()):
      try:
        self.interpreter = Interpreter(model_content=data, num_threads=num_threads)
      except (ValueError, RuntimeError) as e:
        raise ModelError(f"{name}: cannot load ({e})") from None
      try:
        self.interpreter.allocate_tensors()
      except (ValueError, RuntimeError) as e:
        raise ModelError(f"{name}: LiteRT cannot allocate its tensors "
                         f"({str(e).strip().splitlines()[0][:200]})") from None
    self._in = self.interpreter.get_input_details()[0]
    # The class outputs, and (exported with an image gate) the last feature map.
    outputs = self.interpreter.get_output_details()
    self._out = next((o for o in outputs if len(o["shape"]) == 2), outputs[0])
    self._features = next((o for o in outputs if len(o["shape"]) == 4), None)
    self.gate: Optional[scope.ImageGate] = None
    if entry.get("image_gate") is not None:
      try:
        self.gate = scope.ImageGate.from_fields(entry["image_gate"], name)
      except PackageError as e:
        raise ModelError(str(e)) from None
      if (self._features is None
          or list(self._features["shape"][1:]) != list(self.gate.map_shape)):
        raise ModelError(f"{name}: its image gate reads a feature map of shape "
                         f"{list(self.gate.map_shape)}, which the model does not output")
    # The rules this run applies: the package's, or a site's (for_site).
    self.use: intended_use_lib.IntendedUse = self.info.use
    want = [1, self.image_size, self.image_size, 1]
    if list(self._in["shape"]) != want:
      raise ModelError(f"{name}: input shape {list(self._in['shape'])} does not match the "
                       f"metadata's {want}")
    if np.dtype(self._in["dtype"]).name != want_dtype:
      raise ModelError(f"{name}: input dtype {np.dtype(self._in['dtype']).name} does not "
                       f"match the metadata's {want_dtype}")
    if list(self._out["shape"]) != [1, len(self.classes)]:
      raise ModelError(f"{name}: output shape {list(self._out['shape'])} does not match the "
                       f"metadata's {len(self.classes)} classes ({', '.join(self.classes)})")

  def _quantize(self, x: np.ndarray) -> np.ndarray:
    dtype = self._in["dtype"]
    scale, zero = self._in["quantization"]
    if np.issubdtype(dtype, np.integer) and scale:
      info = np.iinfo(dtype)
      return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
    return x.astype(dtype)

  @staticmethod
  def _dequantize(details: Dict, y: np.ndarray) -> np.ndarray:
    scale, zero = details["quantization"]
    if np.issubdtype(details["dtype"], np.integer) and scale:
      return (y.astype(np.float32) - zero) * scale
    return y.astype(np.float32)

  @property
  def has_features(self) -> bool:
    """Whether the model outputs its feature map (an image gate can be fitted on it)."""
    return self._features is not None

  def for_site(self, ages=None, views=None, widen: bool = False) -> None:
    """Applies a site's intended-use rules (IntendedUse.for_site) to every later film.

    Raises:
      ConfigError: rules wider than the package's without `widen`.
    """
    self.use = self.info.use.for_site(ages, views, widen)

  def _invoke(self, image: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """float32 [S, S, 1] in [0, 1] -> (the dequantized output [num_classes], the feature
    map [H, W, C] or None for a model without it), from one invoke."""
    self.interpreter.set_tensor(self._in["index"], self._quantize(image[None]))
    self.interpreter.invoke()
    out = self._dequantize(self._out, self.interpreter.get_tensor(self._out["index"]))[0]
    if self._features is None:
      return out, None
    return out, self._dequantize(self._features,
                                 self.interpreter.get_tensor(self._features["index"]))[0]

  def outputs(self, image: np.ndarray) -> np.ndarray:
    """float32 [S, S, 1] in [0, 1] -> the model's dequantized output [num_classes]."""
    return self._invoke(image)[0]

  def invoke_gray(self, gray: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """A decoded film (uint8 [H, W]) -> (its output, its feature map), as _invoke."""
    return self._invoke(preprocess_gray(gray, self.image_size, self.scale))

  def _to_probabilities(self, out: np.ndarray) -> np.ndarray:
    if self.output_kind == "logits":
      return softmax(out, self.temperature)
    return out

  def probabilities(self, image: np.ndarray) -> np.ndarray:
    """float32 [S, S, 1] in [0, 1] -> class probabilities [num_classes]."""
    return self._to_probabilities(self.outputs(image))

  def class_probabilities(self, images: np.ndarray) -> np.ndarray:
    """float32 [N, S, S, 1] -> float64 [N, num_classes], one invoke per image."""
    return np.array([self.probabilities(x) for x in images], dtype=np.float64).reshape(
        len(images), len(self.classes))

  def positive_probabilities(self, images: np.ndarray) -> np.ndarray:
    """float32 [N, S, S, 1] -> float64 [N] PNEUMONIA probabilities, one invoke per image."""
    return metrics.p_pneumonia(self.class_probabilities(images))

  def decide(self, probs: np.ndarray) -> Dict[str, object]:
    """A film's class probabilities -> its decision fields.

    {"prediction": PNEUMONIA iff p_pneumonia >= threshold, "p_pneumonia"}; a three-class
    model adds "p_bacterial", "p_viral" and "subtype": the likelier of the two for a
    film predicted PNEUMONIA, None for one predicted NORMAL.
    """
    p = float(metrics.p_pneumonia(probs))
    out: Dict[str, object] = {"prediction": self.labels[int(p >= self.threshold)],
                              "p_pneumonia": round(p, 6)}
    if len(self.classes) > len(self.labels):
      for name, value in zip(SUBTYPE_FIELDS, probs[1:]):  # classes[1:] are the SUBTYPES
        out[name] = round(float(value), 6)
      decided = int(metrics.subtype_decisions(np.asarray(probs)[None], self.threshold)[0])
      out["subtype"] = self.classes[decided] if decided else None
    return out

  def predict_bytes(self, data: bytes, strict: bool = False) -> Dict[str, object]:
    """A film's bytes -> its prediction record: predict_film's record."""
    return self.predict_film(data, strict)[0]

  def predict_film(self, data: bytes, strict: bool = False,
                   header=None) -> Tuple[Dict[str, object], np.ndarray]:
    """A film's bytes -> its prediction record (latency: checks, preprocess and invoke),
    and the film as decoded (film_gray), for what shows it beside the prediction (the
    node's result card and overlay) without decoding it again.

    Args:
      data: the file's bytes.
      strict: a film analysed with a warning (a site's widened use) is refused instead.
      header: the film's DICOM header if the caller has read it (else read here).

    Returns:
      ({"prediction" (the model's class: PNEUMONIA iff p_pneumonia >= threshold),
      "p_pneumonia" (the positive class's probability), "threshold", "model_sha256",
      "warning" (None, or what the reader must know before the result), "latency_ms"},
      the decoded film: uint8 [H, W]); "widened_use" too when the site widened the use.

    Raises:
      OutOfScope: a film outside the intended use (analyse says which; the message why).
      ImageError: unreadable input, or (strict) one analysed with a warning.
    """
    start = time.perf_counter()
    out, gray, warning = self.analyse(data, header)
    if warning and strict:
      raise ImageError(f"rejected (--strict): {warning}")
    latency = (time.perf_counter() - start) * 1000
    record = {**self.decide(self._to_probabilities(out)), "threshold": self.threshold,
              "model_sha256": self.sha256, "warning": warning,
              "latency_ms": round(latency, 3)}
    if self.use.widened:
      record["widened_use"] = self.use.widened
    return record, gray

  def analyse(self, data: bytes,
              header=None) -> Tuple[np.ndarray, np.ndarray, Optional[str]]:
    """A film's bytes -> (the model's dequantized output, the decoded film, a warning or
    None), for a film within the intended use.

    A film outside it gets no output (OutOfScope, the reason first): a DICOM header
    that says another view, body part, modality or age (self.use); our own overlay or an
    image stored turned (EXIF); what core/guard.py finds no film looks like (colour,
    noise, blank...); and, where the package has one, what the image gate (edge/scope.py)
    does not recognise as a whole upright chest film.

    Raises:
      OutOfScope: outside the intended use.
      ImageError: unreadable input.
    """
    warning = None
    if header is None and film.is_dicom(data):
      header = _header(data)
    if header is not None:
      refusal = self.use.header_refusal(header)
      if refusal:
        raise OutOfScope(refusal)
      if self.use.widened:
        outside = self.info.use.header_refusal(header)
        if outside:
          warning = (f"outside the model's intended use ({outside}); analysed because this "
                     f"site widened it to {self.use.widened}")
    colour = guard.chroma(data)  # before windowing: a colour TIFF is grey once windowed
    ours = overlay.is_overlay(data)
    orientation = image_io.orientation_of(data)
    gray = film_gray(data)
    if ours:
      raise OutOfScope("a cxr-edge explanation overlay, not a film")
    if orientation != 1:
      raise OutOfScope(image_io.rotated_reason(orientation))
    implausible = guard.check(gray, colour, resize_bilinear)
    if implausible:
      raise OutOfScope(implausible)
    out, feature_map = self.invoke_gray(gray)
    if self.gate is not None:
      refusal = self.gate.scores(feature_map).refusal
      if refusal:
        raise OutOfScope(refusal)
    return out, gray, warning


def _header(data: bytes):
  """A DICOM file's header for the intended-use rules, or None where it cannot be read
  (the film reader then says why the film cannot be used)."""
  try:
    return film.dicom_header(io.BytesIO(data))[0]
  except Exception:  # pylint: disable=broad-except  # pydicom raises many kinds
    return None


def _read_sidecar(model_path: str) -> Optional[Dict]:
  """metadata.json beside the model, or None if there is none."""
  path = os.path.join(os.path.dirname(os.path.abspath(model_path)), schema.METADATA_NAME)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise ModelError(f"{path} is not readable JSON ({type(e).__name__}: {e}); delete it to "
                     "use the model's embedded metadata, or export again") from None
  if not isinstance(data, dict):
    raise ModelError(f"{path} is not a metadata object")
  return data


def _check_sidecar(name: str, sha: str, sidecar: Dict, metadata: Dict, entry: Dict) -> None:
  """A metadata.json kept beside an embedded-metadata model must describe this very file
  and agree with it on everything that decides a prediction."""
  side_entry = sidecar.get("models", {}).get(name)
  if side_entry is None:
    raise ModelError(f"{schema.METADATA_NAME} beside {name} does not describe it: remove it "
                     "(the model carries its own metadata) or restore the export's")
  if side_entry.get("sha256") != sha:
    raise ModelError(f"{name}: sha256 differs from {schema.METADATA_NAME}; the model file was "
                     "changed or belongs to another export")
  # What decides a prediction: a sidecar that says otherwise than the model is refused.
  try:
    side_info = package_info.ModelInfo.from_metadata(sidecar, side_entry, name, check=False)
  except package_info.PackageError as e:
    raise ModelError(f"{schema.METADATA_NAME} beside {name}: {e}") from None
  own_info = package_info.ModelInfo.from_metadata(metadata, entry, name, check=False)
  for (what, side), (_, own) in zip(side_info.decisive(), own_info.decisive()):
    if side != own:
      raise ModelError(f"{schema.METADATA_NAME} beside {name} says {what} {side!r}, the "
                       f"model's embedded metadata {own!r}: refusing both")


@dataclasses.dataclass(frozen=True)
class FoundInput:
  """One input cxr-predict found: a file to read, or why it is not read."""
  path: str
  error: Optional[str] = None  # it cannot be read: a failure, the exit status is 1
  skipped: Optional[str] = None  # a folder's file that is not a film: reported, no failure


def expand_paths(patterns: List[str]) -> Iterator[FoundInput]:
  """Files, folders (recursively) and globs -> FoundInput, in a stable order.

  A folder yields every file in it but hidden ones (".DS_Store"): films by extension
  (schema.FILM_EXTENSIONS) and files without an extension (DICOM often has none) are
  read; anything else gets an error line, so every file is accounted for.
  """
  for pattern in patterns:
    if os.path.isdir(pattern):
      found, problems = _walk(pattern)
      yield from problems
      if not found and not problems:
        yield FoundInput(pattern, error="folder holds no files")
      for p in found:
        ext = os.path.splitext(p)[1].lower()
        if not ext or ext in schema.FILM_EXTENSIONS:
          yield FoundInput(p)
        else:
          yield FoundInput(p, skipped=f"{ext} is not a film extension "
                                      f"({' '.join(schema.FILM_EXTENSIONS)})")
    elif os.path.isfile(pattern):
      yield FoundInput(pattern)
    else:
      matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
      if not matches:
        yield FoundInput(pattern, error="no such file")
      yield from (FoundInput(p) for p in matches)


def _walk(folder: str) -> Tuple[List[str], List[FoundInput]]:
  """Every file below folder but hidden ones, sorted; and the folders that could not be
  read. Linked folders are followed, each real folder once (as cxr-convert does), so
  neither a link loop nor an unreadable folder passes in silence."""
  found: List[str] = []
  problems: List[FoundInput] = []
  seen = set()

  def unreadable(error: OSError) -> None:
    problems.append(FoundInput(error.filename + os.sep,
                               error=f"unreadable folder: {error.strerror or error}"))

  for root, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
    st = os.stat(root)
    if (st.st_dev, st.st_ino) in seen:  # reached again through a link: listed once
      problems.append(FoundInput(root + os.sep, skipped="folder already read (linked twice "
                                                        "or a link loop)"))
      dirs[:] = []
      continue
    seen.add((st.st_dev, st.st_ino))
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    found += [os.path.join(root, f) for f in files if not f.startswith(".")]
  return sorted(found), problems


def predict_paths(model: LiteModel, items: Iterable[FoundInput],
                  strict: bool = False) -> Iterator[Dict[str, object]]:
  """One result dict per expand_paths item; a bad input gets {"path", "error"}, a film
  outside the intended use {"path", "not_analysed", "model_sha256"}, a file that is not a
  film {"path", "skipped"}, and the run goes on."""
  for item in items:
    path = item.path
    if item.skipped:
      yield {"path": path, "skipped": item.skipped}
      continue
    if item.error:
      yield {"path": path, "error": item.error}
      continue
    try:
      data = image_io.read_file(path)
      yield {"path": path, **model.predict_bytes(data, strict)}
    except OutOfScope as e:
      yield {"path": path, "not_analysed": str(e), "model_sha256": model.sha256}
    except (image_io.UnreadableFile, ImageError) as e:
      yield {"path": path, "error": str(e)}
