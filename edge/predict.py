r"""cxr-predict: the edge predictor. LiteRT + numpy + Pillow only; never TensorFlow.

Usage:
  pip install ".[edge]"
  cxr-predict scans/*.jpeg more_scans/          # the released model shipped with cxr-edge
  cxr-predict --info                            # what that model is, for whom
  cxr-predict --model=export/model_int8.tflite scans/*.jpeg more_scans/
  cxr-predict --model=export/model_int8.tflite --output=results.csv --threads=2 scan.png
  cxr-predict --model=export/model_int8.tflite study/IM0001.dcm dicom_folder/
  cxr-predict --model=export/model_int8.tflite --info    # what the package is, for whom

Films: 8-bit JPEG/PNG as they are; DICOM (single-frame grayscale CR/DX radiographs, any
transfer syntax pydicom, python-gdcm and pylibjpeg-openjpeg decode), 16-bit PNG and TIFF
windowed to 8 bits as cxr-convert stores them (modality LUT, VOI LUT or window, else the
stored range; MONOCHROME1 inverted). A folder is read whole (hidden files aside): files
with a film extension or none are predicted, others listed as {"path", "skipped"}.

The .tflite carries its own metadata (labels, input size, preprocessing, threshold and
its provenance, temperature, training data; edge/package.py), so it is the whole
package; a metadata.json beside it is optional and must agree with it. Before reading
any image it refuses, in one line, a missing or corrupt model, edited embedded metadata,
a disagreeing or unreadable metadata.json, or metadata that does not fit the model.
Writes one JSON line per image, {"path", "prediction", "p_pneumonia", "threshold",
"model_sha256", "warning", "latency_ms"} (prediction is PNEUMONIA iff p_pneumonia >=
threshold; a three-class model adds "p_bacterial", "p_viral" and "subtype", the likelier
of the two for a film predicted PNEUMONIA and null for one predicted NORMAL; warning:
what the reader must know before the result, or null; --strict refuses such films),
{"path", "not_analysed", "model_sha256"} for a film outside the model's intended use
(the reason: a DICOM header's view, body part or age, or what the image gate and the
plausibility checks do not take for a whole upright frontal chest film; no finding), or
{"path", "error"} for an image it cannot read; progress (images/s, time left) on stderr
every 10 s of a long run, then a summary that counts each. Exit status 1 if any input
failed (a film not analysed is not a failure).

The runtime is edge/runtime.py (no TensorFlow).
"""
import csv
import json
import os
import sys
import time
from typing import Optional, Tuple

from absl import app
from absl import flags
import numpy as np

from cxr_edge.core import cli
from cxr_edge.core import errors
from cxr_edge.core import intended_use
from cxr_edge.edge import explain
from cxr_edge.edge import released
from cxr_edge.edge import runtime

_MODEL = flags.DEFINE_string("model", None, "A .tflite file exported by cxr-export or "
                             "cxr-calibrate (its metadata is embedded; a metadata.json "
                             "beside it must agree). Default: the released int8 model "
                             "shipped with cxr-edge (--info describes it).")
_OUTPUT = flags.DEFINE_string("output", None, "Write results to this .jsonl or .csv file "
                              "instead of stdout.")
_FORMAT = flags.DEFINE_enum("format", None, ["jsonl", "csv"],
                            "Output format; default: --output's extension, else jsonl.")
_STRICT = flags.DEFINE_bool(
    "strict", False, "Refuse (an error line) films that would be analysed with a warning "
    "(outside the model's own intended use, inside a use widened by "
    "--widen_intended_use), instead of predicting them with it.")
_AGES = flags.DEFINE_string(
    "intended_ages", None, "YOUNGEST,OLDEST: the patients' ages in whole years this site "
    "analyses (from a DICOM header's PatientAge or birth and study dates); default: the "
    "package's (--info). A narrower range is yours to set; a wider one needs "
    "--widen_intended_use.")
_VIEWS = flags.DEFINE_list(
    "intended_views", None, "The DICOM ViewPosition values analysed (e.g. PA); default: "
    "the package's. Others need --widen_intended_use.")
