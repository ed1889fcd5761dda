"""What one DICOM peer can hold of the node: connections, time, memory, disk.

pynetdicom serves each connection in its own threads and trusts its peer: it reads a PDU
whole into memory whatever length the peer claims, waits on a half-sent PDU for ever,
counts a connection that never asks for an association against `maximum_associations`,
and checks the calling AE title only after that count. `Gate` puts the node's limits in
front of it, bound to the receiver's events:

- Every accepted socket is wrapped (`GuardedSocket`) before pynetdicom reads from it:
  pynetdicom gets whole PDUs only, each read within `network_timeout` of its first byte,
  of a checked length (an association request at most ASSOCIATE_RQ_MAX_BYTES, a P-DATA
  PDU at most the PDU size the node offers), holding a C-STORE command that names the
  film it sends and a dataset no larger than `max_dataset_bytes`. A peer that breaks one
  of these is dropped (A-ABORT, then the connection closed) with the reason in the log.
- A connection must ask for its association within `acse_timeout`; an association that
  sends no film for `idle_timeout` is dropped, whatever C-ECHOs keep it busy.
- An association is admitted (holds one of `max_associations`) only after its calling
  and called AE titles are checked; one address holds at most `max_per_peer` of them, and
  at most `max_per_peer` connections not yet associated. Over a limit, the request is
  rejected as "transient, local limit exceeded": the sender retries.
"""
import dataclasses
import io
import logging
import socket
import threading
import time
from typing import Dict, Optional, Sequence

from cxr_edge.node import background

log = logging.getLogger("cxr_edge.node")

# 128 presentation contexts (the most an association has) of 64 transfer syntaxes each
# fit in under 256 KiB; 7 MB requests of 128 x 2000 contexts took pynetdicom 30 s.
ASSOCIATE_RQ_MAX_BYTES = 256 * 1024
# Association answers, release and abort PDUs are a few dozen bytes.
OTHER_PDU_MAX_BYTES = 64 * 1024
# A DIMSE command set is a dozen short elements.
COMMAND_MAX_BYTES = 64 * 1024
# A P-DATA PDU may exceed the offered maximum by its own 6-byte header (some
# implementations count it in); no more.
_PDU_SLACK = 6
# A-ABORT, source: service provider, reason: not specified (PS3.8 9.3.8).
ABORT_PDU = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x00])
_C_STORE_RQ = 0x0001
_NO_DATASET = 0x0101
# Connections not yet associated, in all, per admitted association the node serves: a
# bound on threads when many addresses connect at once.
_UNASSOCIATED_PER_SLOT = 4


@dataclasses.dataclass(frozen=True)
class Limits:
  """The receiver's limits (cxr-node's flags of the same names).

  Attributes:
    acse_timeout: seconds from connecting to a whole association request.
    network_timeout: seconds a PDU may take from its first byte to its last.
    idle_timeout: seconds an association may go without sending film data.
    max_associations: associations admitted at once.
    max_per_peer: associations admitted at once from one address, and connections from
      it not yet associated.
    max_pdu_bytes: the P-DATA PDU size the node offers (0: pynetdicom's default).
    max_dataset_bytes: the largest dataset one C-STORE may send.
  """
  acse_timeout: float = 30.0
  network_timeout: float = 60.0
  idle_timeout: float = 120.0
  max_associations: int = 8
  max_per_peer: int = 4
  max_pdu_bytes: int = 16382
  max_dataset_bytes: int = 256 * 2**20


def _size(n: int) -> str:
  return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n:,} bytes"


class _Dropped(Exception):
  """The peer broke a limit; the message says which."""


class Connection:
  """One peer's TCP connection, as the gate tracks it."""

  def __init__(self, assoc, address: str, raw: socket.socket, limits: Limits):
    self.assoc, self.address, self.raw, self.limits = assoc, address, raw, limits
    self.opened = self.last_work = time.monotonic()
    self.admitted = False
    self.dropped: Optional[str] = None
    self._lock = threading.Lock()

  @property
  def calling(self) -> str:
    try:  # the peer's AE title: the PACS's on the node's own associations
      side = self.assoc.acceptor if self.assoc.is_requestor else self.assoc.requestor
      return str(side.ae_title or "").strip() or "?"
    except AttributeError:
      return "?"

  def worked(self) -> None:
    self.last_work = time.monotonic()

  def drop(self, reason: str) -> None:
    """Ends the connection: an A-ABORT (best effort), then the socket shut both ways,
    which wakes whichever pynetdicom thread waits on it."""
    with self._lock:
      if self.dropped is not None:
        return
      self.dropped = reason
    log.warning("dropped the connection from %s (%s): %s", self.address,
                f"AE {self.calling}" if self.admitted else "no association yet", reason)
    try:
      self.raw.settimeout(1.0)
      self.raw.sendall(ABORT_PDU)
    except OSError:
      pass
    try:
      self.raw.shutdown(socket.SHUT_RDWR)
    except OSError:
      pass


