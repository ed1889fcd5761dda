"""The model card cxr-export writes beside the models: MODEL_CARD.md and model_card.json.

Every figure comes from what the export measured (its report) and what training and
conversion recorded (model_info.json, the conversion's manifest); nothing is typed in by
hand, so the card cannot drift from the models it describes. TensorFlow-free.
"""
import datetime
import importlib.metadata
import json
import os
from typing import Any, Dict, List, Optional

from cxr_edge.core import intended_use
from cxr_edge.core import metrics
from cxr_edge.core import package_info
from cxr_edge.core import schema

CARD_NAME = "MODEL_CARD.md"
CARD_JSON = "model_card.json"
LICENCE = ("cxr-edge is Apache-2.0; the model was trained on data licensed CC BY 4.0, so "
           "credit the training data's source (Training data, above) wherever the model or its outputs "
           "are shown.")


def _shipped(names) -> Optional[str]:
  """The file a device runs: the int8 model if there is one, else the first."""
  names = list(names)
  return next((n for n in names if n.endswith("int8.tflite")), names[0] if names else None)


def _model_version(metadata: Dict[str, Any]) -> Optional[str]:
  models = metadata.get("models") or {}
  name = _shipped(models)
  return f"{name} sha256 {models[name]['sha256'][:12]}" if name else None


def _installed(distribution: str) -> Optional[str]:
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return None

FAILURE_MODES = (
    "Trained on one centre's paediatric films (the source describes children aged one "
    "to five at Guangzhou Women and Children's Medical Center): films from other "
    "machines, hospitals, ages or positioning can score differently, and a model's "
    "internal-split figures overstate how it does on them (the external validation "
    "above, where present, and the README). Measure on your own films first "
    "(cxr-evaluate --image_dir) and set the operating point on them (cxr-calibrate).",
    "What is out of scope is withheld, not read: a DICOM header that says another view, "
    "body part or age, and images the image gate does not take for a whole upright "
    "frontal chest film. The gate was fitted on the training films and measured on "
    "photographs, pages, screenshots, textures, other imaging and turned, inverted or "
    "cropped films (docs/intended_use.md); an out-of-scope image unlike all of those, or "
    "a frontal film of an adult without a header that says so, can still get a finding.",
    "The int8 models' probabilities are coarser than float32's (quantized logits); their "
    "decisions agree with the SavedModel's on the rates the report shows.",
)


# The labels' limit, by the model's classes.
LABEL_LIMITS = {
    False: "Labels are pneumonia vs normal only; bacterial and viral pneumonia are pooled, "
           "and other abnormalities are not modelled.",
    True: "Labels are normal, bacterial and viral pneumonia: the kind is the training "
          "data's graders' reading of the film, not microbiology, and is weaker than the "
          "pneumonia decision (see the figures above); other abnormalities are not "
          "modelled.",
}


def failure_modes(three_class: bool) -> List[str]:
  """The card's known failure modes and limits for a binary or a three-class model."""
  return [FAILURE_MODES[0], FAILURE_MODES[1], LABEL_LIMITS[three_class], *FAILURE_MODES[2:]]


def _pct(m: Dict[str, Any], key: str) -> str:
  low, high = m["ci95"][key]
  return f"{100 * m[key]:.1f}% ({100 * low:.1f}-{100 * high:.1f})"


def _auc(m: Dict[str, Any]) -> str:
  low, high = m["roc_auc_ci95"]
  return f"{m['roc_auc']:.4f} ({low:.4f}-{high:.4f})"


def intended_use_lines(text: str, rules: str,
                       gate: Optional[Dict[str, Any]]) -> List[str]:
  """The card's intended use: the package's words, its rules and what is refused, and
  what the image gate was fitted on (None: a package without one)."""
  lines = [text, "", rules]
  if gate:
    lines += ["", f"The image gate (edge/scope.py) was fitted on {gate['films']:,} training "
              f"films; its limits were set on {gate['heldout_films']:,} held-out films of the "
              f"training source at {100 * gate['distance_false_refusal']:g}% (distance) and "
              f"{100 * gate['layout_false_refusal']:g}% (layout) false refusals; it withheld "
              f"{100 * gate['heldout_refused']:.1f}% of those films."]
  return lines


def external_lines(folder: str, images: int, patients: int,
                   models: Dict[str, Dict[str, Any]]) -> List[str]:
  """The card's external validation: each model's table row, films withheld as out of
  scope, and a three-class model's subtype lines."""
  lines = [f"{images} films ({patients} patients) from `{folder}`: films from another "
           "acquisition than training; nothing was trained on them. 95% "
           "intervals: Wilson for proportions, bootstrap over patients for ROC-AUC; ECE "
           "over 10 bins.", ""]
  lines += table_rows(models) + [""]
  for name, m in models.items():
    if "withheld" in m:
      w = m["withheld"]
      lines.append(f"- {name}: {w['images']} of {w['of']} films not analysed (outside the "
                   "intended use; its figures are on the rest) "
                   f"({metrics.format_interval(w['share'], w['ci95'])}%): "
                   + "; ".join(f"{f['file']} ({f['label']})" for f in w["films"]))
  if any("withheld" in m for m in models.values()):
    lines.append("")
  return lines + _subtype_lines(models)