_WIDEN = flags.DEFINE_bool(
    "widen_intended_use", False, "Allow --intended_ages or --intended_views wider than the "
    "package's intended use. Every record then carries widened_use, and a film outside "
    "the package's own use is analysed with a warning saying so.")
_EXPLAIN = flags.DEFINE_string(
    "explain", None, "Write an occlusion-sensitivity overlay per predicted film into this "
    "folder (<name>.occlusion.png), computed with the model itself: about 200 invokes a "
    "film. It shows what the model used, not a diagnostic localisation.")
_THREADS = flags.DEFINE_integer("threads", 1, "Interpreter threads.", lower_bound=1)
_INFO = flags.DEFINE_bool(
    "info", False, "Print what the model package is (network, version, threshold and its "
    "source, site calibration, training data) and its intended use, then exit.")

# Every field a record may hold, in the CSV's column order (the README's table lists
# each one; a test keeps the two the same).
RECORD_FIELDS = ("path", "prediction", "p_pneumonia", *runtime.SUBTYPE_FIELDS, "threshold",
                 "model_sha256", "warning", "widened_use", "latency_ms", "explanation",
                 "explain_ms", "not_analysed", "error", "skipped")

# A progress line on stderr at most this often (a folder of thousands of films takes
# minutes on a small device); the summary ends the run.
PROGRESS_SECONDS = 10.0


def _report_progress(done: int, total: int, rate: float, left: float, _) -> None:
  print(f"cxr-predict: {done}/{total} images, {rate:.1f}/s, about {left:.0f} s left",
        file=sys.stderr, flush=True)


def _explain(model: runtime.LiteModel, result: dict, folder: str, index: int) -> dict:
  """Writes the occlusion overlay of one predicted film; returns the record's additions."""
  start = time.perf_counter()
  with open(result["path"], "rb") as f:
    png = explain.overlay_png(model, f.read(), result)
  name = f"{index:05d}_{os.path.splitext(os.path.basename(result['path']))[0]}.occlusion.png"
  path = os.path.join(folder, name)
  with open(path, "wb") as f:
    f.write(png)
  return {"explanation": path, "explain_ms": round((time.perf_counter() - start) * 1000, 1)}


def _output_format() -> str:
  """jsonl or csv, from --format or --output's extension; refuses what cannot be written."""
  output = _OUTPUT.value
  if output and not output.endswith((".jsonl", ".csv")):
    raise errors.CxrError("--output must end in .jsonl or .csv")
  fmt = _FORMAT.value or ("csv" if (output or "").endswith(".csv") else "jsonl")
  if output and not output.endswith("." + fmt):
    raise errors.CxrError(f"--format={fmt} but --output ends in {os.path.splitext(output)[1]}")
  out_dir = os.path.dirname(os.path.abspath(output or "."))
  if output and not os.path.isdir(out_dir):
    raise errors.CxrError(f"--output's folder {out_dir} does not exist")
  return fmt


