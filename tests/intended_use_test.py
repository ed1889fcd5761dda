"""core/intended_use.py: the rules as data, a header's refusals, a site's narrowing and
widening; and the README's intended-use paragraph held to the released package's rules."""
import os
import re

import pydicom
import pytest

from cxr_edge.core import errors
from cxr_edge.core import intended_use
from tests.conftest import ROOT


def header(**attributes):
  ds = pydicom.Dataset()
  ds.Modality = "DX"
  for keyword, value in attributes.items():
    setattr(ds, keyword, value)
  return ds


USE = intended_use.IntendedUse()


@pytest.mark.parametrize("attributes, reason", [
    ({"ViewPosition": "LL"}, "view LL (left lateral)"),
    ({"ViewPosition": "RLD"}, "view RLD (right lateral decubitus)"),
    ({"ViewPosition": "OBLIQUE"}, "view OBLIQUE (not a frontal view)"),
    ({"BodyPartExamined": "ABDOMEN"}, "body part ABDOMEN"),
    ({"BodyPartExamined": "SKULL"}, "body part SKULL"),
    ({"PatientAge": "045Y"}, "patient aged 45 years (PatientAge 045Y)"),
    ({"PatientAge": "006Y"}, "patient aged 6 years"),
    ({"PatientAge": "006M"}, "patient aged 6 months"),
    ({"PatientBirthDate": "19800101", "StudyDate": "20261201"}, "patient aged 47 years (born"),
    ({"PatientBirthDate": "20260301", "SeriesDate": "20261201"}, "patient aged 9 months"),
    ({"Modality": "CT"}, "modality CT is not a radiograph"),
])
def test_a_header_that_says_out_of_scope_is_refused_with_its_reason(attributes, reason):
  assert reason in USE.header_refusal(header(**attributes))


@pytest.mark.parametrize("attributes", [
    {},  # nothing said: a missing tag is not a refusal
    {"ViewPosition": "PA", "BodyPartExamined": "CHEST", "PatientAge": "003Y"},
    {"ViewPosition": "ap", "BodyPartExamined": "Thorax", "PatientAge": "060M"},
    {"PatientAge": "005Y"}, {"PatientAge": "001Y"}, {"PatientAge": "071M"},
    {"PatientBirthDate": "20230101", "StudyDate": "20261201"},
    {"PatientAge": "45 years"},  # unreadable: not a refusal
    {"PatientBirthDate": "2023-01-01", "StudyDate": "20261201"},
    {"PatientBirthDate": "20270101", "StudyDate": "20261201"},  # born after: unreadable
    {"ViewPosition": "", "BodyPartExamined": ""},
])
def test_a_header_within_the_rules_or_silent_is_not_refused(attributes):
  assert USE.header_refusal(header(**attributes)) is None


def test_the_rules_travel_as_package_fields_and_old_packages_get_todays():
  use = intended_use.IntendedUse(views=("PA",), min_age_years=2, max_age_years=4)
  assert intended_use.IntendedUse.from_fields(use.as_fields()) == use
  assert intended_use.IntendedUse.from_fields(None) == USE
  with pytest.raises(errors.PackageError, match="out of range"):
    intended_use.IntendedUse.from_fields({**USE.as_fields(), "age_years": [5, 1]})
  with pytest.raises(errors.PackageError, match="lack or mangle"):
    intended_use.IntendedUse.from_fields({**USE.as_fields(), "views": "PA"})


def test_a_site_narrows_freely_and_widens_only_when_it_says_so():
  narrow = USE.for_site(ages=(2, 4), views=("PA",))
  assert narrow.widened is None
  assert "aged 5 years" in narrow.header_refusal(header(PatientAge="005Y"))
  assert "view AP" in narrow.header_refusal(header(ViewPosition="AP"))
  with pytest.raises(errors.ConfigError, match="wider than the model's intended use.*"
                     "--widen_intended_use"):
    USE.for_site(ages=(0, 17))
  with pytest.raises(errors.ConfigError, match="views LL"):
    USE.for_site(views=("PA", "AP", "LL"))
  wide = USE.for_site(ages=(0, 17), widen=True)
  assert wide.widened == "ages 0-17 years (the model's: 1 to 5 years)"
  assert wide.header_refusal(header(PatientAge="012Y")) is None
  assert "aged 18 years" in wide.header_refusal(header(PatientAge="018Y"))
  with pytest.raises(errors.ConfigError, match="not a range"):
    USE.for_site(ages=(5, 1))


def test_the_readme_states_the_released_packages_rules():
  from cxr_edge.edge import released, runtime  # pylint: disable=g-import-not-at-top
  use = runtime.LiteModel(released.path()).info.use
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  paragraph = re.search(r"\*\*Intended use\.\*\*(.*?)\n\n", readme, re.S).group(1)
  paragraph = " ".join(paragraph.split())
  assert f"children aged {use.age_range()}" in paragraph
  assert f"frontal ({'/'.join(use.views)})" in paragraph
  for refused in ("lateral", "decubitus", "body part", "age", "photographs", "turned",
                  "upside down", "inverted", "cropped", "NOT ANALYSED"):
    assert refused in paragraph, refused
