import numpy as np
import pytest

from cxr_edge.core import metrics

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


def test_summary_keys():
  s = metrics.summary(Y, P, 0.6)
  assert s["count"] == 10 and s["positives"] == 6
  assert s["at_threshold"]["threshold"] == 0.6 and s["at_0_5"]["threshold"] == 0.5


def test_wilson_interval_by_hand():
  # 8 of 10, z = 1.96: centre (0.8 + 1.9208/10) / 1.38416 = 0.71671; half-width
  # 1.96 * sqrt(0.016 + 0.00960) / 1.38416 = 0.22658 (textbook: 0.4902-0.9433).
  low, high = metrics.wilson_interval(8, 10)
  assert low == pytest.approx(0.4902, abs=1e-4)
  assert high == pytest.approx(0.9433, abs=1e-4)
  # All successes: the upper bound is 1, the lower one n / (n + z^2).
  low, high = metrics.wilson_interval(20, 20)
  assert high == 1.0
  assert low == pytest.approx(20 / (20 + metrics.Z_95 ** 2))
  assert all(np.isnan(metrics.wilson_interval(0, 0)))


def test_at_threshold_carries_wilson_intervals():
  m = metrics.at_threshold(Y, P, 0.5)  # tp 5, fn 1, tn 3, fp 1
  assert m["ci95"]["sensitivity"] == pytest.approx(list(metrics.wilson_interval(5, 6)))
  assert m["ci95"]["specificity"] == pytest.approx(list(metrics.wilson_interval(3, 4)))
  assert m["ci95"]["accuracy"] == pytest.approx(list(metrics.wilson_interval(8, 10)))


def test_bootstrap_auc_interval_resamples_patients():
  y = np.array([0, 0, 1, 1] * 10)
  rng = np.random.default_rng(1)
  p = np.clip(y * 0.3 + rng.uniform(0, 0.7, len(y)), 0, 1)
  low, high = metrics.bootstrap_auc_interval(y, p, resamples=500)
  assert low < metrics.roc_auc(y, p) < high
  assert (low, high) == metrics.bootstrap_auc_interval(y, p, resamples=500)  # seeded
  # A perfect scorer's AUC is 1 in every resample.
  assert metrics.bootstrap_auc_interval(y, y.astype(float), resamples=50) == (1.0, 1.0)
  # One patient holding every film: each resample is the whole set, so no spread.
  one = metrics.bootstrap_auc_interval(y, p, groups=["a"] * len(y), resamples=50)
  assert one[0] == pytest.approx(one[1]) == pytest.approx(metrics.roc_auc(y, p))
  # One class only: no interval.
  assert all(np.isnan(metrics.bootstrap_auc_interval([1, 1], [0.2, 0.3])))


def test_summary_has_intervals():
  s = metrics.summary(Y, P, 0.6, patients=list("aabbccddee"))
  assert len(s["roc_auc_ci95"]) == 2
  assert s["roc_auc_ci95"][0] <= s["roc_auc"] <= s["roc_auc_ci95"][1]
  assert set(s["at_threshold"]["ci95"]) == {"accuracy", "sensitivity", "specificity"}


def test_fit_temperature_recovers_a_known_scale():
  # Labels drawn from sigmoid(z); logits (0, 4 z): the best temperature is ~4.
  rng = np.random.default_rng(0)
  z = rng.normal(0, 2, 20000)
  y = rng.uniform(size=z.shape) < metrics.sigmoid(z)
  two = lambda margin: np.stack([np.zeros_like(margin), margin], 1)
  assert metrics.fit_temperature(y, two(4 * z)) == pytest.approx(4.0, rel=0.05)
  assert metrics.fit_temperature(y, two(z)) == pytest.approx(1.0, rel=0.05)
  # Three classes: PNEUMONIA's logit split into two equal ones (log 2 below it each) is
  # the same p_pneumonia, so the same temperature.
  three = lambda margin: np.stack([np.zeros_like(margin), margin - np.log(2),
                                   margin - np.log(2)], 1)
  assert metrics.fit_temperature(y, three(z)) == pytest.approx(1.0, rel=0.05)


def test_sigmoid_is_stable():
  assert metrics.sigmoid(np.array([-1000.0, 0.0, 1000.0])) == pytest.approx([0.0, 0.5, 1.0])