def file_lines(files: Dict[str, Dict[str, Any]]) -> List[str]:
  lines = ["| file | bytes | sha256 | threshold |", "| --- | --- | --- | --- |"]
  for name, f in files.items():
    lines.append(f"| {name} | {f['bytes']} | `{f['sha256']}` | {f['threshold']} |")
  return lines


def table_rows(rows: Dict[str, Dict[str, Any]]) -> List[str]:
  lines = ["| model | threshold | accuracy | sensitivity | specificity | ROC-AUC | ECE |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for name, m in rows.items():
    lines.append(f"| {name} | {m['threshold']:.4f} | {_pct(m, 'accuracy')} | "
                 f"{_pct(m, 'sensitivity')} | {_pct(m, 'specificity')} | {_auc(m)} | "
                 f"{m['ece']:.4f} |")
  return lines


def build(metadata: Dict[str, Any], report: Dict[str, Any], info: Dict[str, Any],
          manifest: Dict[str, Any]) -> Dict[str, Any]:
  """The card's content (model_card.json) from the export's own records."""
  train = manifest["splits"]["train"]
  evaluated = {"saved_model (float32)": report["saved_model"], **report["variants"]}
  card: Dict[str, Any] = {
      "model": metadata.get("model"),
      "date": datetime.date.today().isoformat(),
      # The shipped int8 file's hash: what cxr-predict's records carry as model_sha256.
      "model_version": _model_version(metadata),
      "intended_use": metadata.get("intended_use", package_info.INTENDED_USE),
      "intended_use_rules": intended_use.IntendedUse.from_fields(
          metadata.get("intended_use_rules")).describe(),
      # What the shipped file's image gate was fitted on and its limits' rates.
      "image_gate": ((metadata["models"].get(_shipped(metadata["models"]) or "") or {})
                     .get("image_gate") or {}).get("fitted"),
      # What the model is (released, experimental, smoke) and the films it learned from.
      "model_kind": metadata.get("training"),
      "licence": LICENCE,
      "training_data": {
          "source": metadata.get("credit"),
          "population": "paediatric, one centre; frontal chest radiographs",
          "manifest_sha256": metadata.get("data_manifest_sha256"),
          "train_images_per_class": {k: v["images"] for k, v in train["classes"].items()},
          "train_pneumonia_images_per_subtype": {
              k: v["images"] for k, v in (train.get("subtypes") or {}).items()},
          "train_patients": train["patients"],
          "split": "by patient, stratified by class, seeded (cxr-convert)",
          "source_formats": manifest.get("source_formats"),
      },
      "classes": metadata.get("classes", metadata["labels"]),
      "training": {k: info.get(k) for k in ("task", "augment", "epochs", "best_epoch", "keep_epoch",
                                            "kept_epoch", "seed",
                                            "class_weight", "weight_decay", "label_smoothing",
                                            "mixup", "ema_momentum", "threshold_rule")},
      "decision_threshold": {"value": metadata.get("threshold"),
                             "rule": metadata.get("threshold_rule")},
      "internal_test": {"images": report["test_images"],
                        "note": ("held-out split of the training source"
                                 if report.get("test_split_held_out", True) else
                                 "NOT held out: a split of another conversion than the "
                                 "model was trained on, which may hold its training films"),
                        "models": evaluated},
      "failure_modes": failure_modes(len(metadata.get("classes", metadata["labels"]))
                                     > len(schema.LABELS)),
      "files": {name: {"sha256": e["sha256"], "bytes": e["bytes"],
                       "threshold": e.get("threshold")}
                for name, e in metadata["models"].items()},
      "versions": {**(manifest.get("tools") or {}),
                   "cxr-edge": metadata.get("cxr_edge_version"),
                   "ai-edge-litert": _installed("ai-edge-litert")},
  }
  external = report.get("external")
  if external:
    card["external_validation"] = {
        "folder": external["external_dir"], "images": external["images"],
        "patients": external["patients"],
        "note": "films from another acquisition than training; nothing was trained on them",
        "models": {"saved_model (float32)": external["saved_model"], **external["variants"]}}
  return card


def _subtype_lines(models: Dict[str, Dict[str, Any]]) -> List[str]:
  """A three-class model's subtype figures, one line per model (none for a binary one)."""
  lines = [f"- {name}: {metrics.format_subtype(m['subtype'])}"
           for name, m in models.items() if "subtype" in m]
  return (["Subtypes (bacterial vs viral among PNEUMONIA films of known subtype, BACTERIAL "
           "the positive class; three-class accuracy on films of known class):", ""]
          + lines + [""]) if lines else []


def _kind_lines(training: Optional[Dict[str, Any]]) -> List[str]:
  """The card's first words: what kind of model this is (none for older exports)."""
  if not training:
    return []
  kind = training["kind"]
  if kind == package_info.KIND_SMOKE:
    text = "**" + package_info.smoke_notice(training["films"]) + "**"
  elif kind == package_info.KIND_RELEASED:
    text = ("**The released model of cxr-edge**, made by `scripts/release_model.sh` (one "
            "run, not picked among runs): cxr-predict, cxr-calibrate and cxr-node use it "
            "when `--model` is not given.")
  else:
    text = "**An experimental model**: not the one cxr-edge releases."
  return [text + f" Trained on {training['films']:,} films (of {training['converted_films']:,} "
          "converted: the rest set its threshold and tested it).", ""]


def markdown(card: Dict[str, Any]) -> str:
  """MODEL_CARD.md for a card from `build`."""
  data = card["training_data"]
  int8 = _shipped(card["files"]) or "model.tflite"
  lines = [f"# Model card: {card['model']} (cxr-edge)", "",
           *_kind_lines(card.get("model_kind")),
           "## Intended use", "",
           *intended_use_lines(card["intended_use"], card["intended_use_rules"],
                               card.get("image_gate")), "",
           f"Exported {card['date']} by cxr-edge {card['versions'].get('cxr-edge')}; "
           f"model version {card['model_version']} (each record of cxr-predict carries "
           "the file's full sha256 as model_sha256).", "",
           "## How to use", "",
           "```bash",
           "pip install \".[edge]\"     # the device install: LiteRT, numpy, Pillow; no TensorFlow",
           f"cxr-predict --model={int8} --info",
           f"cxr-predict --model={int8} films/ --output=results.jsonl",
           f"cxr-calibrate --model={int8} --image_dir=local_films/ --output_dir=site_model/",
           "```", "",
           "Each result holds `prediction` (PNEUMONIA when `p_pneumonia` >= `threshold`), "
           "`p_pneumonia`, `threshold` and `warning` (what to know before the result, or "
           "null), or `not_analysed` and why, with no finding, for a film outside the "
           "intended use"
           + ("; this three-class model adds `p_bacterial`, `p_viral` (their sum is "
              "`p_pneumonia`) and `subtype`, the likelier of the two for a film predicted "
              "PNEUMONIA (null for NORMAL)." if len(card["classes"]) > len(schema.LABELS) else "."), "",
           "## Training data", "",
           f"- Source: {data['source']}",
           f"- Population: {data['population']}",
           f"- Training split: {data['train_patients']} patients; images per class "
           + ", ".join(f"{k} {v}" for k, v in data["train_images_per_class"].items())
           + ("; PNEUMONIA by subtype " + ", ".join(
               f"{k} {v}" for k, v in data["train_pneumonia_images_per_subtype"].items())
              if len(card["classes"]) > len(schema.LABELS) else ""),
           f"- Split: {data['split']}; conversion manifest sha256 {data['manifest_sha256']}",
           "",
           "## Decision threshold", "",
           f"{card['decision_threshold']['value']} (rule: {card['decision_threshold']['rule']}). "
           "Each file's own threshold is in the Files table and embedded in the file. "
           "A site sets its own with `cxr-calibrate`: from its share of PNEUMONIA "
           "(`--prevalence`, no labelled films needed) or on its labelled films "
           "(`--image_dir`).", ""]
  if "external_validation" in card:
    ext = card["external_validation"]
    lines += ["## External validation", "",
              *external_lines(ext["folder"], ext["images"], ext["patients"], ext["models"])]
  test = card["internal_test"]
  lines += ["## Internal test split", "",
            f"{test['images']} images, {test['note']}; same intervals.", ""]
  lines += table_rows(test["models"]) + [""] + _subtype_lines(test["models"])
  lines += ["## Known failure modes and limits", ""]
  lines += [f"- {m}" for m in card["failure_modes"]] + [""]
  lines += ["## Files", "", *file_lines(card["files"])]
  lines += ["", "## Versions", "",
            ", ".join(f"{k} {v}" for k, v in (card["versions"] or {}).items()), "",
            "## Licence", "", card["licence"], ""]
  return "\n".join(lines)


def write(export_dir: str, metadata: Dict[str, Any], report: Dict[str, Any],
          info: Dict[str, Any], manifest: Dict[str, Any]) -> Optional[str]:
  """Writes MODEL_CARD.md and model_card.json into export_dir; returns the .md path."""
  card = build(metadata, report, info, manifest)
  with open(os.path.join(export_dir, CARD_JSON), "w", encoding="utf-8") as f:
    json.dump(card, f, indent=2)
  path = os.path.join(export_dir, CARD_NAME)
  with open(path, "w", encoding="utf-8") as f:
    f.write(markdown(card))
  return path

