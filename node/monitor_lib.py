"""How the model does at this site: its figures on the films readers gave a verdict on,
beside the figures it was released with, and alarms when its inputs or outputs drift.

Everything here reads the spool's audit log (one line per film: the model's sha256, its
output, the guard's warning and, since this module, the film's header mix and pixel
statistics, never a name or id) and the readers' verdicts (node/verdicts.py); nothing
is written but alarms' log lines.

Site performance, per model sha256 (a new model's figures start afresh) and date range:
sensitivity, specificity, PPV, NPV and accuracy with 95% Wilson intervals; the
agreement on the kind (bacterial or viral) where readers name it; ROC-AUC with the
Hanley-McNeil interval where each class has MIN_AUC_FILMS films; and the share of films
with a verdict (how representative the figures are: readers choose which films they
record). Each is set beside the stated figure: the released model's external figures,
or a site-calibrated package's own measured ones. Verdict per figure: "worse than
stated" when its whole interval lies below the stated value, else "consistent".

Drift: the model's first BASELINE_FILMS films at this site are its baseline; the newest
WINDOW_FILMS films are compared with it (rules in RULES, each with why). Pipeline alarms
come from the node's status (films or reports waiting, dead letters, quarantine).
"""
import contextlib
import dataclasses
import datetime
import json
import logging
import math
import os
import shlex
import subprocess
import sys
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from cxr_edge.core import errors
from cxr_edge.core import intended_use
from cxr_edge.core import metrics
from cxr_edge.core import site_log
from cxr_edge.edge import released
from cxr_edge.node import background
from cxr_edge.node import spool as spool_lib
from cxr_edge.node import verdicts as verdicts_lib

log = logging.getLogger("cxr_edge.node")

BASELINE_FILMS = 200
WINDOW_FILMS = 200
MIN_AUC_FILMS = 10
# Population stability index: < 0.1 no shift, 0.1-0.25 a moderate one, > 0.25 a major
# one (the credit-scoring rule of thumb; the usual choice for model monitoring).
PSI_ALARM = 0.25
# A two-proportion z beyond this (p < 0.003, two-sided) for a rate: checked every few
# minutes, a looser bound would ring falsely within weeks.
Z_ALARM = 3.0
# A manufacturer or view position this common in the window, and rare in the baseline.
NEW_SOURCE_SHARE, RARE_SHARE = 0.10, 0.01
# Intended use: young children. A window with more than this share aged over 10 years.
ADULT_AGE_YEARS, ADULT_SHARE = 10.0, 0.10
# Pipeline: a film or report waiting longer than these, in seconds.
FILM_WAIT_ALARM_S, REPORT_WAIT_ALARM_S = 600.0, 1800.0

RULES = {
    "p_pneumonia_shift": f"the distribution of p_pneumonia in the newest {WINDOW_FILMS} "
    f"films differs from the baseline's: PSI over {PSI_ALARM} (a major shift)",
    "positive_rate": f"the share of films flagged PNEUMONIA differs from the baseline's "
    f"(two-proportion z beyond {Z_ALARM:g})",
    "warning_rate": f"more films are analysed with a warning than in the baseline (z "
    f"beyond {Z_ALARM:g}): films outside the model's own intended use arrive in a use the "
    "site widened",
    "pixel_shift": f"the films' mean brightness is distributed unlike the baseline's "
    f"(PSI over {PSI_ALARM}): a new unit, protocol or processing, or inverted films",
    "new_equipment": f"a manufacturer, unit model or view position makes up over "
    f"{NEW_SOURCE_SHARE:.0%} of the newest films and under {RARE_SHARE:.0%} of the baseline's",
    "adults": f"over {ADULT_SHARE:.0%} of the newest films are of patients older than "
    f"{ADULT_AGE_YEARS:g} years: outside the intended use (young children)",
    "films_waiting": f"a film has waited over {FILM_WAIT_ALARM_S / 60:g} minutes to be read",
    "reports_waiting": f"a report has waited over {REPORT_WAIT_ALARM_S / 60:g} minutes for "
    "the PACS",
    "dead_letters": "the PACS refused reports for good (dead_letter/)",
    "quarantined": "damaged files were set aside (quarantine/)",
}


