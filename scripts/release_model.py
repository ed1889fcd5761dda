r"""Lays a finished export into edge/released/: the last step of scripts/release_model.sh.

Usage (the shell script runs it; by hand only to redo this step):
  .venv/bin/python -m scripts.release_model --export_dir=/tmp/cxr_release/export \
      --model_dir=/tmp/cxr_release/model \
      --external_dir=../shared/data/chest_xray/external --command="..."

Copies model_int8.tflite, model_float32.tflite and MODEL_CARD.md, and writes RELEASE.json:
the next version number, what made it (command, seed, code commit, the conversion's
manifest sha256, date, wall time), every file's sha256 and size, each model's figures on
the external films through the edge runtime (as cxr-predict computes them, which
tests/released_test.py reproduces; taken from cxr-export's report, which scored these
files), and every earlier release's files and sha256. Then it
rewrites the README's table of the released model's figures and prints the CHANGELOG
entry to add. It refuses an export that is not a released one (cxr-export
--model_kind=released).
"""
import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

from cxr_edge.edge import released

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
NAME = "cxr-edge pneumonia triage (edge_cnn, three-class)"


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _commit() -> str:
  """The code's commit, with "-dirty" when the work tree has uncommitted changes."""
  def git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
  try:
    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                ":(exclude)edge/released", ":(exclude)README.md", ":(exclude)CHANGELOG.md")
  except (OSError, subprocess.CalledProcessError):
    return "unknown (not a git checkout)"
  return commit + ("-dirty" if dirty else "")


def _committed_release():
  """The last committed RELEASE.json (the version this one follows), or None: a rerun of
  an uncommitted release replaces it instead of counting a version more."""
  try:
    text = subprocess.run(
        ["git", "show", f"HEAD:edge/released/{released.RELEASE_NAME}"], cwd=ROOT,
        capture_output=True, text=True, check=True).stdout
  except subprocess.CalledProcessError:
    return None  # none committed yet
  except OSError:
    return released.release()  # no git: the folder's own
  return json.loads(text)


def replace_blocks(text: str, blocks) -> str:
  """The README with each released-figures block's rows replaced."""
  for block, rows in blocks.items():
    begin, end = released.markers(block)
    pattern = re.compile(f"({re.escape(begin)}\n)(?:.*?\n)?({re.escape(end)})", re.S)
    if not pattern.search(text):
      sys.exit(f"README.md has no {begin} ... {end} block")
    text = pattern.sub(lambda m, rows=rows: m.group(1) + rows + "\n" + m.group(2), text)
  return text


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--export_dir", required=True)
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--external_dir", required=True)
  parser.add_argument("--command", required=True)
  parser.add_argument("--wall_seconds", type=int, default=None)
  args = parser.parse_args()

  with open(README, encoding="utf-8") as f:
    replace_blocks(f.read(), {b: "" for b in released.README_BLOCKS})  # refuse early
  with open(os.path.join(args.export_dir, "metadata.json"), encoding="utf-8") as f:
    metadata = json.load(f)
  if (metadata.get("training") or {}).get("kind") != "released":
    sys.exit("this export is not a released one: export it with --model_kind=released")
  with open(os.path.join(args.model_dir, "model_info.json"), encoding="utf-8") as f:
    info = json.load(f)
  previous = _committed_release()
  history = []
  if previous:
    history = previous.get("history", []) + [{
        k: previous[k] for k in ("version", "date", "commit")}
        | {"files": {n: e["sha256"] for n, e in previous["files"].items()}}]

  os.makedirs(released.FOLDER, exist_ok=True)
  files = {}
  for variant in released.VARIANTS:
    name = released.file_name(variant)
    shutil.copyfile(os.path.join(args.export_dir, name), os.path.join(released.FOLDER, name))
    path = os.path.join(released.FOLDER, name)
    files[name] = {"variant": variant, "sha256": _sha256(path),
                   "bytes": os.path.getsize(path)}
  shutil.copyfile(os.path.join(args.export_dir, released.CARD_NAME),
                  os.path.join(released.FOLDER, released.CARD_NAME))
  # cxr-export scored these very files on the external films through the edge runtime
  # (calibrate_lib.measure); its comparison with float32 is the export report's own.
  with open(os.path.join(args.export_dir, "export_report.json"), encoding="utf-8") as f:
    scored = json.load(f)["external"]["variants"]
  external = {variant: {k: v for k, v in scored[variant].items()
                        if k != "roc_auc_minus_float32"} for variant in released.VARIANTS}
  record = {
      "name": NAME,
      "version": (previous["version"] + 1) if previous else 1,
      "date": datetime.date.today().isoformat(),
      "made_by": {
          "command": args.command,
          "commit": _commit(),
          "seed": info.get("seed"),
          "task": info.get("task"),
          "epochs": info.get("epochs"),
          "train_seconds": info.get("train_seconds_this_run"),
          "wall_seconds": args.wall_seconds,
          "data_manifest_sha256": metadata.get("data_manifest_sha256"),
          "training": metadata["training"],
          "cxr_edge_version": metadata.get("cxr_edge_version"),
      },
      "files": files,
      "external": {"folder": os.path.basename(os.path.normpath(args.external_dir)),
                   "note": "half of the public release's test split, never trained on; "
                           "the recipe and the three-class default were chosen on it",
                   "figures": external},
      "history": history,
  }
  record["commit"] = record["made_by"]["commit"]
  with open(os.path.join(released.FOLDER, released.RELEASE_NAME), "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2, sort_keys=True)
    f.write("\n")
  with open(README, encoding="utf-8") as f:
    text = replace_blocks(f.read(), released.readme_rows(record))  # before opening to write
  with open(README, "w", encoding="utf-8") as f:
    f.write(text)

  print(f"\nreleased {NAME} version {record['version']} into {released.FOLDER}")
  print("\nAdd to CHANGELOG.md:\n")
  print(released.changelog_entry(record))


if __name__ == "__main__":
  main()
