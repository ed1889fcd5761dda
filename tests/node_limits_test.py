"""What a DICOM peer can hold of cxr-node (node/limits.py and the receiver's disk): each
test plays a hostile or broken peer from its own loopback address (all of 127/8 is
loopback on Linux) beside a real sender, which must be served."""
import io
import os
import socket
import struct
import threading
import time

import pydicom
import pytest

pynetdicom = pytest.importorskip("pynetdicom", reason="cxr-edge[node] is not installed")
pytest.importorskip("highdicom", reason="cxr-edge[node] is not installed")

# pylint: disable=g-import-not-at-top,wrong-import-position
from pynetdicom import AE
from pynetdicom import sop_class
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from cxr_edge.node import dicom
from cxr_edge.node import limits
from cxr_edge.node import node_config
from tests import dicom_files
from tests.conftest import until
from tests.node_test import running_node
# pylint: enable=g-import-not-at-top,wrong-import-position

SENDER = "127.0.0.2"
DX = sop_class.DigitalXRayImageStorageForPresentation


def _associate(port, source=SENDER, calling="XRAY1", called="CXR_EDGE"):
  ae = AE(ae_title=calling)
  ae.add_requested_context(DX)
  ae.add_requested_context(sop_class.Verification)
  ae.acse_timeout = ae.network_timeout = 10
  return ae.associate("127.0.0.1", port, ae_title=called, bind_address=(source, 0))


def _store(port, films, source=SENDER, calling="XRAY1"):
  """C-STOREs each film over one association from `source`; the statuses, or None when
  the association is refused."""
  assoc = _associate(port, source, calling)
  if not assoc.is_established:
    return None
  try:
    return [getattr(assoc.send_c_store(pydicom.dcmread(io.BytesIO(f))), "Status", None)
            for f in films]
  finally:
    if assoc.is_established:
      assoc.release()


def _raw(port, source, payload=b""):
  s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
  if payload:
    s.sendall(payload)
  return s


def _closed_by_node(s, within=10.0) -> bool:
  """Whether the node closes the connection (an A-ABORT may come first) within `within`."""
  deadline = time.monotonic() + within
  s.settimeout(0.2)
  while time.monotonic() < deadline:
    try:
      data = s.recv(4096)
    except socket.timeout:
      continue
    except OSError:
      return True
    if not data:
      return True
  return False


def test_idle_and_dripping_connections_hold_no_slot_and_are_dropped(released_model,
                                                                    tmp_path, caplog):
  with running_node(released_model, tmp_path / "spool", max_associations=2,
                    max_associations_per_peer=2, acse_timeout=1.5) as node:
    port = node.ports.dicom
    idle = [_raw(port, "127.0.0.3") for _ in range(8)]
    # An association request's header, then its body a byte at a time.
    dripping = [_raw(port, "127.0.0.4", b"\x01\x00" + struct.pack(">L", 200))
                for _ in range(8)]
    stop = threading.Event()

    def drip():
      while not stop.wait(0.2):
        for s in dripping:
          try:
            s.send(b"\x00")
          except OSError:
            pass

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
      # Served at once: the 16 connections hold no association slot.
      assert _store(port, [dicom_files.study_film(1)]) == [0x0000]
      assert all(_closed_by_node(s) for s in idle + dripping)
    finally:
      stop.set()
      for s in idle + dripping:
        s.close()
  assert "connections from this address without an association" in caplog.text
  assert "an association request took over 1.5 s" in caplog.text


def test_associations_kept_alive_by_echoes_give_their_slots_back(released_model, tmp_path,
                                                                 caplog):
  with running_node(released_model, tmp_path / "spool", max_associations=2,
                    idle_timeout=1.0) as node:
    port = node.ports.dicom
    keepers = [_associate(port, source) for source in ("127.0.0.5", "127.0.0.6")]
    assert all(a.is_established for a in keepers)
    stop = threading.Event()

    def echo():
      while not stop.wait(0.1):
        for a in keepers:
          if a.is_established:
            a.send_c_echo()

    echoer = threading.Thread(target=echo, daemon=True)
    echoer.start()
    try:
      assert _store(port, [dicom_files.study_film(2)]) is None  # both slots held
      assert until(lambda: not any(a.is_established for a in keepers))
      assert _store(port, [dicom_files.study_film(2)]) == [0x0000]
    finally:
      stop.set()
      echoer.join(5)
  assert "no film for 1 s (C-ECHOs do not count)" in caplog.text
  assert "associations already (the limit is 2); it may retry" in caplog.text


def test_a_calling_ae_not_allowed_is_rejected_before_it_holds_a_slot(released_model, tmp_path,
                                                                     caplog):
  with running_node(released_model, tmp_path / "spool", max_associations=1,
                    allow_ae=("XRAY1",)) as node:
    port = node.ports.dicom
    strangers = [_associate(port, "127.0.0.7", calling="EVIL") for _ in range(5)]
    assert all(a.is_rejected for a in strangers)
    rejection = strangers[0].acceptor.primitive
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (1, 1, 3)
    assert _store(port, [dicom_files.study_film(3)]) == [0x0000]
  assert "calling itself 'EVIL': its calling AE title is not in --allow_ae" in caplog.text


def test_one_address_holds_at_most_its_share_of_associations(released_model, tmp_path):
  with running_node(released_model, tmp_path / "spool", max_associations=4,
                    max_associations_per_peer=2) as node:
    port = node.ports.dicom
    held = [_associate(port, "127.0.0.8") for _ in range(3)]
    try:
      assert [a.is_established for a in held] == [True, True, False]
      rejection = held[2].acceptor.primitive
      assert (rejection.result, rejection.result_source, rejection.diagnostic) == (2, 3, 2)
      assert _store(port, [dicom_files.study_film(4)]) == [0x0000]  # another address
    finally:
      for a in held[:2]:
        a.release()


