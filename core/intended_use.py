"""What a model is for, as data: the rules every reader of a package applies to a film.

The package's metadata holds the rules (package field "intended_use_rules"): the
modalities, the views, the body part and the age range the model was made for. The
runtime refuses a DICOM film whose header says otherwise (`header_refusal`), cxr-predict
--info and the model card print them (`describe`), and the README's intended-use
paragraph is held to them by a test. A tag that is missing or unreadable is not a
refusal: a header can only take a film out of scope by saying so.

A site may narrow the rules (`for_site`: a smaller age range, fewer views). It may widen
them only with an explicit flag; the widening is then named on every result of the run
(`widened`), and a film outside the model's own rules is analysed with a warning.
TensorFlow-free; reads a pydicom dataset's attributes only.
"""
import dataclasses
import datetime
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from cxr_edge.core import film
from cxr_edge.core.errors import ConfigError
from cxr_edge.core.errors import PackageError

# The training films are frontal chest radiographs of children aged one to five (the
# data's paper); a film outside that is outside what the model was ever shown.
MODALITIES = film.RADIOGRAPH_MODALITIES  # what the film reader takes as a radiograph
VIEWS = ("PA", "AP")
BODY_PARTS = ("CHEST", "THORAX", "LUNG")
MIN_AGE_YEARS = 1
MAX_AGE_YEARS = 5  # inclusive: a child of 5 years and 11 months is in, one of 6 is out

# What a view that is not frontal is, for the reason's words (ViewPosition, PS3.3 C.8.11.5).
_VIEW_NAMES = {"LL": "left lateral", "RL": "right lateral", "LAT": "lateral",
               "LATERAL": "lateral", "LLD": "left lateral decubitus",
               "RLD": "right lateral decubitus", "LAO": "oblique", "RAO": "oblique",
               "LPO": "oblique", "RPO": "oblique", "OBL": "oblique"}
_AGE = re.compile(r"^(\d{3})([DWMY])$")
_DAYS = {"D": 1, "W": 7, "M": 365.25 / 12, "Y": 365.25}
# Where a study's date may be when StudyDate is missing, in order.
_DATE_TAGS = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")


def _text(header: Any, keyword: str) -> str:
  """A header attribute as upper-case text, "" when missing or unreadable."""
  try:
    value = getattr(header, keyword, None)
  except Exception:  # pylint: disable=broad-except  # pydicom raises many kinds on bad values
    return ""
  if value is None:
    return ""
  if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
    value = "\\".join(str(v) for v in value)
  return str(value).strip().upper()


def _date(text: str) -> Optional[datetime.date]:
  try:
    return datetime.datetime.strptime(text[:8], "%Y%m%d").date()
  except ValueError:
    return None


def dicom_age_years(text: Any) -> Optional[float]:
  """A DICOM Age String (nnnD, nnnW, nnnM, nnnY) in years, or None if it is not one."""
  match = _AGE.match(str(text if text is not None else "").strip().upper())
  return int(match.group(1)) * _DAYS[match.group(2)] / 365.25 if match else None


def parse_age_range(text: str) -> Optional[Tuple[int, int]]:
  """A site's YOUNGEST,OLDEST in whole years (--intended_ages), or None for empty text.

  Raises:
    ValueError: not two whole numbers (the message says what to give).
  """
  parts = [t.strip() for t in str(text or "").split(",") if t.strip()]
  if not parts:
    return None
  if len(parts) != 2 or not all(p.isdigit() for p in parts):
    raise ValueError(f"{text!r} is not YOUNGEST,OLDEST in whole years (e.g. 1,5)")
  return int(parts[0]), int(parts[1])


def age_years(header: Any) -> Optional[Tuple[float, str]]:
  """The patient's age in years and where it came from, or None when the header does not
  say (or says it unreadably): PatientAge ("004Y", "030M"), else the birth date and the
  study date."""
  stated = _text(header, "PatientAge")
  years = dicom_age_years(stated)
  if years is not None:
    return years, "PatientAge " + stated
  born = _date(_text(header, "PatientBirthDate"))
  taken = next((d for d in (_date(_text(header, t)) for t in _DATE_TAGS) if d), None)
  if born is None or taken is None or taken < born:
    return None
  return (taken - born).days / 365.25, f"born {born.isoformat()}, taken {taken.isoformat()}"


