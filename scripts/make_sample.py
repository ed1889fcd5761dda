#!/usr/bin/env python3
"""Rebuilds data/sample/: whole patients drawn, seeded, from the shared training images.

Usage:
  python3 -m scripts.make_sample --source=../shared/data/chest_xray/train --dest=data/sample

Whole patients are taken so the sample keeps the data set's structure (several films
per patient) and a patient-grouped split of it stays meaningful.
"""
import argparse
import os
import random
import shutil

from cxr_edge.core import schema

_TARGET = {"NORMAL": 130, "PNEUMONIA": 170}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--source", default="../shared/data/chest_xray/train")
  parser.add_argument("--dest", default="data/sample")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  rng = random.Random(args.seed)
  for label, target in _TARGET.items():
    names = sorted(os.listdir(os.path.join(args.source, label)))
    patients = {}
    for name in names:
      patients.setdefault(schema.parse_patient_id(name) or name, []).append(name)
    order = sorted(patients)
    rng.shuffle(order)
    chosen = []
    for pid in order:
      if len(chosen) >= target:
        break
      chosen.extend(patients[pid])
    out = os.path.join(args.dest, label)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    for name in sorted(chosen):
      shutil.copyfile(os.path.join(args.source, label, name), os.path.join(out, name))
    print(f"{label}: {len(chosen)} images from {len({schema.parse_patient_id(n) or n for n in chosen})} patients")


if __name__ == "__main__":
  main()
