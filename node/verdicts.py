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
import logging
import os
import threading
from typing import Dict, Iterable, List, Optional, Set, Tuple

from cxr_edge.core import errors
from cxr_edge.core import site_log
from cxr_edge.node import spool as spool_lib

VERDICTS_NAME = site_log.VERDICTS_NAME
SUBTYPES = site_log.SUBTYPES
log = logging.getLogger("cxr_edge.node")
MAX_READER_CHARS = 64
# A RIS export of readings: a few hundred bytes a film; larger is not one.
MAX_IMPORT_BYTES = 64 * 2**20
_YES = {"yes", "y", "1", "true", "pneumonia", "present", "positive"}
_NO = {"no", "n", "0", "false", "normal", "absent", "negative"}
_UNKNOWN = {"", "unknown", "none", "null", "-"}
# Withdrawing a reader's verdict takes an explicit word: an empty cell is a mistake.
_WITHDRAWN = {"withdrawn", "withdraw"}


class VerdictError(errors.CxrError):
  """A verdict, or a file of them, that cannot be taken: says which and why."""


Verdict = site_log.Verdict


def parse_pneumonia(text: object) -> Optional[bool]:
  """yes/no, 1/0, true/false, pneumonia/normal, present/absent; withdrawn: None.

  Raises:
    VerdictError: anything else, an empty or unknown value too (withdrawing a verdict
      is said, never implied by a blank).
  """
  value = str(text if text is not None else "").strip().lower()
  if value in _YES:
    return True
  if value in _NO:
    return False
  if value in _WITHDRAWN:
    return None
  if value in _UNKNOWN:
    raise VerdictError(f"{str(text)[:40]!r} is not a verdict on pneumonia (yes or no; "
                       "'withdrawn' withdraws one)")
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
    with self._lock, open(self.path, "ab+") as f:
      fcntl.flock(f, fcntl.LOCK_EX)  # an import and the page may write at once
      try:
        # A writer killed mid-line left half a verdict: it is set aside, not glued to.
        half = site_log.set_aside_half_line(f, self.path)
        if half:
          log.warning("%s ended in half a line (%d bytes, a write cut off): set aside in "
                      "%s%s", self.path, half, self.path, site_log.DAMAGED_SUFFIX)
        f.write(lines.encode("utf-8"))
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
  absent; `withdrawn` withdraws a verdict: an empty value is refused), optionally
  `subtype` (bacterial/viral) and `reader` (else `reader`). A film given one verdict by
  several rows is recorded once; given different ones, the file is refused.

  Raises:
    VerdictError: the file is unreadable, too large, has neither key column nor a
      pneumonia column, a row's value is not a verdict or not a CSV row (its line
      number said), or two rows disagree on a film (both lines said); then nothing is
      recorded.
  """
  try:
    size = os.path.getsize(path)
  except OSError as e:
    raise VerdictError(f"{path}: {e.strerror or e}") from None
  if size > MAX_IMPORT_BYTES:
    raise VerdictError(f"{path}: larger than {MAX_IMPORT_BYTES // 2**20} MiB")
  try:  # RIS exports are often Windows-1252 (names only): read again as such
    return _import_rows(verdicts, path, "utf-8-sig", films_by_accession, set(known), reader)
  except UnicodeDecodeError:
    return _import_rows(verdicts, path, "latin-1", films_by_accession, set(known), reader)


def _import_rows(verdicts: Verdicts, path: str, encoding: str,
                 films_by_accession: Dict[str, List[str]], known: Set[str],
                 reader: str) -> Imported:
  """import_csv's reading, one row at a time: what is kept grows with the films read
  here that rows match, not with the file (a million unmatched rows cost nothing)."""
  source = f"import {os.path.basename(path)}"[:120]
  now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  chosen: Dict[str, Tuple[int, Verdict]] = {}  # film UID: (line, its verdict)
  unmatched, unmatched_count, count, line = [], 0, 0, 1
  try:
    with open(path, encoding=encoding, newline="") as f:
      rows = csv.reader(f)
      header = next(rows, [])
      columns = {c.strip().lower(): i for i, c in enumerate(header) if c.strip()}
      key = next((c for c in ("sop_instance_uid", "accession_number") if c in columns),
                 None)
      if key is None or "pneumonia" not in columns:
        raise VerdictError(f"{path}: needs a pneumonia column and a sop_instance_uid or "
                           f"accession_number column; has "
                           f"{', '.join(c[:40] for c in columns) or 'none'}")

      def cell(row: List[str], name: str) -> str:
        index = columns.get(name)
        return row[index] if index is not None and index < len(row) else ""

      for line, row in enumerate(rows, start=2):
        count += 1
        value = cell(row, key).strip()
        pneumonia = parse_pneumonia(cell(row, "pneumonia"))
        subtype = parse_subtype(cell(row, "subtype"))
        uids = ([value] if key == "sop_instance_uid" and value in known
                else films_by_accession.get(value, []) if key == "accession_number" else [])
        if not uids:
          unmatched_count += 1
          if len(unmatched) < 20:
            unmatched.append(value[:64])
          continue
        name = clean_reader(cell(row, "reader")) or reader
        for uid in uids:
          verdict = Verdict(uid, pneumonia, subtype if pneumonia else None,
                            clean_reader(name), now, source)
          earlier = chosen.get(uid)
          if earlier and (earlier[1].pneumonia, earlier[1].subtype) != (
              verdict.pneumonia, verdict.subtype):
            raise VerdictError(f"lines {earlier[0]} and {line} give {key} "
                               f"{value[:64]!r} different verdicts")
          chosen.setdefault(uid, (line, verdict))
  except VerdictError as e:
    where = "" if str(e).startswith(path) else (
        f"{path}, " + ("" if str(e).startswith("lines ") else f"line {line}: "))
    raise VerdictError(f"{where}{e}; nothing was imported") from None
  except csv.Error as e:  # a field over csv's limit (128 KiB), a stray NUL...
    raise VerdictError(f"{path}, line {line + 1}: not a CSV row ({str(e)[:80]}); nothing "
                       "was imported") from None
  except OSError as e:
    raise VerdictError(f"{path}: {e.strerror or e}") from None
  out = [verdict for _, verdict in chosen.values()]
  verdicts.append(out)
  return Imported(len(out), count, unmatched, unmatched_count)
