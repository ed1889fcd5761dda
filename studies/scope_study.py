r"""What the intended-use gate withholds: in-scope external films (false refusals), every
kind of out-of-scope image, and what it costs a film on the device.

Usage:
  .venv/bin/python -m studies.scope_study --external_dir=../shared/data/chest_xray/external \
      [--model=edge/released/model_int8.tflite] [--previous=OLD.tflite] [--json=out.json]

Through the device runtime (edge/runtime.py, no TensorFlow):
- the external films: the share withheld with its 95% Wilson interval and each reason,
  and the figures on the films analysed (calibrate_lib.measure); with --previous (a
  package without the gate, e.g. version 1 of the released model), its figures on all the
  films, for the comparison;
- the out-of-scope set (tests/out_of_scope.py): every kind drawn there, and the external
  films turned, upside down, inverted and cropped: the share withheld per kind, and which
  check withheld it (header, plausibility checks, the gate's distance or layout score);
- the cost: per film, the time of the gate's scores and of the whole analysis (decode,
  checks, invoke, gate), as medians over the external films, and their ratio, measured
  in the same run (the machine's load falls on both).
Nothing here fits or chooses anything: the gate was fitted on training films only.
"""
import argparse
import json
import os
import time

import numpy as np
from PIL import Image

from cxr_edge.core import errors
from cxr_edge.core import metrics
from cxr_edge.edge import calibrate_lib
from cxr_edge.edge import released
from cxr_edge.edge import runtime
from tests import out_of_scope


def which_check(reason: str) -> str:
  """The part of the gate a refusal came from, by its words."""
  if "out-of-scope distance" in reason:
    return "distance"
  if "layout score" in reason:
    return "layout"
  return "plausibility"


def withheld(model: runtime.LiteModel, items) -> dict:
  """Per kind: how many, how many withheld, by which check, and the names let through."""
  by_check, missed = {}, []
  for name, data in items:
    try:
      model.analyse(data)
      missed.append(name)
    except errors.OutOfScope as e:
      check = which_check(str(e))
      by_check[check] = by_check.get(check, 0) + 1
  n = len(items)
  refused = n - len(missed)
  low, high = metrics.wilson_interval(refused, n)
  return {"images": n, "withheld": refused, "share": refused / n, "ci95": [low, high],
          "by_check": by_check, "let_through": missed}


def cost(model: runtime.LiteModel, paths) -> dict:
  """Median ms per film of the gate's scores and of the whole analysis."""
  gate_ms, whole_ms = [], []
  for path in paths:
    with open(path, "rb") as f:
      data = f.read()
    start = time.perf_counter()
    try:
      model.analyse(data)
    except errors.OutOfScope:
      pass
    whole_ms.append((time.perf_counter() - start) * 1000)
    _, feature_map = model.invoke_gray(runtime.film_gray(data))
    start = time.perf_counter()
    model.gate.scores(feature_map)
    gate_ms.append((time.perf_counter() - start) * 1000)
  gate, whole = float(np.median(gate_ms)), float(np.median(whole_ms))
  return {"gate_ms_median": round(gate, 4), "analysis_ms_median": round(whole, 3),
          "gate_share_of_analysis": round(gate / whole, 4)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--external_dir", required=True)
  parser.add_argument("--model", default=None)
  parser.add_argument("--previous", default=None)
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  model = runtime.LiteModel(released.resolve(args.model))
  films = calibrate_lib.score_films(model, args.external_dir)
  figures = calibrate_lib.measure(model, films)
  out = {"model_sha256": model.sha256, "gate": model.gate.fitted, "external": figures}
  if args.previous:
    old = runtime.LiteModel(args.previous)
    out["previous"] = calibrate_lib.measure(old, calibrate_lib.score_films(old,
                                                                           args.external_dir))
  paths = [os.path.join(root, name) for root, _, names in os.walk(args.external_dir)
           for name in sorted(names) if name.lower().endswith((".jpeg", ".jpg", ".png"))]
  grays = [(os.path.basename(p), np.asarray(Image.open(p).convert("L"))) for p in sorted(paths)]
  kinds = {**out_of_scope.kinds(), **out_of_scope.film_kinds(grays)}
  out["out_of_scope"] = {kind: withheld(model, items) for kind, items in kinds.items()}
  out["cost"] = cost(model, sorted(paths))
  w = figures.get("withheld", {"images": 0, "of": len(films.labels), "share": 0.0,
                               "ci95": [0.0, 0.0]})
  print(f"external films withheld: {w['images']} of {w['of']} "
        f"({metrics.format_interval(w['share'], w['ci95'])}%)")
  for name, m in (("with the gate, films analysed", figures),
                  ("previous, every film", out.get("previous"))):
    if m:
      print(f"  {name}: accuracy {metrics.format_interval(m['accuracy'], m['ci95']['accuracy'])}"
            f"%, sensitivity {metrics.format_interval(m['sensitivity'], m['ci95']['sensitivity'])}"
            f"%, specificity {metrics.format_interval(m['specificity'], m['ci95']['specificity'])}"
            f"%, ROC-AUC {m['roc_auc']:.3f}")
  print("\n| kind | images | withheld % (95% interval) | by check |\n| --- | --- | --- | --- |")
  for kind, r in out["out_of_scope"].items():
    print(f"| {kind} | {r['images']} | {metrics.format_interval(r['share'], r['ci95'])} | "
          + ", ".join(f"{k} {v}" for k, v in sorted(r["by_check"].items())) + " |")
  c = out["cost"]
  print(f"\ncost per film: gate {c['gate_ms_median']:.3f} ms of an analysis of "
        f"{c['analysis_ms_median']:.2f} ms ({100 * c['gate_share_of_analysis']:.1f}%), medians")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(out, f, indent=2)


if __name__ == "__main__":
  main()
