#!/usr/bin/env python3
"""Scores groups of training runs (recipes x seeds) on an external folder, as devices would.

Usage:
  .venv/bin/python -m studies.external_study --data_dir=/tmp/rec \
      --external_dir=../shared/data/chest_xray/external --out=/tmp/study/external \
      --exports=/tmp/study/exports \
      --group=rotation+zoom=/tmp/study/rz_42,/tmp/study/rz_1,/tmp/study/rz_2 \
      --article=/tmp/study/article_0/article_baseline.json

For every cxr-train directory it runs cxr-export's library for the float32 and int8
TFLite models (no QAT) and reads the export report's external section. Exports are kept
under --exports (default --out), in a folder per threshold rule and run name, and reused
when present, so invocations that share --exports export each run once. Each model is
scored at the threshold it ships with (cxr-train's --threshold_rule, re-applied to runs
trained under another), through the edge runtime (edge/runtime.py, what
cxr-predict runs). Prints Markdown tables: one row per run and each group's mean (the
targets are means over seeds) for int8 and float32 on the external films and for
int8 on the internal test split, the article recipe's external results, and a
split-half evaluation of site calibration (cxr-calibrate's rule chosen on one half of
the external films by patient, scored on the other half). Writes the same as JSON to
--out/external_study.json.
"""
import argparse
import csv
import json
import os
from typing import Any, Dict, List, Tuple

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import numpy as np

from cxr_edge.core import metrics
from cxr_edge.core import schema
from cxr_edge.edge import calibrate_lib
from cxr_edge.edge import runtime
from cxr_edge.export import export_lib
from cxr_edge.export import variants as variant_names
from cxr_edge.model import model_dir as model_dir_lib
from cxr_edge.pipeline import splits
from studies import groups
from cxr_edge.core import folders
from cxr_edge.core import thresholds
from cxr_edge.model import inference

KEYS = ("accuracy", "sensitivity", "specificity")
SPLIT_SEEDS = (0, 1, 2, 3, 4)


def apply_threshold_rule(model_dir: str, data_dir: str, rule: str) -> None:
  """Re-applies the current threshold step of cxr-train to a run trained before it.

  As studies/compare_runs.py does: runs trained under an older rule are compared on
  equal terms. Only the threshold fields of the run's model_info.json change.
  """
  path = os.path.join(model_dir, model_dir_lib.INFO_FILE)
  with open(path, encoding="utf-8") as f:
    info = json.load(f)
  prevalence = thresholds.DEFAULT_PREVALENCE
  if info.get("target_sensitivity") is not None or (
      info.get("threshold_rule_name") == rule
      and (rule != "prevalence" or info.get("prevalence") == prevalence)):
    return
  model, _ = model_dir_lib.load_model_dir(model_dir)
  val = inference.predict_split(model, data_dir, "val", info["image_size"])
  prior = model_dir_lib.run_prior(info, data_dir)
  info["threshold"], info["threshold_rule"] = thresholds.by_rule(
      val["label"], val["probability"], rule, prevalence=prevalence, output_prior=prior)
  info.update(threshold_rule_name=rule, prevalence=prevalence, output_prior=prior)
  info["val_metrics"] = metrics.summary(val["label"], val["probability"], info["threshold"],
                                        val["patient_id"])
  with open(path, "w", encoding="utf-8") as f:
    json.dump(info, f, indent=2)


def export_run(model_dir: str, data_dir: str, external_dir: str, out: str) -> Dict[str, Any]:
  """float32 + int8 export of one run (reused if already there); its report."""
  path = os.path.join(out, variant_names.REPORT_NAME)
  if not os.path.isfile(path):
    export_lib.export(model_dir, data_dir, out, latency_runs=20,
                      variants=("float32", "int8"), overwrite=True, external_dir=external_dir)
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def run_name(model_dir: str) -> str:
  """A run's name: its folder's, which names its exports' folder too."""
  return os.path.basename(model_dir.rstrip("/"))


def export_dir(exports: str, rule: str, model_dir: str) -> str:
  """Where a run's export at a threshold rule lives in an exports cache."""
  return os.path.join(exports, rule, f"export_{run_name(model_dir)}")


def _cell(e: Dict[str, Any], key: str) -> str:
  if key == "roc_auc":
    return metrics.format_interval(e["roc_auc"], e["roc_auc_ci95"], percent=False)
  return metrics.format_interval(e[key], e["ci95"][key])