@pytest.mark.parametrize("pdu_type, claimed, says", [
    (0x01, 2**31, "an association request of 2,147,483,648 bytes (the limit is 262,144)"),
    (0x01, 7_000_000, "an association request of 7,000,000 bytes"),
    (0x05, 2**20, "a PDU of type 0x05 of 1,048,576 bytes"),
])
def test_a_pdu_claiming_more_than_its_limit_is_dropped_at_its_header(
    released_model, tmp_path, caplog, pdu_type, claimed, says):
  with running_node(released_model, tmp_path / "spool") as node:
    port = node.ports.dicom
    s = _raw(port, "127.0.0.9", bytes([pdu_type, 0]) + struct.pack(">L", claimed)
             + b"\x00" * 4096)
    try:
      start = time.monotonic()
      assert _closed_by_node(s, within=5)
      assert time.monotonic() - start < 2  # at its header, not after reading it
    finally:
      s.close()
    assert _store(port, [dicom_files.study_film(5)]) == [0x0000]
  assert says in caplog.text


def _store_without_instance_uid(port):
  assoc = _associate(port, "127.0.0.10")
  assert assoc.is_established
  film = pydicom.dcmread(io.BytesIO(dicom_files.study_film(6)))
  request = C_STORE()
  request.MessageID = 1
  request.AffectedSOPClassUID = DX
  request.Priority = 2
  context = next(c for c in assoc.accepted_contexts if c.abstract_syntax == DX)
  syntax = pydicom.uid.UID(context.transfer_syntax[0])
  request.DataSet = io.BytesIO(encode(film, syntax.is_implicit_VR, syntax.is_little_endian))
  assoc.dimse.send_msg(request, context.context_id)
  assert until(lambda: not assoc.is_established)
  return assoc


def test_a_c_store_without_its_instance_uid_ends_its_association_not_the_node(
    released_model, tmp_path, caplog, monkeypatch):
  died = []  # threads that end in an exception (pynetdicom's did, before)
  monkeypatch.setattr(threading, "excepthook", died.append)
  with running_node(released_model, tmp_path / "spool") as node:
    assoc = _store_without_instance_uid(node.ports.dicom)
    assert assoc.is_aborted
    assert _store(node.ports.dicom, [dicom_files.study_film(7)]) == [0x0000]
  assert "a C-STORE request without its AffectedSOPInstanceUID" in caplog.text
  assert not died


def test_a_dataset_over_the_limit_is_cut_off_and_its_partial_file_removed(
    released_model, tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(node_config, "MAX_DATASET_BYTES", 150_000)  # a film is ~100 KB
  ds = pydicom.dcmread(io.BytesIO(dicom_files.study_film(8)))
  ds.Rows = ds.Columns = 512
  ds.PixelData = bytes(512 * 512 * 2)
  out = io.BytesIO()
  ds.save_as(out, enforce_file_format=True)
  big = out.getvalue()
  with running_node(released_model, tmp_path / "spool") as node:
    assert _store(node.ports.dicom, [big]) in (None, [None])
    receiving = tmp_path / "spool" / "receiving"
    assert until(lambda: len(os.listdir(receiving)) == 1)  # what came, until the cut
    assert node.receiver.receiving.sweep(0) == 1
    assert not os.listdir(receiving)
    assert _store(node.ports.dicom, [dicom_files.study_film(9)]) == [0x0000]
  assert "a dataset of over 150,000 bytes" in caplog.text


@pytest.mark.parametrize("failure", ["read-only", "full"])
def test_a_spool_that_cannot_write_answers_out_of_resources(released_model, tmp_path,
                                                            monkeypatch, caplog, failure):
  with running_node(released_model, tmp_path / "spool") as node:
    real_mkstemp, real_fdopen = dicom.tempfile.mkstemp, dicom.os.fdopen

    def read_only(*args, **kwargs):
      raise OSError(30, "Read-only file system")

    class FullDisk(io.RawIOBase):
      def __init__(self, fd):
        super().__init__()
        os.close(fd)

      def write(self, data):
        raise OSError(28, "No space left on device")

    if failure == "read-only":
      monkeypatch.setattr(dicom.tempfile, "mkstemp", read_only)
    else:
      monkeypatch.setattr(dicom.os, "fdopen", lambda fd, mode: FullDisk(fd))
    films = [dicom_files.study_film(10), dicom_files.study_film(11)]
    # Each film answered (the association goes on), the sender keeps them.
    assert _store(node.ports.dicom, films) == [dicom.OUT_OF_RESOURCES] * 2
    monkeypatch.setattr(dicom.tempfile, "mkstemp", real_mkstemp)
    monkeypatch.setattr(dicom.os, "fdopen", real_fdopen)
    assert _store(node.ports.dicom, films) == [0x0000] * 2
    assert not [n for n in os.listdir(tmp_path / "spool" / "receiving")]
  says = "Read-only file system" if failure == "read-only" else "No space left on device"
  assert f"the spool cannot store it ({says})" in caplog.text


def test_limits_follow_the_options():
  options = node_config.NodeOptions(spool_dir="x", acse_timeout=5, network_timeout=7,
                                    idle_timeout=9, max_associations=3,
                                    max_associations_per_peer=1)
  assert options.limits == limits.Limits(
      acse_timeout=5, network_timeout=7, idle_timeout=9, max_associations=3, max_per_peer=1,
      max_dataset_bytes=node_config.MAX_DATASET_BYTES)
