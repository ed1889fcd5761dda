#!/usr/bin/env python3
"""A probe, not a product feature: would test-time augmentation or a seed ensemble rank
external films better?

Usage:
  .venv/bin/python -m studies.probe_tta_ensemble \
      --external_dir=../shared/data/chest_xray/external /tmp/study/rz_42 /tmp/study/rz_1
  .venv/bin/python -m studies.probe_tta_ensemble --data_dir=/tmp/rec \
      --external_dir=../shared/data/chest_xray/external /tmp/study/rz_42 /tmp/study/rz_1
  .venv/bin/python -m studies.probe_tta_ensemble --data_dir=/tmp/rec \
      --external_dir=../shared/data/chest_xray/external --exports=/tmp/study/external \
      /tmp/study/default_det_3 /tmp/study/default_det_4 /tmp/study/default_det_5

For each cxr-train run (float Keras model): external ROC-AUC as is, and with the logit
margin averaged over the film and 8 seeded random variants (rotation +-10 deg, zoom
+-15%: the training warp at half strength); then the same for the runs' mean margin (an
ensemble). Accuracy, sensitivity and specificity at 0.5 are printed too: augmented
variants shift the scores, so a product version would need its own threshold. With
--data_dir, one candidate rule: subtract the mean shift (TTA margin minus plain margin)
measured on the validation split, so the external films choose nothing.

With --exports (and --data_dir), the same for the shipped model: each run's int8 TFLite
(an external_study.py --out directory: its export is reused or made there) through the edge
runtime, fed warped films, re-centred by its own validation shift, at the run's shipped
threshold and temperature, with 95% intervals and ECE; then the means over the runs, the
ensembles, and the interpreter time of the TTA scoring against the plain one. Here copy k
warps every film the same way (one warp drawn from seed [7, k]), as a product would ship
fixed warps rather than random numbers on the device.
"""
import argparse
import os
import time
from typing import Callable, Dict, List, Tuple

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import numpy as np
import tensorflow as tf

from cxr_edge.core import metrics
from cxr_edge.core import thresholds
from cxr_edge.edge import runtime
from cxr_edge.export import export_lib
from cxr_edge.model import model_dir as model_dir_lib
from cxr_edge.model import models
from cxr_edge.pipeline import augment
from cxr_edge.pipeline import augment_config
from cxr_edge.pipeline import dataset
from studies import external_study

VARIANTS = 8
TTA = augment_config.AugmentConfig(rotation_deg=10.0, zoom=0.15)


def _line(name: str, y: np.ndarray, margin: np.ndarray) -> str:
  d = metrics.at_threshold(y, metrics.sigmoid(margin), 0.5)
  return (f"| {name} | {metrics.roc_auc(y, margin):.4f} | " + " | ".join(
      f"{100 * d[k]:.1f}" for k in ("accuracy", "sensitivity", "specificity")) + " |")


def views(images: np.ndarray, per_film: bool = True) -> List[np.ndarray]:
  """The films and VARIANTS seeded warped copies of them (the same for every model).

  per_film: each film gets its own random warp in each copy (the probe's first form);
  otherwise copy k applies one warp, drawn from the same seed, to every film: the form a
  product can ship (fixed warps, no random numbers on the device).
  """
  out = [images]
  for k in range(VARIANTS):
    seed = tf.constant([7, k], tf.int64)
    if per_film:
      out.append(augment.augment_batch(tf.constant(images), seed, TTA).numpy())
      continue
    matrix, one, _ = augment.sample_params(tf.constant(images[:1]), seed, TTA)
    out.append(augment.apply_params(tf.constant(images), tf.tile(matrix, [len(images), 1]),
                                    one, one, TTA).numpy())
  return out


def lite_outputs(lite: runtime.LiteModel, images: np.ndarray) -> np.ndarray:
  """Dequantized logits [N, 2] of a logits-output TFLite model, one invoke a film."""
  return np.array([lite.outputs(x) for x in images], np.float64)


def margin_of(logits: np.ndarray) -> np.ndarray:
  """Logit margins (PNEUMONIA - NORMAL) of [N, 2] logits."""
  return logits[:, 1] - logits[:, 0]


