"""The clinic node: receiver, worker, forwarder and review page over one spool.

The receiver (node/dicom.py) admits films into the spool and wakes the worker. The
worker reads the queue oldest first, one film at a time, and for each: predicts it with
the edge runtime (the same windowing, guard, threshold and --strict as cxr-predict),
writes its Structured Report (and with `overlay` its Secondary Capture) into reports/,
queues them for the forwarder, appends the audit line, writes the film's record and
moves the film out of the queue (node/spool.py says why that order survives a crash).
The forwarder sends reports to the PACS; the review page shows the records.

Nothing a film holds stops the node: a film that cannot be read gets a report saying
NOT ANALYSED and why; an unexpected failure on one film is logged and recorded as that
film's error, and the worker goes on.
"""
import dataclasses
import datetime
import errno
import io
import logging
import os
import secrets
import threading
import time
from typing import Dict, Optional

import numpy as np
import pydicom
from PIL import Image

from cxr_edge.core import errors
from cxr_edge.core import film
from cxr_edge.core import image_io
from cxr_edge.core import locks
from cxr_edge.edge import explain
from cxr_edge.edge import released
from cxr_edge.edge import runtime
from cxr_edge.node import background
from cxr_edge.node import card
from cxr_edge.node import catch_up as catch_up_lib
from cxr_edge.node import dicom
from cxr_edge.node import monitor_lib
from cxr_edge.node import node_config
from cxr_edge.node import report
from cxr_edge.node import review
from cxr_edge.node import spool as spool_lib

log = logging.getLogger("cxr_edge.node")

TOKEN_NAME = "http_token"
# What building a report from a header that holds values it cannot carry raises.
_HEADER_ERRORS = (ValueError, TypeError, AttributeError, KeyError, LookupError)
PRUNE_EVERY_SECONDS = 3600.0
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _now_iso() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def _text(ds: pydicom.Dataset, keyword: str) -> Optional[str]:
  value = ds.get(keyword)
  return None if value is None else str(value)


@dataclasses.dataclass
class Ports:
  """Where the node listens (the actual ports, when 0 was asked for)."""
  dicom: Optional[int]  # None with --nolisten
  http: Optional[int]


