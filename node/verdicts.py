"""Readers' verdicts: what the radiologist's report said of each film, as staff record it
on the review page or import it from the RIS, kept beside the node's own results.

A verdict is one line of the spool's verdicts.jsonl, appended (and fsync'd) under a
file lock, never rewritten: a change is a new line, so the log keeps who said what, and
when. The film's record and the model's output are never touched. The current verdict
of a film is its last line; `pneumonia` null withdraws it.

Lines: {"time", "sop_instance_uid", "pneumonia": true|false|null,
"subtype": "BACTERIAL"|"VIRAL"|null, "reader", "source": "page"|"import <file>"}.
"""
import csv
import dataclasses
import datetime
import fcntl
import io
import json
import os
import threading
from typing import Dict, Iterable, List, Optional

from cxr_edge.core import errors
from cxr_edge.core import site_log
from cxr_edge.node import spool as spool_lib

VERDICTS_NAME = site_log.VERDICTS_NAME
SUBTYPES = site_log.SUBTYPES
MAX_READER_CHARS = 64
# A RIS export of readings: a few hundred bytes a film; larger is not one.
MAX_IMPORT_BYTES = 64 * 2**20
_YES = {"yes", "y", "1", "true", "pneumonia", "present", "positive"}
_NO = {"no", "n", "0", "false", "normal", "absent", "negative"}
_UNKNOWN = {"", "unknown", "none", "null", "-"}


class VerdictError(errors.CxrError):
  """A verdict, or a file of them, that cannot be taken: says which and why."""


Verdict = site_log.Verdict


def parse_pneumonia(text: object) -> Optional[bool]:
  """yes/no, 1/0, true/false, pneumonia/normal, present/absent; empty or unknown: None.

  Raises:
    VerdictError: anything else.
  """
  value = str(text if text is not None else "").strip().lower()
  if value in _YES:
    return True
  if value in _NO:
    return False
  if value in _UNKNOWN:
    return None
  raise VerdictError(f"{str(text)[:40]!r} is not a verdict on pneumonia (yes or no)")


def parse_subtype(text: object) -> Optional[str]:
  """BACTERIAL or VIRAL (any case); empty or unknown: None.

  Raises:
    VerdictError: anything else.
  """
  value = str(text if text is not None else "").strip().upper()
  if value in SUBTYPES:
    return value
  if value.lower() in _UNKNOWN:
    return None
  raise VerdictError(f"{str(text)[:40]!r} is not a kind of pneumonia (bacterial or viral)")


def clean_reader(text: object) -> str:
  """A reader's name as kept: printable, one line, at most MAX_READER_CHARS."""
  name = "".join(c for c in str(text or "") if c.isprintable()).strip()
  return name[:MAX_READER_CHARS]


class Verdicts:
  """The spool's verdict log, with the current verdict of each film in memory (reread
  when another process, such as an import, has appended to it)."""

  def __init__(self, spool_root: str):
    self.path = os.path.join(spool_root, VERDICTS_NAME)
    self._lock = threading.Lock()
    self._current: Dict[str, Verdict] = {}  # withdrawn ones too; current() omits them
    self._tail = site_log.Tail(self.path, site_log.verdict_of)

  def record(self, verdict: Verdict) -> Verdict:
    """Appends a verdict durably (it is on disk when this returns); returns it as kept.

    Raises:
      VerdictError: a malformed UID, subtype or pneumonia value.
    """
    if not spool_lib.is_uid(verdict.sop_instance_uid):
      raise VerdictError(f"{verdict.sop_instance_uid[:80]!r} is not a SOP Instance UID")
    if verdict.subtype is not None and verdict.subtype not in SUBTYPES:
      raise VerdictError(f"{verdict.subtype!r} is not BACTERIAL or VIRAL")
    if verdict.pneumonia is not None and not isinstance(verdict.pneumonia, bool):
      raise VerdictError("pneumonia must be true, false or null")
    kept = dataclasses.replace(
        verdict, reader=clean_reader(verdict.reader),
        subtype=verdict.subtype if verdict.pneumonia else None,
        time=verdict.time or datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"))
    self.append([kept])
    return kept

  def append(self, verdicts: Iterable[Verdict]) -> int:
    """Appends many verdicts in one locked write; returns how many."""
    lines = "".join(json.dumps(dataclasses.asdict(v), sort_keys=True) + "\n"
                    for v in verdicts)
    if not lines:
      return 0
    with self._lock, open(self.path, "a", encoding="utf-8") as f:
      fcntl.flock(f, fcntl.LOCK_EX)  # an import and the page may write at once
      try:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())
      finally:
        fcntl.flock(f, fcntl.LOCK_UN)
    return lines.count("\n")

  def current(self) -> Dict[str, Verdict]:
    """{film UID: its current verdict}, withdrawn ones left out."""
    with self._lock:
      self._catch_up()
      return {uid: v for uid, v in self._current.items() if v.pneumonia is not None}

  def history(self, uid: str) -> List[Verdict]:
    """Every verdict recorded for one film, oldest first (the log, read whole)."""
    return [v for v in site_log.read_lines(self.path, convert=site_log.verdict_of)[0]
            if v is not None and v.sop_instance_uid == uid]

  def _catch_up(self) -> None:
    afresh, new = self._tail.new()
    if afresh:
      self._current = {}
    for v in new:
      self._current[v.sop_instance_uid] = v


