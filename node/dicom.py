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
import tempfile
import threading
from typing import Callable, Dict, List, Union

import pydicom
from pydicom import uid as dicom_uid
from pynetdicom import AE, evt, _config
from pynetdicom import sop_class

from cxr_edge.core import schema
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
    # Large values (the pixels) are left on disk: only the header is read here.
    ds = pydicom.dcmread(path, defer_size=4096)
    uids = [ds.get(k) for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")]
    has_pixels = "PixelData" in ds
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


class Receiver:
  """The Storage SCP: admits films into the spool, then calls `on_admitted`."""

  def __init__(self, spool: spool_lib.Spool, options: node_config.NodeOptions,
               on_admitted: Callable[[], None]):
    self.spool, self.options, self.on_admitted = spool, options, on_admitted
    self._server = None
    self._saved = None

  def start(self) -> int:
    """Starts listening; returns the port (useful with --port=0)."""
    # Datasets are written to a file as they arrive (bounded memory), in the spool's
    # receiving/ folder so that admitting one is a link on the same disk, not a copy.
    # Both settings are process-wide: one receiver per process; stop() restores them.
    self._saved = (_config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir)
    _config.STORE_RECV_CHUNKED_DATASET = True
    tempfile.tempdir = self.spool.path("receiving")
    ae = AE(ae_title=self.options.ae_title)
    ae.maximum_associations = self.options.max_associations
    ae.require_called_aet = True
    if self.options.allow_ae:
      ae.require_calling_aet = list(self.options.allow_ae)
    syntaxes = decodable_syntaxes()
    for cls in FILM_CLASSES:
      ae.add_supported_context(cls, syntaxes)
    ae.add_supported_context(sop_class.Verification)
    self._server = ae.start_server(
        (self.options.host, self.options.port), block=False,
        evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, _on_echo)])
    return self._server.server_address[1]

  def stop(self) -> None:
    if self._server is not None:
      self._server.shutdown()
      self._server = None
    if self._saved is not None:
      _config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir = self._saved
      self._saved = None

  def _on_store(self, event) -> int:
    calling = event.assoc.requestor.ae_title
    path = str(event.dataset_path)
    ds = _check_film(path, event.context.abstract_syntax)
    if isinstance(ds, int):
      return ds
    uid = str(ds.SOPInstanceUID)
    if ds.get("Manufacturer") == report.MANUFACTURER:
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
      log.warning("refused %s from %s: the spool cannot store it (%s)", uid, calling,
                  e.strerror or e)
      return OUT_OF_RESOURCES
    if queued:
      log.info("received %s from %s", uid, calling)
      self.on_admitted()
    else:
      log.info("received %s from %s again: already queued or done", uid, calling)
    return SUCCESS


def _on_echo(event) -> int:
  del event
  return SUCCESS


class DestinationUnavailable(Exception):
  """The destination cannot be reached now (an outage, not a refusal)."""


class Forwarder:
  """Sends the spool's outbox to one destination, in the background."""

  def __init__(self, spool: spool_lib.Spool, destination: node_config.Destination,
               calling_ae: str, refusals: int):
    self.spool, self.destination = spool, destination
    self.calling_ae, self.max_refusals = calling_ae, refusals
    self._refused: Dict[str, int] = {}
    self._wake = threading.Event()
    self._stop = threading.Event()
    self._sending = threading.Lock()  # one sender at a time: no report goes out twice
    self._thread = threading.Thread(target=self._run, name="cxr-node forwarder",
                                     daemon=True)
    self.backoff = 0.0  # seconds the forwarder waits before the next try (0: none)

  def start(self) -> None:
    self._thread.start()

  def stop(self) -> None:
    self._stop.set()
    self._wake.set()
    if self._thread.is_alive():
      self._thread.join(timeout=30)

  def wake(self) -> None:
    self._wake.set()

  def _run(self) -> None:
    while not self._stop.is_set():
      try:
        self.send_pending()
      except DestinationUnavailable as e:
        self.backoff = min(max(1.0, 2 * self.backoff), _MAX_BACKOFF_SECONDS)
        log.warning("forwarding to %s: %s; %d report(s) wait, next try in %.0f s",
                    self.destination, e, len(self.spool.outbox()), self.backoff)
      except Exception:  # pylint: disable=broad-except
        # Whatever else goes wrong, the node goes on and the reports stay queued.
        self.backoff = _MAX_BACKOFF_SECONDS
        log.exception("forwarding to %s failed; retrying in %.0f s", self.destination,
                      self.backoff)
      else:
        self.backoff = 0.0
      self._wake.wait(timeout=self.backoff or 5.0)
      self._wake.clear()

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
    ae = AE(ae_title=self.calling_ae)
    for cls in REPORT_CLASSES:
      ae.add_requested_context(cls, [dicom_uid.ExplicitVRLittleEndian,
                                     dicom_uid.ImplicitVRLittleEndian])
    assoc = ae.associate(self.destination.host, self.destination.port,
                         ae_title=self.destination.ae_title)
    if not assoc.is_established:
      raise DestinationUnavailable("no association (down, unreachable, or it rejected us)")
    stored = 0
    try:
      for name in names:
        if self._stop.is_set():
          break
        path = self.spool.path("outbox", name)
        if not os.path.exists(path):
          continue
        try:
          response = assoc.send_c_store(path)
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
              "time": _now(), "name": name, "film_uid": name.rsplit(".", 2)[0],
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


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