def run_row(name: str, e: Dict[str, Any]) -> str:
  return (f"| {name} | {e['threshold']:.4f} | " + " | ".join(_cell(e, k) for k in KEYS)
          + f" | {_cell(e, 'roc_auc')} | {e['ece']:.4f} |")


def mean_row(name: str, rows: List[Dict[str, Any]]) -> str:
  m = {k: float(np.mean([r[k] for r in rows])) for k in KEYS + ("roc_auc", "ece")}
  spread = {k: (min(r[k] for r in rows), max(r[k] for r in rows)) for k in KEYS + ("roc_auc",)}
  cells = [f"**{100 * m[k]:.1f}** ({100 * spread[k][0]:.1f}-{100 * spread[k][1]:.1f})"
           for k in KEYS]
  return (f"| **{name}** | | " + " | ".join(cells)
          + f" | **{m['roc_auc']:.4f}** ({spread['roc_auc'][0]:.4f}-{spread['roc_auc'][1]:.4f})"
          + f" | {m['ece']:.4f} |")


def article_run(path: str) -> Tuple[int, Dict[str, Any]]:
  """(seed, external figures at 0.5) of a studies/article_baseline.py run.

  From the predictions.csv beside its JSON, so that its rows carry the same intervals as
  ours (patients from the file names, by cxr-convert's rule) and its ECE.

  Raises:
    ValueError: the predictions do not reproduce the JSON's external accuracy (a
      predictions file from another run).
  """
  with open(path, encoding="utf-8") as f:
    result = json.load(f)
  y, p, patients = [], [], []
  with open(os.path.join(os.path.dirname(path), "predictions.csv"), encoding="utf-8") as f:
    for row in csv.DictReader(f):
      if row["set"] == "external":
        y.append(schema.LABEL_TO_INDEX[row["label"]])
        p.append(float(row["probability"]))
        patients.append(folders.patient_id(row["file"])[0])
  e = metrics.operating_point(np.array(y), np.array(p), 0.5, patients)
  if abs(e["accuracy"] - result["external"]["accuracy"]) > 1e-9:
    raise ValueError(f"{path}: its predictions.csv gives external accuracy {e['accuracy']:.4f}, "
                     f"its JSON {result['external']['accuracy']:.4f}")
  return int(result["seed"]), e


def halves(films: calibrate_lib.LocalFilms, seed: int) -> List[np.ndarray]:
  """Two patient-disjoint, class-stratified halves of the films (indices)."""
  items = [splits.SplitItem(key=r, label=int(y), patient_id=p.lower(), sha256=r)
           for r, y, p in zip(films.relpaths, films.labels, films.patients)]
  assignment = np.array(splits.assign_splits(items, (0.5, 0.5, 0.0), seed))
  return [np.flatnonzero(assignment == 0), np.flatnonzero(assignment == 1)]


