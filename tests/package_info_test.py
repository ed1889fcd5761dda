"""core/package_info.py: the one reader, upgrade path and set of checks of package metadata."""
import math

import pytest

from cxr_edge.core import package_info
from cxr_edge.core import schema
from cxr_edge.core.errors import ModelError, PackageError


def _package(classes=None, **overrides):
  fields = package_info.package_fields(
      labels=list(schema.LABELS), threshold=0.375, output_prior=0.5, model="edge_cnn",
      input={"size": 150}, preprocessing={"scale": schema.SCALE},
      credit="Kermany et al. (2018)", **({"classes": classes} if classes else {}))
  fields.update(overrides)
  return fields


def _entry(**overrides):
  entry = {"threshold": 0.375, "temperature": 1.2, "output_kind": "logits",
           "input": {"dtype": "int8"}, "threshold_source": "cxr-train: prevalence"}
  entry.update(overrides)
  return entry


def test_a_current_package_reads_as_written():
  info = package_info.ModelInfo.from_metadata(_package(), _entry(), "m.tflite")
  assert (info.labels, info.image_size, info.threshold, info.temperature) == (
      schema.LABELS, 150, 0.375, 1.2)
  # A binary package stays format 2, which readers before three-class models accept.
  assert info.format_version == package_info.BINARY_FORMAT_VERSION
  assert info.classes == schema.LABELS
  assert info.intended_use == package_info.INTENDED_USE
  assert info.output_prior == 0.5 and info.input_dtype == "int8"


def test_a_three_class_package_names_its_outputs_and_is_refused_by_older_readers():
  fields = _package(classes=list(schema.TASK_CLASSES[schema.TASK_SUBTYPE]))
  assert "classes" not in _package(classes=list(schema.LABELS))
  # Format 3: a reader of format 2 refuses it instead of taking p_bacterial for
  # p_pneumonia.
  assert fields["format_version"] == package_info.FORMAT_VERSION == 3
  info = package_info.ModelInfo.from_metadata(fields, _entry(), "m.tflite")
  assert info.classes == ("NORMAL", "BACTERIAL", "VIRAL") and info.labels == schema.LABELS
  assert "p_bacterial + p_viral" in info.describe("ab" * 32)
  assert ("classes", ["NORMAL", "BACTERIAL", "VIRAL"]) in info.decisive()


def test_an_older_package_is_upgraded_in_one_place():
  """Format 1: no intended use, version or prior; entries without threshold or kind."""
  old = {"labels": list(schema.LABELS), "threshold": 0.42, "input": {"size": 150},
         "preprocessing": {"scale": schema.SCALE}}
  info = package_info.ModelInfo.from_metadata(old, {"input": {"dtype": "float32"}}, "old")
  assert info.format_version == 1 and info.cxr_edge_version is None
  assert info.threshold == 0.42  # the package's, when the entry has none
  assert (info.temperature, info.output_kind, info.output_prior) == (1.0, "probabilities",
                                                                      None)
  assert info.intended_use == package_info.INTENDED_USE


@pytest.mark.parametrize("package,entry,says", [
    (_package(labels=list(reversed(schema.LABELS))), _entry(), "labels"),
    (_package(), _entry(temperature=math.inf), "temperature inf"),
    (_package(), _entry(temperature=0.0), "temperature 0.0"),
    (_package(), _entry(threshold=1.0), "threshold 1.0"),
    (_package(), _entry(output_kind="softmax"), "output kind 'softmax'"),
    (_package(output_prior=1.5), _entry(), "output prior 1.5"),
    (_package(input={"size": 2}), _entry(), "input size 2"),
    (_package(preprocessing={"scale": -1.0}), _entry(), "scale -1.0"),
    (_package(format_version=99), _entry(), "upgrade cxr-edge"),
    (_package(classes=["NORMAL", "VIRAL", "BACTERIAL"]), _entry(), "classes ['NORMAL', 'VIRAL'"),
])
def test_impossible_values_are_refused_naming_the_field(package, entry, says):
  with pytest.raises(PackageError, match="metadata out of range") as e:
    package_info.ModelInfo.from_metadata(package, entry, "m.tflite")
  assert says in str(e.value) and "\n" not in str(e.value)
  assert isinstance(e.value, ModelError)  # what the runtime's callers catch


@pytest.mark.parametrize("package,entry", [
    ({"labels": list(schema.LABELS)}, _entry()),  # no input size
    (_package(), {"threshold": 0.5}),  # no input dtype
    (_package(input="150"), _entry()),  # mangled
])
def test_missing_or_mangled_fields_are_refused_in_one_line(package, entry):
  with pytest.raises(PackageError, match="lacks or mangles a field"):
    package_info.ModelInfo.from_metadata(package, entry, "m.tflite")


def test_describe_says_what_and_for_whom():
  info = package_info.ModelInfo.from_metadata(
      _package(site_calibration={"date": "2026-12-01T10:00:00+00:00"}), _entry(), "m.tflite")
  text = info.describe("ab" * 32)
  assert "m.tflite (edge_cnn" in text and "ab" * 32 in text
  assert "p_pneumonia >= 0.3750" in text and "cxr-train: prevalence" in text
  assert "calibrated by cxr-calibrate on 2026-12-01" in text
  assert "Intended use: " + package_info.INTENDED_USE in text


def test_decisive_fields_differ_when_a_decision_would():
  a = package_info.ModelInfo.from_metadata(_package(), _entry(), "m")
  b = package_info.ModelInfo.from_metadata(_package(), _entry(threshold=0.5), "m")
  assert a.decisive() != b.decisive()
  assert dict(a.decisive())["threshold"] == 0.375