class _Tally:
  """What the run predicted, failed and skipped, for the summary line."""

  def __init__(self, labels, total: int, headline: str = "", notice=None):
    self.headline = headline  # which model: the summary names it
    self.notice = notice  # a smoke-test model's sentence, which the summary repeats
    self.total, self.ok, self.failed, self.skipped, self.warned = total, 0, 0, 0, 0
    self.not_analysed = 0
    self.latencies, self.explain_ms = [], []
    self.counts = {label: 0 for label in labels}
    self.subtypes = {}  # a three-class model's PNEUMONIA films by their likelier subtype

  def add(self, result: dict) -> None:
    if "error" in result:
      self.failed += 1
    elif "skipped" in result:
      self.skipped += 1
    elif "not_analysed" in result:
      self.not_analysed += 1
    else:
      self.ok += 1
      self.warned += bool(result["warning"])
      self.latencies.append(result["latency_ms"])
      self.counts[result["prediction"]] += 1
      if result.get("subtype"):
        self.subtypes[result["subtype"]] = self.subtypes.get(result["subtype"], 0) + 1
      if "explain_ms" in result:
        self.explain_ms.append(result["explain_ms"])

  def summary(self, interrupted: bool) -> str:
    done = self.ok + self.failed + self.skipped + self.not_analysed
    text = ("cxr-predict: " + (f"interrupted after {done} of {self.total}: "
                               if interrupted else "") + f"{self.ok} image(s) predicted"
            + (f" ({self.warned} with a warning)" if self.warned else "")
            + (f", {self.not_analysed} not analysed (outside the intended use)"
               if self.not_analysed else "")
            + f", {self.failed} failed"
            + (f", {self.skipped} skipped (not films)" if self.skipped else "") + "; "
            + ", ".join(f"{k} {v}" for k, v in self.counts.items())
            + (" (" + ", ".join(f"{k.lower()} {v}" for k, v in sorted(self.subtypes.items()))
               + ")" if self.subtypes else ""))
    if self.latencies:
      text += f"; latency p50 {np.percentile(self.latencies, 50):.2f} ms"
    if self.headline:
      text += f"; {self.headline}"
    if self.explain_ms:
      text += (f"; {len(self.explain_ms)} explanation(s) in {_EXPLAIN.value}, "
               f"{np.median(self.explain_ms) / 1000:.1f} s each (median)")
    if self.notice:
      text += f"\ncxr-predict: {self.notice}"
    return text


def _ages() -> Optional[Tuple[int, int]]:
  """--intended_ages as (youngest, oldest), or None when not given."""
  try:
    return intended_use.parse_age_range(_AGES.value)
  except ValueError as e:
    raise errors.ConfigError(f"--intended_ages: {e}") from None


def _writer(out, fmt: str):
  """A function that writes one result record to `out` in `fmt`."""
  if fmt == "jsonl":
    return lambda result: out.write(json.dumps(result) + "\n")
  writer = csv.DictWriter(out, RECORD_FIELDS)
  writer.writeheader()
  return writer.writerow


def main(argv):
  patterns = argv[1:]
  if _INFO.value:
    if patterns:
      raise app.UsageError("--info describes the model and reads no image")
    model = runtime.LiteModel(released.resolve(_MODEL.value), _THREADS.value)
    print(model.info.describe(model.sha256))
    print(released.version_of(model.sha256))
    return
  if not patterns:
    raise app.UsageError("give at least one image file, folder or glob")
  fmt = _output_format()
  model = runtime.LiteModel(released.resolve(_MODEL.value), _THREADS.value)
  model.for_site(_ages(), _VIEWS.value, _WIDEN.value)
  if _EXPLAIN.value:
    os.makedirs(_EXPLAIN.value, exist_ok=True)
  items = list(runtime.expand_paths(patterns))  # the total, for progress
  if _OUTPUT.value and os.path.realpath(_OUTPUT.value) in {os.path.realpath(i.path)
                                                           for i in items}:
    raise errors.CxrError(f"--output {_OUTPUT.value!r} is one of the inputs: writing it "
                          "would destroy it; choose another file")
  tally = _Tally(model.labels, len(items), model.info.headline(model.sha256),
                 model.info.notice)
  progress = cli.Progress(len(items), PROGRESS_SECONDS, _report_progress, at_end=False)
  interrupted = False
  out = open(_OUTPUT.value, "w", newline="", encoding="utf-8") if _OUTPUT.value else sys.stdout
  try:
    write = _writer(out, fmt)
    for done, result in enumerate(runtime.predict_paths(model, items, _STRICT.value), 1):
      progress.update(done)
      if _EXPLAIN.value and "prediction" in result:
        result.update(_explain(model, result, _EXPLAIN.value, done))
      tally.add(result)
      write(result)
  except KeyboardInterrupt:
    interrupted = True  # Ctrl-C: what was predicted is written; say so and how much
  finally:
    if out is not sys.stdout:
      out.close()
  print(tally.summary(interrupted), file=sys.stderr)
  if interrupted:
    sys.exit(130)
  if tally.failed:
    sys.exit(1)


def run():
  """Console-script entry point."""
  cli.run(main, __name__, prog="cxr-predict", about=released.describe)


if __name__ == "__main__":
  run()