def split_half(model: runtime.LiteModel, films: calibrate_lib.LocalFilms,
               rules: Dict[str, Dict[str, float]]) -> Dict[str, List[Dict[str, float]]]:
  """Each rule chosen (threshold and temperature) on one half, scored on the other."""
  out: Dict[str, List[Dict[str, float]]] = {name: [] for name in rules}
  for seed in SPLIT_SEEDS:
    a, b = halves(films, seed)
    for fit, score in ((a, b), (b, a)):
      fit_films = calibrate_lib.LocalFilms([films.relpaths[i] for i in fit], films.labels[fit],
                                           [films.patients[i] for i in fit], films.logits[fit])
      for name, targets in rules.items():
        chosen = calibrate_lib.choose(model, fit_films, fit_temperature=True, **targets)
        y = films.labels[score]
        p = calibrate_lib.probabilities(model, films.logits[score], chosen["temperature"])
        d = metrics.at_threshold(y, p, chosen["threshold"])
        out[name].append({**{k: d[k] for k in KEYS},
                          "ece": metrics.expected_calibration_error(y, p),
                          "threshold": chosen["threshold"]})
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", required=True, help="the cxr-convert output trained on")
  parser.add_argument("--external_dir", required=True)
  parser.add_argument("--out", required=True, help="external_study.json goes here")
  parser.add_argument("--exports", default=None,
                      help="the exports' cache, shared by invocations (default: --out); "
                           "run names must be unique within it")
  parser.add_argument("--group", action="append", default=[],
                      help="NAME=DIR[,DIR...]: cxr-train directories of one recipe")
  parser.add_argument("--article", default="",
                      help="comma-separated article_baseline.json files run with --external_dir")
  parser.add_argument("--threshold_rule", choices=thresholds.RULES,
                      default=thresholds.DEFAULT_RULE,
                      help="cxr-train's threshold rule, re-applied to runs trained under "
                           "another; each rule's exports go to their own folder")
  parser.add_argument("--equalize", action="store_true",
                      help="the runs were trained with studies/equalize.py's preprocessing")
  parser.add_argument("--calibrate_group", default=None,
                      help="the group whose int8 models get the split-half site calibration "
                           "(default: the first; 'none': no split-half)")
  args = parser.parse_args()
  if args.equalize:
    from studies import equalize  # pylint: disable=g-import-not-at-top
    equalize.register()
  result: Dict[str, Any] = {"external_dir": args.external_dir, "groups": {}}
  head = ("| run | threshold | accuracy % | sensitivity % | specificity % | ROC-AUC | ECE |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
  print(f"External films: {args.external_dir}; every model at the threshold it ships with "
        f"(cxr-train's rule {args.threshold_rule!r}); 95% intervals (Wilson; ROC-AUC bootstrap over patients); "
        "means with the range over seeds")
  int8_paths: Dict[str, List[str]] = {}
  study = groups.parse(parser, args.group)
  exported: Dict[str, Tuple[str, Dict[str, Any]]] = {}  # run name -> (export dir, report)
  names: Dict[str, str] = {}  # run name -> run dir, checked before any export
  for d in (d for _, dirs in study for d in dirs):
    run = run_name(d)
    if os.path.realpath(names.setdefault(run, d)) != os.path.realpath(d):
      parser.error(f"{names[run]} and {d} share the name {run!r}, their exports' folder")
  for run, d in names.items():
    out = export_dir(args.exports or args.out, args.threshold_rule, d)
    apply_threshold_rule(d, args.data_dir, args.threshold_rule)
    exported[run] = (out, export_run(d, args.data_dir, args.external_dir, out))
  for variant, section in (("int8", "external"), ("float32", "external"), ("int8", "test")):
    where = ("the internal test split (same source as training)" if section == "test"
             else "the external films")
    print(f"\n{variant} TFLite, through the edge runtime, on {where}\n{head}")
    for name, dirs in study:
      rows = []
      for d in dirs:
        run = run_name(d)
        out, report = exported[run]
        e = (report["external"] if section == "external" else report)["variants"][variant]
        rows.append(e)
        result["groups"].setdefault(name, {}).setdefault(f"{section}_{variant}", {})[run] = e
        if variant == "int8" and section == "external":
          int8_paths.setdefault(name, []).append(os.path.join(out, "model_int8.tflite"))
        print(run_row(f"{name}: {run}", e), flush=True)
      print(mean_row(f"{name}: mean of {len(rows)}", rows))
  if args.article:
    print("\nthe article's recipe (studies/article_baseline.py), at 0.5 as the article does\n"
          + head)
    rows = []
    for path in args.article.split(","):
      seed, e = article_run(path)
      rows.append(e)
      print(run_row(f"article recipe: seed {seed}", e), flush=True)
    print(mean_row(f"article recipe: mean of {len(rows)}", rows))
    result["article"] = rows
  group = args.calibrate_group or (study[0][0] if study else None)
  if group in int8_paths:
    rules = {"Youden J": {}, "sensitivity >= 0.98": {"target_sensitivity": 0.98},
             "specificity >= 0.90": {"target_specificity": 0.90}}
    print(f"\nsite calibration, split-half ({group}, int8): threshold and temperature chosen "
          f"on one half of the external films (by patient, stratified), scored on the other; "
          f"{len(SPLIT_SEEDS)} splits x 2 directions x {len(int8_paths[group])} runs")
    print("| rule | accuracy % | sensitivity % | specificity % | ECE |\n| --- | --- | --- | --- | --- |")
    pooled: Dict[str, List[Dict[str, float]]] = {name: [] for name in rules}
    for path in int8_paths[group]:
      model = runtime.LiteModel(path)
      films = calibrate_lib.score_films(model, args.external_dir)
      for name, rows in split_half(model, films, rules).items():
        pooled[name] += rows
    for name, rows in pooled.items():
      print(f"| {name} | " + " | ".join(
          f"{100 * np.mean([r[k] for r in rows]):.1f} (sd {100 * np.std([r[k] for r in rows]):.1f})"
          for k in KEYS) + f" | {np.mean([r['ece'] for r in rows]):.4f} |")
    result["site_calibration_split_half"] = {
        name: {k: float(np.mean([r[k] for r in rows])) for k in KEYS + ("ece",)}
        for name, rows in pooled.items()}
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "external_study.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