@dataclasses.dataclass
class Imported:
  """What an import did."""
  recorded: int
  rows: int
  unmatched: List[str]  # the rows' keys no film of the spool has (first 20)
  unmatched_count: int


def import_csv(verdicts: Verdicts, path: str, films_by_accession: Dict[str, List[str]],
               known: Iterable[str], reader: str = "") -> Imported:
  """Imports readings from a CSV (a RIS export): a header row, then one row a film or a
  study. Columns (any case): `sop_instance_uid` or `accession_number` (every film of
  that accession), `pneumonia` (yes/no, 1/0, true/false, pneumonia/normal, present/
  absent), optionally `subtype` (bacterial/viral) and `reader` (else `reader`).

  Raises:
    VerdictError: the file is unreadable, too large, has neither key column nor a
      pneumonia column, or a row's value is not a verdict (its line number said); then
      nothing is recorded.
  """
  try:
    with open(path, "rb") as f:
      data = f.read(MAX_IMPORT_BYTES + 1)
  except OSError as e:
    raise VerdictError(f"{path}: {e.strerror or e}") from None
  if len(data) > MAX_IMPORT_BYTES:
    raise VerdictError(f"{path}: larger than {MAX_IMPORT_BYTES // 2**20} MiB")
  try:
    text = data.decode("utf-8-sig")
  except UnicodeDecodeError:
    text = data.decode("latin-1")  # RIS exports are often Windows-1252: names only
  rows = csv.DictReader(io.StringIO(text, newline=""))
  columns = {c.strip().lower(): c for c in rows.fieldnames or [] if c}
  key = next((c for c in ("sop_instance_uid", "accession_number") if c in columns), None)
  if key is None or "pneumonia" not in columns:
    raise VerdictError(f"{path}: needs a pneumonia column and a sop_instance_uid or "
                       f"accession_number column; has {', '.join(columns) or 'none'}")
  known = set(known)
  source = f"import {os.path.basename(path)}"[:120]
  now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  out, unmatched, count = [], [], 0
  for line, row in enumerate(rows, start=2):
    count += 1
    value = (row.get(columns[key]) or "").strip()
    try:
      pneumonia = parse_pneumonia(row.get(columns["pneumonia"]))
      subtype = parse_subtype(row.get(columns["subtype"])) if "subtype" in columns else None
    except VerdictError as e:
      raise VerdictError(f"{path}, line {line}: {e}; nothing was imported") from None
    uids = ([value] if key == "sop_instance_uid" and value in known
            else films_by_accession.get(value, []) if key == "accession_number" else [])
    if not uids:
      unmatched.append(value[:64])
      continue
    name = clean_reader(row.get(columns["reader"]) if "reader" in columns else "") or reader
    out += [Verdict(uid, pneumonia, subtype if pneumonia else None, clean_reader(name),
                    now, source) for uid in uids]
  verdicts.append(out)
  return Imported(len(out), count, unmatched[:20], len(unmatched))