def film_inputs(header: Any, gray: Optional[np.ndarray]) -> Dict[str, Any]:
  """What drift is watched on, from a film's header and decoded pixels: no name or id."""
  def text(keyword):
    value = header.get(keyword) if header is not None else None
    return str(value).strip()[:64] if value not in (None, "") else None
  out = {"manufacturer": text("Manufacturer"), "unit_model": text("ManufacturerModelName"),
         "view_position": text("ViewPosition"), "age_years": age_years(text("PatientAge"))}
  if gray is not None and gray.size > 1:
    out["pixel_mean"] = round(float(gray.mean()), 2)
    out["pixel_std"] = round(float(gray.std()), 2)
  return out


def age_years(text: Optional[str]) -> Optional[float]:
  """A DICOM Age String (nnnD, nnnW, nnnM, nnnY) in years to two decimals, or None."""
  years = intended_use.dicom_age_years(text)
  return None if years is None else round(years, 2)


@dataclasses.dataclass(frozen=True, slots=True)
class Read:
  """What the monitor keeps of one audit line: a film a model read (or failed to).

  A busy year's audit log holds 100,000 lines: kept as parsed JSON they took 410 MB;
  kept as these, with their repeated strings shared, about a tenth of that."""
  uid: str
  day: Optional[str]  # YYYY-MM-DD (UTC)
  sha256: Optional[str]
  prediction: Optional[str]
  p_pneumonia: Optional[float]
  subtype: Optional[str]
  warned: bool
  failed: bool
  manufacturer: Optional[str] = None
  unit_model: Optional[str] = None
  view_position: Optional[str] = None
  age_years: Optional[float] = None
  pixel_mean: Optional[float] = None

  @property
  def analysed(self) -> bool:
    return not self.failed and bool(self.prediction) and self.p_pneumonia is not None

  @property
  def flagged(self) -> bool:
    return self.prediction not in (None, "NORMAL")


def _shared(value: Any) -> Optional[str]:
  return sys.intern(str(value)) if value not in (None, "") else None


def _number(value: Any) -> Optional[float]:
  return float(value) if isinstance(value, (int, float)) and not isinstance(
      value, bool) else None


def read_of(line: Dict[str, Any]) -> Read:
  """An audit line as the monitor keeps it."""
  inputs = line.get("inputs") if isinstance(line.get("inputs"), dict) else {}
  time_text = line.get("time")
  return Read(uid=str(line.get("sop_instance_uid")),
              day=_shared(time_text[:10]) if isinstance(time_text, str) else None,
              sha256=_shared(line.get("model_sha256")),
              prediction=_shared(line.get("prediction")),
              p_pneumonia=site_log.probability(line.get("p_pneumonia")),
              subtype=_shared(line.get("subtype")), warned=bool(line.get("warning")),
              failed=bool(line.get("error")),
              manufacturer=_shared(inputs.get("manufacturer")),
              unit_model=_shared(inputs.get("unit_model")),
              view_position=_shared(inputs.get("view_position")),
              age_years=_number(inputs.get("age_years")),
              pixel_mean=_number(inputs.get("pixel_mean")))


class Audit:
  """The audit log's lines (as Read), read once and then only what was appended since."""

  def __init__(self, spool_root: str):
    self._tail = site_log.Tail(os.path.join(spool_root, spool_lib.AUDIT_NAME), read_of)
    self._lock = threading.Lock()
    self._lines: List[Read] = []

  def lines(self) -> List[Read]:
    with self._lock:
      afresh, new = self._tail.new()
      if afresh:
        self._lines = []
      self._lines.extend(new)
      return self._lines


# Site performance ----------------------------------------------------------------------

def in_range(read: Read, since: Optional[str], until: Optional[str]) -> bool:
  """Whether a film's date (YYYY-MM-DD, UTC) is within [since, until]."""
  day = read.day
  return day is not None and (since is None or day >= since) and (
      until is None or day <= until)


