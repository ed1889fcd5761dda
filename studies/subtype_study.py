#!/usr/bin/env python3
"""Scores three-class (--task=subtype) runs on the external films, and applies the rule.

Usage:
  .venv/bin/python -m studies.subtype_study --data_dir=/tmp/rec \
      --external_dir=../shared/data/chest_xray/external --out=/tmp/study/subtype \
      --runs=/tmp/study/subtype_42,/tmp/study/subtype_1,/tmp/study/subtype_2 \
      --baseline_runs=/tmp/study/binary_42,/tmp/study/binary_1,/tmp/study/binary_2

Each run is exported (float32 and int8, as studies/external_study.py exports the binary
runs, whose figures the rule compares with) and its int8 model scored on the external
films through the edge runtime at the threshold it ships with. Prints Markdown tables,
per seed and as the mean with its range over seeds: the binary figures, bacterial vs
viral (BACTERIAL the positive class) among the PNEUMONIA films, three-class accuracy,
per-class sensitivity and the summed confusion matrix; then the adoption rule of
docs/subtype_study.md, applied, and the issue's targets. With --baseline_runs (the
binary default trained on the same conversion with the same seeds, in the same order),
a paired table of the binary figures: what the subtype supervision itself changes,
apart from the split and the seed. Writes the same as JSON to
--out/subtype_study.json. studies/subtype_study.sh trains the runs and calls this.
"""
import argparse
import json
import os
from typing import Any, Dict, List

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import numpy as np

from cxr_edge.core import metrics
from cxr_edge.core import schema
from studies import external_study

# docs/subtype_study.md, written before any three-class run: the binary default's
# six-seed int8 means on the external films (95.2%, 0.988) less 0.5 points and 0.003.
ADOPT_MIN_ACCURACY = 0.947
ADOPT_MIN_ROC_AUC = 0.985
# The targets (means of three seeds, int8, external films).
TARGETS = {"bacterial vs viral ROC-AUC": ("subtype_auc", 0.90, 0.94),
           "three-class accuracy": ("three_class_accuracy", 0.85, 0.88),
           "binary accuracy": ("accuracy", 0.945, None),
           "binary ROC-AUC": ("roc_auc", 0.985, None)}


def figures(e: Dict[str, Any]) -> Dict[str, Any]:
  """One int8 model's external figures, flat: binary, subtype and three-class."""
  s = e["subtype"]
  b, t = s["bacterial_vs_viral"], s["three_class"]
  return {"threshold": e["threshold"], "accuracy": e["accuracy"], "roc_auc": e["roc_auc"],
          "sensitivity": e["sensitivity"], "specificity": e["specificity"],
          "ci95": e["ci95"], "roc_auc_ci95": e["roc_auc_ci95"],
          "subtype_auc": b["roc_auc"], "subtype_auc_ci95": b["roc_auc_ci95"],
          "bacterial_sensitivity": b["sensitivity"], "viral_specificity": b["specificity"],
          "subtype_accuracy": b["accuracy"],
          "subtype_ci95": b["ci95"],
          "three_class_accuracy": t["accuracy"], "three_class_ci95": t["ci95"]["accuracy"],
          "confusion": t["confusion_matrix"]["rows_true_cols_pred"],
          "per_class_sensitivity": {k: v["sensitivity"] for k, v in t["per_class"].items()}}


def _pct(value: float, interval: List[float]) -> str:
  return metrics.format_interval(value, interval)


def _auc(value: float, interval: List[float]) -> str:
  return metrics.format_interval(value, interval, percent=False)


def run_rows(name: str, f: Dict[str, Any]) -> str:
  return (f"| {name} | {f['threshold']:.4f} | {_pct(f['accuracy'], f['ci95']['accuracy'])} | "
          f"{_auc(f['roc_auc'], f['roc_auc_ci95'])} | "
          f"{_auc(f['subtype_auc'], f['subtype_auc_ci95'])} | "
          f"{_pct(f['bacterial_sensitivity'], f['subtype_ci95']['sensitivity'])} | "
          f"{_pct(f['viral_specificity'], f['subtype_ci95']['specificity'])} | "
          f"{_pct(f['three_class_accuracy'], f['three_class_ci95'])} |")


MEAN_KEYS = ("accuracy", "roc_auc", "subtype_auc", "bacterial_sensitivity",
             "viral_specificity", "three_class_accuracy", "subtype_accuracy")


