"""The clinic node's logs that jobs below the node read too: one home for their names,
their lines and what a verdict is.

The node (cxr_edge.node) appends one audit line per film read (audit.jsonl: the film's
UIDs, the model's sha256, its output, the inputs drift is watched on; no patient name
or id) and one line per reader's verdict (verdicts.jsonl, node/verdicts.py); a film's
record is results/<uid>.json. cxr-calibrate --from_spool (edge) reads them here, so the
device side needs nothing of the node.
"""
import dataclasses
import json
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

AUDIT_NAME = "audit.jsonl"
VERDICTS_NAME = "verdicts.jsonl"
RESULTS_FOLDER = "results"
SUBTYPES = ("BACTERIAL", "VIRAL")
# A film's record is a few hundred bytes; a larger file is not one.
MAX_RECORD_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class Verdict:
  """What readers said of one film (the truth the model's figures are measured on)."""
  sop_instance_uid: str
  pneumonia: Optional[bool]  # None: withdrawn, or not known
  subtype: Optional[str] = None  # BACTERIAL or VIRAL where the report says
  reader: str = ""
  time: str = ""
  source: str = "page"


def read_lines(path: str, offset: int = 0,
               convert: Callable[[Dict], Any] = lambda line: line) -> Tuple[List[Any], int]:
  """The JSON lines of a log from `offset` on (each through `convert`, one at a time, so
  a year's log is never held as parsed JSON at once), and the offset after the last
  whole line (a line being written is read next time); a line that does not parse is
  skipped."""
  out = []
  try:
    with open(path, "rb") as f:
      f.seek(offset)
      for raw in f:
        if not raw.endswith(b"\n"):
          break
        offset += len(raw)
        try:
          value = json.loads(raw)
        except ValueError:
          continue
        if isinstance(value, dict):
          out.append(convert(value))
  except FileNotFoundError:
    pass
  return out, offset


# What a cut-off last line is set aside in, beside its log (never read as lines).
DAMAGED_SUFFIX = ".damaged"
_HALF_LINE_MAX = 1 << 20  # a log's lines are far shorter; past this it is cut, not kept


def set_aside_half_line(f, path: str) -> int:
  """A log open as binary for reading and appending, under its writers' lock: a last
  line without its newline (a writer cut off mid-line) is moved to path + DAMAGED_SUFFIX
  and cut from the log, so that the next line is not glued onto it. Returns the bytes
  set aside (0: the log ended whole)."""
  size = f.seek(0, os.SEEK_END)
  if size == 0:
    return 0
  f.seek(size - 1)
  if f.read(1) == b"\n":
    return 0
  start = max(0, size - _HALF_LINE_MAX)
  f.seek(start)
  tail = f.read()
  half = tail[tail.rfind(b"\n") + 1:]
  with open(path + DAMAGED_SUFFIX, "ab") as damaged:
    damaged.write(half + b"\n")
    damaged.flush()
    os.fsync(damaged.fileno())
  f.truncate(size - len(half))
  f.flush()
  os.fsync(f.fileno())
  return len(half)


class Tail:
  """A log read whole once, then only what was appended since; read whole again if it
  was replaced by a shorter file. Not thread-safe: its owner holds a lock."""

  def __init__(self, path: str, convert: Callable[[Dict], Any] = lambda line: line):
    self.path, self.convert = path, convert
    self._read_to = 0

  def new(self) -> Tuple[bool, List[Any]]:
    """(whether the log starts afresh, so what was read before is void; the lines
    appended since the last call, each through `convert`, None results left out)."""
    try:
      size = os.path.getsize(self.path)
    except FileNotFoundError:
      return False, []
    afresh = size < self._read_to
    if afresh:
      self._read_to = 0
    if size == self._read_to:
      return afresh, []
    lines, self._read_to = read_lines(self.path, self._read_to, self.convert)
    return afresh, [line for line in lines if line is not None]


