"""Catch-up: films the PACS holds that the node never received, found by query and
retrieved, so that a film routed to the node while it was down still gets its report.

A PACS that fails to push a film (the node down, restarting, unreachable) typically gives
up after one try and says so only in its own log. So, with `--query=PACS@host:port`, the
node asks the PACS itself: when it starts and every `--catch_up_minutes`, one association
(calling AE `--query_ae_title`, default `--ae_title`) does, day by day from the
checkpoint's study date through today:

  C-FIND STUDY  StudyDate = that day, ModalitiesInStudy = CR or DX
  C-FIND SERIES of each study (Modality kept if CR or DX)
  C-FIND IMAGE  of each such series (SOP Instance UID, SOP Class UID)

and retrieves each film that is neither queued nor done in the spool, oldest study
first, at most `--catch_up_batch` a round: with C-GET (default) the film comes back on
the same association; with C-MOVE the PACS sends it to this node's own AE title, as a
push. Either way it is admitted by the receiver's own code (node/dicom.py), so a film
that arrives by push and by catch-up, in either order or at once, is queued once and
analysed once.

C-GET is the default because it needs nothing of the PACS but the node's AE title: no
inbound connection, no address of the node in the PACS (so it works behind NAT and with
`--nolisten`, the pull-only mode). C-MOVE is there for the PACS that do not offer C-GET.

Bounds: each C-FIND answer is read to at most MAX_ANSWERS matches; a study the PACS
cannot list (refused, no answer in `--dimse_timeout`, too many answers) and a film whose
retrieve breaks off or answers pending more than MAX_RETRIEVE_PENDING times are that
study's or film's failure, and the round goes on with the others on a fresh association;
a round ends with an error after ROUND_DEADLINE_S; a round retrieves at most
`--catch_up_batch` films, and the next batch starts once the worker has read the films
of this one (films pushed meanwhile do not hold it back), so a long outage is worked off
without filling the disk.

The checkpoint (catch_up.json in the spool) is the first study date still looked at. A
round that saw every day through and retrieved everything it found moves it to the day
before the round started (a day's overlap: films reach a PACS after their study date,
and clocks differ); on first start (or another PACS) it is `--catch_up_days` before
today, and never before `--catch_up_max_days` ago (a checkpoint older than that, or
damaged, is said in the log and that widest window used). A study whose films were all
known is skipped while its instance count stays the same, and listed again every
FULL_RELIST_ROUNDS rounds (a film replaced keeps the count). A film or study that fails
is tried again in the next rounds; after GIVE_UP_ROUNDS failed rounds it is given up with a warning (so one film the PACS cannot
send does not hold the checkpoint back for ever). Studies without a study date are not
found by a date query: a PACS that stores such films must push them.
"""
import dataclasses
import datetime
import json
import logging
import os
import time
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pydicom
from pynetdicom import build_role, evt
from pynetdicom import sop_class

from cxr_edge.node import background
from cxr_edge.node import dicom
from cxr_edge.node import limits
from cxr_edge.node import node_config
from cxr_edge.node import spool as spool_lib

log = logging.getLogger("cxr_edge.node")

CHECKPOINT_NAME = "catch_up.json"
# Matches read from one C-FIND answer; more ends the round (the PACS answers a query
# that is not the node's, or holds more than any clinic's day of chest films).
MAX_ANSWERS = 5000
# Rounds in which one film's retrieve may fail before it is given up.
GIVE_UP_ROUNDS = 3
# Seconds before a failed round is tried again (sooner if --catch_up_minutes is).
RETRY_SECONDS = 60.0
# A round that has not finished in this long ends with that error (a PACS that answers
# slowly must not hold one round for hours while the page shows nothing wrong).
ROUND_DEADLINE_S = 30 * 60.0
# Pending answers to one film's retrieve before it is given up as endless (a C-GET of one
# film has one sub-operation).
MAX_RETRIEVE_PENDING = 100
# Every this many rounds a study is listed again even when its instance count has not
# changed (a film replaced in it keeps the count, and would otherwise wait for a restart).
FULL_RELIST_ROUNDS = 6
CHEST_MODALITIES = ("CR", "DX")
_PENDING = (0xFF00, 0xFF01)
_FIND = sop_class.StudyRootQueryRetrieveInformationModelFind
_GET = sop_class.StudyRootQueryRetrieveInformationModelGet
_MOVE = sop_class.StudyRootQueryRetrieveInformationModelMove


