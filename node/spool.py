"""The clinic node's disk: every film and result in folders, so that nothing acknowledged
is lost and nothing is done twice, whatever kills the process.

A film's way through the spool (one folder per state, one file per film, named by its SOP
Instance UID, which the receiver has checked is a well-formed UID):

  receiving/   pynetdicom writes a C-STORE's dataset here while it arrives
  incoming/    fsync'd and linked here *before* the success status goes back: the queue
  results/     <uid>.json, the film's record, written once its reports are on disk
  films/       the film, moved here last (the review page shows it)
  reports/     <uid>.sr.dcm (and <uid>.sc.dcm, the overlay) for the PACS
  overlays/    <uid>.png, the occlusion overlay, for the review page
  previews/    <uid>.png, the film as the review page shows it (made when first asked)
  outbox/      links to reports still to be forwarded; dead_letter/ those refused
  quarantine/  files found damaged (a queued film, a record, a report to send), each
               beside <name>.reason.txt: set aside so that everything else goes on
  audit.jsonl  one line per film, appended once; forwarded.jsonl one per report sent
  catch_up.json  the first study date the next catch-up round asks the PACS for

Every file is written whole and renamed into place (write, fsync, rename, fsync the
folder), so a crash leaves either the old state or the new one. A film is processed
again after a crash only if its result was not yet written; processing is deterministic
(report UIDs derive from the film's and the model's), so redoing it rewrites the same
files, and the audit line is appended only if the last line is not already this film's.
One worker processes films, which is what makes that last-line check sufficient.
"""
import contextlib
import hashlib
import io
import json
import logging
import os
import re
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

from cxr_edge.core import errors
from cxr_edge.core import site_log

# A DICOM UID (PS3.5 9.1): digits and dots, at most 64 characters. Received UIDs name
# files, so nothing else may pass.
UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")
MAX_UID_LENGTH = 64

FOLDERS = ("receiving", "incoming", "results", "films", "reports", "overlays", "previews",
           "outbox", "dead_letter", "quarantine")
AUDIT_NAME = site_log.AUDIT_NAME
FORWARDED_NAME = "forwarded.jsonl"
# Bytes read back from the end of the audit log to find its last line.
_TAIL_BYTES = 64 * 1024
# A film's record is a few hundred bytes; a larger file is not one.
_MAX_RECORD_BYTES = 1 << 20

log = logging.getLogger("cxr_edge.node")


def is_uid(text: object) -> bool:
  """Whether `text` is a well-formed DICOM UID (safe as a file name)."""
  return (isinstance(text, str) and len(text) <= MAX_UID_LENGTH
          and UID_PATTERN.fullmatch(text) is not None)


def is_partial(name: str) -> bool:
  """Whether a receiving/ file's name is a dataset being received (pynetdicom's, and the
  receiver's own, temporary files: tmp*.dcm)."""
  return name.startswith("tmp") and name.endswith(".dcm")


def film_uid_of(report_name: str) -> str:
  """The film a report file is of: <uid>.sr.dcm, <uid>.sc.dcm, <uid>.card.dcm -> <uid>."""
  return report_name.rsplit(".", 2)[0]


def _fsync_folder(folder: str) -> None:
  fd = os.open(folder, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def write_atomic(path: str, data: bytes) -> None:
  """Writes `path` whole or not at all, durably (the folder's entry included)."""
  folder = os.path.dirname(path)
  tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}."
                             f"{threading.get_ident()}.tmp")
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise
  _fsync_folder(folder)


class SpoolFull(errors.CxrError):
  """The spool's disk has less free space than the node keeps in reserve."""


