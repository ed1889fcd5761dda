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

Bounds: each C-FIND answer is read to at most MAX_ANSWERS matches (more aborts the round,
with the reason); a round retrieves at most `--catch_up_batch` films, and the next batch
starts once the worker has read the films of this one (films pushed meanwhile do not
hold it back), so a long outage is worked off without filling the disk; each retrieve
has `--dimse_timeout` per answer.

The checkpoint (catch_up.json in the spool) is the first study date still looked at. A
round that saw every day through and retrieved everything it found moves it to the day
before the round started (a day's overlap: films reach a PACS after their study date,
and clocks differ); on first start (or another PACS) it is `--catch_up_days` before
today. A film whose retrieve fails is tried again in the next rounds; after
GIVE_UP_ROUNDS failed rounds it is given up with a warning (so one film the PACS cannot
send does not hold the checkpoint back for ever). Studies without a study date are not
found by a date query: a PACS that stores such films must push them.
"""
import dataclasses
import datetime
import json
import logging
import os
import time
from typing import Callable, Dict, Iterator, List, Optional

import pydicom
from pynetdicom import build_role, evt
from pynetdicom import sop_class

from cxr_edge.node import background
from cxr_edge.node import dicom
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
    self._known_studies: Dict[str, int] = {}  # study UID -> instances when all were known
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
    first = _dicom_date(today - datetime.timedelta(days=self.options.catch_up_days))
    since = self.checkpoint()
    if since is None:
      return first
    try:
      return _dicom_date(min(_day(since), today))
    except (TypeError, ValueError):
      log.warning("%s holds no date; looking back from %s", CHECKPOINT_NAME, first)
      return first

  def _save_checkpoint(self, since: str) -> None:
    spool_lib.write_atomic(self.spool.path(CHECKPOINT_NAME), json.dumps(
        {"pacs": str(self.pacs), "since": since, "time": _now()}).encode())

  def checkpoint(self) -> Optional[str]:
    """The first study date the next round looks at, as saved (None before any)."""
    saved = spool_lib.read_json(self.spool.path(CHECKPOINT_NAME))
    return saved.get("since") if saved and saved.get("pacs") == str(self.pacs) else None

  # One round ----------------------------------------------------------------------------

  def _round(self, current: Round, since: datetime.date, today: datetime.date) -> None:
    assoc = self._associate()
    try:
      missing: List[Film] = []
      day = since
      while day <= today and not self._stop.is_set():
        for found in self._films_of_day(assoc, _dicom_date(day), current):
          current.films_listed += 1
          if not self.spool.known(found.sop_uid):
            missing.append(found)
        day += datetime.timedelta(days=1)
      batch = self.options.catch_up_batch
      current.more = len(missing) > batch
      self._batch = []
      for found in missing[:batch]:
        if self._stop.is_set():
          current.more = True
          break
        if self._retrieve(assoc, found):
          current.retrieved += 1
          self._batch.append(found.sop_uid)
        else:
          current.failed += 1
    finally:
      if assoc.is_established:
        assoc.release()
      else:
        assoc.abort()

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
                             evt_handlers=[(evt.EVT_C_STORE, self.on_store)])
    except dicom.NoAssociation as e:
      raise CatchUpError(str(e)) from None

  def _find(self, assoc, level: str, **keys: str) -> Iterator[pydicom.Dataset]:
    """The matches of one C-FIND (Study Root), at most MAX_ANSWERS.

    Raises:
      CatchUpError: the PACS refused the query, broke off, or answered too much.
    """
    query = pydicom.Dataset()
    query.QueryRetrieveLevel = level
    for keyword, value in keys.items():
      setattr(query, keyword, value)
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

  def _films_of_day(self, assoc, day: str, current: Round) -> Iterator[Film]:
    """The CR and DX films of the studies dated `day`, as the PACS lists them. A study
    the PACS fails to list is counted as failed in `current`; the others go on."""
    studies = list(self._find(assoc, "STUDY", StudyDate=day, ModalitiesInStudy=
                              "\\".join(CHEST_MODALITIES), StudyInstanceUID="",
                              NumberOfStudyRelatedInstances=""))
    current.studies += len(studies)
    for study in studies:
      study_uid = str(study.get("StudyInstanceUID", ""))
      if not spool_lib.is_uid(study_uid) or self._given_up(study_uid):
        continue
      count = _int(study.get("NumberOfStudyRelatedInstances"))
      if count is not None and self._known_studies.get(study_uid) == count:
        continue  # every film of it was known when it held as many instances
      try:
        films = self._films_of_study(assoc, study_uid, day)
      except CatchUpError as e:
        if not assoc.is_established:
          raise
        current.failed += 1
        self._failed(study_uid, f"study {study_uid} could not be listed ({e})")
        continue
      self._failures.pop(study_uid, None)
      if count is not None and all(self.spool.known(f.sop_uid) for f in films):
        self._known_studies[study_uid] = count
      yield from films

  def _films_of_study(self, assoc, study_uid: str, day: str) -> List[Film]:
    films = []
    for series in list(self._find(assoc, "SERIES", StudyInstanceUID=study_uid,
                                  SeriesInstanceUID="", Modality="")):
      series_uid = str(series.get("SeriesInstanceUID", ""))
      if (str(series.get("Modality", "")) not in CHEST_MODALITIES
          or not spool_lib.is_uid(series_uid)):
        continue
      for image in list(self._find(assoc, "IMAGE", StudyInstanceUID=study_uid,
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

  def _retrieve(self, assoc, found: Film) -> bool:
    """Retrieves one film into the spool; True if the spool then has it."""
    identifier = pydicom.Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = found.study_uid
    identifier.SeriesInstanceUID = found.series_uid
    identifier.SOPInstanceUID = found.sop_uid
    if self.options.retrieve == "get":
      answers = assoc.send_c_get(identifier, _GET)
    else:
      answers = assoc.send_c_move(identifier, self.options.ae_title, _MOVE)
    last = None
    started = time.monotonic()
    for status, _ in answers:
      code = getattr(status, "Status", None)
      if code is None:
        raise CatchUpError(self._broke_off("a retrieve", started))
      last = code
    if self.spool.known(found.sop_uid):
      return True
    self._failed(found.sop_uid, f"film {found.sop_uid} of study {found.study_uid} did not "
                 f"arrive ({f'status {last:04X}' if last is not None else 'no status'})")
    return False


def _int(value) -> Optional[int]:
  try:
    return int(value)
  except (TypeError, ValueError):
    return None


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
