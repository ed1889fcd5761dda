"""The released model, shipped inside the install: what the device jobs use without --model.

edge/released/ holds the int8 package (the default) and the float32 one, each with its
metadata embedded, MODEL_CARD.md, and RELEASE.json: what made them (command, seed, code
commit, the training conversion's manifest digest, date), their sha256 and size, their
figures on the external films with 95% intervals, and every earlier release's sha256 (so
a clinic can tell which model made an old report). scripts/release_model.sh writes the
folder; nothing else does.

Reads files only (no LiteRT), so `--version` can name the model without loading it.
The released file is checked against RELEASE.json's sha256 whenever it is used (path):
a swapped or edited file, or a damaged RELEASE.json, is one line saying to reinstall.
"""
import hashlib
import json
import os
from typing import Any, Dict, Optional

from cxr_edge.core import errors
from cxr_edge.core import metrics

FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "released")
RELEASE_NAME = "RELEASE.json"
CARD_NAME = "MODEL_CARD.md"
DEFAULT_VARIANT = "int8"
VARIANTS = ("int8", "float32")


def file_name(variant: str = DEFAULT_VARIANT) -> str:
  """The shipped file of one variant (model_int8.tflite, model_float32.tflite)."""
  if variant not in VARIANTS:
    raise errors.ConfigError(f"the release ships {', '.join(VARIANTS)}, not {variant!r}")
  return f"model_{variant}.tflite"


def path(variant: str = DEFAULT_VARIANT) -> str:
  """The shipped model file of `variant`, checked to be the one RELEASE.json names.

  Raises:
    ModelError: this install has no released model (a checkout before the first
      release, or files removed from the install), or its file is not the released one
      (swapped, re-thresholded, damaged) or RELEASE.json is: one line, what to do.
  """
  file = os.path.join(FOLDER, file_name(variant))
  if not os.path.isfile(file):
    raise errors.ModelError(f"no --model given and this install has no released model "
                            f"({file} is missing): give --model=FILE.tflite")
  record = release()
  if record is None:
    raise errors.ModelError(f"{os.path.join(FOLDER, RELEASE_NAME)} is missing, so {file} "
                            "cannot be checked: reinstall cxr-edge, or give --model=FILE")
  want = record["files"][file_name(variant)]["sha256"]
  with open(file, "rb") as f:
    got = hashlib.sha256(f.read()).hexdigest()
  if got != want:
    raise errors.ModelError(f"{file} is not the released file (sha256 {got[:12]}, "
                            f"{RELEASE_NAME} says {want[:12]}): reinstall cxr-edge, or give "
                            "--model=FILE for another package")
  return file


def resolve(model: Optional[str]) -> str:
  """`model` if given, else the released int8 model, checked (ModelError if there is
  none or it is not the released file)."""
  return model if model else path()


def release() -> Optional[Dict[str, Any]]:
  """RELEASE.json, checked to name every shipped file's sha256; None where the install
  ships no release.

  Raises:
    ModelError: RELEASE.json is there but damaged (one line: reinstall).
  """
  where = os.path.join(FOLDER, RELEASE_NAME)
  try:
    with open(where, encoding="utf-8") as f:
      record = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise errors.ModelError(f"{where} is damaged ({type(e).__name__}): reinstall "
                            "cxr-edge") from None
  try:
    for variant in VARIANTS:
      if not isinstance(record["files"][file_name(variant)]["sha256"], str):
        raise TypeError("a digest that is not text")
    str(record["name"]), int(record["version"]), str(record["date"])
  except (KeyError, TypeError, ValueError) as e:
    raise errors.ModelError(f"{where} is damaged (a field is missing or mangled: "
                            f"{type(e).__name__} {e}): reinstall cxr-edge") from None
  return record


def describe() -> str:
  """One line naming the released model (for --version), or saying there is none; it
  names a sha256 only after checking the file against it."""
  try:
    r = release()
    if r is None:
      return "released model: none in this install (give --model)"
    path()
  except errors.ModelError as e:
    return f"released model: NOT USABLE: {e}"
  sha = r["files"][file_name()]["sha256"]
  return (f"released model: {r['name']} version {r['version']} ({r['date']}), "
          f"{file_name()} sha256 {sha[:12]} (checked)")


def version_of(sha256: str) -> str:
  """Which release a model file is, in one line: a released file's version and date, an
  earlier version's number, or that it is not a released file (a site's, an export)."""
  try:
    r = release()
  except errors.ModelError as e:
    return f"release:      unknown ({e})"
  if r is None:
    return "release:      not a released file (this install ships no release)"
  if sha256 in {e["sha256"] for e in r["files"].values()}:
    return f"release:      {r['name']} version {r['version']} ({r['date']})"
  for earlier in r.get("history", []):
    if sha256 in (earlier.get("files") or {}).values():
      return (f"release:      {r['name']} version {earlier['version']} ({earlier['date']}), "
              f"superseded by version {r['version']}")
  return "release:      not a released file (an export, or a site's calibration of one)"


# The README's rows for the released model sit between these markers (one pair per
# table); scripts/release_model.py writes them and tests/released_test.py checks them.
def markers(block: str):
  return f"<!-- released:{block} -->", f"<!-- /released:{block} -->"


