r"""How many readers' verdicts the site figures need before a real drop shows.

Usage:
  .venv/bin/python -m studies.verdicts_needed

For the released int8 model's stated external sensitivity and specificity, and a site
where the true figure is 10 points lower: the smallest number of films with a verdict
(of pneumonia films for sensitivity, of films without for specificity) at which the 95%
Wilson interval of the site's figure lies wholly below the stated one ("worse than
stated" on the review page) with probability 50% and 80%, the count being binomial.
Divided by the share of films with pneumonia at a site, it gives verdicts on all films;
the last column is the chance of the same verdict where the site's figure equals the
stated one (a false alarm). n counts from which the chance stays above the target for
50 films more (with few films it jumps up and down: the count is discrete).
Exact binomial sums, no simulation: the same numbers on every run.
"""
import math

from cxr_edge.core import metrics
from cxr_edge.edge import released


def chance_flagged(n: int, true: float, stated: float) -> float:
  """P(the Wilson interval of k/n lies below `stated`), k ~ Binomial(n, true)."""
  total = 0.0
  for k in range(n + 1):
    if metrics.wilson_interval(k, n)[1] < stated:
      total += math.comb(n, k) * true ** k * (1 - true) ** (n - k)
  return total


def needed(true: float, stated: float, power: float, limit: int = 3000) -> int:
  """The smallest n from which the chance stays at least `power` (it is not monotonic
  in n: the count is discrete) for the next 50 films too."""
  for n in range(1, limit):
    if all(chance_flagged(m, true, stated) >= power for m in range(n, n + 50)):
      return n
  return limit


def main():
  figures = released.release()["external"]["figures"]["int8"]
  print("| figure | stated (external, int8) | true at the site | films needed, 50% | "
        "films needed, 80% | verdicts on all films at 30% pneumonia (80%) | false alarm "
        "at that n, true = stated |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  for name in ("sensitivity", "specificity"):
    stated = figures[name]
    true = stated - 0.10
    half, most = needed(true, stated, 0.5), needed(true, stated, 0.8)
    share = 0.30 if name == "sensitivity" else 0.70
    false_alarm = chance_flagged(most, stated, stated)
    print(f"| {name} | {100 * stated:.1f}% | {100 * true:.1f}% | {half} | {most} | "
          f"{math.ceil(most / share)} | {100 * false_alarm:.1f}% |")


if __name__ == "__main__":
  main()