class Spool:
  """The node's folders and the operations that move a film between them."""

  def __init__(self, root: str, min_free_bytes: int = 0):
    """Creates the folders if need be and repairs what a crash may have left.

    Args:
      root: the spool folder (the caller holds its lock: one node per spool).
      min_free_bytes: films are refused (SpoolFull) when less is free on its disk.
    """
    self.root = root
    self.min_free_bytes = min_free_bytes
    for name in FOLDERS:
      os.makedirs(self.path(name), exist_ok=True)
    self._lock = threading.Lock()  # admission against moving a film out of incoming/
    self._audit_lock = threading.Lock()
    self._clear_receiving()
    self._repair_log(AUDIT_NAME)
    self._repair_log(FORWARDED_NAME)
    # Films whose reports the destination stored: the review page's delivery column,
    # read from forwarded.jsonl when first asked (not at every start), then kept.
    self._forwarded: Optional[Set[str]] = None
    self._forwarded_lock = threading.Lock()
    # results/ as last listed, with the folder's modification time then.
    self._results_cache: Optional[Tuple[int, List[str]]] = None
    self._results_lock = threading.Lock()

  def path(self, *parts: str) -> str:
    return os.path.join(self.root, *parts)

  def _clear_receiving(self) -> None:
    """Partial datasets of associations a crash cut off: never acknowledged, so the
    sender still has them. Only pynetdicom's temporary files are removed."""
    for name in os.listdir(self.path("receiving")):
      if is_partial(name):
        with contextlib.suppress(OSError):
          os.unlink(self.path("receiving", name))

  def _repair_log(self, name: str) -> None:
    """Sets aside a last line that a crash left half-written (it is written again), so
    that the next line is not glued onto it."""
    path = self.path(name)
    if not os.path.exists(path):
      return
    with open(path, "rb+") as f:
      half = site_log.set_aside_half_line(f, path)
    if half:
      log.warning("%s ended in half a line (%d bytes, cut off by a crash): set aside in "
                  "%s%s", name, half, name, site_log.DAMAGED_SUFFIX)

  # Admission (receiver threads) --------------------------------------------------------

  def check_space(self) -> None:
    """Raises SpoolFull when the spool's disk is below its reserve."""
    st = os.statvfs(self.root)
    free = st.f_bavail * st.f_frsize
    if free < self.min_free_bytes:
      raise SpoolFull(f"{free // 2**20} MiB free on the spool's disk, below the "
                      f"{self.min_free_bytes // 2**20} MiB reserve")

  def known(self, uid: str) -> bool:
    """Whether the film is queued or done (a second copy is not queued again)."""
    return (os.path.exists(self.path("incoming", uid + ".dcm"))
            or os.path.exists(self.path("results", uid + ".json")))

  def admit(self, received_path: str, uid: str) -> bool:
    """Queues a received film durably; the caller acknowledges it only after this returns.

    Args:
      received_path: the complete dataset as received (a file on any disk).
      uid: its SOP Instance UID (checked with is_uid).

    Returns:
      True if queued, False if the film was already queued or done (sent twice).

    Raises:
      SpoolFull: below the disk reserve. OSError: the disk refused the write (full).
    """
    assert is_uid(uid), uid
    with open(received_path, "rb") as f:  # the data on disk before anything names it
      os.fsync(f.fileno())
    target = self.path("incoming", uid + ".dcm")
    with self._lock:
      if self.known(uid):
        return False
      self.check_space()
      try:
        os.link(received_path, target)  # same disk: no copy, the same bytes
      except OSError:  # another disk (the temporary folder was elsewhere): copy durably
        with open(received_path, "rb") as f:
          write_atomic(target, f.read())
      else:
        _fsync_folder(self.path("incoming"))
    return True

  # The worker ------------------------------------------------------------------------

  def _listed(self, folder: str, suffix: str, wanted, ctime: bool = False) -> List[str]:
    """Names (without `suffix`) of `folder`'s files that `wanted` accepts, oldest first
    by modification (or change) time, then name; a file removed meanwhile is left out."""
    entries = []
    with os.scandir(self.path(folder)) as it:
      for e in it:
        stem = e.name[:-len(suffix)]
        if e.name.endswith(suffix) and wanted(stem):
          with contextlib.suppress(FileNotFoundError):
            st = e.stat()
            entries.append((st.st_ctime_ns if ctime else st.st_mtime_ns, stem))
    return [stem for _, stem in sorted(entries)]

  def pending(self) -> List[str]:
    """UIDs of queued films, oldest first (by arrival, then name)."""
    return self._listed("incoming", ".dcm", is_uid)

  def received_ns(self, uid: str) -> int:
    """When the film arrived (its file's modification time, in ns since the epoch)."""
    return os.stat(self.path("incoming", uid + ".dcm")).st_mtime_ns

  def result(self, uid: str) -> Optional[Dict]:
    """The film's record, or None if it has none (yet, or any more: a damaged record is
    quarantined)."""
    name = uid + ".json"
    try:
      with open(self.path("results", name), "rb") as f:
        record = json.loads(f.read(_MAX_RECORD_BYTES + 1))
      if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not a record")
      return record
    except FileNotFoundError:
      return None
    except ValueError as e:  # truncated, not UTF-8, not JSON, or not a record
      with contextlib.suppress(FileNotFoundError):
        self.quarantine("results", name, f"the record is damaged ({str(e)[:200]})")
      return None

  def quarantine(self, folder: str, name: str, reason: str) -> None:
    """Sets folder/name aside in quarantine/ with the reason beside it, and logs it.

    Raises:
      FileNotFoundError: it is gone already.
    """
    target = self.path("quarantine", f"{folder}.{name}")
    os.replace(self.path(folder, name), target)
    with contextlib.suppress(FileNotFoundError):  # an outbox report's digest goes along
      os.replace(self.path(folder, name + ".sha256"), target + ".sha256")
    write_atomic(target + ".reason.txt", (reason + "\n").encode("utf-8"))
    _fsync_folder(self.path(folder))
    log.warning("set %s/%s aside in quarantine/: %s", folder, name, reason)

  def quarantined(self) -> List[str]:
    """Names of the files in quarantine/ (folder.name), sorted."""
    return sorted(n for n in os.listdir(self.path("quarantine"))
                  if not n.endswith((".reason.txt", ".sha256")) and not n.startswith("."))

  def audit_once(self, line: Dict) -> None:
    """Appends the film's audit line unless it is already the last one (a redo)."""
    path = self.path(AUDIT_NAME)
    with self._audit_lock:
      last = _last_line(path)
      if last is not None and last.get("sop_instance_uid") == line["sop_instance_uid"]:
        return
      _append_line(path, line)

  def finish(self, uid: str, record: Dict) -> None:
    """Writes the film's record, then moves the film out of the queue."""
    write_atomic(self.path("results", uid + ".json"),
                 json.dumps(record, sort_keys=True).encode("utf-8"))
    with self._lock, contextlib.suppress(FileNotFoundError):  # quarantined: out already
      os.replace(self.path("incoming", uid + ".dcm"), self.path("films", uid + ".dcm"))
    _fsync_folder(self.path("films"))
    _fsync_folder(self.path("incoming"))

  # Forwarding ------------------------------------------------------------------------

  def enqueue_forward(self, name: str) -> None:
    """Queues reports/<name> for the destination (a link: no second copy), with its
    sha256 beside it (<name>.sha256), so that a report damaged on disk since is found."""
    # A film redone after a crash rewrites its report (a new file, a new content date):
    # the link and the digest are both made anew, so they always name the same bytes.
    # Between the two a crash leaves them apart, but then the film is still queued, and
    # the forwarder leaves its reports alone until the redo (queued_film below).
    target = self.path("outbox", name)
    with open(self.path("reports", name), "rb") as f:
      digest = hashlib.sha256(f.read()).hexdigest()
    write_atomic(target + ".sha256", (digest + "\n").encode())
    tmp = self.path("outbox", f".{name}.{os.getpid()}.link")
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    os.link(self.path("reports", name), tmp)
    os.replace(tmp, target)
    _fsync_folder(self.path("outbox"))

  def queued_film(self, report_name: str) -> bool:
    """Whether the film a report is of is still queued (it will be redone, its reports
    rewritten): the forwarder leaves such a report until then."""
    return os.path.exists(self.path("incoming", film_uid_of(report_name) + ".dcm"))

  def outbox_report(self, name: str) -> Any:
    """A report from the outbox, checked and parsed (pydicom).

    Raises:
      FileNotFoundError: it is no longer in the outbox.
      ValueError: it is damaged: not its queued sha256, or not a DICOM dataset.
    """
    import pydicom  # pylint: disable=g-import-not-at-top
    path = self.path("outbox", name)
    with open(path, "rb") as f:
      data = f.read()
    try:
      with open(path + ".sha256", encoding="ascii") as f:
        expected = f.read().strip()
    except (FileNotFoundError, UnicodeDecodeError):
      expected = None  # queued before digests were kept: parsing is the only check
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
      raise ValueError("its bytes are not those queued (sha256 differs)")
    try:
      return pydicom.dcmread(io.BytesIO(data))
    except Exception as e:  # pylint: disable=broad-except  # pydicom raises many kinds
      raise ValueError(f"not a DICOM dataset ({type(e).__name__}: {str(e)[:160]})") from None

  def outbox(self) -> List[str]:
    """Reports waiting for the destination, oldest first (links keep their file's
    modification time, so the time they were queued is their change time)."""
    return [stem + ".dcm" for stem in self._listed("outbox", ".dcm", bool, ctime=True)]

  def forwarded(self, name: str, line: Dict) -> None:
    """A report the destination accepted: logged, then out of the outbox."""
    _append_line(self.path(FORWARDED_NAME), line)
    with self._forwarded_lock:
      if self._forwarded is not None:
        self._forwarded.add(film_uid_of(name))
    for path in (self.path("outbox", name), self.path("outbox", name + ".sha256")):
      with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    _fsync_folder(self.path("outbox"))

  def dead_letter(self, name: str, reason: str) -> None:
    """A report the destination refused for good: moved aside with the reason."""
    write_atomic(self.path("dead_letter", name + ".reason.txt"),
                 (reason + "\n").encode("utf-8"))
    os.replace(self.path("outbox", name), self.path("dead_letter", name))
    with contextlib.suppress(FileNotFoundError):
      os.replace(self.path("outbox", name + ".sha256"),
                 self.path("dead_letter", name + ".sha256"))
    _fsync_folder(self.path("outbox"))

  def dead_letters(self) -> List[str]:
    """Reports the destination refused for good, oldest first."""
    return sorted((n for n in os.listdir(self.path("dead_letter")) if n.endswith(".dcm")),
                  key=lambda n: os.stat(self.path("dead_letter", n)).st_mtime_ns)

  def requeue_dead_letters(self) -> List[str]:
    """Moves every dead letter back into the outbox (its reason file is kept beside it
    as <name>.reason.txt.requeued); returns their names."""
    names = self.dead_letters()
    for name in names:
      os.replace(self.path("dead_letter", name), self.path("outbox", name))
      with contextlib.suppress(FileNotFoundError):
        os.replace(self.path("dead_letter", name + ".sha256"),
                   self.path("outbox", name + ".sha256"))
      reason = self.path("dead_letter", name + ".reason.txt")
      if os.path.exists(reason):
        os.replace(reason, reason + ".requeued")
    _fsync_folder(self.path("outbox"))
    return names

  # Retention -------------------------------------------------------------------------

  def prune(self, older_than_ns: int) -> int:
    """Removes films, reports, overlays and previews last written before `older_than_ns` (ns since
    the epoch); returns how many. Records, logs, the queue and reports still waiting
    for the PACS (their own link in outbox/) are kept: the node is not an archive, but
    its history and anything not yet done stay."""
    removed = 0
    for folder in ("films", "reports", "overlays", "previews"):
      with os.scandir(self.path(folder)) as it:
        for e in it:
          with contextlib.suppress(FileNotFoundError):
            if e.is_file(follow_symlinks=False) and e.stat().st_mtime_ns < older_than_ns:
              os.unlink(e.path)
              removed += 1
    return removed

  # The review page -------------------------------------------------------------------

  def recent(self, limit: int) -> List[Dict]:
    """The newest `limit` records (by arrival), newest first."""
    # Only the newest records are read: a spool holds a year's films, the page refreshes
    # every few seconds. Records are written in arrival order (one worker, oldest
    # first), so the newest written are the newest arrived.
    newest = self._results_listed()[::-1][:limit]
    records = [r for r in (self.result(uid) for uid in newest) if r is not None]
    records.sort(key=lambda r: (r.get("received_ns", 0), r.get("sop_instance_uid", "")),
                 reverse=True)
    return records[:limit]

  def _results_listed(self) -> List[str]:
    """results/ by age: listed again only when the folder changed (a year's records take
    half a second to list, and the page asks every few seconds)."""
    changed = os.stat(self.path("results")).st_mtime_ns
    # A folder changed in the last second may change again within its clock's tick,
    # which would not move its time: listed again until it has been still a second.
    settled = time.time_ns() - changed > 10**9
    with self._results_lock:
      if settled and self._results_cache is not None and self._results_cache[0] == changed:
        return self._results_cache[1]
    listed = self._listed("results", ".json", is_uid)
    with self._results_lock:
      self._results_cache = (changed, listed)
    return listed

  def queued(self) -> int:
    return len(self.pending())

  def delivery(self) -> "Delivery":
    """Where each film's reports are: stored at the destination, waiting, or refused."""
    with self._forwarded_lock:
      if self._forwarded is None:
        self._forwarded = {line["film_uid"] for line in iter_lines(
            self.path(FORWARDED_NAME)) if line.get("film_uid")}
      stored = set(self._forwarded)
    return Delivery(stored=stored, waiting=set(map(film_uid_of, self.outbox())),
                    refused=set(map(film_uid_of, self.dead_letters())))


