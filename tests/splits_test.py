import random

import pytest

from cxr_edge.pipeline import splits


def _items(n_patients=300, seed=0):
  rng = random.Random(seed)
  items = []
  for p in range(n_patients):
    label = 1 if p % 4 else 0  # 3:1 like the real data
    for k in range(rng.randint(1, 4)):
      items.append(splits.SplitItem(f"{label}/p{p}_{k}.jpeg", label, f"p{p}", f"sha{p}_{k}"))
  return items


def test_parse_ratios():
  assert splits.parse_ratios("0.8,0.1,0.1") == (0.8, 0.1, 0.1)
  for bad in ("0.8,0.2", "0.5,0.5,0.5", "a,b,c", "0,0.5,0.5", "-0.1,0.6,0.5"):
    with pytest.raises(ValueError):
      splits.parse_ratios(bad)


def test_patients_never_cross_splits_and_classes_are_stratified():
  items = _items()
  assignment = splits.assign_splits(items, (0.8, 0.1, 0.1), seed=1)
  split_of_patient = {}
  for item, s in zip(items, assignment):
    assert split_of_patient.setdefault(item.patient_id, s) == s
  for label in (0, 1):
    idx = [i for i, it in enumerate(items) if it.label == label]
    for s, ratio in enumerate((0.8, 0.1, 0.1)):
      share = sum(1 for i in idx if assignment[i] == s) / len(idx)
      assert abs(share - ratio) <= 0.015, (label, s, share)


def test_identical_bytes_stay_together_even_across_patients():
  items = _items(100)
  dup = items[0]
  # The same bytes under another patient's name must land with the original.
  items.append(splits.SplitItem("x/copy.jpeg", dup.label, "someone_else", dup.sha256))
  # A chain: copy2 shares a patient with `copy`... via its sha with item 5.
  items.append(splits.SplitItem("x/copy2.jpeg", 1, "someone_else", items[5].sha256))
  assignment = splits.assign_splits(items, (0.6, 0.2, 0.2), seed=3)
  assert assignment[-2] == assignment[0]
  assert assignment[-1] == assignment[-2] == assignment[5]


def test_deterministic_and_order_independent():
  items = _items()
  a = splits.assign_splits(items, (0.8, 0.1, 0.1), seed=7)
  shuffled = items[:]
  random.Random(0).shuffle(shuffled)
  b = splits.assign_splits(shuffled, (0.8, 0.1, 0.1), seed=7)
  assert dict(zip((i.key for i in items), a)) == dict(zip((i.key for i in shuffled), b))
  c = splits.assign_splits(items, (0.8, 0.1, 0.1), seed=8)
  assert a != c  # the seed matters


def test_zero_ratio_split_gets_nothing():
  assignment = splits.assign_splits(_items(), (0.9, 0.1, 0.0), seed=0)
  assert 2 not in assignment and 1 in assignment
