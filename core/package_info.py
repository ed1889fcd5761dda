"""The model package's metadata, typed: one reader, one upgrade path, one set of checks.

A model package is a `.tflite` whose embedded metadata (edge/package.py) holds two JSON
objects: the package's fields (labels, input, preprocessing, provenance, intended use)
and the model's own entry (threshold, temperature, output kind, I/O quantization).
cxr-export writes them (`new_package`), cxr-calibrate rewrites the entry, the runtime and
the model card read them through `ModelInfo.from_metadata`, which is the only code that
knows what older packages lack and the only code that checks the values.

The integrity digest beside these fields guards against accidents and naive edits, not
against someone who recomputes it: it is not a signature. So every field that decides a
prediction is also checked here for what can be checked (label order, finite positive
temperature, a threshold strictly between 0 and 1, a sane input size and scale).
"""
import dataclasses
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

from cxr_edge.core import intended_use as intended_use_lib
from cxr_edge.core import schema
from cxr_edge.core.errors import ConfigError
from cxr_edge.core.errors import PackageError
from cxr_edge.core.version import __version__

# 1: packages before this field existed (no intended use, version or format_version).
# 2: format_version, intended_use and cxr_edge_version in the package's fields.
# 3: "classes", the model's outputs, when they are not "labels" (a three-class model).
#    Only such packages say 3: a reader of format 2 would take their second output
#    (BACTERIAL) for p_pneumonia, so it must refuse them; binary packages stay 2.
FORMAT_VERSION = 3
BINARY_FORMAT_VERSION = 2

INTENDED_USE = (
    "Second-reader triage aid for frontal chest radiographs of children aged one to five: "
    "it flags films that may show pneumonia so that a clinician reads them first (a three-class "
    "model also names the likelier kind, bacterial or viral: the reading of the training "
    "data's graders that it learned, not a microbiological diagnosis, and never on its "
    "own a reason to give or withhold antibiotics). Trained on one "
    "paediatric centre's films (children aged one to five, Guangzhou). Not a diagnosis; "
    "not cleared by any regulator; not for adults, lateral views, CT or any other "
    "finding. Every decision it informs stays with a clinician; measure it on your own "
    "films first (cxr-calibrate).")

OUTPUT_KINDS = ("logits", "probabilities")

# What a model is, recorded at export (package field "training"): the released model
# (scripts/release_model.sh, shipped in edge/released/), an experimental one (any other
# export), or a smoke-test model, trained on too few films to mean anything.
KIND_RELEASED, KIND_EXPERIMENTAL, KIND_SMOKE = "released", "experimental", "smoke"
MODEL_KINDS = (KIND_RELEASED, KIND_EXPERIMENTAL, KIND_SMOKE)
# A model trained on fewer films than this is a smoke-test model, whatever the exporter
# asks: the embedded sample (301 films, 241 trained on) is far below it, the public
# release's training split (about 4,200) far above.
SMOKE_MAX_TRAINING_FILMS = 1000


def smoke_notice(films: Optional[int]) -> str:
  """The plain sentence every result of a smoke-test model carries."""
  count = f"only {films} films" if films else "too few films"
  return (f"SMOKE-TEST MODEL: trained on {count}; it is for trying the software, not for "
          "films of patients.")


