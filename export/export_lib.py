"""Export: SavedModel (two signatures), five TFLite variants, metadata, parity report.

The report evaluates every variant on the test split of the conversion, and on an
external labelled folder when given, with the same LiteModel wrapper the edge predictor
runs, so its numbers are what a device gets.

The TFLite models output logits, not softmax probabilities: an int8 softmax output
saturates at 255/256, so confident films tie and ranking (ROC-AUC) suffers; int8 logits
keep their order, and the edge runtime takes softmax(logits / temperature) in float.
"""
import hashlib
import json
import os
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras as keras

from cxr_edge.core import cli
from cxr_edge.core import errors
from cxr_edge.core import image_io
from cxr_edge.core import metrics as metrics_lib
from cxr_edge.core import package_info
from cxr_edge.core import schema
from cxr_edge.edge import calibrate_lib
from cxr_edge.edge import package
from cxr_edge.edge import runtime
from cxr_edge.edge import scope
from cxr_edge.export import model_card
from cxr_edge.export import variants as variant_names
from cxr_edge.model import model_dir as model_dir_lib
from cxr_edge.model import models
from cxr_edge.pipeline import dataset
from cxr_edge.pipeline import preprocess
from cxr_edge.pipeline import records

SAVED_MODEL_DIR = "saved_model"
# TensorFlow Serving loads the highest numbered version under the base directory; a new
# export is version 1 of its own base (copy it to <base>/<n+1> to roll it out).
SAVED_MODEL_VERSION = 1


def tflite_name(variant: str) -> str:
  return f"model_{variant}.tflite"


class ServingModule(tf.Module):
  """The SavedModel, laid out for TensorFlow Serving.

  serving_default takes encoded JPEG/PNG films (tf.string [N]: batchable, and REST's
  {"b64": ...} since the input's name ends in _bytes), preprocesses them in-graph with
  the function training used, and returns p_pneumonia, label and threshold per film; a
  three-class model also p_bacterial, p_viral and subtype ("" for a film predicted
  NORMAL), decided as the edge runtime decides them.
  serving_images takes float32 [N, S, S, 1] already in [0, 1] and refuses other ranges
  (unscaled 0-255 pixels would otherwise all read as PNEUMONIA). Probabilities are
  softmax(logits / temperature), as the edge runtime computes them.
  """

  def __init__(self, model: keras.Model, image_size: int, threshold: float,
               temperature: float = 1.0):
    super().__init__()
    self.classes = schema.TASK_CLASSES[task_of(model)]
    self.model = models.logits_model(model)
    self.image_size = image_size
    self.threshold = tf.constant(threshold, tf.float32)
    self.temperature = tf.constant(temperature, tf.float32)
    self.labels = tf.constant(list(schema.LABELS))
    self.serve_images = tf.function(self._serve_images, input_signature=[tf.TensorSpec(
        [None, image_size, image_size, schema.CHANNELS], tf.float32, name="images")])
    self.serve_bytes = tf.function(self._serve_bytes, input_signature=[
        tf.TensorSpec([None], tf.string, name="image_bytes")])

  def _probabilities(self, images):
    return tf.nn.softmax(self.model(images, training=False) / self.temperature)

  def _serve_images(self, images):
    """float32 [N, S, S, 1] in [0, 1] -> {"probabilities": [N, classes]}."""
    checks = [tf.debugging.assert_greater_equal(images, 0.0, message="images must be in [0, 1]"),
              tf.debugging.assert_less_equal(images, 1.0, message=(
                  "images must be in [0, 1] (pixels / 255); send encoded films to "
                  "serving_default instead"))]
    with tf.control_dependencies(checks):
      return {"probabilities": self._probabilities(tf.identity(images))}

  def _serve_bytes(self, image_bytes):
    """Encoded JPEG/PNG [N] -> p_pneumonia, prediction, threshold (each [N]) and probabilities."""
    images = tf.map_fn(lambda b: preprocess.preprocess_image(b, self.image_size), image_bytes,
                       fn_output_signature=tf.TensorSpec(
                           [self.image_size, self.image_size, schema.CHANNELS], tf.float32))
    probs = self._probabilities(images)
    p = tf.reduce_sum(probs[:, 1:], axis=1)
    index = tf.cast(p >= self.threshold, tf.int32)
    out = {"p_pneumonia": p, "prediction": tf.gather(self.labels, index),
           "threshold": tf.fill(tf.shape(p), self.threshold), "probabilities": probs}
    if len(self.classes) > len(schema.LABELS):
      subtypes = tf.constant(list(self.classes[1:]))
      for i, name in enumerate(self.classes[1:], 1):
        out[f"p_{name.lower()}"] = probs[:, i]
      # The likelier subtype (the first on a tie, as numpy's argmax), "" if NORMAL.
      out["subtype"] = tf.where(index > 0, tf.gather(subtypes, tf.argmax(probs[:, 1:], axis=1)),
                                "")
    return out