class GuardedSocket:
  """The accepted socket as pynetdicom sees it: whole, checked PDUs, or end of stream.

  pynetdicom reads a PDU as recv(6), then recv(its length): this reads the whole PDU
  from the network first (checking it), then hands it out, so its buffer is empty again
  whenever pynetdicom next waits on the socket with select().
  """

  def __init__(self, raw: socket.socket, connection: Connection):
    self._raw, self._connection = raw, connection
    self._pending = bytearray()
    self._command = bytearray()
    self._dataset_bytes = 0
    limits = connection.limits
    # A blocked send (a peer that reads nothing) or read fails after this, never hangs.
    raw.settimeout(limits.network_timeout)

  def __getattr__(self, name):  # fileno, send, shutdown, close, ... : the socket's own
    return getattr(self._raw, name)

  def recv(self, size: int) -> bytes:
    if not self._pending:
      try:
        self._pending = self._read_pdu()
      except _Dropped as e:
        self._connection.drop(str(e))
        return b""
      except OSError:  # reset, or shut down by drop(): the stream ends here
        return b""
    out = bytes(self._pending[:size])
    del self._pending[:size]
    return out

  def _read(self, n: int, deadline: float, allowed: float, what: str) -> bytearray:
    data = bytearray()
    while len(data) < n:
      left = deadline - time.monotonic()
      if left <= 0:
        raise _Dropped(f"{what} took over {allowed:g} s ({len(data)} of {n} bytes came)")
      self._raw.settimeout(left)
      try:
        chunk = self._raw.recv(min(n - len(data), 1 << 16))
      except socket.timeout:
        continue
      if not chunk:
        raise OSError("the peer closed the connection")
      data += chunk
    return data

  def _read_pdu(self) -> bytearray:
    connection, limits = self._connection, self._connection.limits
    if connection.dropped is not None:
      raise OSError("dropped")
    deadline, allowed = time.monotonic() + limits.network_timeout, limits.network_timeout
    if not connection.admitted and connection.opened + limits.acse_timeout < deadline:
      # The whole association request within the ACSE timeout of connecting.
      deadline, allowed = connection.opened + limits.acse_timeout, limits.acse_timeout
    header = self._read(6, deadline, allowed, "a PDU's header")
    pdu_type, length = header[0], int.from_bytes(header[2:6], "big")
    if pdu_type == 0x01:
      cap, what = ASSOCIATE_RQ_MAX_BYTES, "an association request"
    elif pdu_type == 0x04:
      cap = (limits.max_pdu_bytes + _PDU_SLACK) if limits.max_pdu_bytes else 1 << 24
      what = "a P-DATA PDU"
    else:
      cap, what = OTHER_PDU_MAX_BYTES, f"a PDU of type {pdu_type:#04x}"
    if length > cap:
      raise _Dropped(f"{what} of {length:,} bytes (the limit is {cap:,})")
    body = self._read(length, deadline, allowed, what)
    if pdu_type == 0x04:
      self._check_data(body)
    return header + body

  def _check_data(self, body: bytearray) -> None:
    """Follows the DIMSE messages in a P-DATA PDU's presentation data values."""
    limits, pos = self._connection.limits, 0
    while pos + 6 <= len(body):
      item_length = int.from_bytes(body[pos:pos + 4], "big")
      control = body[pos + 5]
      start, pos = pos + 6, pos + 4 + item_length
      fragment = max(0, min(pos, len(body)) - start)  # a short item: what is there
      if control & 0x01:  # a command fragment
        self._command += body[start:start + fragment]
        if len(self._command) > COMMAND_MAX_BYTES:
          raise _Dropped(f"a DIMSE command of over {COMMAND_MAX_BYTES:,} bytes")
        if control & 0x02:
          self._check_command(bytes(self._command))
          self._command.clear()
      else:  # a dataset fragment: film data, the work that keeps an association
        self._dataset_bytes += fragment
        self._connection.worked()
        if self._dataset_bytes > limits.max_dataset_bytes:
          raise _Dropped(f"a dataset of over {_size(limits.max_dataset_bytes)}")
        if control & 0x02:
          self._dataset_bytes = 0

  def _check_command(self, encoded: bytes) -> None:
    """A C-STORE request must name the film it sends: pynetdicom writes its file meta
    from these before any handler runs, and a missing one killed its thread."""
    from pynetdicom.dsutils import decode  # pylint: disable=g-import-not-at-top
    try:
      command = decode(io.BytesIO(encoded), True, True)
      field = command.get("CommandField")
      if field != _C_STORE_RQ or command.get("CommandDataSetType") == _NO_DATASET:
        return
      missing = [k for k in ("AffectedSOPClassUID", "AffectedSOPInstanceUID")
                 if not str(command.get(k) or "").strip()]
    except Exception as e:  # pylint: disable=broad-except  # pydicom raises many kinds
      raise _Dropped(f"a DIMSE command that does not decode ({type(e).__name__})") from None
    if missing:
      raise _Dropped(f"a C-STORE request without its {' or '.join(missing)}")
    self._connection.worked()