def verdict_of(line: Dict) -> Optional[Verdict]:
  """A verdict log line as a Verdict, or None if it is not one."""
  try:
    verdict = Verdict(**{k: line.get(k) for k in (
        "sop_instance_uid", "pneumonia", "subtype", "reader", "time", "source")})
  except TypeError:
    return None
  if not isinstance(verdict.sop_instance_uid, str) or verdict.pneumonia not in (
      True, False, None):
    return None
  return verdict


def current_verdicts(lines: Iterable[Dict]) -> Dict[str, Verdict]:
  """{film UID: its last verdict}, withdrawn ones (pneumonia null) left out."""
  current: Dict[str, Verdict] = {}
  for line in lines:
    verdict = verdict_of(line)
    if verdict is not None:
      current[verdict.sop_instance_uid] = verdict
  return {uid: v for uid, v in current.items() if v.pneumonia is not None}


@dataclasses.dataclass(frozen=True)
class LabelledFilm:
  """A film a model read at the site, with a reader's verdict."""
  sop_instance_uid: str
  pneumonia: bool
  subtype: Optional[str]
  p_pneumonia: float
  p_bacterial: Optional[float]
  p_viral: Optional[float]
  patient: str  # the record's patient id, else the film's UID (its own patient)


def probability(value: Any) -> Optional[float]:
  """`value` as a probability: a real number from 0 to 1 (not a bool, NaN or text), else
  None."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  value = float(value)
  return value if 0.0 <= value <= 1.0 else None  # NaN fails both comparisons


def labelled_films(spool_dir: str,
                   sha256: str) -> Tuple[List[LabelledFilm], List[str], List[str]]:
  """The films model `sha256` read in a node's spool that have a reader's verdict; the
  sha256 of every model that read films there (to say which, when none match); and the
  UIDs of this model's audit lines left out because a probability in them is not one
  (outside [0, 1], NaN, text: a damaged or edited log is never used)."""
  models = set()
  damaged: List[str] = []

  def kept(line: Dict) -> Optional[Dict]:  # only this model's analysed films, in brief
    models.add(line.get("model_sha256"))
    if line.get("model_sha256") != sha256 or line.get("error") or not line.get(
        "prediction"):
      return None
    values = {k: line.get(k) for k in ("p_pneumonia", "p_bacterial", "p_viral")}
    if probability(values["p_pneumonia"]) is None or any(
        v is not None and probability(v) is None for v in values.values()):
      damaged.append(str(line.get("sop_instance_uid"))[:80])
      return None
    return {"sop_instance_uid": line.get("sop_instance_uid"), **values}

  audit, _ = read_lines(os.path.join(spool_dir, AUDIT_NAME), convert=kept)
  current = current_verdicts(read_lines(os.path.join(spool_dir, VERDICTS_NAME))[0])
  read: Dict[str, Dict] = {}
  for line in filter(None, audit):
    read[str(line["sop_instance_uid"])] = line  # a redone film: its last line
  out = []
  for uid, line in sorted(read.items()):
    verdict = current.get(uid)
    if verdict is None:
      continue
    out.append(LabelledFilm(uid, bool(verdict.pneumonia), verdict.subtype,
                            float(line["p_pneumonia"]), line.get("p_bacterial"),
                            line.get("p_viral"), _patient(spool_dir, uid)))
  return out, sorted(m for m in models if isinstance(m, str)), damaged


def _patient(spool_dir: str, uid: str) -> str:
  """The film's patient id from its record (films of one patient are not independent),
  else the film's UID. `uid` came from the node's own log; it names no path but its own."""
  path = os.path.join(spool_dir, RESULTS_FOLDER, os.path.basename(uid) + ".json")
  try:
    with open(path, "rb") as f:
      record = json.loads(f.read(MAX_RECORD_BYTES))
  except (OSError, ValueError):
    return uid
  patient = record.get("patient_id") if isinstance(record, dict) else None
  return str(patient) if patient else uid