def plain_and_tta(margin: Callable[[np.ndarray], np.ndarray],
                  film_views: List[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
  """(margins of the films, margins averaged over all views), each view scored once."""
  margins = [margin(v) for v in film_views]
  return margins[0], np.mean(margins, axis=0)


def _int8_section(args, runs: List[str], folder, val) -> None:
  """The int8 TFLite models through the edge runtime, plain and with re-centred TTA
  (fixed warps: views(per_film=False))."""
  external_views = views(folder.images, per_film=False)
  val_views = views(val.images, per_film=False)
  y, patients = folder.labels, folder.patients
  rows: Dict[str, List[Tuple[str, Dict]]] = {"plain": [], "tta": []}
  margins: Dict[str, List[np.ndarray]] = {"plain": [], "tta": []}
  seconds = {"plain": 0.0, "tta": 0.0}
  run_thresholds, temperatures = [], []
  for run in runs:
    name = external_study.run_name(run)
    cached = external_study.export_dir(args.exports, thresholds.DEFAULT_RULE, run)
    external_study.export_run(run, args.data_dir, args.external_dir, cached)
    lite = runtime.LiteModel(os.path.join(cached, export_lib.tflite_name("int8")))
    if lite.output_kind != "logits":
      raise SystemExit(f"{name}: its int8 model outputs {lite.output_kind}, not logits")
    outs, took = [], []
    for v in external_views:  # each view timed: the films alone, then all of them
      start = time.perf_counter()
      outs.append(lite_outputs(lite, v))
      took.append(time.perf_counter() - start)
    seconds["plain"] += took[0]
    seconds["tta"] += sum(took)
    out = outs[0]
    plain, tta = plain_and_tta(margin_of, outs)
    val_plain, val_tta = plain_and_tta(
        lambda images: margin_of(lite_outputs(lite, images)),  # pylint: disable=cell-var-from-loop
        val_views)
    shift = float(np.mean(val_tta - val_plain))
    t = lite.temperature
    run_thresholds.append(lite.threshold)
    temperatures.append(t)
    # The plain row takes the probabilities as the runtime does (softmax), so that it
    # repeats external_study.py's row to the digit; TTA has only margins.
    for kind, m, p in (("plain", plain, runtime.softmax(out, t)[:, 1]),
                       ("tta", tta - shift, metrics.sigmoid((tta - shift) / t))):
      margins[kind].append(m)
      rows[kind].append((f"{name}" + ("" if kind == "plain" else
                                      f", TTA x{VARIANTS + 1} - validation shift {shift:.3f}"),
                         metrics.operating_point(y, p, lite.threshold, patients)))
  print("\nint8 TFLite via the edge runtime, at each run's shipped threshold:\n")
  print("| run | threshold | accuracy % | sensitivity % | specificity % | ROC-AUC | ECE |\n"
        "| --- | --- | --- | --- | --- | --- | --- |")
  for kind in ("plain", "tta"):
    for name, e in rows[kind]:
      print(external_study.run_row(name, e))
    label = "plain" if kind == "plain" else f"TTA x{VARIANTS + 1}, re-centred"
    print(external_study.mean_row(f"{label}: mean of {len(runs)}", [e for _, e in rows[kind]]))
  if len(runs) > 1:
    t, threshold = float(np.mean(temperatures)), float(np.mean(run_thresholds))
    for kind in ("plain", "tta"):
      e = metrics.operating_point(y, metrics.sigmoid(np.mean(margins[kind], axis=0) / t),
                                  threshold, patients)
      print(external_study.run_row(f"ensemble of {len(runs)} ({kind}; a candidate only "
                                   f"with {len(runs)}x the training)", e))
  print(f"\nint8 interpreter time on the {len(y)} external films, summed over the runs: "
        f"plain {seconds['plain']:.1f} s, TTA {seconds['tta']:.1f} s "
        f"({seconds['tta'] / seconds['plain']:.1f}x; {VARIANTS + 1} invocations a film)")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--external_dir", required=True)
  parser.add_argument("--data_dir", default=None,
                      help="the runs' conversion: re-centre TTA by its validation shift")
  parser.add_argument("--exports", default=None,
                      help="an external_study.py --out directory: also score each run's int8 "
                           "TFLite (its export there, made if missing) via the edge runtime "
                           "at its shipped threshold; needs --data_dir")
  parser.add_argument("runs", nargs="+", help="cxr-train directories")
  args = parser.parse_args()
  if args.exports and not args.data_dir:
    parser.error("--exports needs --data_dir (export calibration and the validation shift)")
  folder, val = None, None
  external_views, val_views = None, None
  plain, tta, centred = [], [], []
  print("| model | ROC-AUC | accuracy % at 0.5 | sensitivity % | specificity % |\n"
        "| --- | --- | --- | --- | --- |")
  for run in args.runs:
    model, info = model_dir_lib.load_model_dir(run)
    if folder is None:
      folder = dataset.load_image_folder(args.external_dir, info["image_size"])
      external_views = views(folder.images)
      if args.data_dir:
        val = dataset.read_split(args.data_dir, "val", info["image_size"])
        val_views = views(val.images)
    logits = models.logits_model(model)

    def margin(images):
      out = np.concatenate([logits(images[i:i + 64]).numpy() for i in range(0, len(images), 64)])
      return margin_of(out)

    m, m_tta = plain_and_tta(margin, external_views)
    plain.append(m)
    tta.append(m_tta)
    name = external_study.run_name(run)
    print(_line(name, folder.labels, m))
    print(_line(f"{name}, TTA x{VARIANTS + 1}", folder.labels, tta[-1]))
    if val is not None:
      val_plain, val_tta = plain_and_tta(margin, val_views)
      shift = float(np.mean(val_tta - val_plain))
      centred.append(tta[-1] - shift)
      print(_line(f"{name}, TTA x{VARIANTS + 1} - validation shift {shift:.3f}",
                  folder.labels, centred[-1]))
  if len(args.runs) > 1:
    print(_line(f"ensemble of {len(args.runs)}", folder.labels, np.mean(plain, axis=0)))
    print(_line(f"ensemble of {len(args.runs)}, TTA x{VARIANTS + 1}", folder.labels,
                np.mean(tta, axis=0)))
  if centred:
    means = [metrics.at_threshold(folder.labels, metrics.sigmoid(c), 0.5) for c in centred]
    print(f"| mean of the {len(centred)} re-centred TTA runs | "
          f"{np.mean([metrics.roc_auc(folder.labels, c) for c in centred]):.4f} | "
          + " | ".join(f"{100 * np.mean([d[k] for d in means]):.1f}"
                       for k in ("accuracy", "sensitivity", "specificity")) + " |")
  if args.exports:
    _int8_section(args, args.runs, folder, val)


if __name__ == "__main__":
  main()
