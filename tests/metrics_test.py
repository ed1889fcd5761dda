import numpy as np
import pytest

from model import metrics

Y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
P = np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.65, 0.3, 0.7, 0.95, 0.6])


def test_confusion_and_decision_metrics_by_hand():
  # At 0.5: predicted positive = {0.8, 0.9, 0.65, 0.7, 0.95, 0.6}; 0.8 is a negative.
  assert metrics.confusion(Y, P, 0.5) == {"tp": 5, "fp": 1, "tn": 3, "fn": 1}
  m = metrics.at_threshold(Y, P, 0.5)
  assert m["accuracy"] == pytest.approx(0.8)
  assert m["precision"] == pytest.approx(5 / 6)
  assert m["sensitivity"] == pytest.approx(5 / 6)
  assert m["specificity"] == pytest.approx(3 / 4)
  assert m["f1"] == pytest.approx(2 * 5 / (2 * 5 + 1 + 1))
  assert m["confusion_matrix"]["rows_true_cols_pred"] == [[3, 1], [1, 5]]


def test_roc_auc_by_hand():
  # Pairs (pos, neg) ranked correctly: count over 6 x 4 = 24 pairs.
  pos, neg = P[Y == 1], P[Y == 0]
  wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
  assert metrics.roc_auc(Y, P) == pytest.approx(wins / 24)
  # Per positive, negatives below it: 0.9:4 0.65:3 0.3:1 0.7:3 0.95:4 0.6:3.
  assert wins == 18
  assert metrics.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5)
  assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
  assert np.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))


def test_pr_auc_by_hand():
  # Ranked: 0.95+ 0.9+ 0.8- 0.7+ 0.65+ 0.6+ 0.4- 0.35- 0.3+ 0.1-
  # AP = mean over positives of precision at their rank.
  ap = (1 / 1 + 2 / 2 + 3 / 4 + 4 / 5 + 5 / 6 + 6 / 9) / 6
  assert metrics.pr_auc(Y, P) == pytest.approx(ap)


def test_log_loss_by_hand():
  assert metrics.log_loss([0, 1], [0.2, 0.6]) == pytest.approx(-(np.log(0.8) + np.log(0.6)) / 2)
  # A confident mistake is clipped, not infinite.
  assert metrics.log_loss([1], [0.0]) == pytest.approx(-np.log(1e-7))


def test_brier_and_ece_by_hand():
  assert metrics.brier([0, 1], [0.2, 0.6]) == pytest.approx((0.04 + 0.16) / 2)
  # Two bins used: [0.2] holds p=0.2,0.2 (y 0,1 -> mean 0.5); [0.9] holds 0.9 (y 1).
  ece = metrics.expected_calibration_error([0, 1, 1], [0.2, 0.2, 0.9])
  assert ece == pytest.approx(2 / 3 * abs(0.2 - 0.5) + 1 / 3 * abs(0.9 - 1.0))


def test_choose_threshold_youden_and_target_sensitivity():
  # Youden J (sens - (1-spec)) per interval of thresholds: (0.4, 0.6]: 5/6 - 1/4 = 0.583
  # (best); (0.1, 0.3]: 1 - 0.5 = 0.5; (0.8, 0.9]: 2/6 - 0 = 0.333. The best interval
  # holds 0.5, so 0.5 it is.
  assert metrics.choose_threshold(Y, P) == pytest.approx(0.5)
  # Sensitivity >= 0.95 needs the lowest positive (0.3) included: (0.1, 0.3] -> 0.2.
  assert metrics.choose_threshold(Y, P, target_sensitivity=0.95) == pytest.approx(0.2)
  # >= 0.5 is first reached at 0.7 (3 of 6: 0.95, 0.9, 0.7): (0.65, 0.7] -> 0.675.
  assert metrics.choose_threshold(Y, P, target_sensitivity=0.5) == pytest.approx(0.675)


def test_choose_threshold_midpoint_when_half_is_not_best():
  # Perfect separation only in (0.6, 0.8]: midpoint 0.7, not the boundary score 0.8.
  t = metrics.choose_threshold([0, 0, 1, 1], [0.1, 0.6, 0.8, 0.9])
  assert t == pytest.approx(0.7)
  assert metrics.at_threshold([0, 0, 1, 1], [0.1, 0.6, 0.8, 0.9], t)["accuracy"] == 1.0
  # Two intervals tie on J: (0.1, 0.2] (J = 1 - 1/2) and (0.85, 0.9] (J = 1/2 - 0); the
  # one nearer 0.5 wins, (0.1, 0.2] -> 0.15.
  assert metrics.choose_threshold([0, 1, 0, 1], [0.1, 0.2, 0.85, 0.9]) == pytest.approx(0.15)
  # A reversed scorer: J is best (0) with everything positive, (0, 0.1]: the bound below
  # the lowest score is 0.
  assert metrics.choose_threshold([0, 1, 1], [0.9, 0.2, 0.1]) == pytest.approx(0.05)


def test_summary_keys():
  s = metrics.summary(Y, P, 0.6)
  assert s["count"] == 10 and s["positives"] == 6
  assert s["at_threshold"]["threshold"] == 0.6 and s["at_0_5"]["threshold"] == 0.5