class Node:
  """One clinic node. `start()` serves until `stop()`; `process_pending()` runs the worker's
  loop body once (tests drive it directly)."""

  def __init__(self, options: node_config.NodeOptions,
               model: Optional[runtime.LiteModel] = None):
    """Loads the model and opens the spool (nothing listens yet).

    Args:
      options: the node's options.
      model: the loaded model (default: options.model, loaded here).

    Raises:
      errors.ModelError: the model cannot be used. errors.CxrError: the spool is held by
        another node.
    """
    self.options = options
    # Loading checks the package (core/package_info.py): its decision labels, its classes.
    self.model = model or runtime.LiteModel(released.resolve(options.model), options.threads)
    self.model.for_site(options.intended_ages or None, options.intended_views or None,
                        options.widen_intended_use)
    if self.model.info.notice and not options.allow_smoke_model:
      raise errors.ModelError(f"{self.model.info.notice} Give --allow_smoke_model to run it "
                              "anyway, or use the released model (no --model)")
    self._hold = locks.exclusive(options.spool_dir, "cxr-node", "--spool_dir")
    self._hold.__enter__()  # held until stop(): one node per spool
    self.spool = spool_lib.Spool(options.spool_dir, options.min_free_mb * 2**20)
    self._wake = threading.Event()
    self._stop = threading.Event()
    self._busy = threading.Lock()  # held while a film is between the queue and its record
    self.receiver = dicom.Receiver(self.spool, options, self._wake.set)
    destination = options.destination
    self.forwarder = (dicom.Forwarder(self.spool, destination,
                                      options.forward_ae_title or options.ae_title,
                                      options.forward_refusals, options.acse_timeout,
                                      options.dimse_timeout, options.network_timeout)
                      if destination else None)
    # Catch-up's films are admitted by the receiver's own handler: pushed or pulled, a
    # film is queued once.
    self.catch_up = (catch_up_lib.CatchUp(self.spool, options, self.receiver.on_store)
                     if options.query else None)
    # The site's figures (readers' verdicts) and alarms: this model's, beside the
    # figures it was released (or calibrated) with.
    self.monitor = monitor_lib.Monitor(
        options.spool_dir, self.model.sha256, monitor_lib.stated_figures(
            self.model.sha256, self.model.metadata, released.release()),
        status=lambda: review.status(self.spool, self.forwarder is not None),
        alert_command=options.alert_command, every_seconds=options.check_minutes * 60)
    self.review: Optional[review.ReviewServer] = None
    self._worker = background.Background("cxr-node worker", join_seconds=120,
                                         target=self._work)
    self.processed = 0
    # Every part runs in a thread of its own; one that cannot go on stops the node.
    self.parts: Dict[str, background.Background] = {
        p.name: p for p in (self._worker, self.receiver.gate if options.listen else None,
                            self.forwarder, self.catch_up, self.monitor) if p is not None}
    self.died = threading.Event()
    self.death: Optional[str] = None  # which part could not go on, and why
    for part in self.parts.values():
      part.on_death = self._part_died

  def start(self) -> Ports:
    """Starts the worker, the forwarder, the review page, the receiver and, last, the
    catch-up (its C-MOVE's films come to the receiver)."""
    if self.forwarder:
      self.forwarder.start()
    self._worker.start()
    http_port = None
    binding = ("--http_port", self.options.http_host, self.options.http_port)
    try:
      if self.options.http_port is not None:
        self.review = review.ReviewServer(
            self.spool, self.options.http_host, self.options.http_port, self._token(),
            waiting=lambda: len(self.spool.outbox()), notice=self.model.info.notice,
            model=self.model.info.headline(self.model.sha256),
            timeout=self.options.http_timeout, forwarding=self.forwarder is not None,
            uncalibrated=self.model.info.site_calibration is None,
            catch_up=self.catch_up_state, monitor=self.monitor,
            public_origin=self.options.public_url, parts=self.health)
        self.review.start()
        http_port = self.review.port
      binding = ("--port", self.options.host, self.options.port)
      dicom_port = self.receiver.start(listen=self.options.listen)
    except OSError as e:
      if e.errno != errno.EADDRINUSE:
        raise
      self.stop()
      flag, host, port = binding
      raise errors.CxrError(f"{flag}={port}: {host}:{port} is already in use (another "
                            f"cxr-node, or another program): stop it, or give {flag} "
                            "another port (0: any free one)") from None
    if not self.forwarder:
      log.warning("no --forward: reports are written to %s and sent to no PACS",
                  self.spool.path("reports"))
    queued = self.spool.queued()
    log.info("cxr-node %s %s%s%s; %s, from %s; %d film(s) queued from before",
             self.options.ae_title,
             f"listening on {self.options.host}:{dicom_port}" if self.options.listen
             else "not listening (pull-only)",
             f", catching up from {self.options.query_pacs} by C-"
             f"{self.options.retrieve.upper()}" if self.catch_up else "",
             f", review page on http://{self.options.http_host}:{http_port}/"
             if http_port is not None else "", self.model.info.headline(self.model.sha256),
             self.model.path, queued)
    if self.model.info.notice:
      log.warning("%s", self.model.info.notice)
    if self.catch_up:
      self.catch_up.start()
    self.monitor.start()
    return Ports(dicom_port, http_port)

  def stop(self) -> None:
    """Stops catching up and receiving first, then lets the worker finish its film;
    releases the spool."""
    if self.catch_up:
      self.catch_up.stop()
    self.monitor.stop()
    self.receiver.stop()
    self._stop.set()
    self._wake.set()
    self._worker.stop()
    if self.forwarder:
      self.forwarder.stop()
    if self.review:
      self.review.stop()
    self._hold.__exit__(None, None, None)

  def _part_died(self, part: background.Background) -> None:
    """A part cannot go on: the node must not look alive without it (cxr-node stops
    and exits non-zero, so the service manager restarts it)."""
    self.death = f"{part.name}: {part.dead}"
    log.critical("the node stops: %s", self.death)
    self.died.set()

  def health(self) -> Dict[str, Dict]:
    """{part's name: its health()}: /status.json's parts."""
    return {name: part.health() for name, part in self.parts.items()}

  def wait_idle(self, timeout: float) -> bool:
    """Waits until no film is queued or being processed and, when forwarding, no report
    waits; True if so within `timeout` seconds (a benchmark's or a test's finish line)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      with self._busy:
        idle = not self.spool.pending()
      if idle and not (self.forwarder and self.spool.outbox()):
        return True
      self._stop.wait(0.05)
    return False

  def catch_up_state(self) -> Optional[Dict]:
    """The catch-up's PACS, checkpoint and last round (None without --query)."""
    if not self.catch_up:
      return None
    last = self.catch_up.last
    return {"pacs": str(self.catch_up.pacs), "retrieve": self.options.retrieve,
            "checkpoint": self.catch_up.checkpoint(),
            "last_round": dataclasses.asdict(last) if last else None}

  def _token(self) -> Optional[str]:
    """The review page's token: none on loopback; else --http_token_file's, or one made
    and kept in the spool (readable by the node's user only)."""
    if self.options.http_host in _LOOPBACK:
      return None
    if self.options.http_token_file:
      try:
        with open(self.options.http_token_file, encoding="utf-8") as f:
          token = f.readline().strip()
      except OSError as e:
        raise errors.CxrError(f"--http_token_file: {e.strerror or e}") from None
      if len(token) < 16:
        raise errors.CxrError("--http_token_file: the token must be 16 characters or more")
      return token
    path = self.spool.path(TOKEN_NAME)
    if not os.path.exists(path):
      spool_lib.write_atomic(path, (secrets.token_urlsafe(24) + "\n").encode())
      os.chmod(path, 0o600)
    with open(path, encoding="utf-8") as f:
      token = f.readline().strip()
    log.info("the review page asks for the token in %s (open /?token=... once)", path)
    return token

  # The worker -----------------------------------------------------------------------

  def _work(self) -> None:
    next_prune = 0.0
    while not self._stop.is_set():
      self.process_pending()
      try:
        self.receiver.sweep()
      except OSError as e:  # a failing disk: the next round tries again
        log.warning("could not clear receiving/: %s", e.strerror or e)
      if time.monotonic() >= next_prune:
        self.prune()
        next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
      self._wake.wait(timeout=1.0)
      self._wake.clear()

  def prune(self) -> int:
    """Applies --keep_days (the worker does, hourly); returns how many files went."""
    if not self.options.keep_days:
      return 0
    cutoff = time.time_ns() - int(self.options.keep_days * 86400 * 1e9)
    try:
      removed = self.spool.prune(cutoff)
    except OSError as e:  # a failing disk: the next round tries again
      log.warning("could not prune the spool: %s", e.strerror or e)
      return 0
    if removed:
      log.info("removed %d file(s) older than %g days from the spool", removed,
               self.options.keep_days)
    return removed

  def process_pending(self) -> int:
    """Processes every queued film, oldest first; returns how many."""
    done = 0
    for uid in self.spool.pending():
      if self._stop.is_set():
        break
      try:
        with self._busy:
          self.process(uid)
      except Exception as e:  # pylint: disable=broad-except
        # A film that breaks the worker in a way nobody foresaw must not stop the node
        # or block the queue behind it: it is recorded as that film's failure.
        log.exception("film %s: unexpected failure (%s: %s)", uid, type(e).__name__, e)
        try:
          self._fail(uid, f"internal error while processing ({type(e).__name__}: "
                          f"{str(e)[:200]})")
        except OSError as disk:  # the spool itself fails: wait for the next round
          log.error("film %s stays queued: the spool cannot record it (%s)", uid,
                    disk.strerror or disk)
          break
      done += 1
    return done

  def process(self, uid: str) -> Dict:
    """One queued film through to its record; returns the record."""
    path = self.spool.path("incoming", uid + ".dcm")
    received_ns = self.spool.received_ns(uid)
    try:
      data = image_io.read_file(path)
      header, _ = film.dicom_header(io.BytesIO(data))
      str(header.StudyInstanceUID)  # a report goes into the film's study
    except Exception as e:  # pylint: disable=broad-except  # pydicom raises many kinds
      # The receiver checked this header: the file was damaged on disk since. No report
      # can name its study; it is set aside and recorded, and the queue goes on.
      why = f"its queued file is damaged ({type(e).__name__}: {str(e)[:200]})"
      self.spool.quarantine("incoming", uid + ".dcm", why)
      return self._fail(uid, why, received_ns)
    start = time.perf_counter()
    gray = None  # the film as decoded for the prediction: the card and overlay show it
    try:
      result, gray = self.model.predict_film(data, self.options.strict, header)
    except (errors.ImageError, image_io.UnreadableFile) as e:
      result = {"error": str(e)}
    report_header = header
    try:
      sr = report.structured_report(header, result, self.model.info, self.model.sha256)
    except _HEADER_ERRORS as e:
      # Something in the header no report can carry: the film's study still gets one,
      # saying it was not analysed and why (the prediction is not sent without its film's
      # details), and the record and the log say why.
      why = (f"its header could not be copied into a report ({type(e).__name__}: "
             f"{str(e)[:200]})")
      log.warning("film %s: %s; sending a minimal NOT ANALYSED report", uid, why)
      result = {"error": why}
      report_header = report.minimal_header(header)
      sr = report.structured_report(report_header, result, self.model.info,
                                    self.model.sha256)
    names = [self._write(uid + ".sr.dcm", sr)]
    if self.options.result_card:
      if gray is None:  # not predicted: decodable still (refused by --strict), or not
        try:
          gray = runtime.film_gray(data)
        except (errors.ImageError, image_io.UnreadableFile):
          gray = np.zeros((1, 1), np.uint8)  # no picture of the film: the words still go
      rgb = card.render(gray, result, self.model.info)
      try:
        result_card = report.result_card(report_header, rgb, self.model.sha256)
      except _HEADER_ERRORS:  # as for the SR: the card still goes, in the film's study
        result_card = report.result_card(report.minimal_header(header), rgb,
                                         self.model.sha256)
      names.append(self._write(uid + ".card.dcm", result_card))
    has_overlay = False
    if self.options.overlay and "error" not in result:
      png = explain.overlay_png(self.model, data, result, gray)
      spool_lib.write_atomic(self.spool.path("overlays", uid + ".png"), png)
      with Image.open(io.BytesIO(png)) as im:
        rgb = np.asarray(im.convert("RGB"))
      names.append(self._write(uid + ".sc.dcm", report.overlay_capture(
          header, rgb, self.model.sha256)))
      has_overlay = True
    if self.forwarder:
      for name in names:
        self.spool.enqueue_forward(name)
      self.forwarder.wake()
    audit = self._audit_line(uid, result, str(header.StudyInstanceUID),
                             str(sr.SOPInstanceUID), monitor_lib.film_inputs(header, gray))
    self.spool.audit_once(audit)
    record = {**audit, "received_ns": received_ns, "processed_ns": time.time_ns(),
              "processing_ms": round((time.perf_counter() - start) * 1000, 1),
              "overlay": has_overlay, "study_date": _text(header, "StudyDate"),
              "patient_name": _text(header, "PatientName"),
              "patient_id": _text(header, "PatientID"),
              "accession_number": _text(header, "AccessionNumber"),
              "series_description": _text(header, "SeriesDescription"),
              "modality": _text(header, "Modality")}
    self.spool.finish(uid, record)
    self.processed += 1
    outcome = (f"not analysed ({result['error']})" if "error" in result else
               f"{result['prediction']} p={result['p_pneumonia']:.3f}"
               + (f" ({result['subtype']})" if result.get("subtype") else "")
               + (" with a warning" if result.get("warning") else ""))
    log.info("film %s: %s", uid, outcome)
    return record

  def _audit_line(self, uid: str, result: Dict, study_uid: Optional[str] = None,
                  report_uid: Optional[str] = None, inputs: Optional[Dict] = None) -> Dict:
    """The film's audit line: UIDs, the model, the outcome, and what drift is watched on
    (equipment, view, age, pixel statistics); no patient name or id."""
    return {"time": _now_iso(), "sop_instance_uid": uid, "study_instance_uid": study_uid,
            "model_sha256": self.model.sha256, "prediction": result.get("prediction"),
            "p_pneumonia": result.get("p_pneumonia"),
            **{k: result[k] for k in runtime.SUBTYPE_FIELDS if k in result},
            "threshold": result.get("threshold", self.model.threshold),
            "warning": result.get("warning"), "error": result.get("error"),
            "report_sop_instance_uid": report_uid, "inputs": inputs}

  def _write(self, name: str, ds: pydicom.Dataset) -> str:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    spool_lib.write_atomic(self.spool.path("reports", name), out.getvalue())
    return name

  def _fail(self, uid: str, why: str, received_ns: Optional[int] = None) -> Optional[Dict]:
    """Records a film the worker could not process at all (no report could be made);
    returns the record."""
    if received_ns is None:
      try:
        received_ns = self.spool.received_ns(uid)
      except OSError:
        return None  # gone already
    audit = self._audit_line(uid, {"error": why})
    self.spool.audit_once(audit)
    record = {**audit, "received_ns": received_ns, "processed_ns": time.time_ns(),
              "overlay": False}
    self.spool.finish(uid, record)
    log.warning("film %s: no report: %s", uid, why)
    return record
