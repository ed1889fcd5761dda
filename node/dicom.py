"""The clinic node on the DICOM network (pynetdicom): receiving films, forwarding reports.

The receiver is a Storage SCP for digital X-ray (for presentation), computed radiography
and secondary capture films, plus C-ECHO. It negotiates only the transfer syntaxes this
install can decode (pydicom's decoders that are available), so a sender falls back to
another instead of sending a film nobody here can read. A dataset is written to disk as
it arrives (never whole in memory) and acknowledged only once the spool has it durably.

Statuses a sender sees (PS3.4 B.2.3):
  0000 success, also for a film already received (it is not queued twice);
  A700 out of resources: the spool's disk is below its reserve or refused the write; the
       sender keeps the film and retries;
  A900 not a film this node can file: no well-formed SOP Instance, Study or Series
       Instance UID, no pixel data, or a SOP class other than the context's;
  C000 cannot understand: the dataset does not parse.
A film that is a well-formed dataset but not a readable radiograph is acknowledged and
gets a report saying NOT ANALYSED and why: the reader sees it where films are read. The
node's own overlays, routed back to it by a careless PACS rule, are acknowledged and not
read (each would otherwise beget another).

The forwarder sends the spool's outbox to one destination over one association at a
time. An unreachable destination is an outage: the reports wait (backing off up to a
minute) and go when it returns, across restarts too. A failure status for a report is a
refusal: after `refusals` of them it goes to dead_letter/ with the reason.
"""
import contextlib
import datetime
import logging
import os
import socket
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional, Union

import pydicom
from pydicom import uid as dicom_uid
from pynetdicom import AE, evt, _config
from pynetdicom import dimse_messages
from pynetdicom import sop_class

from cxr_edge.core import film
from cxr_edge.core import schema
from cxr_edge.node import background
from cxr_edge.node import limits
from cxr_edge.node import node_config
from cxr_edge.node import report
from cxr_edge.node import spool as spool_lib

log = logging.getLogger("cxr_edge.node")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
NOT_A_FILM = 0xA900
CANNOT_UNDERSTAND = 0xC000
_WARNINGS = (0x0001, 0xB000, 0xB006, 0xB007)  # stored, with a remark

FILM_CLASSES = (sop_class.DigitalXRayImageStorageForPresentation,
                sop_class.ComputedRadiographyImageStorage,
                sop_class.SecondaryCaptureImageStorage)
REPORT_CLASSES = (sop_class.ComprehensiveSRStorage, sop_class.SecondaryCaptureImageStorage)
_MAX_BACKOFF_SECONDS = 60.0


def is_temporary(status: int) -> bool:
  """A C-STORE failure that means "try later": A7xx, Refused: Out of Resources (PS3.4
  B.2.3). Every other failure is a refusal that will not change by itself."""
  return (status & 0xFF00) == 0xA700


def decodable_syntaxes() -> List[str]:
  """Transfer syntaxes whose pixel data this install decodes (uncompressed first)."""
  from pydicom.pixels import get_decoder  # pylint: disable=g-import-not-at-top
  native = [dicom_uid.ExplicitVRLittleEndian, dicom_uid.ImplicitVRLittleEndian,
            dicom_uid.DeflatedExplicitVRLittleEndian, dicom_uid.ExplicitVRBigEndian]
  compressed = []
  for syntax in dicom_uid.AllTransferSyntaxes:
    if syntax in native:
      continue
    try:
      if get_decoder(syntax).is_available:
        compressed.append(syntax)
    except NotImplementedError:  # pydicom has no decoder for it at all
      pass
  return native + compressed