def _proportion(successes: int, n: int, stated: Optional[float]) -> Dict[str, Any]:
  value = successes / n if n else None
  low, high = metrics.wilson_interval(successes, n) if n else (None, None)
  out = {"value": value, "ci95": [low, high], "n": n, "stated": stated}
  out["verdict"] = verdict(high, stated)
  return out


def verdict(high: Optional[float], stated: Optional[float]) -> str:
  """"worse than stated" when the interval's top is below the stated value."""
  if high is None or stated is None:
    return "no figure" if high is None else "nothing stated"
  return "worse than stated" if high < stated else "consistent"


def auc_interval(auc: float, positives: int, negatives: int) -> Tuple[float, float]:
  """Hanley & McNeil's (1982) 95% interval of a ROC-AUC: closed-form, so the page can
  show it over any number of films at once (a bootstrap is too slow for that)."""
  q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
  variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc)
              + (negatives - 1) * (q2 - auc * auc)) / (positives * negatives)
  half = metrics.Z_95 * math.sqrt(max(variance, 0.0))
  return max(0.0, auc - half), min(1.0, auc + half)


def performance(lines: Sequence[Read], current: Dict[str, verdicts_lib.Verdict],
                sha256: str, stated: Dict[str, Any], since: Optional[str] = None,
                until: Optional[str] = None) -> Dict[str, Any]:
  """The model's figures on the films with a verdict.

  Args:
    lines: the audit log's lines (Audit.lines()).
    current: {film UID: its current verdict}.
    sha256: the model whose films count.
    stated: stated_figures(...) of that model.
    since, until: dates (YYYY-MM-DD, UTC, inclusive) of the films counted; None: all.
  """
  films = {}
  for read in lines:  # a film redone after a crash keeps its last line
    if read.sha256 == sha256 and read.analysed and in_range(read, since, until):
      films[read.uid] = read
  truth, flagged, p, kinds = [], [], [], []
  for uid, read in films.items():
    v = current.get(uid)
    if v is None or v.pneumonia is None:
      continue
    truth.append(v.pneumonia)
    flagged.append(read.flagged)
    p.append(read.p_pneumonia)
    if v.pneumonia and v.subtype and read.subtype and read.flagged:
      kinds.append(v.subtype == read.subtype)
  y, f = np.array(truth, bool), np.array(flagged, bool)
  tp, fn = int((y & f).sum()), int((y & ~f).sum())
  tn, fp = int((~y & ~f).sum()), int((~y & f).sum())
  out = {"model_sha256": sha256, "since": since, "until": until, "films": len(films),
         "with_verdict": len(truth),
         "verdict_share": len(truth) / len(films) if films else None,
         "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
         "stated_source": stated.get("source"),
         "sensitivity": _proportion(tp, tp + fn, stated.get("sensitivity")),
         "specificity": _proportion(tn, tn + fp, stated.get("specificity")),
         "ppv": _proportion(tp, tp + fp, stated.get("ppv")),
         "npv": _proportion(tn, tn + fn, stated.get("npv")),
         "accuracy": _proportion(tp + tn, len(truth), stated.get("accuracy")),
         "kind_agreement": _proportion(int(sum(kinds)), len(kinds),
                                       stated.get("kind_agreement"))}
  positives, negatives = int(y.sum()), int((~y).sum())
  if min(positives, negatives) >= MIN_AUC_FILMS:
    auc = metrics.roc_auc(y, np.array(p))
    low, high = auc_interval(auc, positives, negatives)
    out["roc_auc"] = {"value": auc, "ci95": [low, high], "n": len(truth),
                      "stated": stated.get("roc_auc"),
                      "verdict": verdict(high, stated.get("roc_auc"))}
  else:
    out["roc_auc"] = {"value": None, "ci95": [None, None], "n": len(truth),
                      "stated": stated.get("roc_auc"),
                      "verdict": f"needs {MIN_AUC_FILMS} films of each class"}
  return out


FIGURES = ("sensitivity", "specificity", "ppv", "npv", "accuracy", "kind_agreement",
           "roc_auc")