class CatchUpError(Exception):
  """A round could not finish: the PACS unreachable, refusing, or answering oddly."""


@dataclasses.dataclass(frozen=True)
class Film:
  """A film the PACS holds, as its C-FIND answers name it."""
  study_uid: str
  series_uid: str
  sop_uid: str
  sop_class_uid: str
  study_date: str


@dataclasses.dataclass
class Round:
  """What one catch-up round did (the review page and /status.json show the last)."""
  started: str
  finished: Optional[str] = None
  since: str = ""
  studies: int = 0  # CR/DX studies the PACS listed
  films_listed: int = 0  # films listed by image queries (studies all known are skipped)
  retrieved: int = 0
  failed: int = 0
  more: bool = False  # the batch was full: another round follows at once
  error: Optional[str] = None


def _day(text: str) -> datetime.date:
  return datetime.datetime.strptime(text, "%Y%m%d").date()


def _dicom_date(day: datetime.date) -> str:
  return day.strftime("%Y%m%d")


class CatchUp(background.Background):
  """Runs catch-up rounds against one PACS in the background."""

  def __init__(self, spool: spool_lib.Spool, options: node_config.NodeOptions,
               on_store: Callable,
               today: Callable[[], datetime.date] = datetime.date.today):
    """
    Args:
      spool: the node's spool (its checkpoint lives there).
      options: the node's options (--query and the catch-up flags).
      on_store: the receiver's C-STORE handler: C-GET's films are admitted by it.
      today: the local date (tests move it).
    """
    self.spool, self.options, self.on_store = spool, options, on_store
    self.today = today
    self._batch: List[str] = []  # the films the last round retrieved
    self.pacs = options.query_pacs
    self.last: Optional[Round] = None
    self._failures: Dict[str, int] = {}  # study or film UID -> rounds it failed
    # study UID -> (instances, the round) when all its films were known
    self._known_studies: Dict[str, Tuple[int, int]] = {}
    self._rounds = 0
    self._assoc = None  # this round's association (a fresh one after a study breaks it)
    self._deadline = 0.0
    super().__init__("cxr-node catch-up")

  def _run(self) -> None:
    while not self._stop.is_set():
      done = self.run_round()
      if done.more:  # the next batch once the worker has read this one (pushed films
        # may keep the queue from ever being empty at a busy site: those do not count)
        while not self._stop.is_set() and any(
            os.path.exists(self.spool.path("incoming", uid + ".dcm")) for uid in self._batch):
          self._stop.wait(1.0)
        continue
      interval = self.options.catch_up_minutes * 60 or None  # 0: at start only
      if done.error:  # a round that failed is tried again, at start-only too
        interval = min(interval or RETRY_SECONDS, RETRY_SECONDS)
      self._pause(interval)

  def run_round(self) -> Round:
    """One round: lists what the PACS holds since the checkpoint and retrieves what the
    spool lacks; never raises (what went wrong is the round's `error`)."""
    today = self.today()
    since = self._since(today)
    current = Round(started=_now(), since=since)
    self._rounds += 1
    self._deadline = time.monotonic() + ROUND_DEADLINE_S
    try:
      self._round(current, _day(since), today)
    except CatchUpError as e:
      current.error = str(e)
      log.warning("catch-up from %s: %s; tried again within %g s", self.pacs, e,
                  RETRY_SECONDS)
    except Exception as e:  # pylint: disable=broad-except
      # Whatever the PACS answers, the node goes on: the next round tries again.
      current.error = f"{type(e).__name__}: {str(e)[:200]}"
      log.exception("catch-up from %s failed", self.pacs)
    current.finished = _now()
    # Films that failed keep the window where it is until they arrive or are given up.
    if current.error is None and not current.more and not current.failed:
      self._save_checkpoint(_dicom_date(today - datetime.timedelta(days=1)))
    self.last = current
    if current.retrieved or current.failed:
      log.info("catch-up from %s: %d stud(ies) since %s, %d retrieved, %d failed%s",
               self.pacs, current.studies, since, current.retrieved, current.failed,
               "; more follow" if current.more else "")
    return current

  # The checkpoint ----------------------------------------------------------------------

  def _since(self, today: datetime.date) -> str:
    """The first study date this round asks for: the checkpoint's, checked. Never before
    --catch_up_max_days ago (a year 1900 would take tens of thousands of queries); a
    damaged checkpoint is said and gets that widest window."""
    first = _dicom_date(today - datetime.timedelta(days=self.options.catch_up_days))
    widest = today - datetime.timedelta(days=self.options.catch_up_max_days)
    path = self.spool.path(CHECKPOINT_NAME)
    saved = spool_lib.read_json(path)
    if saved is None and not os.path.exists(path):
      return first
    if saved is not None and saved.get("pacs") != str(self.pacs):
      return first  # another PACS: its own first window
    try:
      day = _day(str((saved or {})["since"]))
    except (KeyError, TypeError, ValueError):
      log.warning("%s is damaged or holds no date: looking back the widest allowed window, "
                  "%d days (--catch_up_max_days)", CHECKPOINT_NAME,
                  self.options.catch_up_max_days)
      return _dicom_date(widest)
    if day < widest:
      log.warning("%s says %s, older than --catch_up_max_days (%d days): looking back from "
                  "%s", CHECKPOINT_NAME, _dicom_date(day), self.options.catch_up_max_days,
                  _dicom_date(widest))
      return _dicom_date(widest)
    return _dicom_date(min(day, today))

  def _save_checkpoint(self, since: str) -> None:
    spool_lib.write_atomic(self.spool.path(CHECKPOINT_NAME), json.dumps(
        {"pacs": str(self.pacs), "since": since, "time": _now()}).encode())

  def checkpoint(self) -> Optional[str]:
    """The first study date the next round looks at, as saved (None before any)."""
    saved = spool_lib.read_json(self.spool.path(CHECKPOINT_NAME))
    return saved.get("since") if saved and saved.get("pacs") == str(self.pacs) else None

  # One round ----------------------------------------------------------------------------

  def _round(self, current: Round, since: datetime.date, today: datetime.date) -> None:
    self._assoc = self._associate()
    try:
      missing: List[Film] = []
      day = since
      while day <= today and not self._stop.is_set():
        for found in self._films_of_day(_dicom_date(day), current):
          current.films_listed += 1
          if not self.spool.known(found.sop_uid):
            missing.append(found)
        day += datetime.timedelta(days=1)
      batch = self.options.catch_up_batch
      current.more = len(missing) > batch
      self._batch = []
      for found in missing[:batch]:
        self._check_deadline()
        if self._stop.is_set():
          current.more = True
          break
        if self._retrieve(found):
          current.retrieved += 1
          self._batch.append(found.sop_uid)
        else:
          current.failed += 1
    finally:
      self._close()

  def _close(self) -> None:
    if self._assoc is not None:
      if self._assoc.is_established:
        self._assoc.release()
      else:
        self._assoc.abort()

  def _fresh(self) -> None:
    """A new association where a study or film broke the last one off.

    Raises:
      CatchUpError: the PACS cannot be reached again (the round ends).
    """
    if not self._assoc.is_established:
      self._close()
      self._assoc = self._associate()

  def _check_deadline(self) -> None:
    if time.monotonic() > self._deadline:
      raise CatchUpError(f"the round ran over its {ROUND_DEADLINE_S / 60:g}-minute "
                         "deadline (a slow PACS): the next round goes on from the "
                         "checkpoint")

  def _associate(self):
    options = self.options
    ae = dicom.requestor(options.query_ae_title or options.ae_title, options.acse_timeout,
                         options.dimse_timeout, options.network_timeout)
    ae.maximum_pdu_size = options.limits.max_pdu_bytes
    ae.add_requested_context(_FIND)
    roles = []
    if options.retrieve == "get":
      ae.add_requested_context(_GET)
      # C-GET's films come back on this association: it offers to store them, in the
      # syntaxes this install decodes, as the receiver does.
      syntaxes = dicom.decodable_syntaxes()
      for cls in dicom.FILM_CLASSES:
        ae.add_requested_context(cls, syntaxes)
        roles.append(build_role(cls, scp_role=True))
    else:
      ae.add_requested_context(_MOVE)
    try:
      return dicom.associate(ae, self.pacs, options.acse_timeout, ext_neg=roles,
                             evt_handlers=[(evt.EVT_C_STORE, self.on_store),
                                           limits.own_association_guard(options.limits)])
    except dicom.NoAssociation as e:
      raise CatchUpError(str(e)) from None

  def _find(self, level: str, **keys: str) -> Iterator[pydicom.Dataset]:
    """The matches of one C-FIND (Study Root), at most MAX_ANSWERS.

    Raises:
      CatchUpError: the PACS refused the query, broke off, or answered too much.
    """
    query = pydicom.Dataset()
    query.QueryRetrieveLevel = level
    for keyword, value in keys.items():
      setattr(query, keyword, value)
    self._check_deadline()
    assoc = self._assoc
    answers = 0
    started = time.monotonic()
    for status, identifier in assoc.send_c_find(query, _FIND):
      code = getattr(status, "Status", None)
      if code is None:
        raise CatchUpError(self._broke_off(f"a {level} query", started))
      if code in _PENDING:
        answers += 1
        if answers > MAX_ANSWERS:
          assoc.abort()
          raise CatchUpError(f"more than {MAX_ANSWERS} answers to one {level} query")
        if identifier is not None:
          yield identifier
      elif code != 0x0000:
        raise CatchUpError(f"{level} query refused (status {code:04X})")

  def _broke_off(self, what: str, started: float) -> str:
    """Why a request got no status: no answer in time, or the PACS broke off sooner
    (pynetdicom may not yet have marked the association aborted when it says so)."""
    if time.monotonic() - started < 0.9 * self.options.dimse_timeout:
      return (f"the PACS aborted the association at {what}: does it know the calling AE "
              f"title {self.options.query_ae_title or self.options.ae_title}? (Orthanc "
              "answers only the AE titles in its DicomModalities)")
    return f"no answer to {what} in {self.options.dimse_timeout:g} s (--dimse_timeout)"

  def _films_of_day(self, day: str, current: Round) -> Iterator[Film]:
    """The CR and DX films of the studies dated `day`, as the PACS lists them. A study
    the PACS fails to list (refused, no answer in time, too many answers) is counted as
    failed in `current`, and the others go on, on a fresh association if it broke."""
    studies = list(self._find("STUDY", StudyDate=day, ModalitiesInStudy=
                              "\\".join(CHEST_MODALITIES), StudyInstanceUID="",
                              NumberOfStudyRelatedInstances=""))
    current.studies += len(studies)
    for study in studies:
      study_uid = str(study.get("StudyInstanceUID", ""))
      if not spool_lib.is_uid(study_uid) or self._given_up(study_uid):
        continue
      count = _int(study.get("NumberOfStudyRelatedInstances"))
      known = self._known_studies.get(study_uid)
      if (count is not None and known is not None and known[0] == count
          and self._rounds - known[1] < FULL_RELIST_ROUNDS):
        continue  # every film of it was known when it held as many instances
      try:
        films = self._films_of_study(study_uid, day)
      except CatchUpError as e:
        current.failed += 1
        self._failed(study_uid, f"study {study_uid} could not be listed ({e})")
        self._fresh()
        continue
      self._failures.pop(study_uid, None)
      if count is not None and all(self.spool.known(f.sop_uid) for f in films):
        self._known_studies[study_uid] = (count, self._rounds)
      yield from films

  def _films_of_study(self, study_uid: str, day: str) -> List[Film]:
    films = []
    for series in list(self._find("SERIES", StudyInstanceUID=study_uid,
                                  SeriesInstanceUID="", Modality="")):
      series_uid = str(series.get("SeriesInstanceUID", ""))
      if (str(series.get("Modality", "")) not in CHEST_MODALITIES
          or not spool_lib.is_uid(series_uid)):
        continue
      for image in list(self._find("IMAGE", StudyInstanceUID=study_uid,
                                   SeriesInstanceUID=series_uid, SOPInstanceUID="",
                                   SOPClassUID="")):
        sop_uid = str(image.get("SOPInstanceUID", ""))
        class_uid = str(image.get("SOPClassUID", "") or "")
        # Only the classes the receiver takes (a DX series may also hold a film for
        # processing, which no viewer shows and the node does not read).
        if (spool_lib.is_uid(sop_uid) and (not class_uid or class_uid in dicom.FILM_CLASSES)
            and not self._given_up(sop_uid)):
          films.append(Film(study_uid, series_uid, sop_uid, class_uid, day))
    return films

  def _given_up(self, uid: str) -> bool:
    return self._failures.get(uid, 0) >= GIVE_UP_ROUNDS

  def _failed(self, uid: str, what: str) -> None:
    """Counts a failed round for a study or film; after GIVE_UP_ROUNDS, gives it up."""
    rounds = self._failures.get(uid, 0) + 1
    self._failures[uid] = rounds
    if rounds >= GIVE_UP_ROUNDS:
      log.warning("catch-up: gave up after %d rounds: %s; it gets no report unless it is "
                  "sent to the node", rounds, what)
    else:
      log.warning("catch-up: %s; tried again next round", what)

  def _retrieve(self, found: Film) -> bool:
    """Retrieves one film into the spool; True if the spool then has it. A retrieve that
    breaks the association off or never ends is this film's failure (a fresh association
    for the next).

    Raises:
      CatchUpError: the PACS cannot be reached again.
    """
    try:
      last = self._send_retrieve(found)
    except CatchUpError as e:
      self._failed(found.sop_uid, f"film {found.sop_uid} of study {found.study_uid}: {e}")
      self._fresh()
      return False
    if self.spool.known(found.sop_uid):
      return True
    self._failed(found.sop_uid, f"film {found.sop_uid} of study {found.study_uid} did not "
                 f"arrive ({f'status {last:04X}' if last is not None else 'no status'})")
    return False

  def _send_retrieve(self, found: Film) -> Optional[int]:
    """One film's C-GET or C-MOVE; its last status."""
    assoc = self._assoc
    identifier = pydicom.Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = found.study_uid
    identifier.SeriesInstanceUID = found.series_uid
    identifier.SOPInstanceUID = found.sop_uid
    if self.options.retrieve == "get":
      answers = assoc.send_c_get(identifier, _GET)
    else:
      answers = assoc.send_c_move(identifier, self.options.ae_title, _MOVE)
    last, pending = None, 0
    started = time.monotonic()
    for status, _ in answers:
      code = getattr(status, "Status", None)
      if code is None:
        raise CatchUpError(self._broke_off("a retrieve", started))
      last = code
      pending += code in _PENDING
      if pending > MAX_RETRIEVE_PENDING:
        assoc.abort()
        raise CatchUpError(f"its retrieve answered pending more than {MAX_RETRIEVE_PENDING} "
                           "times for one film")
    return last


def _int(value) -> Optional[int]:
  try:
    return int(value)
  except (TypeError, ValueError):
    return None


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