@dataclasses.dataclass(frozen=True)
class IntendedUse:
  """The rules a film must meet to be analysed, and what a site changed of them."""
  modalities: Tuple[str, ...] = MODALITIES
  views: Tuple[str, ...] = VIEWS
  body_parts: Tuple[str, ...] = BODY_PARTS
  min_age_years: int = MIN_AGE_YEARS
  max_age_years: int = MAX_AGE_YEARS  # inclusive, in whole years
  widened: Optional[str] = None  # what the site widened, said on every result; None: nothing

  def as_fields(self) -> Dict[str, Any]:
    """The package field "intended_use_rules" (the rules only: a site's changes are the
    site's, not the package's)."""
    return {"modalities": list(self.modalities), "views": list(self.views),
            "body_parts": list(self.body_parts),
            "age_years": [self.min_age_years, self.max_age_years]}

  @classmethod
  def from_fields(cls, fields: Optional[Mapping[str, Any]], name: str = "model") -> "IntendedUse":
    """The rules of a package; a package from before they were recorded gets today's.

    Raises:
      PackageError: a field of the wrong type or out of range.
    """
    if fields is None:
      return cls()
    try:
      low, high = (int(v) for v in fields["age_years"])
      use = cls(modalities=_upper(fields["modalities"]), views=_upper(fields["views"]),
                body_parts=_upper(fields["body_parts"]), min_age_years=low,
                max_age_years=high)
    except (KeyError, TypeError, ValueError) as e:
      raise PackageError(f"{name}: its intended-use rules lack or mangle a field "
                         f"({type(e).__name__}: {e})") from None
    if not (0 <= low <= high <= 130 and use.modalities and use.views and use.body_parts):
      raise PackageError(f"{name}: its intended-use rules are out of range "
                         f"({use.as_fields()})")
    return use

  def for_site(self, ages: Optional[Sequence[int]] = None,
               views: Optional[Sequence[str]] = None, widen: bool = False) -> "IntendedUse":
    """The rules a site applies: the package's, narrowed (or, with `widen`, widened).

    Args:
      ages: (youngest, oldest) in whole years, inclusive; None keeps the package's.
      views: the ViewPosition values analysed; None keeps the package's.
      widen: allow ages or views beyond the package's; the result then names what was
        widened on every result.

    Raises:
      ConfigError: a wider rule without `widen` (one line saying how), or a bad range.
    """
    low, high = (self.min_age_years, self.max_age_years) if ages is None else (
        int(ages[0]), int(ages[1]))
    if not 0 <= low <= high <= 130:
      raise ConfigError(f"age range {low}-{high} is not a range of years (youngest first)")
    chosen = self.views if views is None else _upper(views)
    wider = []
    if low < self.min_age_years or high > self.max_age_years:
      wider.append(f"ages {low}-{high} years (the model's: {self.age_range()})")
    extra = [v for v in chosen if v not in self.views]
    if extra:
      wider.append(f"views {', '.join(extra)} (the model's: {', '.join(self.views)})")
    if wider and not widen:
      raise ConfigError(f"{'; '.join(wider)} is wider than the model's intended use: a site "
                        "may narrow it; widening needs --widen_intended_use, and every "
                        "result then says so")
    return dataclasses.replace(self, views=chosen, min_age_years=low, max_age_years=high,
                               widened=("; ".join(wider) or None) if widen else None)

  def age_range(self) -> str:
    return f"{self.min_age_years} to {self.max_age_years} years"

  def header_refusal(self, header: Any) -> Optional[str]:
    """Why a DICOM film's header takes it out of these rules, or None (missing tags are
    not a refusal)."""
    modality = _text(header, "Modality")
    if modality and modality not in self.modalities:
      return f"modality {modality} is not a radiograph ({', '.join(self.modalities)})"
    view = _text(header, "ViewPosition")
    if view and view not in self.views:
      kind = _VIEW_NAMES.get(view, "not a frontal view")
      return (f"view {view} ({kind}): the model reads frontal films only "
              f"({'/'.join(self.views)})")
    part = _text(header, "BodyPartExamined")
    if part and part not in self.body_parts:
      return f"body part {part}: the model reads chest films only"
    age = age_years(header)
    if age is not None:
      years, source = age
      if not self.min_age_years <= years < self.max_age_years + 1:
        return (f"patient aged {_years(years)} ({source}): the model is for children aged "
                f"{self.age_range()}")
    return None

  def describe(self) -> str:
    """The rules in one sentence, as --info, the model card and the README state them."""
    return (f"Analysed: frontal ({'/'.join(self.views)}) chest radiographs "
            f"({'/'.join(self.modalities)}) of children aged {self.age_range()}. Not "
            "analysed (no finding, the reason given): a DICOM header that says another "
            "view (lateral, decubitus), body part, modality or age; and any image whose "
            "look the model's image gate does not recognise as such a film (photographs, "
            "documents, screenshots, other imaging, films turned, upside down, inverted "
            "or cropped).")


def _upper(values: Sequence[str]) -> Tuple[str, ...]:
  if isinstance(values, str):
    raise TypeError("a list of values, not a string")
  return tuple(str(v).strip().upper() for v in values if str(v).strip())


def _years(years: float) -> str:
  return f"{years:.0f} years" if years >= 2 else f"{years * 12:.0f} months"