def training_fields(kind: Optional[str], films: int, converted: int,
                    source: str) -> Dict[str, Any]:
  """A new package's "training" field: what kind of model it is and what it learned from.

  Args:
    kind: one of MODEL_KINDS, or None: smoke below SMOKE_MAX_TRAINING_FILMS training
      films, else experimental.
    films: films in the training split.
    converted: films in the whole conversion (training, validation and test splits).
    source: where the films came from (the credit).

  Raises:
    ConfigError: an unknown kind, or released/experimental for a model trained on fewer
      than SMOKE_MAX_TRAINING_FILMS films.
  """
  too_few = films < SMOKE_MAX_TRAINING_FILMS
  if kind is None:
    kind = KIND_SMOKE if too_few else KIND_EXPERIMENTAL
  if kind not in MODEL_KINDS:
    raise ConfigError(f"model kind {kind!r} is not one of {', '.join(MODEL_KINDS)}")
  if too_few and kind != KIND_SMOKE:
    raise ConfigError(f"a model trained on {films} films (fewer than "
                      f"{SMOKE_MAX_TRAINING_FILMS}) can only be a {KIND_SMOKE} model")
  return {"kind": kind, "films": int(films), "converted_films": int(converted),
          "source": source}


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """What a runtime needs to use one model file right, and what it may tell its user."""
  name: str  # the model file's name
  labels: Tuple[str, ...]  # the decision's: NORMAL, PNEUMONIA
  classes: Tuple[str, ...]  # the model's outputs, in order (schema.TASK_CLASSES)
  image_size: int
  scale: float
  threshold: float
  threshold_source: Optional[str]
  temperature: float
  output_kind: str  # "logits" (cxr-export's) or "probabilities" (older exports)
  input_dtype: str
  output_prior: Optional[float]  # the PNEUMONIA share the probabilities assume
  intended_use: str
  use: intended_use_lib.IntendedUse  # the rules: what is analysed and what is refused
  model: Optional[str]  # the network's name (edge_cnn)
  credit: Optional[str]
  format_version: int
  cxr_edge_version: Optional[str]  # the version that exported it (None before format 2)
  site_calibration: Optional[Dict[str, Any]]
  training: Optional[Dict[str, Any]]  # training_fields(); None before it was recorded

  @classmethod
  def from_metadata(cls, package: Mapping[str, Any], entry: Mapping[str, Any],
                    name: str, check: bool = True) -> "ModelInfo":
    """Reads, upgrades and checks a package's fields and a model's entry.

    Older packages: format 1 lacks the intended use (the current text stands in), the
    version, and may lack a per-model threshold (the package's), a temperature (1.0), an
    output kind (probabilities) and the class prior (None: cxr-calibrate --prevalence
    then refuses it).

    Args:
      package: the package's fields (metadata.json without "models").
      entry: the model's own entry.
      name: the model file's name, for messages.
      check: refuse values out of range (`check`); False only to compare two
        descriptions of one model before either is used.

    Raises:
      PackageError: a field missing, of the wrong type or out of range (one line).
    """
    try:
      info = cls(
          name=name,
          labels=tuple(str(label) for label in package["labels"]),
          classes=tuple(str(c) for c in package.get("classes", package["labels"])),
          image_size=int(package["input"]["size"]),
          scale=float(package["preprocessing"]["scale"]),
          threshold=float(entry.get("threshold", package.get("threshold"))),
          threshold_source=entry.get("threshold_source"),
          temperature=float(entry.get("temperature", 1.0)),
          output_kind=str(entry.get("output_kind", "probabilities")),
          input_dtype=str(entry["input"]["dtype"]),
          output_prior=(None if package.get("output_prior") is None
                        else float(package["output_prior"])),
          intended_use=str(package.get("intended_use") or INTENDED_USE),
          use=intended_use_lib.IntendedUse.from_fields(package.get("intended_use_rules"),
                                                       name),
          model=package.get("model"),
          credit=package.get("credit"),
          format_version=int(package.get("format_version", 1)),
          cxr_edge_version=package.get("cxr_edge_version"),
          site_calibration=package.get("site_calibration"),
          training=package.get("training"))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
      raise PackageError(f"{name}: its metadata lacks or mangles a field "
                         f"({type(e).__name__}: {e})") from None
    if check:
      info.check()
    return info

  def check(self) -> None:
    """Refuses values no export writes (one line, naming the field)."""
    problems = []
    if self.labels != schema.LABELS:
      problems.append(f"labels {list(self.labels)} (expected {list(schema.LABELS)}, in "
                      "that order)")
    if self.classes not in schema.TASK_CLASSES.values():
      problems.append(f"classes {list(self.classes)} (expected one of "
                      f"{[list(c) for c in schema.TASK_CLASSES.values()]})")
    if not 8 <= self.image_size <= 4096:
      problems.append(f"input size {self.image_size}")
    if not (math.isfinite(self.scale) and self.scale > 0):
      problems.append(f"scale {self.scale}")
    if not 0.0 < self.threshold < 1.0:
      problems.append(f"threshold {self.threshold}")
    if not (math.isfinite(self.temperature) and 0.01 <= self.temperature <= 100):
      problems.append(f"temperature {self.temperature}")
    if self.output_kind not in OUTPUT_KINDS:
      problems.append(f"output kind {self.output_kind!r}")
    if self.output_prior is not None and not 0.0 < self.output_prior < 1.0:
      problems.append(f"output prior {self.output_prior}")
    if self.training is not None and self.training.get("kind") not in MODEL_KINDS:
      problems.append(f"training kind {self.training.get('kind')!r}")
    if self.format_version > FORMAT_VERSION:
      problems.append(f"format {self.format_version}, newer than this cxr-edge reads "
                      f"({FORMAT_VERSION}): upgrade cxr-edge")
    if problems:
      raise PackageError(f"{self.name}: metadata out of range ({'; '.join(problems)}): "
                         "refusing to make decisions with it")

  def decisive(self) -> List[Tuple[str, Any]]:
    """The fields that decide a prediction, for comparing two descriptions of one model."""
    return [("labels", list(self.labels)), ("classes", list(self.classes)),
            ("input size", self.image_size),
            ("preprocessing scale", self.scale), ("threshold", self.threshold),
            ("temperature", self.temperature), ("output kind", self.output_kind)]

  @property
  def kind(self) -> Optional[str]:
    """released, experimental or smoke; None for a package from before it was recorded."""
    return (self.training or {}).get("kind")

  @property
  def notice(self) -> Optional[str]:
    """The sentence a smoke-test model's every result carries; None for other models."""
    if self.kind != KIND_SMOKE:
      return None
    return smoke_notice((self.training or {}).get("films"))

  def headline(self, sha256: str) -> str:
    """Which model made a result, in a few words: its kind, file and short sha256."""
    return (f"{self.kind or 'kind-not-recorded'} model {self.name} "
            f"(sha256 {sha256[:12]})")

  def trained_on(self) -> str:
    """What kind of model this is and the films it learned from, in one line."""
    if not self.training:
      return "not recorded (exported before cxr-edge recorded it)"
    t = self.training
    return (f"{t['kind']} model; {t['films']:,} training films (of {t['converted_films']:,} "
            "converted: the rest set its threshold and tested it)")

  def describe(self, sha256: str) -> str:
    """What `cxr-predict --info` prints: what the package is, for whom, and how it decides."""
    calibrated = self.site_calibration
    lines = [
        f"model:        {self.name} ({self.model or 'unknown network'}, "
        f"exported by cxr-edge {self.cxr_edge_version or 'before 0.2'}, "
        f"metadata format {self.format_version})",
        f"sha256:       {sha256}",
        f"classes:      {', '.join(self.classes)}; prediction is {schema.POSITIVE_LABEL} when "
        f"p_pneumonia >= {self.threshold:.4f}"
        + ("" if self.classes == self.labels else
           f" (p_pneumonia = {' + '.join('p_' + c.lower() for c in self.classes[1:])}; "
           "the subtype is the likelier of the two)"),
        f"threshold:    {self.threshold:.4f} ({self.threshold_source or 'set at export'})",
        f"input:        {self.image_size}x{self.image_size} grayscale, {self.input_dtype}",
        "site:         " + (f"calibrated by cxr-calibrate on {calibrated.get('date')}"
                             + (f" AS AN EXPERIMENT ({calibrated['few_films']})"
                                if calibrated.get("few_films") else "")
                             if calibrated else "not calibrated for a site (cxr-calibrate)"),
        f"trained:      {self.trained_on()}",
        f"data:         {self.credit or 'not recorded'}",
        "",
        *([self.notice, ""] if self.notice else []),
        "Intended use: " + self.intended_use,
        "",
        self.use.describe(),
    ]
    return "\n".join(lines)


def package_fields(**fields: Any) -> Dict[str, Any]:
  """A new package's fields (cxr-export): `fields` plus the format, version and use.

  "classes" is kept only where it differs from "labels" (then format 3, which readers
  before it refuse); a binary package is format 2, as before.
  """
  if tuple(fields.get("classes", fields["labels"])) == tuple(fields["labels"]):
    fields.pop("classes", None)
    version = BINARY_FORMAT_VERSION
  else:
    version = FORMAT_VERSION
  return {**fields, "format_version": version, "cxr_edge_version": __version__,
          "intended_use": INTENDED_USE,
          "intended_use_rules": intended_use_lib.IntendedUse().as_fields()}
