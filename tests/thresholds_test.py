"""core/thresholds.py: the threshold rules of training and of site calibration."""
import numpy as np
import pytest

from cxr_edge.core import metrics
from cxr_edge.core import thresholds

Y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
P = np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.65, 0.3, 0.7, 0.95, 0.6])


def test_on_scores_youden_and_target_sensitivity():
  # Youden J (sens - (1-spec)) per interval of thresholds: (0.4, 0.6]: 5/6 - 1/4 = 0.583
  # (best); (0.1, 0.3]: 1 - 0.5 = 0.5; (0.8, 0.9]: 2/6 - 0 = 0.333. The best interval
  # holds 0.5, so 0.5 it is.
  assert thresholds.on_scores(Y, P) == pytest.approx(0.5)
  # Sensitivity >= 0.95 needs the lowest positive (0.3) included: (0.1, 0.3] -> 0.2.
  assert thresholds.on_scores(Y, P, target_sensitivity=0.95) == pytest.approx(0.2)
  # >= 0.5 is first reached at 0.7 (3 of 6: 0.95, 0.9, 0.7): (0.65, 0.7] -> 0.675.
  assert thresholds.on_scores(Y, P, target_sensitivity=0.5) == pytest.approx(0.675)


def test_on_scores_midpoint_when_half_is_not_best():
  # Perfect separation only in (0.6, 0.8]: midpoint 0.7, not the boundary score 0.8.
  t = thresholds.on_scores([0, 0, 1, 1], [0.1, 0.6, 0.8, 0.9])
  assert t == pytest.approx(0.7)
  assert metrics.at_threshold([0, 0, 1, 1], [0.1, 0.6, 0.8, 0.9], t)["accuracy"] == 1.0
  # Two intervals tie on J: (0.1, 0.2] (J = 1 - 1/2) and (0.85, 0.9] (J = 1/2 - 0); the
  # one nearer 0.5 wins, (0.1, 0.2] -> 0.15.
  assert thresholds.on_scores([0, 1, 0, 1], [0.1, 0.2, 0.85, 0.9]) == pytest.approx(0.15)
  # A reversed scorer: J is best (0) with everything positive, (0, 0.1]: the bound below
  # the lowest score is 0.
  assert thresholds.on_scores([0, 1, 1], [0.9, 0.2, 0.1]) == pytest.approx(0.05)


def test_at_prevalence_is_the_bayes_decision_at_the_site_prior():
  assert thresholds.at_prevalence(0.5) == 0.5  # equal priors: no shift
  assert thresholds.at_prevalence(0.625) == 0.375
  # A model trained to the site's own prior needs no shift either.
  assert thresholds.at_prevalence(0.74, output_prior=0.74) == pytest.approx(0.5)
  for prior in (0.5, 0.3, 0.74):
    for prevalence in (0.2, 0.625, 0.9):
      t = thresholds.at_prevalence(prevalence, prior)
      for p in np.linspace(0.01, 0.99, 99):
        # p's odds over the prior's odds, times the site's odds: the site posterior odds.
        site_odds = p / (1 - p) / (prior / (1 - prior)) * prevalence / (1 - prevalence)
        if abs(site_odds - 1) > 1e-9:  # away from the tie itself
          assert (p >= t) == (site_odds >= 1), (prior, prevalence, p)
  for bad in ({"prevalence": 1.0}, {"prevalence": 0.0}, {"prevalence": 0.5, "output_prior": 1.0}):
    with pytest.raises(ValueError, match="between 0 and 1"):
      thresholds.at_prevalence(**bad)


def test_on_scores_target_specificity():
  # Negatives 0.1, 0.35, 0.4, 0.8. Specificity >= 0.75 allows one false positive (0.8):
  # the lowest such interval is (0.4, 0.6] -> 0.5. Specificity 1 needs t above 0.8:
  # (0.8, 0.9] -> 0.85.
  assert thresholds.on_scores(Y, P, target_specificity=0.75) == pytest.approx(0.5)
  assert thresholds.on_scores(Y, P, target_specificity=1.0) == pytest.approx(0.85)
  # The top score is a negative: only the interval above every score keeps spec 1.
  assert thresholds.on_scores([1, 0], [0.2, 0.6], target_specificity=1.0) == pytest.approx(0.8)
  with pytest.raises(ValueError, match="at most one"):
    thresholds.on_scores(Y, P, target_sensitivity=0.9, target_specificity=0.9)


def test_by_rule():
  y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
  p = np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.65, 0.3, 0.7, 0.95, 0.6])
  t, rule = thresholds.by_rule(y, p, "balanced")
  assert t == 0.5 and "balanced" in rule
  # Youden J: the rule of core/thresholds.py (here its best interval is (0.4, 0.6] -> 0.5);
  # with scores where the best interval is elsewhere, it moves off 0.5.
  assert thresholds.by_rule(y, p, "youden")[0] == thresholds.on_scores(y, p)
  skewed = np.array([0.01, 0.02, 0.03, 0.04, 0.2, 0.3, 0.4, 0.45, 0.9, 0.95])
  assert thresholds.by_rule(y, skewed, "youden")[0] == pytest.approx(0.12)
  assert thresholds.by_rule(y, skewed, "balanced")[0] == 0.5
  # A target sensitivity overrides either rule.
  t, rule = thresholds.by_rule(y, p, "balanced", target_sensitivity=0.95)
  assert t == pytest.approx(0.2) and "sensitivity >= 0.95" in rule
  # The prevalence rule: Bayes' rule on the model's prior, whatever the scores.
  t, rule = thresholds.by_rule(y, skewed, "prevalence", prevalence=0.625)
  assert t == 0.375 and "prevalence 0.625" in rule and "no film" in rule
  assert thresholds.by_rule(y, p, "prevalence", prevalence=0.5)[0] == 0.5
  t, _ = thresholds.by_rule(y, p, "prevalence", prevalence=0.625, output_prior=0.74)
  assert t == pytest.approx(thresholds.at_prevalence(0.625, 0.74)) and t > 0.5
  with pytest.raises(ValueError, match="unknown threshold rule"):
    thresholds.by_rule(y, p, "median")
