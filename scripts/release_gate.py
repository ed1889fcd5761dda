r"""A new release of the released model's own weights with the image gate and the
intended-use rules inside: what made version 2 from version 1 without retraining.

Usage:
  .venv/bin/python -m scripts.release_gate --records_dir=/tmp/cxr_release/records \
      --external_dir=../shared/data/chest_xray/external

--records_dir must be the conversion the released model was trained on (its manifest's
sha256 is checked against RELEASE.json): the gate is fitted on its train split and its
limits set on its validation and test splits, as cxr-export does for every new export
(scripts/release_model.sh makes the next trained release with the gate already in).
For each released file: its feature map becomes a second output (edge/scope.py), the
package's intended use and rules are today's, the gate is fitted on that file's own
features, and the file is scored on the external films through the device runtime
(films the gate withholds are counted, not scored). Then RELEASE.json (the next version,
the earlier one in its history), the README's tables and MODEL_CARD.md's sections for
the intended use, the external figures, the limits and the files are rewritten; the
CHANGELOG entry is printed. Nothing of the weights changes.
"""
import argparse
import copy
import datetime
import hashlib
import json
import os
import re
import tempfile

from cxr_edge.core import intended_use
from cxr_edge.core import package_info
from cxr_edge.edge import calibrate_lib
from cxr_edge.edge import package
from cxr_edge.edge import released
from cxr_edge.edge import runtime
from cxr_edge.edge import scope
from cxr_edge.export import export_lib
from cxr_edge.export import model_card
from cxr_edge.model import model_dir as model_dir_lib
from scripts import release_model


def gated(data: bytes, train, heldout) -> bytes:
  """One released file with today's intended use and its own fitted image gate."""
  fields = package.read(data)
  fields = {k: copy.deepcopy(v) for k, v in fields.items()
            if k not in ("integrity", "integrity_scope")}
  fields["package"].update(intended_use=package_info.INTENDED_USE,
                           intended_use_rules=intended_use.IntendedUse().as_fields())
  fields["model"].pop("image_gate", None)
  exposed = scope.expose_features(data)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "model.tflite")
    with open(path, "wb") as f:
      f.write(package.embed(exposed, fields))
    gate = scope.fit_model(runtime.LiteModel(path), train, heldout)
  fields["model"]["image_gate"] = gate.as_fields()
  return package.embed(exposed, fields)


def replace_section(card: str, heading: str, lines) -> str:
  """MODEL_CARD.md with the section under `## heading` replaced by `lines`."""
  pattern = re.compile(rf"(## {re.escape(heading)}\n\n).*?(?=\n## |\Z)", re.S)
  if not pattern.search(card):
    raise SystemExit(f"{released.CARD_NAME} has no section {heading!r}")
  return pattern.sub(lambda m: m.group(1) + "\n".join(lines).rstrip("\n") + "\n", card)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--records_dir", required=True)
  parser.add_argument("--external_dir", required=True)
  args = parser.parse_args()
  previous = released.release()
  made_by = previous["made_by"]
  if model_dir_lib.manifest_sha256(args.records_dir) != made_by["data_manifest_sha256"]:
    raise SystemExit(f"{args.records_dir} is not the conversion the released model was "
                     f"trained on (manifest {made_by['data_manifest_sha256'][:12]})")
  print("decoding the conversion's films", flush=True)
  train, heldout = export_lib.gate_films(args.records_dir)
  files, figures, thresholds = {}, {}, {}
  for variant in released.VARIANTS:
    name = released.file_name(variant)
    path = os.path.join(released.FOLDER, name)
    with open(path, "rb") as f:
      data = gated(f.read(), train, heldout)
    with open(path, "wb") as f:
      f.write(data)
    model = runtime.LiteModel(path)
    files[name] = {"variant": variant, "sha256": hashlib.sha256(data).hexdigest(),
                   "bytes": len(data)}
    thresholds[name] = model.threshold
    figures[variant] = calibrate_lib.measure(
        model, calibrate_lib.score_films(model, args.external_dir))
    print(f"{variant}: gate {model.gate.fitted}; external withheld "
          f"{figures[variant].get('withheld', {}).get('images', 0)}", flush=True)
  record = copy.deepcopy(previous)
  record["history"] = previous.get("history", []) + [
      {k: previous[k] for k in ("version", "date", "commit")}
      | {"files": {n: e["sha256"] for n, e in previous["files"].items()}}]
  record.update(version=previous["version"] + 1, date=datetime.date.today().isoformat(),
                files=files, commit=release_model._commit())  # pylint: disable=protected-access
  record["made_by"] = {**made_by, "gate": {
      "command": "python -m scripts.release_gate --records_dir=... --external_dir=...",
      "commit": record["commit"], "weights_of_version": previous["version"]}}
  record["external"]["figures"] = figures
  with open(os.path.join(released.FOLDER, released.RELEASE_NAME), "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2, sort_keys=True)
    f.write("\n")
  with open(release_model.README, encoding="utf-8") as f:
    text = release_model.replace_blocks(f.read(), released.readme_rows(record))
  with open(release_model.README, "w", encoding="utf-8") as f:
    f.write(text)
  card_path = os.path.join(released.FOLDER, released.CARD_NAME)
  with open(card_path, encoding="utf-8") as f:
    card = f.read()
  default = runtime.LiteModel(released.path())
  card = replace_section(card, "Intended use", model_card.intended_use_lines(
      default.info.intended_use, default.info.use.describe(), default.gate.fitted))
  total = figures[released.DEFAULT_VARIANT]
  card = replace_section(card, "External validation", model_card.external_lines(
      os.path.basename(os.path.normpath(args.external_dir)),
      total["images"] + total.get("withheld", {}).get("images", 0),
      previous["external"]["figures"][released.DEFAULT_VARIANT]["patients"], figures))
  card = replace_section(card, "Known failure modes and limits",
                         [f"- {m}" for m in model_card.failure_modes(True)])
  card = replace_section(card, "Files", model_card.file_lines(
      {n: {**e, "threshold": thresholds[n]} for n, e in files.items()}))
  with open(card_path, "w", encoding="utf-8") as f:
    f.write(card)
  print(f"\nreleased version {record['version']} into {released.FOLDER}\n\nAdd to "
        f"CHANGELOG.md:\n\n{released.changelog_entry(record)}")


if __name__ == "__main__":
  main()
