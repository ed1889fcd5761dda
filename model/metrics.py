"""Binary classification metrics in numpy (no TensorFlow), checked by hand in tests.

`y` are 0/1 labels (1 = PNEUMONIA, the positive class), `p` probabilities of class 1.
"""
from typing import Dict, Optional, Tuple

import numpy as np


def confusion(y: np.ndarray, p: np.ndarray, threshold: float) -> Dict[str, int]:
  """Counts at `threshold` (predict positive when p >= threshold)."""
  y = np.asarray(y).astype(bool)
  pred = np.asarray(p) >= threshold
  return {"tp": int(np.sum(pred & y)), "fp": int(np.sum(pred & ~y)),
          "tn": int(np.sum(~pred & ~y)), "fn": int(np.sum(~pred & y))}


def _div(a: float, b: float) -> float:
  return float(a / b) if b else float("nan")


def roc_curve(y: np.ndarray, p: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(fpr, tpr, thresholds), thresholds descending, starting at +inf (nothing positive)."""
  y = np.asarray(y).astype(bool)
  p = np.asarray(p, dtype=np.float64)
  order = np.argsort(-p, kind="mergesort")
  p_sorted, y_sorted = p[order], y[order]
  distinct = np.r_[np.nonzero(np.diff(p_sorted))[0], len(p_sorted) - 1]
  tps = np.cumsum(y_sorted)[distinct]
  fps = (distinct + 1) - tps
  tpr = np.r_[0.0, tps / max(y.sum(), 1)]
  fpr = np.r_[0.0, fps / max((~y).sum(), 1)]
  return fpr, tpr, np.r_[np.inf, p_sorted[distinct]]


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
  """Area under the ROC curve (ties count half), NaN with a single class."""
  y = np.asarray(y).astype(bool)
  if y.all() or not y.any():
    return float("nan")
  fpr, tpr, _ = roc_curve(y, p)
  return float(np.trapezoid(tpr, fpr))


def pr_auc(y: np.ndarray, p: np.ndarray) -> float:
  """Average precision: sum over thresholds of (recall step) x precision."""
  y = np.asarray(y).astype(bool)
  if not y.any():
    return float("nan")
  _, tpr, thresholds = roc_curve(y, p)
  p = np.asarray(p, dtype=np.float64)
  predicted = np.array([np.sum(p >= t) for t in thresholds[1:]])
  precision = (tpr[1:] * y.sum()) / predicted
  return float(np.sum(np.diff(tpr) * precision))


def brier(y: np.ndarray, p: np.ndarray) -> float:
  """Mean squared error of the probability."""
  return float(np.mean((np.asarray(p, np.float64) - np.asarray(y)) ** 2))


def log_loss(y: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> float:
  """Mean binary cross-entropy of the probability (clipped to [eps, 1 - eps])."""
  y = np.asarray(y, np.float64)
  p = np.clip(np.asarray(p, np.float64), eps, 1 - eps)
  return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
  """ECE of the positive-class probability over `bins` equal-width bins."""
  y = np.asarray(y, np.float64)
  p = np.asarray(p, np.float64)
  idx = np.minimum((p * bins).astype(int), bins - 1)
  ece = 0.0
  for b in range(bins):
    mask = idx == b
    if mask.any():
      ece += mask.mean() * abs(p[mask].mean() - y[mask].mean())
  return float(ece)


def at_threshold(y: np.ndarray, p: np.ndarray, threshold: float) -> Dict[str, object]:
  """Decision metrics at one threshold."""
  c = confusion(y, p, threshold)
  tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
  precision = _div(tp, tp + fp)
  sensitivity = _div(tp, tp + fn)
  return {
      "threshold": float(threshold),
      "accuracy": _div(tp + tn, tp + fp + tn + fn),
      "precision": precision,
      "sensitivity": sensitivity,
      "specificity": _div(tn, tn + fp),
      "f1": _div(2 * tp, 2 * tp + fp + fn),
      "confusion_matrix": {"labels": ["NORMAL", "PNEUMONIA"],
                           "rows_true_cols_pred": [[tn, fp], [fn, tp]]},
  }


def summary(y: np.ndarray, p: np.ndarray, threshold: float) -> Dict[str, object]:
  """Threshold-free metrics plus decision metrics at `threshold` and at 0.5."""
  return {
      "count": int(len(y)),
      "positives": int(np.sum(y)),
      "roc_auc": roc_auc(y, p),
      "pr_auc": pr_auc(y, p),
      "brier": brier(y, p),
      "ece": expected_calibration_error(y, p),
      "at_threshold": at_threshold(y, p, threshold),
      "at_0_5": at_threshold(y, p, 0.5),
  }


def choose_threshold(y: np.ndarray, p: np.ndarray,
                     target_sensitivity: Optional[float] = None) -> float:
  """Chooses a decision threshold on validation data.

  Every threshold in (next lower score, score] makes the same validation decisions, so
  the rule picks an interval, not a score: returning the score itself would put a
  validation image exactly on the boundary, and new images a hair below it on the wrong
  side. Within the chosen interval the midpoint is returned (the widest margin to
  both neighbouring scores).

  Args:
    y: labels.
    p: positive-class probabilities.
    target_sensitivity: None maximizes Youden's J (sensitivity + specificity - 1): among
      the intervals reaching the maximum, 0.5 is returned if one contains it (validation
      gives no reason to move off the class-balanced point), else the midpoint of the
      interval nearest 0.5. Otherwise: the highest interval whose sensitivity reaches the
      target (the most specific operating point that keeps the sensitivity).

  Returns:
    A threshold t; predict PNEUMONIA when p >= t.
  """
  fpr, tpr, thresholds = roc_curve(y, p)
  upper = thresholds[1:]  # drop +inf; descending distinct scores
  lower = np.r_[upper[1:], 0.0]  # the next lower score (below the lowest: 0)
  tpr, fpr = tpr[1:], fpr[1:]
  if target_sensitivity is None:
    j = tpr - fpr
    best = np.flatnonzero(j >= j.max() - 1e-12)
    if np.any((lower[best] < 0.5) & (0.5 <= upper[best])):
      return 0.5
    distance = np.minimum(np.abs(upper[best] - 0.5), np.abs(lower[best] - 0.5))
    i = best[np.argmin(distance)]
  else:
    reaching = np.flatnonzero(tpr >= target_sensitivity - 1e-12)
    i = reaching[0]  # thresholds descend: the first reaching one is the highest
  return float((lower[i] + upper[i]) / 2)