FIGURE_NAMES = {"sensitivity": "Sensitivity", "specificity": "Specificity",
                "ppv": "PPV (flagged films that had pneumonia)",
                "npv": "NPV (unflagged films that had none)", "accuracy": "Accuracy",
                "kind_agreement": "Agreement on the kind (bacterial or viral)",
                "roc_auc": "ROC-AUC"}


def format_figure(name: str, value: Optional[float], empty: str = "") -> str:
  """A figure as the page and cxr-monitor show it: a percentage, ROC-AUC as a fraction."""
  if value is None:
    return empty
  return f"{value:.3f}" if name == "roc_auc" else f"{100 * value:.1f}%"


# The figures each model was stated to have: the device side reads them too (cxr-calibrate's
# default rule keeps the stated sensitivity), so they live with the released model.
stated_figures = released.stated_figures


# Drift ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Alarm:
  """One alarm: which rule, what was measured, and the rule's why."""
  rule: str
  detail: str

  @property
  def why(self) -> str:
    return RULES[self.rule]

  def as_dict(self) -> Dict[str, str]:
    return {"rule": self.rule, "detail": self.detail, "why": self.why}


def psi(reference: Sequence[float], recent: Sequence[float], bins: int = 10) -> float:
  """Population stability index of `recent` against `reference`, over the reference's
  deciles (each bin's share floored at 1e-4)."""
  reference, recent = np.asarray(reference, float), np.asarray(recent, float)
  edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
  ref = np.bincount(np.searchsorted(edges, reference, "right"), minlength=len(edges) + 1)
  new = np.bincount(np.searchsorted(edges, recent, "right"), minlength=len(edges) + 1)
  ref = np.maximum(ref / ref.sum(), 1e-4)
  new = np.maximum(new / new.sum(), 1e-4)
  return float(np.sum((new - ref) * np.log(new / ref)))


def two_proportion_z(a: int, n: int, b: int, m: int) -> float:
  """z of the difference between a/n and b/m (pooled); 0 when it cannot be told."""
  if not n or not m:
    return 0.0
  pooled = (a + b) / (n + m)
  se = math.sqrt(pooled * (1 - pooled) * (1 / n + 1 / m))
  return 0.0 if se == 0 else (a / n - b / m) / se


def drift(lines: Sequence[Read], sha256: str, baseline_films: int = BASELINE_FILMS,
          window_films: int = WINDOW_FILMS) -> Tuple[List[Alarm], Dict[str, Any]]:
  """The drift alarms of one model's films, and what they were computed on."""
  films = [r for r in lines if r.sha256 == sha256 and r.analysed]
  info = {"films": len(films), "baseline_films": min(len(films), baseline_films),
          "window_films": 0}
  if len(films) < baseline_films + window_films:
    info["note"] = (f"drift is watched once {baseline_films + window_films} films are "
                    f"read (a baseline of {baseline_films}, a window of {window_films})")
    return [], info
  base, window = films[:baseline_films], films[-window_films:]
  info["window_films"] = len(window)
  alarms = []
  value = psi([r.p_pneumonia for r in base], [r.p_pneumonia for r in window])
  info["p_pneumonia_psi"] = round(value, 3)
  if value > PSI_ALARM:
    alarms.append(Alarm("p_pneumonia_shift", f"PSI {value:.2f}"))

  def rate(rule, test, what):
    a, b = sum(map(test, window)), sum(map(test, base))
    z = two_proportion_z(a, len(window), b, len(base))
    info[f"{rule}_z"] = round(z, 2)
    if z > Z_ALARM or (rule == "positive_rate" and z < -Z_ALARM):
      alarms.append(Alarm(rule, f"{a / len(window):.0%} of the newest films {what}, "
                                f"{b / len(base):.0%} in the baseline"))
  rate("positive_rate", lambda r: r.flagged, "flagged")
  rate("warning_rate", lambda r: r.warned, "warned on")
  means = [[r.pixel_mean for r in part] for part in (base, window)]
  if all(m is not None for part in means for m in part):
    value = psi(*means)
    info["pixel_psi"] = round(value, 3)
    if value > PSI_ALARM:
      alarms.append(Alarm("pixel_shift", f"PSI {value:.2f} of the mean pixel value "
                                         f"(baseline median {np.median(means[0]):.0f}, "
                                         f"newest {np.median(means[1]):.0f})"))
  for field in ("manufacturer", "unit_model", "view_position"):
    seen = [getattr(r, field) for r in window]
    for value in sorted({s for s in seen if s}):
      share = seen.count(value) / len(window)
      before = sum(getattr(r, field) == value for r in base) / len(base)
      if share > NEW_SOURCE_SHARE and before < RARE_SHARE:
        alarms.append(Alarm("new_equipment", f"{field.replace('_', ' ')} {value!r}: "
                                             f"{share:.0%} of the newest films, "
                                             f"{before:.0%} of the baseline"))
  ages = [r.age_years for r in window]
  known = [a for a in ages if a is not None]
  if known:
    adults = sum(a > ADULT_AGE_YEARS for a in known) / len(known)
    if adults > ADULT_SHARE:
      alarms.append(Alarm("adults", f"{adults:.0%} of the newest films with an age"))
  return alarms, info


