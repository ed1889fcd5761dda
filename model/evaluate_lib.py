"""Evaluation of a trained model on a split of a conversion or on a class-folder tree.

Writes metrics.json, predictions.csv (file, patient, label, probability, prediction),
roc.png, pr.png (precision-recall), calibration.png (reliability) and
confusion_matrix.png. A three-class model adds its subtype figures to metrics.json
("subtype"), the subtype columns to predictions.csv and confusion_matrix_3class.png.
Metrics are computed in numpy (core/metrics.py).
"""
import contextlib
import csv
import json
import os
import shutil
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from cxr_edge.core import errors
from cxr_edge.core import metrics as metrics_lib
from cxr_edge.core import schema
from cxr_edge.model import inference
from cxr_edge.model import model_dir as model_dir_lib
from cxr_edge.pipeline import dataset


def predict_folder(model, image_dir: str, image_size: int,
                   batch_size: int = 64) -> Tuple[Dict[str, np.ndarray], List[Dict[str, str]]]:
  """Probabilities for every readable labelled image below image_dir."""
  folder = dataset.load_image_folder(image_dir, image_size)
  probs = inference.predict_probs(model, folder.images, batch_size)
  return ({"probability": metrics_lib.p_pneumonia(probs), "probs": probs,
           "label": folder.labels, "subtype": folder.subtypes, "filename": folder.relpaths,
           "patient_id": folder.patients}, folder.skipped)


