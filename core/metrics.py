"""Binary classification metrics in numpy (no TensorFlow), checked by hand in tests.

`y` are 0/1 labels (1 = PNEUMONIA, the positive class), `p` probabilities of class 1.
Importable without TensorFlow: the edge tools (cxr-calibrate) use it on the device.
"""
import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

# Normal quantile of a two-sided 95% interval.
Z_95 = 1.959963984540054


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


def pr_curve(y: np.ndarray, p: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """(recall, precision) at every distinct threshold, recall ascending from 0."""
  y = np.asarray(y).astype(bool)
  fpr, tpr, _ = roc_curve(y, p)
  # Films called positive at each threshold = true + false positives there.
  tp, fp = tpr[1:] * y.sum(), fpr[1:] * (~y).sum()
  return tpr, np.r_[1.0, tp / (tp + fp)]


def pr_auc(y: np.ndarray, p: np.ndarray) -> float:
  """Average precision: sum over thresholds of (recall step) x precision."""
  if not np.asarray(y).astype(bool).any():
    return float("nan")
  recall, precision = pr_curve(y, p)
  return float(np.sum(np.diff(recall) * precision[1:]))


def brier(y: np.ndarray, p: np.ndarray) -> float:
  """Mean squared error of the probability."""
  return float(np.mean((np.asarray(p, np.float64) - np.asarray(y)) ** 2))


def log_loss(y: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> float:
  """Mean binary cross-entropy of the probability (clipped to [eps, 1 - eps])."""
  y = np.asarray(y, np.float64)
  p = np.clip(np.asarray(p, np.float64), eps, 1 - eps)
  return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(mean probability, observed positive rate, count) of each non-empty equal-width bin."""
  y = np.asarray(y, np.float64)
  p = np.asarray(p, np.float64)
  idx = np.minimum((p * bins).astype(int), bins - 1)
  used = [b for b in range(bins) if np.any(idx == b)]
  return (np.array([p[idx == b].mean() for b in used]),
          np.array([y[idx == b].mean() for b in used]),
          np.array([int(np.sum(idx == b)) for b in used]))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
  """ECE of the positive-class probability over `bins` equal-width bins."""
  mean_p, rate, count = reliability(y, p, bins)
  return float(np.sum(count / max(len(np.asarray(y)), 1) * np.abs(mean_p - rate)))


def wilson_interval(successes: int, n: int, z: float = Z_95) -> Tuple[float, float]:
  """Wilson score interval of a proportion (95% by default); (nan, nan) when n == 0.

  Unlike the normal approximation it stays inside [0, 1] and is sound at 0 or n
  successes, which is where a good classifier's error counts sit.
  """
  if n <= 0:
    return float("nan"), float("nan")
  phat = successes / n
  denom = 1 + z * z / n
  centre = (phat + z * z / (2 * n)) / denom
  half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
  # At 0 or n successes the bound is exactly 0 or 1; rounding must not move it inside.
  low = 0.0 if successes == 0 else max(0.0, centre - half)
  high = 1.0 if successes == n else min(1.0, centre + half)
  return low, high


def bootstrap_auc_interval(y: np.ndarray, p: np.ndarray, groups: Optional[Sequence] = None,
                           resamples: int = 2000, seed: int = 0,
                           level: float = 0.95) -> Tuple[float, float]:
  """Percentile bootstrap interval of ROC-AUC, resampling whole groups (patients).

  Films of one patient are correlated, so patients, not films, are the independent
  units: each resample draws patients with replacement and keeps all their films.

  Args:
    y: labels.
    p: positive-class probabilities.
    groups: a patient id per film; None treats every film as its own patient.
    resamples: bootstrap resamples (seeded: the same inputs give the same interval).
    seed: seed of the resampling.
    level: coverage of the interval.

  Returns:
    (low, high); (nan, nan) when a class is missing.
  """
  y = np.asarray(y).astype(bool)
  p = np.asarray(p, np.float64)
  if y.all() or not y.any():
    return float("nan"), float("nan")
  keys = np.arange(len(y)) if groups is None else np.asarray(groups)
  _, group_index = np.unique(keys, return_inverse=True)
  members = [np.flatnonzero(group_index == g) for g in range(group_index.max() + 1)]
  rng = np.random.default_rng(seed)
  aucs = []
  for _ in range(resamples):
    picked = rng.integers(0, len(members), len(members))
    idx = np.concatenate([members[g] for g in picked])
    if y[idx].all() or not y[idx].any():
      continue
    aucs.append(roc_auc(y[idx], p[idx]))
  tail = (1 - level) / 2 * 100
  low, high = np.percentile(aucs, [tail, 100 - tail])
  return float(low), float(high)


def at_threshold(y: np.ndarray, p: np.ndarray, threshold: float) -> Dict[str, object]:
  """Decision metrics at one threshold, with 95% Wilson intervals (`ci95`)."""
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
      "ci95": {"accuracy": list(wilson_interval(tp + tn, tp + fp + tn + fn)),
               "sensitivity": list(wilson_interval(tp, tp + fn)),
               "specificity": list(wilson_interval(tn, tn + fp))},
      "confusion_matrix": {"labels": ["NORMAL", "PNEUMONIA"],
                           "rows_true_cols_pred": [[tn, fp], [fn, tp]]},
  }


def summary(y: np.ndarray, p: np.ndarray, threshold: float,
            patients: Optional[Sequence] = None) -> Dict[str, object]:
  """Threshold-free metrics plus decision metrics at `threshold` and at 0.5.

  Every proportion carries a 95% Wilson interval; ROC-AUC a 95% bootstrap interval over
  `patients` (each film its own patient when None).
  """
  return {
      "count": int(len(y)),
      "positives": int(np.sum(y)),
      "roc_auc": roc_auc(y, p),
      "roc_auc_ci95": list(bootstrap_auc_interval(y, p, patients)),
      "pr_auc": pr_auc(y, p),
      "brier": brier(y, p),
      "ece": expected_calibration_error(y, p),
      "at_threshold": at_threshold(y, p, threshold),
      "at_0_5": at_threshold(y, p, 0.5),
  }


def operating_point(y: np.ndarray, p: np.ndarray, threshold: float,
                    patients: Optional[Sequence] = None) -> Dict[str, object]:
  """One model's figures at one threshold, flat: accuracy, sensitivity, specificity with
  their Wilson intervals (`ci95`), ROC-AUC with its patient-bootstrap interval, ECE,
  Brier, and the confusion matrix [[TN, FP], [FN, TP]]."""
  s = summary(y, p, threshold, patients)
  d = s["at_threshold"]
  return {"threshold": float(threshold), "roc_auc": s["roc_auc"],
          "roc_auc_ci95": s["roc_auc_ci95"], "ece": s["ece"], "brier": s["brier"],
          **{k: d[k] for k in ("accuracy", "sensitivity", "specificity")}, "ci95": d["ci95"],
          "confusion_matrix": d["confusion_matrix"]["rows_true_cols_pred"]}


def format_interval(value: float, interval: Sequence[float], percent: bool = True) -> str:
  """'97.4 (95.1-98.6)' for a proportion, '0.9912 (0.9850-0.9961)' otherwise."""
  if percent:
    return f"{100 * value:.1f} ({100 * interval[0]:.1f}-{100 * interval[1]:.1f})"
  return f"{value:.4f} ({interval[0]:.4f}-{interval[1]:.4f})"


def sigmoid(x: np.ndarray) -> np.ndarray:
  """Numerically stable logistic function."""
  x = np.asarray(x, np.float64)
  out = np.empty_like(x)
  pos = x >= 0
  out[pos] = 1 / (1 + np.exp(-x[pos]))
  e = np.exp(x[~pos])
  out[~pos] = e / (1 + e)
  return out


def fit_temperature(y: np.ndarray, margin: np.ndarray, low: float = 0.05,
                    high: float = 20.0) -> float:
  """The temperature T minimizing log loss of sigmoid(margin / T) (temperature scaling).

  `margin` is the logit difference (PNEUMONIA - NORMAL). Ranking, and so ROC-AUC, is
  unchanged by T; only how confident the probabilities are. Golden-section search on
  log T (the loss is unimodal in T for a fixed margin).
  """
  y = np.asarray(y, np.float64)
  margin = np.asarray(margin, np.float64)

  def loss(log_t: float) -> float:
    return log_loss(y, sigmoid(margin / math.exp(log_t)), eps=1e-12)

  a, b = math.log(low), math.log(high)
  ratio = (math.sqrt(5) - 1) / 2
  c, d = b - ratio * (b - a), a + ratio * (b - a)
  for _ in range(80):
    if loss(c) < loss(d):
      b = d
    else:
      a = c
    c, d = b - ratio * (b - a), a + ratio * (b - a)
  return float(math.exp((a + b) / 2))