def task_of(model: keras.Model) -> str:
  """The task a classifier was built for, from its number of outputs."""
  outputs = model.output_shape[-1]
  for task, classes in schema.TASK_CLASSES.items():
    if len(classes) == outputs:
      return task
  raise errors.ConfigError(f"{model.name} has {outputs} outputs: no task has that many classes")


def saved_model_path(export_dir: str) -> str:
  """<export_dir>/saved_model/<version>/: the base/version layout TensorFlow Serving loads."""
  return os.path.join(export_dir, SAVED_MODEL_DIR, str(SAVED_MODEL_VERSION))


def save_saved_model(model: keras.Model, image_size: int, threshold: float, path: str,
                     temperature: float = 1.0) -> None:
  """Writes the SavedModel with signatures serving_default (bytes) and serving_images."""
  module = ServingModule(model, image_size, threshold, temperature)
  tf.saved_model.save(module, path, signatures={
      "serving_default": module.serve_bytes, "serving_images": module.serve_images})


def calibration_images(data_dir: str, image_size: int, samples: int) -> np.ndarray:
  """The first train-split images (written in a seeded random order), preprocessed as
  for evaluation: never augmented, never test."""
  return dataset.read_split(data_dir, "train", image_size, limit=samples).images


def convert_tflite(model: keras.Model, variant: str, image_size: int,
                   representative: Optional[np.ndarray] = None) -> bytes:
  """Converts a Keras model (batch-1 input, logits output) to one TFLite variant.

  Args:
    model: the float (or, for qat_int8, the quantization-aware) Keras model; converted
      without its softmax (models.logits_model).
    variant: one of variants.VARIANTS.
    image_size: input side.
    representative: calibration images [N, S, S, 1] for int8 / qat_int8.

  Returns:
    The .tflite flatbuffer.
  """
  logits = models.logits_model(model)
  fn = tf.function(lambda x: logits(x, training=False)).get_concrete_function(
      tf.TensorSpec([1, image_size, image_size, schema.CHANNELS], tf.float32))
  converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], logits)
  if variant == "float16":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
  elif variant == "dynamic_range":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  elif variant in ("int8", "qat_int8"):
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if representative is not None:
      def gen() -> Iterator[List[np.ndarray]]:
        for image in representative:
          yield [image[None].astype(np.float32)]
      converter.representative_dataset = gen
    # Every op int8 and int8 I/O: runs on integer-only accelerators.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
  elif variant != "float32":
    raise errors.ConfigError(f"unknown variant {variant!r}")
  with cli.native_stderr_quiet(not cli.verbose()):  # the converter's native summary lines
    return converter.convert()


def _io_params(detail: Dict[str, Any]) -> Dict[str, Any]:
  scale, zero = detail["quantization"]
  return {"dtype": np.dtype(detail["dtype"]).name, "shape": [int(d) for d in detail["shape"]],
          "scale": float(scale), "zero_point": int(zero)}


def describe_tflite(path: str) -> Dict[str, Any]:
  """File size, sha256, input/output quantization parameters and op names of a model."""
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  with cli.native_stderr_quiet(not cli.verbose()):  # LiteRT's delegate announcement
    interp = Interpreter(model_path=path)
    interp.allocate_tensors()
  ops = sorted({op["op_name"] for op in interp._get_ops_details()})  # pylint: disable=protected-access
  return {"file": os.path.basename(path), "bytes": os.path.getsize(path),
          "sha256": image_io.sha256_file(path),
          "input": _io_params(interp.get_input_details()[0]),
          "output": _io_params(interp.get_output_details()[0]), "ops": ops}