def test_wilson_bounds_contain_the_estimate_at_the_extremes():
  for n in (1, 7, 117, 195, 312):
    assert metrics.wilson_interval(n, n)[1] == 1.0
    assert metrics.wilson_interval(0, n)[0] == 0.0
    for k in range(0, n + 1, max(1, n // 7)):
      low, high = metrics.wilson_interval(k, n)
      assert low <= k / n <= high


def test_operating_point_is_the_summary_flattened():
  o = metrics.operating_point(Y, P, 0.5, patients=list("aabbccddee"))
  s = metrics.summary(Y, P, 0.5, patients=list("aabbccddee"))
  assert o["accuracy"] == pytest.approx(0.8) and o["specificity"] == pytest.approx(0.75)
  assert o["ci95"] == s["at_threshold"]["ci95"] and o["roc_auc_ci95"] == s["roc_auc_ci95"]
  assert o["confusion_matrix"] == [[3, 1], [1, 5]] and o["ece"] == s["ece"]


def test_pr_curve_and_reliability_by_hand():
  y = np.array([1, 0, 1, 0])
  p = np.array([0.9, 0.8, 0.3, 0.1])
  recall, precision = metrics.pr_curve(y, p)
  np.testing.assert_allclose(recall, [0, 0.5, 0.5, 1.0, 1.0])
  np.testing.assert_allclose(precision, [1.0, 1.0, 0.5, 2 / 3, 0.5])
  assert metrics.pr_auc(y, p) == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
  mean_p, rate, count = metrics.reliability(y, p, bins=2)  # [0, .5) and [.5, 1]
  np.testing.assert_allclose(mean_p, [0.2, 0.85])
  np.testing.assert_allclose(rate, [0.5, 0.5])
  np.testing.assert_array_equal(count, [2, 2])
  assert metrics.expected_calibration_error(y, p, bins=2) == pytest.approx(
      0.5 * 0.3 + 0.5 * 0.35)


def test_subtype_summary_by_hand():
  # NORMAL, BACTERIAL x2, VIRAL x2, and a PNEUMONIA film of unknown subtype.
  labels = [0, 1, 1, 1, 1, 1]
  subtypes = ["", "BACTERIAL", "BACTERIAL", "VIRAL", "VIRAL", ""]
  probs = np.array([[0.8, 0.1, 0.1],   # NORMAL, called NORMAL
                    [0.1, 0.6, 0.3],   # BACTERIAL, called BACTERIAL
                    [0.7, 0.2, 0.1],   # BACTERIAL, called NORMAL (p_pneumonia 0.3)
                    [0.1, 0.5, 0.4],   # VIRAL, called BACTERIAL
                    [0.2, 0.1, 0.7],   # VIRAL, called VIRAL
                    [0.0, 0.5, 0.5]])  # unknown: in no subtype figure
  s = metrics.subtype_summary(labels, subtypes, probs, threshold=0.5)
  b, t = s["bacterial_vs_viral"], s["three_class"]
  assert (b["count"], b["bacterial"], b["viral"]) == (4, 2, 2)
  # p_bacterial / (p_b + p_v): 0.667, 0.667 (bacterial); 0.556, 0.125 (viral): every
  # bacterial film above every viral one.
  assert b["roc_auc"] == 1.0
  assert (b["sensitivity"], b["specificity"], b["accuracy"]) == (1.0, 0.5, 0.75)
  assert t["count"] == 5 and t["accuracy"] == pytest.approx(3 / 5)
  assert t["confusion_matrix"]["rows_true_cols_pred"] == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
  assert t["per_class"]["BACTERIAL"]["sensitivity"] == 0.5
  assert t["per_class"]["BACTERIAL"]["precision"] == 0.5
  assert t["ci95"]["accuracy"][0] < 0.6 < t["ci95"]["accuracy"][1]
  np.testing.assert_allclose(metrics.p_pneumonia(probs), [0.2, 0.9, 0.3, 0.9, 0.8, 1.0])
  # A tie between the subtypes goes to BACTERIAL, as the edge runtime's argmax does.
  assert metrics.subtype_decisions(np.array([[0.0, 0.5, 0.5]]), 0.5).tolist() == [1]
  assert "bacterial vs viral (4 films): ROC-AUC 1.0000" in metrics.format_subtype(s)