README_BLOCKS = ("decision", "subtype")


def _interval(figure: Dict[str, Any], key: str) -> str:
  return metrics.format_interval(figure[key], figure["ci95"][key])


def _auc(value: float, interval) -> str:
  return f"{value:.3f} ({interval[0]:.3f}-{interval[1]:.3f})"


def readme_rows(record: Dict[str, Any]) -> Dict[str, str]:
  """The README's tables of a release's external figures, by block (README_BLOCKS)."""
  ext = record["external"]["figures"]
  decision, subtype = [], []
  for variant in VARIANTS:
    f = ext[variant]
    what = (f"**the released model, {variant}** (`{file_name(variant)}`"
            + (", the default" if variant == DEFAULT_VARIANT else "")
            + f"), version {record['version']}, 95% intervals")
    withheld = f.get("withheld")
    withheld = (f"{withheld['images']} ({metrics.format_interval(withheld['share'], withheld['ci95'])})"
                if withheld else "0")
    decision.append(f"| {what} | {withheld} | {_interval(f, 'accuracy')} | "
                    f"{_interval(f, 'sensitivity')} | {_interval(f, 'specificity')} | "
                    f"{_auc(f['roc_auc'], f['roc_auc_ci95'])} |")
    if "subtype" in f:
      b, t = f["subtype"]["bacterial_vs_viral"], f["subtype"]["three_class"]
      subtype.append(f"| {what} | {_auc(b['roc_auc'], b['roc_auc_ci95'])} | "
                     f"{_interval(b, 'accuracy')} | {_interval(b, 'sensitivity')} | "
                     f"{_interval(b, 'specificity')} | {_interval(t, 'accuracy')} |")
  return {"decision": "\n".join([
              "| model | not analysed (outside the intended use), films (%) | accuracy % | "
              "sensitivity % | specificity % | ROC-AUC |",
              "| --- | --- | --- | --- | --- | --- |", *decision]),
          "subtype": "\n".join([
              "| model | bacterial vs viral ROC-AUC | its accuracy % | bacterial called "
              "bacterial % | viral called viral % | three-class accuracy %, all films |",
              "| --- | --- | --- | --- | --- | --- |", *subtype]) if subtype else ""}


def changelog_entry(record: Dict[str, Any]) -> str:
  """CHANGELOG.md's section for a release: files with sha256, then the external figures."""
  lines = [f"## Released model version {record['version']} ({record['date']})", "",
           f"Made by `{record['made_by']['command']}` at commit "
           f"{record['made_by']['commit']} (seed {record['made_by']['seed']}; training "
           f"conversion manifest sha256 {record['made_by']['data_manifest_sha256']})."]
  gate = record["made_by"].get("gate")
  if gate:  # a release of an earlier version's weights with the image gate added
    lines += ["", f"The weights of version {gate['weights_of_version']}, unchanged; the "
                  f"image gate and the intended-use rules added by `{gate['command']}` at "
                  f"commit {gate['commit']}."]
  lines.append("")
  for name, entry in record["files"].items():
    lines.append(f"- `{name}`: {entry['bytes']:,} bytes, sha256 `{entry['sha256']}`")
  lines += ["", f"External films ({record['external']['figures'][DEFAULT_VARIANT]['images']} "
                "analysed), 95% intervals:", ""]
  for variant in VARIANTS:
    f = record["external"]["figures"][variant]
    withheld = f.get("withheld")
    lines.append(f"- {variant}: "
                 + (f"{withheld['images']} of {withheld['of']} not analysed (outside the "
                    "intended use); " if withheld else "")
                 + f"accuracy {_interval(f, 'accuracy')}%, sensitivity "
                 f"{_interval(f, 'sensitivity')}%, specificity {_interval(f, 'specificity')}%, "
                 f"ROC-AUC {_auc(f['roc_auc'], f['roc_auc_ci95'])}")
  return "\n".join(lines)


def stated_figures(sha256: str, metadata: Dict[str, Any],
                   release: Optional[Dict[str, Any]]) -> Dict[str, Any]:
  """The figures the model was stated to have: the released model's external figures
  (RELEASE.json) when the file is a released one; a site-calibrated package's own
  measured figures at its threshold; else none."""
  if release:
    for name, entry in (release.get("files") or {}).items():
      figures = (release.get("external") or {}).get("figures", {}).get(entry.get("variant"))
      if entry.get("sha256") == sha256 and figures:
        (tn, fp), (fn, tp) = figures["confusion_matrix"]
        kind = ((figures.get("subtype") or {}).get("bacterial_vs_viral") or {})
        return {"source": f"the released model's {figures['images']} external films "
                          f"({name})",
                "sensitivity": figures["sensitivity"], "specificity": figures["specificity"],
                "ppv": tp / (tp + fp), "npv": tn / (tn + fn),
                "accuracy": figures["accuracy"], "roc_auc": figures.get("roc_auc"),
                "kind_agreement": kind.get("accuracy")}
  measured = ((metadata.get("site_calibration") or {}).get("measured") or {}).get("at_new")
  if measured:
    return {"source": "this package's site calibration (its own films)",
            **{k: measured.get(k) for k in ("sensitivity", "specificity", "accuracy")}}
  return {"source": None}
