"""Classification metrics in numpy (no TensorFlow), checked by hand in tests.

`y` are 0/1 labels (1 = PNEUMONIA, the positive class), `p` probabilities of class 1;
`subtype_summary` scores a three-class model's subtypes. Importable without TensorFlow:
the edge tools (cxr-calibrate) use it on the device.
"""
import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from cxr_edge.core import schema

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


def p_pneumonia(probs: np.ndarray) -> np.ndarray:
  """p_pneumonia from class probabilities [..., classes] (schema.TASK_CLASSES order): the
  sum of every class after NORMAL, in float64. A binary model's PNEUMONIA output itself;
  a three-class model's BACTERIAL + VIRAL."""
  return np.asarray(probs, np.float64)[..., 1:].sum(axis=-1)


def subtype_decisions(probs: np.ndarray, threshold: float) -> np.ndarray:
  """A three-class model's decisions, indices into schema.TASK_CLASSES["subtype"]:
  NORMAL (0) below `threshold` on p_pneumonia, else the likelier subtype (1 BACTERIAL,
  2 VIRAL; BACTERIAL on a tie)."""
  probs = np.asarray(probs, np.float64)
  subtype = np.where(probs[:, 2] > probs[:, 1], 2, 1)
  return np.where(p_pneumonia(probs) >= threshold, subtype, 0)


def p_bacterial_among_pneumonia(probs: np.ndarray) -> np.ndarray:
  """p_bacterial / (p_bacterial + p_viral): the subtype score, whatever p_pneumonia is."""
  probs = np.asarray(probs, np.float64)
  return probs[:, 1] / np.maximum(probs[:, 1] + probs[:, 2], 1e-300)


def _subtype_truth(labels: np.ndarray, subtypes: Sequence[str]) -> np.ndarray:
  """Each film's three-class truth (schema.subtype_target), -1 for a PNEUMONIA film of
  unknown subtype."""
  truth = np.array([schema.subtype_target(schema.LABELS[int(label)], subtype)
                    for label, subtype in zip(labels, subtypes)], dtype=int)
  return np.where(truth == schema.TARGET_PNEUMONIA_UNKNOWN, -1, truth)


def subtype_auc(labels: np.ndarray, subtypes: Sequence[str], probs: np.ndarray) -> float:
  """ROC-AUC of BACTERIAL vs VIRAL among PNEUMONIA films of known subtype, on
  p_bacterial_among_pneumonia (subtype_summary's, without its interval)."""
  truth = _subtype_truth(labels, subtypes)
  known = truth > 0
  return roc_auc(truth[known] == 1, p_bacterial_among_pneumonia(np.asarray(probs)[known]))


def subtype_summary(labels: np.ndarray, subtypes: Sequence[str], probs: np.ndarray,
                    threshold: float, patients: Optional[Sequence] = None) -> Dict[str, object]:
  """A three-class model's subtype figures, with 95% intervals.

  Args:
    labels: 0/1 binary truth (1 = PNEUMONIA).
    subtypes: per film "BACTERIAL", "VIRAL", or "" (NORMAL, or subtype unknown: such
      PNEUMONIA films count in no figure here; the binary ones count them).
    probs: [N, 3] probabilities of NORMAL, BACTERIAL, VIRAL.
    threshold: the binary decision's, on p_pneumonia = p_bacterial + p_viral.
    patients: a patient id per film for the bootstrap (each film its own when None).

  Returns:
    bacterial_vs_viral: among PNEUMONIA films of known subtype, BACTERIAL the positive
      class (the antibiotic question): ROC-AUC of p_bacterial / (p_bacterial + p_viral)
      with its patient-bootstrap interval; accuracy, sensitivity (bacterial called
      bacterial) and specificity (viral called viral) of the likelier subtype, with
      Wilson intervals.
    three_class: among films of known class: accuracy of subtype_decisions, the
      confusion matrix (rows truth, columns decision), and each class's sensitivity
      and precision.
  """
  classes = schema.TASK_CLASSES[schema.TASK_SUBTYPE]
  probs = np.asarray(probs, np.float64)
  keys = np.arange(len(labels)) if patients is None else np.asarray(patients)
  truth = _subtype_truth(labels, subtypes)
  known_subtype = truth > 0
  y_bact = truth[known_subtype] == 1
  score = p_bacterial_among_pneumonia(probs[known_subtype])
  called_bact = score >= 0.5
  tp, fn = int(np.sum(called_bact & y_bact)), int(np.sum(~called_bact & y_bact))
  tn, fp = int(np.sum(~called_bact & ~y_bact)), int(np.sum(called_bact & ~y_bact))
  known = truth >= 0
  decided = subtype_decisions(probs[known], threshold)
  cm = np.zeros([3, 3], int)
  np.add.at(cm, (truth[known], decided), 1)
  correct = int(np.trace(cm))
  per_class = {}
  for c, name in enumerate(classes):
    hits, actual, called = int(cm[c, c]), int(cm[c].sum()), int(cm[:, c].sum())
    per_class[name] = {"count": actual, "sensitivity": _div(hits, actual),
                       "precision": _div(hits, called),
                       "ci95": {"sensitivity": list(wilson_interval(hits, actual)),
                                "precision": list(wilson_interval(hits, called))}}
  return {
      "bacterial_vs_viral": {
          "count": int(known_subtype.sum()), "bacterial": int(y_bact.sum()),
          "viral": int((~y_bact).sum()), "positive": schema.SUBTYPES[0],
          "roc_auc": roc_auc(y_bact, score),
          "roc_auc_ci95": list(bootstrap_auc_interval(y_bact, score, keys[known_subtype])),
          "accuracy": _div(tp + tn, tp + tn + fp + fn),
          "sensitivity": _div(tp, tp + fn), "specificity": _div(tn, tn + fp),
          "ci95": {"accuracy": list(wilson_interval(tp + tn, tp + tn + fp + fn)),
                   "sensitivity": list(wilson_interval(tp, tp + fn)),
                   "specificity": list(wilson_interval(tn, tn + fp))}},
      "three_class": {
          "count": int(known.sum()), "accuracy": _div(correct, int(known.sum())),
          "ci95": {"accuracy": list(wilson_interval(correct, int(known.sum())))},
          "confusion_matrix": {"labels": list(classes), "rows_true_cols_pred": cm.tolist()},
          "per_class": per_class},
  }