def own_association_guard(limits: Limits):
  """An EVT_CONN_OPEN handler for the node's own associations (catch-up's): what the PACS
  sends back passes the same checks as what a sender pushes (PDU lengths and time, the
  C-STORE commands and dataset size of C-GET's films), so a PACS that answers with one
  huge PDU is dropped at its header instead of being read into memory."""
  from pynetdicom import evt  # pylint: disable=g-import-not-at-top

  def on_open(event) -> None:
    assoc_socket = event.assoc.dul.socket
    raw = assoc_socket.socket
    address = str(event.address[0]) if event.address else "?"
    connection = Connection(event.assoc, address, raw, limits)
    connection.admitted = True  # the node asked for it: no deadline for a request
    assoc_socket.socket = GuardedSocket(raw, connection)
  return (evt.EVT_CONN_OPEN, on_open)


class Gate(background.Background):
  """The receiver's admission and watchdog: bind `handlers()` to the server, `start()`
  the watchdog, `stop()` it with the server."""

  def __init__(self, limits: Limits, ae_title: str, allow_ae: Sequence[str] = ()):
    self.limits, self.ae_title, self.allow_ae = limits, ae_title, tuple(allow_ae)
    self._connections: Dict[int, Connection] = {}
    self._lock = threading.Lock()
    super().__init__("cxr-node gate", join_seconds=10)

  def handlers(self):
    from pynetdicom import evt  # pylint: disable=g-import-not-at-top
    return [(evt.EVT_CONN_OPEN, self._on_open), (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_CONN_CLOSE, self._on_close)]

  def connections(self) -> Sequence[Connection]:
    with self._lock:
      return list(self._connections.values())

  def _on_open(self, event) -> None:
    assoc_socket = event.assoc.dul.socket
    raw = assoc_socket.socket
    address = str(event.address[0]) if event.address else "?"
    connection = Connection(event.assoc, address, raw, self.limits)
    assoc_socket.socket = GuardedSocket(raw, connection)
    with self._lock:
      waiting = [c for c in self._connections.values()
                 if not c.admitted and c.dropped is None]
      self._connections[id(event.assoc)] = connection
    from_peer = sum(c.address == address for c in waiting)
    if from_peer >= self.limits.max_per_peer:
      connection.drop(f"{from_peer + 1} connections from this address without an "
                      f"association (the limit is {self.limits.max_per_peer})")
    elif len(waiting) >= _UNASSOCIATED_PER_SLOT * self.limits.max_associations:
      connection.drop(f"{len(waiting) + 1} connections without an association at once")

  def _on_close(self, event) -> None:
    with self._lock:
      self._connections.pop(id(event.assoc), None)

  def _on_requested(self, event) -> None:
    """Checks the AE titles, then the limits; admits or rejects (and says why)."""
    assoc = event.assoc
    with self._lock:
      connection = self._connections.get(id(assoc))
      admitted = [c for c in self._connections.values()
                  if c.admitted and c.dropped is None and c.assoc.is_alive()]
    if connection is None or connection.dropped is not None:
      return
    request = assoc.requestor.primitive
    calling = str(request.calling_ae_title or "").strip()
    called = str(request.called_ae_title or "").strip()
    from_peer = sum(c.address == connection.address for c in admitted)
    why, rejection = None, None
    if self.allow_ae and calling not in self.allow_ae:
      why, rejection = "its calling AE title is not in --allow_ae", (0x01, 0x01, 0x03)
    elif called != self.ae_title:
      why, rejection = f"it called {called!r}, not {self.ae_title}", (0x01, 0x01, 0x07)
    elif from_peer >= self.limits.max_per_peer:
      why = (f"{from_peer} associations from this address already (the limit is "
             f"{self.limits.max_per_peer}); it may retry")
      rejection = (0x02, 0x03, 0x02)  # transient: local limit exceeded
    elif len(admitted) >= self.limits.max_associations:
      why = (f"{len(admitted)} associations already (the limit is "
             f"{self.limits.max_associations}); it may retry")
      rejection = (0x02, 0x03, 0x02)
    if rejection is None:
      connection.admitted = True
      connection.worked()
      return
    log.warning("rejected an association from %s calling itself %r: %s",
                connection.address, calling, why)
    from pynetdicom import evt  # pylint: disable=g-import-not-at-top
    assoc.acse.send_reject(*rejection)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()  # as pynetdicom's own rejections: waits until the rejection is sent

  def _run(self) -> None:
    """The watchdog: drops connections over their time limits."""
    limits = self.limits
    tick = max(0.05, min(1.0, limits.acse_timeout / 4, limits.idle_timeout / 4))
    while not self._stop.wait(tick):
      now = time.monotonic()
      for connection in self.connections():
        if connection.dropped is not None:
          continue
        if not connection.assoc.is_alive() and now - connection.opened > 1.0:
          with self._lock:
            self._connections.pop(id(connection.assoc), None)
        elif not connection.admitted and now - connection.opened > limits.acse_timeout:
          connection.drop(f"no association within {limits.acse_timeout:g} s of "
                          "connecting")
        elif connection.admitted and now - connection.last_work > limits.idle_timeout:
          connection.drop(f"no film for {limits.idle_timeout:g} s (C-ECHOs do not count)")
