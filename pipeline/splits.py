"""Patient-grouped, class-stratified, seeded train/val/test splits.

Random image-level splits leak patients (the same child's films in train and test) and
inflate accuracy. Here images are first joined into groups that must stay together:
same patient id, or byte-identical files (a copied image under another name). Each
group is then assigned whole to one split, class by class, so every split keeps each
class's share close to the requested ratio.
"""
import dataclasses
import random
from typing import Dict, List, Sequence, Tuple



@dataclasses.dataclass(frozen=True)
class SplitItem:
  """One accepted image, as the splitter sees it."""
  key: str  # unique, e.g. the path relative to the input folder
  label: int  # the class to stratify by (schema.subtype_target: subtypes apart)
  patient_id: str
  sha256: str


def parse_ratios(text: str) -> Tuple[float, float, float]:
  """Parses "train,val,test" ratios such as "0.8,0.1,0.1".

  Raises:
    ValueError: not three non-negative numbers summing to 1, or a zero train ratio.
  """
  try:
    ratios = tuple(float(x) for x in text.split(","))
  except ValueError:
    raise ValueError(f"split ratios must be numbers, got {text!r}") from None
  if len(ratios) != 3:
    raise ValueError(f"need three split ratios (train,val,test), got {text!r}")
  if any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
    raise ValueError(f"split ratios must be >= 0 and sum to 1, got {text!r}")
  if ratios[0] == 0:
    raise ValueError("the train ratio must be > 0")
  return ratios  # type: ignore[return-value]


def group_items(items: Sequence[SplitItem]) -> List[List[int]]:
  """Joins items that share a patient id or identical bytes (union-find).

  Returns:
    Groups of item indices, each sorted, the list ordered by each group's smallest key
    so that the result does not depend on the input order.
  """
  parent = list(range(len(items)))

  def find(i: int) -> int:
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  first_seen: Dict[Tuple[str, str], int] = {}
  for i, item in enumerate(items):
    for attr in (("patient", item.patient_id), ("sha", item.sha256)):
      j = first_seen.setdefault(attr, i)
      ri, rj = find(i), find(j)
      if ri != rj:
        parent[max(ri, rj)] = min(ri, rj)
  groups: Dict[int, List[int]] = {}
  for i in range(len(items)):
    groups.setdefault(find(i), []).append(i)
  return sorted((sorted(g, key=lambda i: items[i].key) for g in groups.values()),
                key=lambda g: items[g[0]].key)


def assign_splits(items: Sequence[SplitItem], ratios: Sequence[float], seed: int) -> List[int]:
  """Assigns every item to a split index (0 train, 1 val, 2 test).

  Groups (see group_items) are stratified by their majority label, shuffled with
  `seed`, and each is given to the split furthest below its target image count for
  that class. Splits with ratio 0 get nothing.

  Args:
    items: the accepted images.
    ratios: (train, val, test), summing to 1.
    seed: shuffling seed; the same items and seed always give the same answer,
      whatever order the items come in.

  Returns:
    The split index of each item, in the order of `items`.
  """
  groups = group_items(items)
  strata: Dict[int, List[List[int]]] = {}
  for g in groups:
    counts: Dict[int, int] = {}
    for i in g:
      counts[items[i].label] = counts.get(items[i].label, 0) + 1
    majority = max(counts, key=lambda c: (counts[c], -c))
    strata.setdefault(majority, []).append(g)

  rng = random.Random(seed)
  assignment = [-1] * len(items)
  active = [s for s, r in enumerate(ratios) if r > 0]
  for label in sorted(strata):
    stratum = strata[label]
    rng.shuffle(stratum)
    total = sum(len(g) for g in stratum)
    filled = [0] * len(ratios)
    for g in stratum:
      # Largest remaining deficit; ties go to the earlier split.
      split = max(active, key=lambda s: (ratios[s] * total - filled[s], -s))
      filled[split] += len(g)
      for i in g:
        assignment[i] = split
  return assignment