def pipeline_alarms(status: Dict[str, Any]) -> List[Alarm]:
  """Alarms from the node's /status.json."""
  alarms = []
  if (status.get("oldest_film_waiting_seconds") or 0) > FILM_WAIT_ALARM_S:
    alarms.append(Alarm("films_waiting", f"{status['films_waiting_to_be_read']} film(s) "
                        f"waiting, the oldest {status['oldest_film_waiting_seconds'] / 60:.0f} min"))
  if (status.get("oldest_report_waiting_seconds") or 0) > REPORT_WAIT_ALARM_S:
    alarms.append(Alarm("reports_waiting", f"{status['reports_waiting_for_the_pacs']} "
                        f"report(s) waiting, the oldest "
                        f"{status['oldest_report_waiting_seconds'] / 60:.0f} min"))
  if status.get("dead_letters"):
    alarms.append(Alarm("dead_letters", f"{status['dead_letters']} report(s)"))
  if status.get("quarantined"):
    alarms.append(Alarm("quarantined", f"{status['quarantined']} file(s)"))
  return alarms


# The registry export -------------------------------------------------------------------

EXPORT_FORMAT = "cxr-edge site report 1"


def export(lines: Sequence[Read], current: Dict[str, verdicts_lib.Verdict],
           models: Dict[str, Dict[str, Any]], since: str, until: str,
           alarms: Iterable[Alarm] = ()) -> Dict[str, Any]:
  """The site's figures for a period, without patient data: per model, counts, figures
  with intervals, the stated ones; the alarms; the software's version.

  Args:
    models: {sha256: {"name", "version", "stated": stated_figures(...)}} of the models
      whose films fall in the period (others are listed by sha256 only).
  """
  from cxr_edge.core.version import __version__  # pylint: disable=g-import-not-at-top
  in_period = [r for r in lines if in_range(r, since, until)]
  shas = sorted({r.sha256 for r in in_period if r.sha256})
  out = {"format": EXPORT_FORMAT, "software": f"cxr-edge {__version__}",
         "since": since, "until": until, "films": len(in_period),
         "not_analysed": sum(r.failed for r in in_period),
         "models": [], "alarms": [a.as_dict() for a in alarms]}
  for sha in shas:
    about = models.get(sha, {})
    figures = performance(in_period, current, sha, about.get("stated", {}), since, until)
    films = [r for r in in_period if r.sha256 == sha and not r.failed]
    out["models"].append({
        "model_sha256": sha, "name": about.get("name"), "version": about.get("version"),
        "films": figures["films"], "flagged": sum(r.flagged for r in films),
        "warned": sum(r.warned for r in films),
        **{k: figures[k] for k in ("with_verdict", "verdict_share", "confusion",
                                   "stated_source", *FIGURES)}})
  return out