def format_interval(value: float, interval: Sequence[float], percent: bool = True) -> str:
  """'97.4 (95.1-98.6)' for a proportion, '0.9912 (0.9850-0.9961)' otherwise."""
  if percent:
    return f"{100 * value:.1f} ({100 * interval[0]:.1f}-{100 * interval[1]:.1f})"
  return f"{value:.4f} ({interval[0]:.4f}-{interval[1]:.4f})"


def format_subtype(summary: Dict[str, object]) -> str:
  """subtype_summary in one line: bacterial vs viral, then three-class accuracy."""
  b, t = summary["bacterial_vs_viral"], summary["three_class"]
  return (f"bacterial vs viral ({b['count']} films): ROC-AUC "
          f"{format_interval(b['roc_auc'], b['roc_auc_ci95'], percent=False)}, accuracy "
          f"{format_interval(b['accuracy'], b['ci95']['accuracy'])}%, sensitivity "
          f"(bacterial) {format_interval(b['sensitivity'], b['ci95']['sensitivity'])}%, "
          f"specificity (viral) {format_interval(b['specificity'], b['ci95']['specificity'])}%; "
          f"three-class accuracy ({t['count']} films) "
          f"{format_interval(t['accuracy'], t['ci95']['accuracy'])}%")


def sigmoid(x: np.ndarray) -> np.ndarray:
  """Numerically stable logistic function."""
  x = np.asarray(x, np.float64)
  out = np.empty_like(x)
  pos = x >= 0
  out[pos] = 1 / (1 + np.exp(-x[pos]))
  e = np.exp(x[~pos])
  out[~pos] = e / (1 + e)
  return out


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
  """Softmax over the last axis of logits / temperature, in float64."""
  z = np.asarray(logits, np.float64) / temperature
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def fit_temperature(y: np.ndarray, logits: np.ndarray, low: float = 0.05,
                    high: float = 20.0) -> float:
  """The temperature T minimizing the log loss of p_pneumonia(softmax(logits / T)).

  `logits` [N, classes] in schema.TASK_CLASSES order; for two classes p_pneumonia is
  sigmoid((PNEUMONIA - NORMAL) / T), classic temperature scaling, and for three the
  binary decision's probability, p_bacterial + p_viral. Golden-section search on log T
  (unimodal for two classes; for three, the search's answer is checked against the
  ends of the range). T changes how confident the probabilities are, not (for two
  classes) their ranking.
  """
  y = np.asarray(y, np.float64)
  logits = np.asarray(logits, np.float64)

  def loss(log_t: float) -> float:
    return log_loss(y, p_pneumonia(softmax(logits, math.exp(log_t))), eps=1e-12)

  a, b = math.log(low), math.log(high)
  ratio = (math.sqrt(5) - 1) / 2
  c, d = b - ratio * (b - a), a + ratio * (b - a)
  for _ in range(80):
    if loss(c) < loss(d):
      b = d
    else:
      a = c
    c, d = b - ratio * (b - a), a + ratio * (b - a)
  best = min(((a + b) / 2, math.log(low), math.log(high)), key=loss)
  return float(math.exp(best))