@contextlib.contextmanager
def _figure(path: str, title: str, size=(5, 5)):
  """A titled matplotlib axes, saved to `path` (100 dpi) and closed after the block."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=size)
  try:
    yield ax
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
  finally:
    plt.close(fig)


def _plot_roc(y, p, threshold: float, path: str, title: str) -> None:
  fpr, tpr, _ = metrics_lib.roc_curve(y, p)
  point = metrics_lib.at_threshold(y, p, threshold)
  with _figure(path, title) as ax:
    ax.plot(fpr, tpr, label=f"ROC (AUC {metrics_lib.roc_auc(y, p):.4f})")
    ax.plot([0, 1], [0, 1], "k--", alpha=0.3)
    ax.scatter([1 - point["specificity"]], [point["sensitivity"]], color="red", zorder=3,
               label=f"threshold {threshold:.3f}")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(loc="lower right")


def _plot_pr(y, p, threshold: float, path: str, title: str) -> None:
  recall, precision = metrics_lib.pr_curve(y, p)
  point = metrics_lib.at_threshold(y, p, threshold)
  with _figure(path, title) as ax:
    ax.step(recall, precision, where="post",
            label=f"precision-recall (AP {metrics_lib.pr_auc(y, p):.4f})")
    ax.axhline(float(np.mean(y)), color="k", ls="--", alpha=0.3, label="prevalence")
    ax.scatter([point["sensitivity"]], [point["precision"]], color="red", zorder=3,
               label=f"threshold {threshold:.3f}")
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left")


def _plot_reliability(y, p, path: str, title: str) -> None:
  mean_p, rate, count = metrics_lib.reliability(y, p)
  with _figure(path, title) as ax:
    ax.plot([0, 1], [0, 1], "k--", alpha=0.3, label="perfectly calibrated")
    ax.plot(mean_p, rate, "o-", label=f"model (ECE {metrics_lib.expected_calibration_error(y, p):.3f})")
    for x, r, n in zip(mean_p, rate, count):
      ax.annotate(str(n), (x, r), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel(f"predicted probability of {schema.POSITIVE_LABEL} (10 bins; films per bin)")
    ax.set_ylabel(f"observed share of {schema.POSITIVE_LABEL}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")


def _plot_confusion(matrix, path: str, title: str, labels=schema.LABELS) -> None:
  m = np.array(matrix)
  with _figure(path, title, (4.5, 4)) as ax:
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
      ax.text(j, i, str(v), ha="center", va="center",
              color="white" if v > m.max() / 2 else "black", fontsize=14)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")


REPORTS = ("metrics.json", "predictions.csv", "roc.png", "pr.png", "calibration.png",
           "confusion_matrix.png", "confusion_matrix_3class.png", "explanations")


def grad_cam(model, images: np.ndarray, threshold: float) -> np.ndarray:
  """Grad-CAM maps [N, h, w] >= 0 of the last convolutional features, for the decided class.

  The target is the logit margin of PNEUMONIA over NORMAL (log-sum-exp of the PNEUMONIA
  logits minus NORMAL's: p_pneumonia = sigmoid(margin) for either task), signed toward
  the class each film was assigned at `threshold`, so a map shows what supported that
  decision.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf_keras as keras  # pylint: disable=g-import-not-at-top
  from cxr_edge.model import models  # pylint: disable=g-import-not-at-top
  conv = next(layer for layer in reversed(model.layers)
              if len(getattr(layer, "output_shape", ()) or ()) == 4)
  logits = model.get_layer(models.LOGITS_LAYER).output
  probe = keras.Model(model.inputs, [conv.output, logits])
  x = tf.constant(images, tf.float32)
  with tf.GradientTape() as tape:
    features, out = probe(x, training=False)
    margin = tf.reduce_logsumexp(out[:, 1:], axis=1) - out[:, 0]
    # p = sigmoid(margin) >= threshold  <=>  margin >= logit(threshold)
    cut = float(np.log(threshold / (1 - threshold)))
    sign = tf.where(margin >= cut, 1.0, -1.0)
    target = tf.reduce_sum(tf.stop_gradient(sign) * margin)
  grads = tape.gradient(target, features)
  weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
  return tf.nn.relu(tf.reduce_sum(weights * features, axis=-1)).numpy()


def choose_films_to_explain(y: np.ndarray, p: np.ndarray, threshold: float,
                            n: int) -> List[Tuple[str, int]]:
  """The n most confident errors, then the n most confident correct films of each class."""
  pred = (p >= threshold).astype(int)
  confidence = np.abs(p - threshold)
  chosen = []
  errors = np.flatnonzero(pred != y)
  chosen += [("error", int(i)) for i in errors[np.argsort(-confidence[errors], kind="stable")][:n]]
  for c, label in enumerate(schema.LABELS):
    right = np.flatnonzero((pred == y) & (y == c))
    chosen += [(f"correct_{label.lower()}", int(i))
               for i in right[np.argsort(-confidence[right], kind="stable")][:n]]
  return chosen


def _write_explanations(model, images: np.ndarray, preds: Dict[str, np.ndarray],
                        threshold: float, n: int, folder: str) -> Dict[str, Any]:
  from cxr_edge.core import overlay  # pylint: disable=g-import-not-at-top
  y, p = preds["label"], preds["probability"]
  chosen = choose_films_to_explain(y, p, threshold, n)
  os.makedirs(folder, exist_ok=True)
  start = time.perf_counter()
  films = []
  for k, (category, i) in enumerate(chosen):
    heat = grad_cam(model, images[i:i + 1], threshold)[0]
    decided = schema.LABELS[int(p[i] >= threshold)]
    caption = (f"{schema.LABELS[int(y[i])]} film, predicted {decided} (p_pneumonia "
               f"{p[i]:.3f})\nGrad-CAM, float model: {overlay.NOT_A_LOCALISATION}")
    stem = os.path.splitext(os.path.basename(str(preds["filename"][i])))[0]
    name = f"{category}_{k:02d}_{stem}.png"
    with open(os.path.join(folder, name), "wb") as f:
      f.write(overlay.heat_overlay(images[i][..., 0], heat, caption))
    films.append({"file": str(preds["filename"][i]), "category": category, "png": name})
  seconds = time.perf_counter() - start
  return {"folder": folder, "films": films,
          "seconds_per_film": round(seconds / max(1, len(films)), 3)}


def evaluate(model_dir: str, output_dir: str, data_dir: Optional[str] = None,
             split: str = "test", image_dir: Optional[str] = None,
             batch_size: int = 64, overwrite: bool = False,
             explain: int = 0) -> Dict[str, Any]:
  """Evaluates a cxr-train model at its saved threshold and at 0.5.

  Args:
    model_dir: a cxr-train output.
    output_dir: where REPORTS go.
    data_dir: a cxr-convert output (with `split`); or
    split: which split of data_dir.
    image_dir: a class-folder tree instead of data_dir.
    batch_size: inference batch size.
    overwrite: replace an earlier evaluation's reports in output_dir.
    explain: write Grad-CAM overlays (explanations/) for the `explain` most confident
      errors and the `explain` most confident correct films of each class.

  Returns:
    The metrics dict written to metrics.json.

  Raises:
    ValueError: neither or both of data_dir and image_dir, no images, or earlier reports
      in output_dir without overwrite.
    FileNotFoundError: model_dir or data_dir incomplete.
  """
  if (data_dir is None) == (image_dir is None):
    raise errors.ConfigError("give exactly one of data_dir (with split) or image_dir")
  earlier = [n for n in REPORTS if os.path.exists(os.path.join(output_dir, n))]
  if earlier and not overwrite:
    raise errors.ConfigError(f"--output_dir {output_dir!r} already holds an evaluation "
                             f"({', '.join(earlier)}); pass --overwrite to replace it")
  model, info = model_dir_lib.load_model_dir(model_dir)
  image_size, threshold = info["image_size"], info["threshold"]
  skipped: List[Dict[str, str]] = []
  if data_dir is not None:
    preds = inference.predict_split(model, data_dir, split, image_size, batch_size)
    source = {"data_dir": data_dir, "split": split,
              "data_manifest_sha256": model_dir_lib.manifest_sha256(data_dir)}
  else:
    preds, skipped = predict_folder(model, image_dir, image_size, batch_size)
    source = {"image_dir": image_dir}
  y, p = preds["label"], preds["probability"]
  result = {"model_dir": model_dir, "model": info["model"], **source,
            "patients": int(len(set(preds["patient_id"]))), "skipped": skipped,
            **metrics_lib.summary(y, p, threshold, preds["patient_id"])}
  classes = schema.TASK_CLASSES[info.get("task", schema.TASK_BINARY)]
  three_class = len(classes) > len(schema.LABELS)
  if three_class:
    result["subtype"] = metrics_lib.subtype_summary(y, preds["subtype"], preds["probs"],
                                                    threshold, preds["patient_id"])
  os.makedirs(output_dir, exist_ok=True)
  shutil.rmtree(os.path.join(output_dir, "explanations"), ignore_errors=True)  # ours, if any
  if explain > 0:
    images = (dataset.read_split(data_dir, split, image_size).images if data_dir is not None
              else dataset.load_image_folder(image_dir, image_size).images)
    result["explanations"] = _write_explanations(
        model, images, preds, threshold, explain, os.path.join(output_dir, "explanations"))
  with open(os.path.join(output_dir, "metrics.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  with open(os.path.join(output_dir, "predictions.csv"), "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["file", "patient", "label", "probability", "prediction"]
               + (["subtype", "p_bacterial", "p_viral", "predicted_subtype"] if three_class
                  else []))
    decided = (metrics_lib.subtype_decisions(preds["probs"], threshold) if three_class
               else None)
    for i, (name, patient, label, prob) in enumerate(
        zip(preds["filename"], preds["patient_id"], y, p)):
      row = [name, patient, schema.LABELS[int(label)], repr(float(prob)),
             schema.LABELS[int(prob >= threshold)]]
      if three_class:
        row += [preds["subtype"][i], repr(float(preds["probs"][i, 1])),
                repr(float(preds["probs"][i, 2])), classes[decided[i]] if decided[i] else ""]
      w.writerow(row)
  what = f"{info['model']} on {split if data_dir else os.path.basename(image_dir.rstrip('/'))}"
  _plot_roc(y, p, threshold, os.path.join(output_dir, "roc.png"), what)
  _plot_pr(y, p, threshold, os.path.join(output_dir, "pr.png"), what)
  _plot_reliability(y, p, os.path.join(output_dir, "calibration.png"), what)
  _plot_confusion(result["at_threshold"]["confusion_matrix"]["rows_true_cols_pred"],
                  os.path.join(output_dir, "confusion_matrix.png"),
                  f"{what}, threshold {threshold:.3f}")
  if three_class:
    _plot_confusion(result["subtype"]["three_class"]["confusion_matrix"]["rows_true_cols_pred"],
                    os.path.join(output_dir, "confusion_matrix_3class.png"),
                    f"{what}, films of known class", classes)
  return result
