r"""Compares two studies/refactor_parity.sh outputs: records, training and predictions.

Usage:
  .venv/bin/python -m studies.refactor_parity /tmp/parity/before /tmp/parity/after

Prints, for the two runs: whether every shard's bytes and the manifest are identical,
whether training's history and validation metrics are, the export report's test-split
figures, and per model how many films got the identical p_pneumonia and decision. A
record's decision is 'prediction' (or 'label' in outputs from before that name).
"""
import glob
import hashlib
import json
import os
import sys


def _shards(run):
  return {os.path.basename(p): hashlib.sha256(open(p, "rb").read()).hexdigest()
          for p in sorted(glob.glob(os.path.join(run, "records", "*.tfrecord")))}


def _json(run, *path):
  with open(os.path.join(run, *path), encoding="utf-8") as f:
    return json.load(f)


def _predictions(run, variant):
  with open(os.path.join(run, f"pred_{variant}.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  return {r["path"]: r for r in records if "p_pneumonia" in r}


def compare(a, b):
  report = {"shards_identical": _shards(a) == _shards(b), "shards": len(_shards(a)),
            "manifest_identical": _json(a, "records", "manifest.json") == _json(
                b, "records", "manifest.json"),
            "history_identical": _json(a, "model", "history.json") == _json(
                b, "model", "history.json"),
            "val_metrics_identical": _json(a, "model", "model_info.json")["val_metrics"] ==
                                     _json(b, "model", "model_info.json")["val_metrics"]}
  for variant in ("int8", "float32"):
    pa, pb = _predictions(a, variant), _predictions(b, variant)
    decision = lambda r: r.get("prediction", r.get("label"))
    report[variant] = {
        "films": len(pa),
        "identical_p": sum(pa[k]["p_pneumonia"] == pb.get(k, {}).get("p_pneumonia")
                           for k in pa),
        "same_decision": sum(decision(pa[k]) == decision(pb.get(k, {})) for k in pa),
        "test_accuracy": [_json(r, "export", "export_report.json")["variants"][variant]
                          ["accuracy"] for r in (a, b)]}
  return report


if __name__ == "__main__":
  print(json.dumps(compare(sys.argv[1], sys.argv[2]), indent=2))