def _latency(model: runtime.LiteModel, image: np.ndarray, runs: int) -> Dict[str, float]:
  for _ in range(max(3, runs // 10)):
    model.probabilities(image)
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    model.probabilities(image)
    times.append((time.perf_counter() - start) * 1000)
  return {"p50_ms": round(float(np.percentile(times, 50)), 4),
          "p95_ms": round(float(np.percentile(times, 95)), 4)}


def _split_set(data_dir: str, image_size: int, split: str):
  """(preprocessed images, labels, encoded bytes, patient ids) of a split, in file order."""
  r = dataset.read_split(data_dir, split, image_size, with_bytes=True)
  return r.images, r.labels, r.encoded, r.patients


def own_artifacts() -> List[str]:
  """Everything cxr-export writes into an export dir (and so may replace)."""
  return ([SAVED_MODEL_DIR, schema.LABELS_NAME, schema.METADATA_NAME, variant_names.REPORT_NAME,
           model_card.CARD_NAME, model_card.CARD_JSON]
          + [tflite_name(v) for v in variant_names.VARIANTS])


def _remove_own_artifacts(export_dir: str) -> None:
  """--overwrite: removes what a previous export wrote, and nothing else."""
  kept = cli.remove_own(export_dir, own_artifacts())
  if kept:
    logging.warning("--overwrite: kept %d file(s) cxr-export did not write in %s: %s",
                    len(kept), export_dir, ", ".join(kept[:5]))


def export(model_dir: str, data_dir: str, export_dir: str, calibration_samples: int = 300,
           latency_runs: int = 200, variants: Optional[Sequence[str]] = None,
           overwrite: bool = False, external_dir: Optional[str] = None,
           qat_model_dir: Optional[str] = None,
           allow_other_data: bool = False,
           model_kind: Optional[str] = None) -> Dict[str, Any]:
  """Exports a cxr-train model and writes the parity report.

  Args:
    model_dir: a cxr-train output.
    data_dir: its cxr-convert output (calibration from train, report on test).
    export_dir: output directory.
    calibration_samples: train images for int8 calibration.
    latency_runs: timed single-image invocations per variant and thread count.
    variants: which TFLite variants to write; default: every post-training variant, and
      qat_int8 when qat_model_dir is given.
    overwrite: replace a previous export in a non-empty export_dir (only the files
      cxr-export writes are removed).
    external_dir: a labelled class-folder tree from another source; the report scores
      every variant on it too (with 95% intervals).
    qat_model_dir: a cxr-train --qat run of this model, converted to qat_int8 with the
      threshold that run chose.
    allow_other_data: export although data_dir is not the conversion the model was
      trained on; the report and the card then say its test split is not held out.
    model_kind: what the package says it is (package_info.MODEL_KINDS); default: smoke
      for a model trained on fewer than package_info.SMOKE_MAX_TRAINING_FILMS films,
      else experimental. Only scripts/release_model.sh says released.

  Returns:
    The report dict (also export_report.json).

  Raises:
    FileNotFoundError: model_dir or data_dir incomplete.
    ValueError: export_dir not empty without overwrite, unknown variant, qat_int8 without
      a QAT run, or a QAT run that is not one.
  """
  variants = _checked_variants(variants, qat_model_dir)
  qat_model, qat_info = _qat_run(qat_model_dir, model_dir, variants)
  if os.path.isdir(export_dir) and os.listdir(export_dir):
    if not overwrite:
      raise errors.ConfigError(f"--export_dir {export_dir!r} is not empty; pass --overwrite")
    _remove_own_artifacts(export_dir)
  model, info = model_dir_lib.load_model_dir(model_dir)
  size, threshold = info["image_size"], info["threshold"]
  temperature = float(info.get("temperature", 1.0))
  data_sha = model_dir_lib.manifest_sha256(data_dir)
  held_out = info.get("data_manifest_sha256") in (None, data_sha)
  if not held_out and not allow_other_data:
    raise errors.ConfigError(
        f"--data_dir {data_dir!r} is not the conversion the model was trained on (manifest "
        f"{data_sha[:12]}, the model's {info['data_manifest_sha256'][:12]}): its test split "
        "may hold the model's training films; give the model's conversion, or "
        "--allow_other_data to export anyway (the report then says so)")
  if not held_out:
    logging.warning("the model was trained on another conversion (manifest %s, given %s): "
                    "the test split is not held out", info["data_manifest_sha256"], data_sha)
  # Before anything is written: a kind the training films do not allow is refused here.
  metadata = package_metadata(info, data_dir, data_sha, model_kind)
  os.makedirs(export_dir, exist_ok=True)

  logging.info("writing the SavedModel")
  save_saved_model(model, size, threshold, saved_model_path(export_dir), temperature)
  files = _write_tflite(export_dir, variants, model, qat_model, size,
                        calibration_images(data_dir, size, calibration_samples))
  # The model's outputs, one per line in order (TFLite's label-file convention).
  with open(os.path.join(export_dir, schema.LABELS_NAME), "w", encoding="utf-8") as f:
    f.writelines(c + "\n" for c in metadata.get("classes", metadata["labels"]))
  for path in files.values():
    metadata["models"][os.path.basename(path)] = {
        **describe_tflite(path), "output_kind": "logits", "temperature": temperature}
  _set_thresholds(metadata, files, qat_info)
  for path in files.values():
    embed_metadata(path, metadata)
  # Before the report, which scores the files with their gates. Films are decoded only
  # for a network that has a gate to fit (seed_cnn has none).
  gated = {v: p for v, p in files.items() if runtime.LiteModel(p).has_features}
  if gated:
    fit_gates(gated, metadata, *gate_films(data_dir))
  with open(os.path.join(export_dir, schema.METADATA_NAME), "w", encoding="utf-8") as f:
    json.dump(metadata, f, indent=2)

  val_images, val_labels, _, _ = _split_set(data_dir, size, "val")
  report = build_report(export_dir, data_dir, metadata, files, latency_runs,
                        val_images, val_labels)
  report["test_split_held_out"] = held_out
  if external_dir:
    report["external"] = external_report(export_dir, external_dir, metadata, files)
  with open(os.path.join(export_dir, variant_names.REPORT_NAME), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  model_card.write(export_dir, metadata, report, info, records.load_manifest(data_dir))
  return report


def _checked_variants(variants: Optional[Sequence[str]],
                      qat_model_dir: Optional[str]) -> Sequence[str]:
  """The variants to write (default: every post-training one, and qat_int8 with a QAT run)."""
  if variants is None:
    variants = variant_names.POST_TRAINING_VARIANTS + (("qat_int8",) if qat_model_dir else ())
  unknown = set(variants) - set(variant_names.VARIANTS)
  if unknown:
    raise errors.ConfigError(
        f"unknown variant(s) {sorted(unknown)}; choose from {variant_names.VARIANTS}")
  if "qat_int8" in variants and not qat_model_dir:
    raise errors.ConfigError("qat_int8 is converted from a quantization-aware run: train one with "
                             "cxr-train --qat --init_from=MODEL_DIR and pass --qat_model_dir")
  return variants


def _qat_run(qat_model_dir: Optional[str], model_dir: str, variants: Sequence[str]
             ) -> Tuple[Optional[keras.Model], Optional[Dict[str, Any]]]:
  """The QAT run's model and model_info, when qat_int8 is to be written; else (None, None)."""
  if not qat_model_dir or "qat_int8" not in variants:
    return None, None
  qat_model, qat_info = model_dir_lib.load_model_dir(qat_model_dir)
  if not qat_info.get("qat"):
    raise errors.ConfigError(f"--qat_model_dir {qat_model_dir!r} is not a cxr-train --qat run")
  if os.path.realpath(qat_info.get("init_from") or "") != os.path.realpath(model_dir):
    logging.warning("the QAT run %s was fine-tuned from %s, not from %s", qat_model_dir,
                    qat_info.get("init_from"), model_dir)
  return qat_model, qat_info


def _write_tflite(export_dir: str, variants: Sequence[str], model: keras.Model,
                  qat_model: Optional[keras.Model], size: int,
                  calib: np.ndarray) -> Dict[str, str]:
  """Converts each variant (int8 ones calibrated on `calib`); {variant: its file}."""
  files = {}
  for k, variant in enumerate(variants, 1):
    logging.info("converting TFLite %d/%d: %s%s", k, len(variants), variant,
                 f" (calibrated on {len(calib)} train images)" if "int8" in variant else "")
    source = qat_model if variant == "qat_int8" else model
    path = os.path.join(export_dir, tflite_name(variant))
    with open(path, "wb") as f:
      f.write(_with_features(convert_tflite(source, variant, size, calib), variant))
    files[variant] = path
  return files


# Where the films of every model exported here come from.
CREDIT = ("Trained on Kermany et al. (2018), Mendeley Data v2, doi:10.17632/rscbjbr9sj.2, "
          "CC BY 4.0")


def package_metadata(info: Dict[str, Any], data_dir: str, data_sha: str,
                     model_kind: Optional[str] = None) -> Dict[str, Any]:
  """The package's fields (core/package_info.py) for a trained run; "models" still empty.

  Args:
    info: the run's model_info.
    data_dir: its conversion.
    data_sha: the conversion manifest's sha256.
    model_kind: released, experimental or smoke (package_info.MODEL_KINDS); None: smoke
      below package_info.SMOKE_MAX_TRAINING_FILMS training films, else experimental.

  Raises:
    ConfigError: a kind the training films do not allow.
  """
  size = info["image_size"]
  splits = records.load_manifest(data_dir)["splits"]
  training = package_info.training_fields(
      model_kind, splits["train"]["images"], sum(s["images"] for s in splits.values()),
      CREDIT)
  return package_info.package_fields(
      labels=list(schema.LABELS),
      classes=list(schema.TASK_CLASSES[info.get("task", schema.TASK_BINARY)]),
      positive_label=schema.POSITIVE_LABEL,
      threshold=info["threshold"],
      threshold_rule=info.get("threshold_rule"),
      # The class prior the probabilities assume, for cxr-calibrate --prevalence.
      output_prior=model_dir_lib.run_prior(info, data_dir),
      input={"size": size, "layout": "NHWC", "shape": [1, size, size, schema.CHANNELS],
             "channels": schema.CHANNELS},
      preprocessing={
          "decode": "grayscale; for JPEG the decoder's luma plane (libjpeg, accurate IDCT)",
          "resize": "bilinear, half-pixel centres, no antialiasing, aspect ratio not kept",
          "scale": schema.SCALE, "range": [0.0, 1.0],
          "quantize": "q = clip(round(x / scale + zero_point)) with the input's parameters"},
      output="logits in class order; p = softmax(logits / temperature); p_pneumonia = "
             "the sum of p after NORMAL; PNEUMONIA if p_pneumonia >= threshold "
             "(temperature and threshold per model); a three-class model's subtype is the "
             "likelier of BACTERIAL and VIRAL",
      models={},
      model=info["model"],
      data_manifest_sha256=data_sha,
      validation_metrics=info.get("val_metrics"),
      credit=CREDIT,
      training=training,
  )


def embed_metadata(path: str, metadata: Dict[str, Any]) -> None:
  """Writes the model's metadata into the .tflite at `path` (edge/package.py), then
  records the file's final size and sha256 in metadata["models"] (the optional
  metadata.json)."""
  name = os.path.basename(path)
  with open(path, "rb") as f:
    data = package.embed(f.read(), package.model_fields(metadata, metadata["models"][name]))
  with open(path, "wb") as f:
    f.write(data)
  metadata["models"][name].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


def _with_features(data: bytes, variant: str) -> bytes:
  """The model with its feature map as a second output, which the image gate reads; a
  network without a global average pool (seed_cnn) gets no gate, and says so."""
  try:
    return scope.expose_features(data)
  except errors.PackageError as e:
    logging.warning("%s: no image gate (%s): only the header and plausibility checks keep "
                    "films outside the intended use out", variant, e)
    return data


def gate_films(data_dir: str) -> Tuple[List[np.ndarray], List[np.ndarray]]:
  """The films the image gate is fitted on, decoded as the device decodes them: the train
  split's, and the validation and test splits' (never trained on), which set its limits."""
  def decoded(split: str) -> List[np.ndarray]:
    return [runtime.film_gray(b)
            for b in dataset.read_split(data_dir, split, with_bytes=True).encoded]
  return decoded("train"), decoded("val") + decoded("test")


def fit_gates(files: Dict[str, str], metadata: Dict[str, Any], train: List[np.ndarray],
              heldout: List[np.ndarray]) -> None:
  """Fits each file's image gate (edge/scope.py) on its own features and embeds it
  (every file must output its feature map: LiteModel.has_features)."""
  for variant, path in files.items():
    model = runtime.LiteModel(path)
    logging.info("fitting the image gate of %s on %d training films (limits on %d held-out "
                 "ones)", variant, len(train), len(heldout))
    gate = scope.fit_model(model, train, heldout)
    metadata["models"][os.path.basename(path)]["image_gate"] = gate.as_fields()
    embed_metadata(path, metadata)


def _set_thresholds(metadata: Dict[str, Any], files: Dict[str, str],
                    qat_info: Optional[Dict[str, Any]]) -> None:
  """Gives every model in metadata["models"] the threshold it is to be used with.

  Post-training variants approximate the trained model, so they keep its threshold. The
  QAT model is a different model (fine-tuned further): it keeps the threshold its own
  run set, by the float run's rule (the same value where the rule ignores the scores).
  """
  for variant, path in files.items():
    entry = metadata["models"][os.path.basename(path)]
    entry["threshold"] = metadata["threshold"]
    entry["threshold_source"] = f"cxr-train, for the trained model: {metadata['threshold_rule']}"
    if variant == "qat_int8":
      entry["threshold"] = float(qat_info["threshold"])
      entry["threshold_source"] = ("cxr-train --qat, for the quantization-aware model by the "
                                   f"float run's rule: {qat_info['threshold_rule']}")
      logging.info("qat_int8: its own run's threshold %.4f (trained model's %.4f)",
                   entry["threshold"], metadata["threshold"])


def _in_batches(fn, inputs, batch_size: int = 64) -> np.ndarray:
  """fn over inputs in batches of batch_size, results concatenated."""
  return np.concatenate([fn(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)])


def build_report(export_dir: str, data_dir: str, metadata: Dict[str, Any],
                 files: Dict[str, str], latency_runs: int, val_images: np.ndarray,
                 val_labels: np.ndarray) -> Dict[str, Any]:
  """Evaluates the SavedModel and every TFLite variant on the test split.

  Validation accuracy goes beside the test figures: the split every choice was made on,
  twice the evidence when comparing variants a few films apart.
  """
  size, threshold = metadata["input"]["size"], metadata["threshold"]
  test = dataset.read_split(data_dir, "test", size, with_bytes=True)
  images, labels, encoded, patients = test.images, test.labels, test.encoded, test.patients
  loaded = tf.saved_model.load(saved_model_path(export_dir))
  serve = loaded.signatures["serving_images"]
  serve_bytes = loaded.signatures["serving_default"]

  def saved_model_class_probs(x: np.ndarray) -> np.ndarray:
    return _in_batches(lambda b: serve(images=tf.constant(b))["probabilities"].numpy(), x)

  def val_accuracy(probs: np.ndarray, t: float) -> float:
    return float(np.mean((probs >= t) == (val_labels == 1)))

  three_class = "classes" in metadata
  ref_class = saved_model_class_probs(images)
  ref = metrics_lib.p_pneumonia(ref_class)
  ref_bytes = _in_batches(
      lambda b: serve_bytes(image_bytes=tf.constant(b))["p_pneumonia"].numpy(), encoded)
  ref_pred = ref >= threshold

  def row(probs: np.ndarray, t: float) -> Dict[str, Any]:
    return {**metrics_lib.operating_point(labels, probs, t, patients),
            # Decisions, each model at its own threshold (what devices would say).
            "agreement_with_saved_model": float(np.mean((probs >= t) == ref_pred)),
            "max_abs_delta_probability": float(np.max(np.abs(probs - ref)))}

  # The edge predictor's numpy/Pillow preprocessing of the encoded bytes, once: it does
  # not depend on the variant.
  edge_images = np.stack([runtime.preprocess(b, size, metadata["preprocessing"]["scale"])
                          for b in encoded])
  saved_bytes_pred = ref_bytes >= threshold
  report: Dict[str, Any] = {"test_images": int(len(labels)), "threshold": threshold,
                            "saved_model": row(ref, threshold), "variants": {}}
  report["saved_model"]["validation_accuracy"] = val_accuracy(
      metrics_lib.p_pneumonia(saved_model_class_probs(val_images)), threshold)
  if three_class:
    report["saved_model"]["subtype"] = metrics_lib.subtype_summary(
        labels, test.subtypes, ref_class, threshold, patients)
  for variant, path in files.items():
    entry: Dict[str, Any] = {"file": os.path.basename(path), "bytes": os.path.getsize(path)}
    lite = runtime.LiteModel(path, 1, metadata)
    class_probs = lite.class_probabilities(images)
    probs = metrics_lib.p_pneumonia(class_probs)
    entry.update(row(probs, lite.threshold))
    if three_class:
      entry["subtype"] = metrics_lib.subtype_summary(labels, test.subtypes, class_probs,
                                                     lite.threshold, patients)
    entry["validation_accuracy"] = val_accuracy(lite.positive_probabilities(val_images),
                                                lite.threshold)
    for threads in (1, 2):
      entry[f"latency_{threads}_thread"] = _latency(runtime.LiteModel(path, threads, metadata),
                                                    images[0], latency_runs)
    # The edge predictor end to end against the SavedModel's in-graph (TensorFlow)
    # preprocessing of the same bytes.
    edge_probs = lite.positive_probabilities(edge_images)
    entry["edge_predictor_agreement_with_saved_model_bytes"] = float(
        np.mean((edge_probs >= lite.threshold) == saved_bytes_pred))
    entry["edge_predictor_max_abs_delta_vs_same_model"] = float(np.max(np.abs(edge_probs - probs)))
    report["variants"][variant] = entry
    logging.debug("%s: %s", variant, {k: v for k, v in entry.items() if k != "file"})
  if "float32" in report["variants"]:
    base = report["variants"]["float32"]
    for entry in report["variants"].values():
      entry["size_vs_float32"] = round(entry["bytes"] / base["bytes"], 4)
      entry["latency_p50_1_thread_vs_float32"] = round(
          entry["latency_1_thread"]["p50_ms"] / base["latency_1_thread"]["p50_ms"], 4)
  return report


def external_report(export_dir: str, external_dir: str, metadata: Dict[str, Any],
                    files: Dict[str, str]) -> Dict[str, Any]:
  """The SavedModel and every TFLite variant on an external labelled folder.

  Each model at its own threshold, every proportion with a 95% Wilson interval and
  ROC-AUC with a 95% bootstrap interval over patients; int8 variants also report their
  ROC-AUC minus the float32 model's. The SavedModel reads the films through tf.data, the
  TFLite files through the edge runtime, as a device does.
  """
  size = metadata["input"]["size"]
  folder = dataset.load_image_folder(external_dir, size)
  loaded = tf.saved_model.load(saved_model_path(export_dir))
  serve = loaded.signatures["serving_images"]
  ref_probs = _in_batches(lambda b: serve(images=tf.constant(b))["probabilities"].numpy(),
                          folder.images)
  ref = metrics_lib.p_pneumonia(ref_probs)
  three_class = "classes" in metadata
  out: Dict[str, Any] = {"external_dir": external_dir, "images": int(len(folder.labels)),
                         "patients": int(len(set(folder.patients))),
                         "skipped": folder.skipped,
                         "saved_model": metrics_lib.operating_point(
                             folder.labels, ref, metadata["threshold"], folder.patients),
                         "variants": {}}
  if three_class:
    out["saved_model"]["subtype"] = metrics_lib.subtype_summary(
        folder.labels, folder.subtypes, ref_probs, metadata["threshold"], folder.patients)
  # Each TFLite file as a device runs it: the edge runtime reads and preprocesses every
  # film itself, so these are the figures cxr-predict would reproduce.
  for variant, path in files.items():
    lite = runtime.LiteModel(path, 1, metadata)
    out["variants"][variant] = calibrate_lib.measure(
        lite, calibrate_lib.score_films(lite, external_dir))
  if "float32" in out["variants"]:
    base = out["variants"]["float32"]["roc_auc"]
    for entry in out["variants"].values():
      entry["roc_auc_minus_float32"] = entry["roc_auc"] - base
  return out


def format_report(report: Dict[str, Any]) -> str:
  """The printed table."""
  head = (f"{'variant':14s} {'thr':>6s} {'KB':>8s} {'size/f32':>8s} {'val acc':>7s} "
          f"{'acc':>7s} {'AUC':>7s} {'sens':>7s} {'spec':>7s} {'agree%':>7s} {'max|dp|':>8s} "
          f"{'p50 1t':>8s} {'p95 1t':>8s} {'p50 2t':>8s} {'p95 2t':>8s} {'edge agree%':>11s}")
  lines = [f"test split: {report['test_images']} images, trained model's threshold "
           f"{report['threshold']:.4f}", head, "-" * len(head)]
  s = report["saved_model"]
  lines.append(f"{'saved_model':14s} {s['threshold']:6.4f} {'':>8s} {'':>8s} "
               f"{s['validation_accuracy']:7.4f} {s['accuracy']:7.4f} {s['roc_auc']:7.4f} "
               f"{s['sensitivity']:7.4f} {s['specificity']:7.4f}")
  for name, e in report["variants"].items():
    lines.append(
        f"{name:14s} {e['threshold']:6.4f} {e['bytes'] / 1024:8.1f} "
        f"{e.get('size_vs_float32', float('nan')):8.3f} {e['validation_accuracy']:7.4f} "
        f"{e['accuracy']:7.4f} {e['roc_auc']:7.4f} {e['sensitivity']:7.4f} "
        f"{e['specificity']:7.4f} {100 * e['agreement_with_saved_model']:7.2f} "
        f"{e['max_abs_delta_probability']:8.4f} "
        f"{e['latency_1_thread']['p50_ms']:8.3f} {e['latency_1_thread']['p95_ms']:8.3f} "
        f"{e['latency_2_thread']['p50_ms']:8.3f} {e['latency_2_thread']['p95_ms']:8.3f} "
        f"{100 * e['edge_predictor_agreement_with_saved_model_bytes']:11.2f}")
  for name, e in [("saved_model", s), *report["variants"].items()]:
    if "subtype" in e:
      lines.append(f"{name:14s} {metrics_lib.format_subtype(e['subtype'])}")
  lines.append("thr = the model's decision threshold (QAT: its own run's, same rule); val acc = "
               "accuracy on the validation split, every other column on the test split; "
               "latency in ms per single image (invoke only); agree% = decisions equal to the "
               "SavedModel's; edge agree% = cxr-predict's numpy preprocessing + this model vs "
               "the SavedModel's JPEG-bytes signature")
  if "external" in report:
    ext = report["external"]
    fmt = metrics_lib.format_interval
    lines += ["", f"external: {ext['external_dir']}, {ext['images']} films, "
              f"{ext['patients']} patients (95% intervals: Wilson; ROC-AUC bootstrap over "
              "patients)",
              f"{'variant':14s} {'thr':>6s} {'accuracy %':>18s} {'sensitivity %':>18s} "
              f"{'specificity %':>18s} {'ROC-AUC':>24s} {'AUC-f32':>8s} {'ECE':>6s}"]
    for name, e in [("saved_model", ext["saved_model"]), *ext["variants"].items()]:
      lines.append(
          f"{name:14s} {e['threshold']:6.4f} "
          + " ".join(f"{fmt(e[k], e['ci95'][k]):>18s}"
                     for k in ("accuracy", "sensitivity", "specificity"))
          + f" {fmt(e['roc_auc'], e['roc_auc_ci95'], percent=False):>24s} "
          f"{e.get('roc_auc_minus_float32', float('nan')):8.4f} {e['ece']:6.4f}")
    for name, e in [("saved_model", ext["saved_model"]), *ext["variants"].items()]:
      if "subtype" in e:
        lines.append(f"{name:14s} {metrics_lib.format_subtype(e['subtype'])}")
  return "\n".join(lines)