def mean_of(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
  return {k: {"mean": float(np.mean([r[k] for r in rows])),
              "min": float(min(r[k] for r in rows)), "max": float(max(r[k] for r in rows))}
          for k in MEAN_KEYS}


def mean_row(m: Dict[str, Any]) -> str:
  def cell(k: str) -> str:
    v = m[k]
    if k in ("roc_auc", "subtype_auc"):
      return f"**{v['mean']:.4f}** ({v['min']:.4f}-{v['max']:.4f})"
    return f"**{100 * v['mean']:.1f}** ({100 * v['min']:.1f}-{100 * v['max']:.1f})"
  return ("| **mean (range)** | | " + " | ".join(cell(k) for k in MEAN_KEYS[:3]) + " | "
          + " | ".join(cell(k) for k in MEAN_KEYS[3:6]) + " |")


def verdict(m: Dict[str, Any]) -> Dict[str, Any]:
  """docs/subtype_study.md's rule on the three-seed means."""
  accuracy, auc = m["accuracy"]["mean"], m["roc_auc"]["mean"]
  adopted = accuracy >= ADOPT_MIN_ACCURACY and auc >= ADOPT_MIN_ROC_AUC
  return {"adopted": adopted, "mean_accuracy": accuracy, "mean_roc_auc": auc,
          "needs": {"accuracy": ADOPT_MIN_ACCURACY, "roc_auc": ADOPT_MIN_ROC_AUC}}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--external_dir", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--runs", required=True, help="comma-separated cxr-train --task=subtype runs")
  parser.add_argument("--baseline_runs", default="",
                      help="comma-separated binary runs paired with --runs (same seeds, order)")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  rows, per_run = [], {}
  print("| run | threshold | accuracy % | ROC-AUC | bacterial vs viral ROC-AUC | "
        "sensitivity (bacterial) % | specificity (viral) % | three-class accuracy % |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- |")
  for run in args.runs.split(","):
    with open(os.path.join(run, "model_info.json"), encoding="utf-8") as f:
      info = json.load(f)
    if info.get("task") != schema.TASK_SUBTYPE:
      raise SystemExit(f"{run} is not a --task=subtype run")
    report = external_study.export_run(
        run, args.data_dir, args.external_dir,
        os.path.join(args.out, f"export_{external_study.run_name(run)}"))
    f = figures(report["external"]["variants"]["int8"])
    f["train_seconds"] = info.get("train_seconds_this_run")
    rows.append(f)
    per_run[external_study.run_name(run)] = f
    print(run_rows(external_study.run_name(run), f))
  m = mean_of(rows)
  print(mean_row(m))
  confusion = np.sum([r["confusion"] for r in rows], axis=0).tolist()
  print(f"\nthree-class confusion summed over the {len(rows)} runs (rows truth, columns "
        f"decision: {', '.join(schema.TASK_CLASSES[schema.TASK_SUBTYPE])}): {confusion}")
  a = m["subtype_accuracy"]
  print(f"bacterial vs viral accuracy: mean {100 * a['mean']:.1f}% "
        f"({100 * a['min']:.1f}-{100 * a['max']:.1f})")
  for name in schema.TASK_CLASSES[schema.TASK_SUBTYPE]:
    values = [r["per_class_sensitivity"][name] for r in rows]
    print(f"  {name}: sensitivity mean {100 * np.mean(values):.1f}% "
          f"({100 * min(values):.1f}-{100 * max(values):.1f})")
  seconds = [r["train_seconds"] for r in rows if r["train_seconds"]]
  if seconds:
    print(f"training: {np.mean(seconds) / 60:.1f} min per run on average "
          f"({min(seconds) / 60:.1f}-{max(seconds) / 60:.1f})")
  v = verdict(m)
  print(f"\nrule (docs/subtype_study.md): mean binary accuracy {100 * v['mean_accuracy']:.2f}% "
        f"(needs >= {100 * ADOPT_MIN_ACCURACY:.1f}), mean ROC-AUC {v['mean_roc_auc']:.4f} "
        f"(needs >= {ADOPT_MIN_ROC_AUC}): "
        + ("ADOPTED as the default" if v["adopted"] else "NOT adopted; the binary model "
           "stays the default"))
  for what, (key, target, aim) in TARGETS.items():
    value = m[key]["mean"]
    print(f"target {what}: {value:.4f} vs >= {target}"
          + (f" (aim {aim})" if aim else "") + (": met" if value >= target else ": NOT met")
          + ("; aim met" if aim and value >= aim else ""))
  paired = paired_baseline(args, rows) if args.baseline_runs else None
  with open(os.path.join(args.out, "subtype_study.json"), "w", encoding="utf-8") as f:
    json.dump({"runs": per_run, "mean": m, "confusion_summed": confusion, "rule": v,
               "paired_binary": paired}, f, indent=2)


def paired_baseline(args, rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """The binary default's int8 external figures beside the three-class runs', per seed."""
  runs = args.baseline_runs.split(",")
  if len(runs) != len(rows):
    raise SystemExit("--baseline_runs must pair one binary run with each of --runs")
  print("\n| seed | binary model: accuracy % | three-class: accuracy % | difference | "
        "binary model: ROC-AUC | three-class: ROC-AUC | difference |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  out = []
  for run, r in zip(runs, rows):
    report = external_study.export_run(
        run, args.data_dir, args.external_dir,
        os.path.join(args.out, f"export_{external_study.run_name(run)}"))
    b = report["external"]["variants"]["int8"]
    seed = external_study.run_name(run).rsplit("_", 1)[-1]
    out.append({"seed": seed, "binary_accuracy": b["accuracy"], "binary_roc_auc": b["roc_auc"],
                "binary_ci95": b["ci95"], "binary_roc_auc_ci95": b["roc_auc_ci95"],
                "subtype_accuracy": r["accuracy"], "subtype_roc_auc": r["roc_auc"]})
    print(f"| {seed} | {_pct(b['accuracy'], b['ci95']['accuracy'])} | "
          f"{_pct(r['accuracy'], r['ci95']['accuracy'])} | "
          f"{100 * (r['accuracy'] - b['accuracy']):+.1f} | "
          f"{_auc(b['roc_auc'], b['roc_auc_ci95'])} | {_auc(r['roc_auc'], r['roc_auc_ci95'])} | "
          f"{r['roc_auc'] - b['roc_auc']:+.4f} |")
  d_acc = [o["subtype_accuracy"] - o["binary_accuracy"] for o in out]
  d_auc = [o["subtype_roc_auc"] - o["binary_roc_auc"] for o in out]
  print(f"| **mean** | **{100 * np.mean([o['binary_accuracy'] for o in out]):.1f}** | "
        f"**{100 * np.mean([o['subtype_accuracy'] for o in out]):.1f}** | "
        f"**{100 * np.mean(d_acc):+.1f}** | "
        f"**{np.mean([o['binary_roc_auc'] for o in out]):.4f}** | "
        f"**{np.mean([o['subtype_roc_auc'] for o in out]):.4f}** | **{np.mean(d_auc):+.4f}** |")
  return out


if __name__ == "__main__":
  main()