def export_rows(report: Dict[str, Any]) -> List[Dict[str, Any]]:
  """The export as CSV rows: one per model and figure."""
  rows = []
  for model in report["models"]:
    for name in FIGURES:
      figure = model[name]
      rows.append({"since": report["since"], "until": report["until"],
                   "model_sha256": model["model_sha256"], "version": model["version"],
                   "films": model["films"], "with_verdict": model["with_verdict"],
                   "figure": name, "value": figure["value"], "ci95_low": figure["ci95"][0],
                   "ci95_high": figure["ci95"][1], "n": figure["n"],
                   "stated": figure["stated"], "verdict": figure["verdict"]})
  return rows


def month_range(month: str) -> Tuple[str, str]:
  """'2026-12' -> ('2026-12-01', '2026-12-31').

  Raises:
    ValueError: not YYYY-MM.
  """
  first = datetime.datetime.strptime(month, "%Y-%m").date()
  following = (first.replace(day=28) + datetime.timedelta(days=4)).replace(day=1)
  return first.isoformat(), (following - datetime.timedelta(days=1)).isoformat()


# The node's monitor -------------------------------------------------------------------

class Monitor(background.Background):
  """Checks for alarms in the background; tells the log and `alert_command` when one is
  raised or cleared; gives the review page the site's figures."""

  def __init__(self, spool_root: str, sha256: str, stated: Dict[str, Any],
               status: Callable[[], Dict[str, Any]], alert_command: Optional[str] = None,
               every_seconds: float = 300.0,
               verdicts: Optional[verdicts_lib.Verdicts] = None):
    """
    Args:
      spool_root: the node's spool.
      sha256: the model the node runs (its figures and drift are shown).
      stated: stated_figures(...) of that model.
      status: the node's status (review.status), for the pipeline alarms.
      alert_command: run with the alarm as JSON on its standard input when one is raised
        or cleared (split as a shell would, but run without one).
      every_seconds: how often alarms are checked.
      verdicts: the verdict log (default: the spool's).
    """
    self.audit = Audit(spool_root)
    self.verdicts = verdicts or verdicts_lib.Verdicts(spool_root)
    self.sha256, self.stated, self.status = sha256, stated, status
    self.alert_command, self.every_seconds = alert_command, every_seconds
    self.alarms: List[Alarm] = []
    self.drift_info: Dict[str, Any] = {}
    super().__init__("cxr-node monitor")

  def _run(self) -> None:
    while not self._stop.wait(timeout=self.every_seconds):
      try:
        self.check()
      except Exception as e:  # pylint: disable=broad-except
        # Monitoring must never stop the node: the next check tries again.
        log.exception("alarm check failed (%s: %s)", type(e).__name__, e)

  def check(self) -> List[Alarm]:
    """Computes the alarms now; logs and alerts those raised and cleared since the last
    check; returns them."""
    found, self.drift_info = drift(self.audit.lines(), self.sha256)
    found += pipeline_alarms(self.status())
    before = {_key(a): a for a in self.alarms}
    now = {_key(a): a for a in found}
    for key, alarm in now.items():
      if key not in before:
        log.warning("ALARM %s: %s (%s)", alarm.rule, alarm.detail, alarm.why)
        self._alert("raised", alarm)
    for key, alarm in before.items():
      if key not in now:
        log.info("alarm cleared: %s (%s)", alarm.rule, alarm.detail)
        self._alert("cleared", alarm)
    self.alarms = found
    return found

  def _alert(self, state: str, alarm: Alarm) -> None:
    if not self.alert_command:
      return
    payload = json.dumps({"state": state, **alarm.as_dict(), "model_sha256": self.sha256,
                          "time": datetime.datetime.now(datetime.timezone.utc).isoformat(
                              timespec="seconds")})
    try:
      code, said, dropped = run_bounded(shlex.split(self.alert_command), payload.encode(),
                                        ALERT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
      log.warning("--alert_command failed for %s: %s", alarm.rule,
                  getattr(e, "strerror", None) or type(e).__name__)
      return
    if code:
      log.warning("--alert_command exited %d for %s: %s%s", code, alarm.rule,
                  said.decode("utf-8", "replace").strip()[:200],
                  f" ({dropped:,} more bytes of its output dropped)" if dropped else "")

  def state(self, today: Optional[datetime.date] = None) -> Dict[str, Any]:
    """What the review page's site page shows, and /site.json gives."""
    lines, current = self.audit.lines(), self.verdicts.current()
    since, until = month_range((today or datetime.date.today()).strftime("%Y-%m"))
    return {"model_sha256": self.sha256, "stated_source": self.stated.get("source"),
            "all_time": performance(lines, current, self.sha256, self.stated),
            "this_month": performance(lines, current, self.sha256, self.stated, since,
                                      until),
            "alarms": [a.as_dict() for a in self.alarms], "drift": self.drift_info}


ALERT_TIMEOUT_S = 30.0
# What is kept of an alert command's error output; the rest is read and dropped, so a
# command that writes without end neither fills the node's memory nor blocks on a pipe.
ALERT_OUTPUT_BYTES = 4096


def run_bounded(argv: Sequence[str], payload: bytes, timeout: float,
                keep: int = ALERT_OUTPUT_BYTES) -> Tuple[int, bytes, int]:
  """Runs `argv` with `payload` on its standard input; its standard output is discarded
  and its error output kept up to `keep` bytes.

  Returns:
    (exit status, the error output kept, how many bytes of it were dropped).

  Raises:
    OSError: it cannot be started. subprocess.TimeoutExpired: it ran over `timeout`
      seconds (it is killed).
  """
  proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
  kept, dropped = bytearray(), [0]

  def drain() -> None:
    for chunk in iter(lambda: proc.stderr.read(1 << 16), b""):
      room = max(0, keep - len(kept))
      kept.extend(chunk[:room])
      dropped[0] += len(chunk) - min(room, len(chunk))

  reader = threading.Thread(target=drain, name="cxr-alert-output", daemon=True)
  reader.start()
  try:
    with contextlib.suppress(BrokenPipeError):
      proc.stdin.write(payload)
      proc.stdin.close()
    proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
    raise
  finally:
    reader.join(timeout=5)
  return proc.returncode, bytes(kept), dropped[0]


def _key(alarm: Alarm) -> str:
  """One alarm per rule, except new equipment: one per named source."""
  if alarm.rule == "new_equipment":
    return alarm.rule + ":" + alarm.detail.split(":")[0]
  return alarm.rule


# cxr-monitor -------------------------------------------------------------------------

def records_by_accession(spool_root: str) -> Tuple[Dict[str, List[str]], List[str]]:
  """({accession number: film UIDs}, every film UID with a record) from results/."""
  by_accession: Dict[str, List[str]] = {}
  uids = []
  folder = os.path.join(spool_root, "results")
  for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
    uid = name[:-len(".json")]
    if not name.endswith(".json") or not spool_lib.is_uid(uid):
      continue
    record = spool_lib.read_json(os.path.join(folder, name)) or {}
    uids.append(uid)
    if record.get("accession_number"):
      by_accession.setdefault(str(record["accession_number"]), []).append(uid)
  return by_accession, uids


def site_report(spool_root: str, since: str, until: str,
                models: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
  """The period's export (`export`), each model's drift alarms included.

  Args:
    spool_root: the node's spool.
    since, until: the period's first and last day, YYYY-MM-DD.
    models: as `export` takes them; models not in it are described from RELEASE.json
      where they are released ones.
  """
  if not os.path.exists(os.path.join(spool_root, spool_lib.AUDIT_NAME)):
    raise errors.CxrError(f"{spool_root!r} holds no audit log: not a cxr-node spool, or "
                          "no film read yet")
  lines = Audit(spool_root).lines()
  current = verdicts_lib.Verdicts(spool_root).current()
  alarms = []
  for sha in sorted({r.sha256 for r in lines if in_range(r, since, until)} - {None}):
    found, _ = drift(lines, sha)
    alarms += found
  return export(lines, current, models, since, until, alarms)
