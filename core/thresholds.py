"""Decision thresholds: the rules that set them, in one place for training and the device.

cxr-train sets a run's threshold with `by_rule` on its validation predictions;
cxr-calibrate sets a site's with `on_scores` on the site's labelled films, or with
`at_prevalence` from the site's share of PNEUMONIA alone. numpy only (the device uses it).
"""
from typing import Optional, Tuple

import numpy as np

from cxr_edge.core import metrics

# How cxr-train sets the decision threshold (without --target_sensitivity):
#   prevalence: the most accurate threshold where PNEUMONIA has --prevalence (Bayes' rule
#               on the model's prior, `at_prevalence`); no film chooses it;
#   balanced:   0.5, the operating point of a model trained with balanced class weights
#               (the prevalence rule at prevalence 0.5);
#   youden:     maximum Youden J on the validation split (0.5 if among the best).
# The validation split is drawn from the training distribution and nearly saturated: its
# best-J interval is set by a handful of films and can sit far from 0.5 (docs/results.md).
RULES = ("prevalence", "balanced", "youden")
DEFAULT_RULE = "prevalence"

# The PNEUMONIA share the default threshold assumes: that of the release's separately
# acquired test films (the external films: 195 of 312; the final test half is drawn the
# same way), so chosen on the external films (README). A site with another share sets
# its own with cxr-calibrate --prevalence.
DEFAULT_PREVALENCE = 0.625


def at_prevalence(prevalence: float, output_prior: float = 0.5) -> float:
  """The most accurate threshold where PNEUMONIA has the given prevalence.

  A model's probability p is a posterior under the class prior it was trained to: 0.5
  with balanced class weights (output_prior), else its training share. Bayes' rule moves
  the odds by the ratio of the two priors' odds, so PNEUMONIA is the more likely class
  at the site when p / (1 - p) >= [(1 - prevalence) / prevalence] *
  [output_prior / (1 - output_prior)] = r, that is when p >= r / (1 + r); with
  output_prior 0.5 that is p >= 1 - prevalence. Needs no labelled film, only the
  prevalence, and assumes calibrated probabilities.

  Raises:
    ValueError: a prior not strictly between 0 and 1.
  """
  for name, value in (("prevalence", prevalence), ("output_prior", output_prior)):
    if not 0.0 < value < 1.0:
      raise ValueError(f"{name} must be strictly between 0 and 1, not {value}")
  if output_prior == 0.5:
    return 1.0 - prevalence  # exact in floating point, as written in the docs
  r = (1.0 - prevalence) / prevalence * output_prior / (1.0 - output_prior)
  return r / (1.0 + r)


def on_scores(y: np.ndarray, p: np.ndarray,
              target_sensitivity: Optional[float] = None,
              target_specificity: Optional[float] = None) -> float:
  """Chooses a decision threshold on labelled scores (validation, or a site's films).

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
    target_specificity: instead, the lowest interval whose specificity reaches it (the
      most sensitive operating point that keeps the specificity).

  Returns:
    A threshold t; predict PNEUMONIA when p >= t.

  Raises:
    ValueError: both targets given.
  """
  if target_sensitivity is not None and target_specificity is not None:
    raise ValueError("give at most one of target_sensitivity and target_specificity")
  fpr, tpr, thresholds = metrics.roc_curve(y, p)
  upper = thresholds[1:]  # drop +inf; descending distinct scores
  lower = np.r_[upper[1:], 0.0]  # the next lower score (below the lowest: 0)
  tpr, fpr = tpr[1:], fpr[1:]
  if target_specificity is not None:
    reaching = np.flatnonzero(1 - fpr >= target_specificity - 1e-12)
    if not len(reaching):  # the top score is a negative: only "all NORMAL" keeps it
      return float((upper[0] + 1.0) / 2)
    i = reaching[-1]  # thresholds descend: the last reaching one is the lowest
  elif target_sensitivity is None:
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


def by_rule(labels: np.ndarray, probs: np.ndarray, rule: str = DEFAULT_RULE,
            target_sensitivity: Optional[float] = None,
            prevalence: float = DEFAULT_PREVALENCE,
            output_prior: float = 0.5) -> Tuple[float, str]:
  """The decision threshold for validation predictions, and a description of its rule.

  Args:
    labels: validation labels.
    probs: validation PNEUMONIA probabilities.
    rule: one of RULES; ignored when target_sensitivity is given.
    target_sensitivity: the highest threshold whose validation sensitivity reaches this.
    prevalence: for the prevalence rule, the share of PNEUMONIA where the model is used.
    output_prior: the PNEUMONIA share the model's probabilities assume
      (pipeline/dataset.py trained_prior, model/model_dir.py run_prior).

  Raises:
    ValueError: unknown rule, or a share not strictly between 0 and 1.
  """
  if target_sensitivity is not None:
    return (on_scores(labels, probs, target_sensitivity),
            f"middle of the highest interval with validation sensitivity >= "
            f"{target_sensitivity}")
  if rule == "prevalence":
    return (at_prevalence(prevalence, output_prior),
            f"the most accurate threshold at PNEUMONIA prevalence {prevalence:g} (Bayes' rule "
            f"on the model's class prior {output_prior:.4g}; no film chose it)")
  if rule == "balanced":
    return 0.5, "0.5: the balanced operating point (balanced class weights in training)"
  if rule == "youden":
    return (on_scores(labels, probs),
            "max Youden J on validation (0.5 if among the best, else the middle of the best "
            "interval nearest 0.5)")
  raise ValueError(f"unknown threshold rule {rule!r}; choose from {RULES}")