class Delivery:
  """A snapshot of where films' reports are (Spool.delivery): sets of film UIDs."""

  def __init__(self, stored: Set[str], waiting: Set[str], refused: Set[str]):
    self.stored, self.waiting, self.refused = stored, waiting, refused

  def of(self, uid: str) -> Optional[str]:
    """"refused", "waiting", "stored" or None (no report was queued for it)."""
    if uid in self.refused:
      return "refused"
    if uid in self.waiting:
      return "waiting"
    if uid in self.stored:
      return "stored"
    return None


def read_json(path: str) -> Optional[Dict]:
  """A small JSON object the node keeps (a checkpoint), or None where it is missing or
  damaged (a crash cannot leave it half-written: it is written whole, write_atomic)."""
  try:
    with open(path, "rb") as f:
      value = json.loads(f.read(_MAX_RECORD_BYTES + 1))
  except (OSError, ValueError):
    return None
  return value if isinstance(value, dict) else None


def _last_line(path: str) -> Optional[Dict]:
  try:
    with open(path, "rb") as f:
      size = f.seek(0, os.SEEK_END)
      f.seek(max(0, size - _TAIL_BYTES))
      lines = f.read().rstrip(b"\n").rsplit(b"\n", 1)
  except FileNotFoundError:
    return None
  try:
    return json.loads(lines[-1]) if lines[-1] else None
  except ValueError:
    return None


def _append_line(path: str, line: Dict) -> None:
  with open(path, "a", encoding="utf-8") as f:
    f.write(json.dumps(line, sort_keys=True) + "\n")
    f.flush()
    os.fsync(f.fileno())


def iter_lines(path: str) -> Iterator[Dict]:
  """The records of a JSON-lines log of the spool (the audit or the forwarded log)."""
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        yield json.loads(line)