def _check_film(path: str, sop_class_uid: str) -> Union[int, pydicom.Dataset]:
  """The received dataset's header if it can be filed, else the failure status (and logs
  why)."""
  size = os.path.getsize(path)
  if size > schema.MAX_FILE_BYTES:
    log.warning("refused a dataset of %d MiB (over %d MiB)", size // 2**20,
                schema.MAX_FILE_BYTES // 2**20)
    return OUT_OF_RESOURCES
  try:
    # Only the header is read: the pixels stay on disk, deflated ones uninflated.
    with open(path, "rb") as f:
      ds, has_pixels = film.dicom_header(f, defer_size=4096)
    uids = [ds.get(k) for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")]
    own_class = ds.get("SOPClassUID")
  except Exception as e:  # pylint: disable=broad-except
    # pydicom raises many kinds on a malformed dataset; each is the sender's problem.
    log.warning("refused a dataset that does not parse (%s)", type(e).__name__)
    return CANNOT_UNDERSTAND
  if not all(spool_lib.is_uid(str(u)) if u else False for u in uids):
    log.warning("refused a dataset without well-formed SOP/Study/Series Instance UIDs")
    return NOT_A_FILM
  if not has_pixels:
    log.warning("refused %s: no pixel data", uids[0])
    return NOT_A_FILM
  if own_class != sop_class_uid:
    log.warning("refused %s: its SOP class is not the one it was sent as", uids[0])
    return NOT_A_FILM
  return ds


def _cannot_store(error: OSError) -> str:
  return f"the spool cannot store it ({error.strerror or error})"


class Receiving:
  """The spool's receiving/ folder while the receiver runs: the datasets arriving."""

  def __init__(self, spool: spool_lib.Spool, max_bytes: int):
    self.spool, self.max_bytes = spool, max_bytes
    self.folder = spool.path("receiving")
    self._live: Dict[str, "ReceivedFile"] = {}
    self._lock = threading.Lock()

  def open(self, *args, **kwargs) -> "ReceivedFile":
    """pynetdicom's NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")."""
    del args, kwargs
    received = ReceivedFile(self)
    if received.failed is None:
      with self._lock:
        self._live[received.name] = received
    return received

  def closed(self, received: "ReceivedFile") -> None:
    with self._lock:
      self._live.pop(received.name, None)

  def sweep(self, stale_seconds: float) -> int:
    """Removes partial datasets: those of transfers cut off (nothing written for
    `stale_seconds`) and files no transfer holds older than that; returns how many.
    Until then they are on the spool's disk, so its reserve counts them."""
    now = time.monotonic()
    with self._lock:
      stale = [f for f in self._live.values() if now - f.last_write > stale_seconds]
      held = set(self._live) - {f.name for f in stale}
    for received in stale:
      received.discard("cut off")
    removed = len(stale)
    for name in os.listdir(self.folder):
      path = os.path.join(self.folder, name)
      if not spool_lib.is_partial(name) or path in held:
        continue
      with contextlib.suppress(OSError):
        if time.time() - os.stat(path).st_mtime > stale_seconds:
          os.unlink(path)
          removed += 1
    if removed:
      log.warning("removed %d partial dataset(s) of cut-off transfers from receiving/",
                  removed)
    return removed


class ReceivedFile:
  """What pynetdicom writes a C-STORE's dataset into, in place of its NamedTemporaryFile:
  a file in receiving/ whose writes never raise.

  A spool below its reserve, full or read-only marks the file failed (the handler then
  answers A700, out of resources, and the sender keeps the film), where the exception
  killed pynetdicom's thread and left the sender without a status.
  """

  def __init__(self, receiving: Receiving):
    self._receiving = receiving
    self.failed: Optional[str] = None
    self.last_write = time.monotonic()
    self.size = 0
    self._fd = None
    self.name = os.path.join(receiving.folder, "unwritable.dcm")  # never created
    try:
      receiving.spool.check_space()
      fd, self.name = tempfile.mkstemp(suffix=".dcm", prefix="tmp", dir=receiving.folder)
      self._fd = os.fdopen(fd, "wb")
    except spool_lib.SpoolFull as e:
      self.failed = str(e)
    except OSError as e:
      self.failed = _cannot_store(e)

  @property
  def file(self) -> "ReceivedFile":  # pynetdicom calls .file.flush()
    return self

  def write(self, data: bytes) -> int:
    self.last_write = time.monotonic()
    self.size += len(data)
    if self.size > self._receiving.max_bytes:  # the node's C-GET has no socket guard
      self.discard(f"the dataset is larger than {self._receiving.max_bytes} bytes")
    if self._fd is not None:
      try:
        self._fd.write(data)
      except OSError as e:
        self.discard(_cannot_store(e))
    return len(data)

  def flush(self) -> None:
    if self._fd is not None:
      try:
        self._fd.flush()
      except OSError as e:
        self.discard(_cannot_store(e))

  def close(self) -> None:
    self._receiving.closed(self)
    if self._fd is not None:
      fd, self._fd = self._fd, None
      try:
        fd.close()
      except OSError as e:
        self.failed = self.failed or _cannot_store(e)

  def discard(self, why: str) -> None:
    """Fails the file: closed, removed, and `failed` says why."""
    self.failed = self.failed or why
    self.close()
    with contextlib.suppress(OSError):
      os.unlink(self.name)


class Receiver:
  """The Storage SCP: admits films into the spool, then calls `on_admitted`."""

  def __init__(self, spool: spool_lib.Spool, options: node_config.NodeOptions,
               on_admitted: Callable[[], None]):
    self.spool, self.options, self.on_admitted = spool, options, on_admitted
    self.receiving = Receiving(spool, options.limits.max_dataset_bytes)
    self.gate = limits.Gate(options.limits, options.ae_title, options.allow_ae)
    self._server = None
    self._saved = None

  def start(self, listen: bool = True) -> Optional[int]:
    """Readies the spool's receiving/ folder for C-STOREs (the node's own C-GET's too)
    and, with `listen`, starts listening; returns the port (useful with --port=0)."""
    # Datasets are written to a file as they arrive (bounded memory), in the spool's
    # receiving/ folder so that admitting one is a link on the same disk, not a copy.
    # pynetdicom has no setting for that file, only the module's NamedTemporaryFile,
    # replaced here by one whose failures become a status. These are process-wide: one
    # receiver per process; stop() restores them.
    self._saved = (_config.STORE_RECV_CHUNKED_DATASET, dimse_messages.NamedTemporaryFile)
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = self.receiving.open
    if not listen:
      return None
    ae = AE(ae_title=self.options.ae_title)
    # The gate admits associations (node/limits.py); pynetdicom's own count includes
    # connections not yet associated, so it is only a bound on threads here.
    ae.maximum_associations = self.options.max_associations * 6 + 16
    ae.acse_timeout = self.options.acse_timeout
    ae.network_timeout = self.options.network_timeout
    ae.dimse_timeout = self.options.dimse_timeout
    ae.maximum_pdu_size = self.options.limits.max_pdu_bytes
    ae.require_called_aet = True
    if self.options.allow_ae:
      ae.require_calling_aet = list(self.options.allow_ae)
    syntaxes = decodable_syntaxes()
    for cls in FILM_CLASSES:
      ae.add_supported_context(cls, syntaxes)
    ae.add_supported_context(sop_class.Verification)
    self.gate.start()
    self._server = ae.start_server(
        (self.options.host, self.options.port), block=False,
        evt_handlers=[(evt.EVT_C_STORE, self.on_store), (evt.EVT_C_ECHO, _on_echo),
                      *self.gate.handlers()])
    return self._server.server_address[1]

  def stop(self) -> None:
    if self._server is not None:
      self._server.shutdown()
      self._server = None
    self.gate.stop()
    if self._saved is not None:
      _config.STORE_RECV_CHUNKED_DATASET, dimse_messages.NamedTemporaryFile = self._saved
      self._saved = None

  def sweep(self) -> int:
    """Removes partial datasets of transfers cut off (a live one writes at least every
    two network timeouts)."""
    return self.receiving.sweep(2 * self.options.network_timeout)

  def on_store(self, event) -> int:
    """EVT_C_STORE: a film pushed to the node, or sent back by its own C-GET."""
    received = getattr(event.request, "_dataset_file", None)
    if not isinstance(received, ReceivedFile):
      return self._admit(event, received)
    # The dataset is whole once its handler is called: its file is closed here, since
    # pynetdicom's C-GET path never closes it (a descriptor held per retrieved film) nor
    # removes it (the sweep took it for a cut-off transfer); on a push, pynetdicom
    # removes it itself after this handler.
    received.close()
    try:
      return self._admit(event, received)
    finally:
      if event.assoc.is_requestor:  # the node's own C-GET
        with contextlib.suppress(OSError):
          os.unlink(received.name)

  def _admit(self, event, received) -> int:
    """on_store's checks and admission: the status to answer."""
    calling = peer(event.assoc)
    if isinstance(received, ReceivedFile) and received.failed:
      log.warning("refused %s from %s: %s", event.request.AffectedSOPInstanceUID, calling,
                  received.failed)
      return OUT_OF_RESOURCES
    path = str(event.dataset_path)
    ds = _check_film(path, event.context.abstract_syntax)
    if isinstance(ds, int):
      return ds
    uid = str(ds.SOPInstanceUID)
    if report.is_own_output(ds):
      # One of our own overlays routed back by a PACS rule: acknowledged (nothing is
      # wrong with it) but not read, or each would beget another, without end.
      log.info("received %s from %s: cxr-edge's own output, not read", uid, calling)
      return SUCCESS
    try:
      queued = self.spool.admit(path, uid)
    except spool_lib.SpoolFull as e:
      log.warning("refused %s from %s: %s", uid, calling, e)
      return OUT_OF_RESOURCES
    except OSError as e:  # a full or failing disk: the sender keeps the film
      log.warning("refused %s from %s: %s", uid, calling, _cannot_store(e))
      return OUT_OF_RESOURCES
    if queued:
      log.info("received %s from %s", uid, calling)
      self.on_admitted()
    else:
      log.info("received %s from %s again: already queued or done", uid, calling)
    return SUCCESS


def peer(assoc) -> str:
  """The AE title at the other end of an association (the node's own C-GET included)."""
  return str(assoc.acceptor.ae_title if assoc.is_requestor else assoc.requestor.ae_title)


def _on_echo(event) -> int:
  del event
  return SUCCESS


class DestinationUnavailable(Exception):
  """The destination cannot be reached now (an outage, not a refusal)."""


class Forwarder(background.Background):
  """Sends the spool's outbox to one destination, in the background."""

  def __init__(self, spool: spool_lib.Spool, destination: node_config.Destination,
               calling_ae: str, refusals: int, acse_timeout: float = 30.0,
               dimse_timeout: float = 30.0, network_timeout: float = 60.0):
    self.spool, self.destination = spool, destination
    self.calling_ae, self.max_refusals = calling_ae, refusals
    self.timeouts = (acse_timeout, dimse_timeout, network_timeout)
    self._refused: Dict[str, int] = {}
    super().__init__("cxr-node forwarder", join_seconds=30)
    self._sending = threading.Lock()  # one sender at a time: no report goes out twice
    self.backoff = 0.0  # seconds the forwarder waits before the next try (0: none)

  def _run(self) -> None:
    while not self._stop.is_set():
      try:
        self.send_pending()
      except DestinationUnavailable as e:
        self.backoff = min(max(1.0, 2 * self.backoff), _MAX_BACKOFF_SECONDS)
        log.warning("forwarding to %s: %s; %d report(s) wait, next try in %.0f s",
                    self.destination, e, len(self.spool.outbox()), self.backoff)
      except Exception as e:  # pylint: disable=broad-except
        # Whatever else goes wrong, the node goes on and the reports stay queued.
        self.backoff = _MAX_BACKOFF_SECONDS
        log.exception("forwarding to %s failed (%s: %s); retrying in %.0f s",
                      self.destination, type(e).__name__, e, self.backoff)
      else:
        self.backoff = 0.0
      self._pause(self.backoff or 5.0)

  def send_pending(self) -> int:
    """Sends what the outbox holds over one association; returns how many were stored.

    Raises:
      DestinationUnavailable: no association, or it broke off.
    """
    with self._sending:
      return self._send(self.spool.outbox())

  def _send(self, names: List[str]) -> int:
    if not names:
      return 0
    ae = requestor(self.calling_ae, *self.timeouts)
    for cls in REPORT_CLASSES:
      ae.add_requested_context(cls, [dicom_uid.ExplicitVRLittleEndian,
                                     dicom_uid.ImplicitVRLittleEndian])
    try:
      assoc = associate(ae, self.destination, self.timeouts[0])
    except NoAssociation as e:
      raise DestinationUnavailable(str(e)) from None
    stored = 0
    try:
      for name in names:
        if self._stop.is_set():
          break
        if self.spool.queued_film(name):
          continue  # a crash cut its film's processing: the redo rewrites it first
        try:
          report_ds = self.spool.outbox_report(name)
        except FileNotFoundError:
          continue
        except ValueError as e:
          # Damaged on disk since it was written: set aside, the others still go.
          with contextlib.suppress(FileNotFoundError):
            self.spool.quarantine("outbox", name, f"the report is damaged: {e}")
          continue
        try:
          response = assoc.send_c_store(report_ds)
        except ValueError:  # pynetdicom: no accepted presentation context for its class
          self._refuse(name, "it accepts no presentation context for this SOP class")
          continue
        status = getattr(response, "Status", None)
        if status is None:
          raise DestinationUnavailable("the association broke off")
        if is_temporary(status):
          # Out of resources (a full disk, a busy PACS): it will take the report later,
          # so this is an outage, retried with backoff, never a refusal.
          raise DestinationUnavailable(f"status {status:04X} (out of resources: "
                                       "temporary)")
        if status == SUCCESS or status in _WARNINGS:
          self.spool.forwarded(name, {
              "time": _now(), "name": name, "film_uid": spool_lib.film_uid_of(name),
              "status": f"{status:04X}",
              "destination": str(self.destination)})
          stored += 1
        else:
          self._refuse(name, f"status {status:04X}")
    finally:
      with contextlib.suppress(Exception):
        assoc.release() if assoc.is_established else assoc.abort()
    return stored

  def _refuse(self, name: str, why: str) -> None:
    count = self._refused.get(name, 0) + 1
    self._refused[name] = count
    log.warning("%s refused %s: %s (%d of %d)", self.destination, name, why, count,
                self.max_refusals)
    if count >= self.max_refusals:
      self.spool.dead_letter(name, f"{self.destination} refused it {count} times, last: "
                                   f"{why}")
      del self._refused[name]


class NoAssociation(Exception):
  """An association was not established; the message says why."""


def requestor(ae_title: str, acse_timeout: float, dimse_timeout: float,
              network_timeout: float) -> AE:
  """An AE that asks for associations (the forwarder's, the catch-up's) with the node's
  timeouts; connecting is bounded by the association's own timeout."""
  ae = AE(ae_title=ae_title)
  ae.acse_timeout, ae.dimse_timeout = acse_timeout, dimse_timeout
  ae.network_timeout, ae.connection_timeout = network_timeout, acse_timeout
  return ae


def associate(ae: AE, peer: node_config.Destination, timeout: float, **kwargs):
  """`ae`'s association with `peer` (pynetdicom's associate's `kwargs`).

  Raises:
    NoAssociation: why not: the peer's name does not resolve, it cannot be connected to
      (both checked once by TCP, within `timeout`), or its answer (rejected, aborted).
  """
  try:
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, **kwargs)
  except OSError as e:  # pynetdicom lets a name that does not resolve raise
    raise NoAssociation(unreachable_why(peer, timeout)
                        or f"cannot connect ({e.strerror or e})") from None
  if not assoc.is_established:
    # pynetdicom reports a failed connection as an abort, and says why only in its log.
    why = None if assoc.is_rejected else unreachable_why(peer, timeout)
    raise NoAssociation(why or no_association(assoc))
  return assoc


def unreachable_why(peer: node_config.Destination, timeout: float) -> Optional[str]:
  """After an association request that got no answer: resolves and connects once by
  TCP, so that the outage says why (pynetdicom only logs it); None if it connects."""
  try:
    socket.getaddrinfo(peer.host, peer.port, type=socket.SOCK_STREAM)
  except socket.gaierror as e:
    return f"{peer.host} does not resolve ({e.strerror})"
  try:
    socket.create_connection((peer.host, peer.port), timeout=timeout).close()
  except OSError as e:
    return f"cannot connect to {peer.host}:{peer.port} ({e.strerror or type(e).__name__})"
  return None


# A-ASSOCIATE-RJ reasons (PS3.8 9.3.4), by (source, diagnostic).
_REJECTIONS = {(1, 1): "no reason given", (1, 2): "application context not supported",
               (1, 3): "our calling AE title is not recognised",
               (1, 7): "its called AE title is not recognised",
               (2, 1): "no reason given", (2, 2): "protocol version not supported",
               (3, 1): "temporary congestion", (3, 2): "local limit exceeded"}


def no_association(assoc) -> str:
  """Why an association was not established, as far as pynetdicom knows."""
  if assoc.is_rejected:
    rejection = getattr(assoc.acceptor, "primitive", None)
    source = getattr(rejection, "result_source", None)
    diagnostic = getattr(rejection, "diagnostic", None)
    kind = "permanently" if getattr(rejection, "result", None) == 1 else "for now"
    reason = _REJECTIONS.get((source, diagnostic), f"source {source}, reason {diagnostic}")
    return f"it rejected the association {kind}: {reason}"
  if assoc.is_aborted:
    return "it aborted the association"
  return "no answer to the association request"


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
