"""cxr-node when its own disk or the traffic is not what it expects: damaged spool files
are set aside and everything else goes on; headers are read without inflating pixels;
the review page keeps to its address, its paths and its memory; forwarding failures say
why; only the node's own objects are skipped."""
import http.client
import io
import os
import socket
import threading
import time
import zlib

import pydicom
import pytest

pytest.importorskip("pynetdicom", reason="cxr-edge[node] is not installed")
pytest.importorskip("highdicom", reason="cxr-edge[node] is not installed")

# pylint: disable=g-import-not-at-top,wrong-import-position
from cxr_edge.core import film
from cxr_edge.node import dicom
from cxr_edge.node import node_config
from cxr_edge.node import node_lib
from cxr_edge.node import report
from cxr_edge.node import review
from tests import dicom_files
from tests.conftest import until
from tests.node_test import Pacs, _queue, audit, running_node, send
# pylint: enable=g-import-not-at-top,wrong-import-position


def _node(model, spool_dir, **options):
  options = {"result_card": False, **options}
  return node_lib.Node(node_config.NodeOptions(model=model, spool_dir=str(spool_dir), port=0,
                                               **options))


# A damaged spool -----------------------------------------------------------------------

@pytest.mark.parametrize("damage", [b"not DICOM at all", "truncated"])
def test_a_damaged_report_in_the_outbox_is_set_aside_and_the_rest_go(released_model,
                                                                     tmp_path, damage):
  pacs = Pacs().start()
  node = _node(released_model, tmp_path / "spool", forward=pacs.address)
  try:
    uids = [node.process(_queue(node.spool, dicom_files.study_film(s)))["sop_instance_uid"]
            for s in (70, 71, 72)]
    bad = node.spool.path("outbox", uids[1] + ".sr.dcm")
    data = open(bad, "rb").read()
    os.unlink(bad)  # the outbox holds a link: damage this copy only
    with open(bad, "wb") as f:
      f.write(damage if isinstance(damage, bytes) else data[:len(data) // 2])
    assert node.forwarder.send_pending() == 2
  finally:
    node.stop()
    pacs.stop()
  assert sorted(report.describe(r)["source"] for r in pacs.reports()) == sorted(
      [uids[0], uids[2]])
  assert node.spool.outbox() == []
  assert node.spool.quarantined() == [f"outbox.{uids[1]}.sr.dcm"]
  reason = open(node.spool.path("quarantine", f"outbox.{uids[1]}.sr.dcm.reason.txt")).read()
  assert reason.startswith("the report is damaged: ")


def test_a_damaged_record_is_set_aside_and_the_pages_still_work(released_model, tmp_path):
  with running_node(released_model, tmp_path / "spool", http_port=0) as node:
    films = [dicom_files.study_film(73), dicom_files.study_film(74)]
    assert send(node.ports.dicom, films) == [0x0000] * 2
    assert node.wait_idle(120)
    uids = [str(pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID) for f in films]
    path = node.spool.path("results", uids[0] + ".json")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
      f.write(data[:len(data) // 2])  # truncated
    connection = http.client.HTTPConnection("127.0.0.1", node.ports.http, timeout=30)
    connection.request("GET", "/")
    response = connection.getresponse()
    page = response.read().decode()
    assert response.status == 200 and uids[1] in page and uids[0] not in page
    connection.request("GET", f"/film/{uids[0]}")
    assert connection.getresponse().status == 404
    assert node.spool.quarantined() == [f"results.{uids[0]}.json"]
    connection.request("GET", "/")
    page = connection.getresponse().read().decode()
    assert "1 damaged file(s) set aside in quarantine/" in page


def test_a_damaged_queued_film_is_set_aside_recorded_and_the_queue_goes_on(released_model,
                                                                          tmp_path, caplog):
  node = _node(released_model, tmp_path / "spool")
  try:
    damaged = _queue(node.spool, dicom_files.study_film(75))
    fine = _queue(node.spool, dicom_files.study_film(76))
    with open(node.spool.path("incoming", damaged + ".dcm"), "r+b") as f:
      f.truncate(100)  # the disk lost the rest
    assert node.process_pending() == 2
  finally:
    node.stop()
  records = {line["sop_instance_uid"]: line for line in audit(tmp_path / "spool")}
  assert records[damaged]["error"].startswith("its queued file is damaged")
  assert records[fine]["error"] is None and records[fine]["prediction"]
  assert node.spool.quarantined() == [f"incoming.{damaged}.dcm"] and not node.spool.pending()
  assert f"film {damaged}: no report: its queued file is damaged" in caplog.text


# Headers without the pixels --------------------------------------------------------------

def _deflate_bomb(inflated_mb: int) -> bytes:
  """A deflated DX film whose pixel data inflates to `inflated_mb` MB of zeros."""
  ds = pydicom.dcmread(io.BytesIO(dicom_files.study_film(77)))
  side = int((inflated_mb * 2**20 / 2) ** 0.5)
  ds.Rows = ds.Columns = side
  ds.PixelData = bytes(side * side * 2)
  ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
  out = io.BytesIO()
  ds.save_as(out, enforce_file_format=True)
  return out.getvalue()


def test_a_header_is_read_without_inflating_the_pixels(monkeypatch):
  bomb = _deflate_bomb(64)
  assert len(bomb) < 2**20
  inflated = []
  real = zlib.decompressobj

  class Counting:
    def __init__(self, *args):
      self._inner = real(*args)

    def __getattr__(self, name):
      return getattr(self._inner, name)

    def decompress(self, data, max_length=0):
      out = self._inner.decompress(data, max_length)
      inflated.append(len(out))
      return out

  monkeypatch.setattr(film.zlib, "decompressobj", Counting)
  header, has_pixels = film.dicom_header(io.BytesIO(bomb))
  assert has_pixels and header.SOPInstanceUID and header.Rows == header.Columns
  assert sum(inflated) <= film.HEADER_MAX_INFLATED_BYTES
  plain, has_pixels = film.dicom_header(io.BytesIO(dicom_files.study_film(77)))
  assert has_pixels and "PixelData" not in plain and plain.Modality == "DX"


def test_a_deflate_bomb_over_the_network_is_acknowledged_and_reported_not_inflated(
    released_model, tmp_path):
  bomb = _deflate_bomb(200)  # past the pixel limit's inflated size
  pacs = Pacs().start()
  try:
    with running_node(released_model, tmp_path / "spool", forward=pacs.address) as node:
      from pynetdicom import AE, sop_class  # pylint: disable=g-import-not-at-top
      ae = AE(ae_title="XRAY1")
      ae.add_requested_context(sop_class.DigitalXRayImageStorageForPresentation,
                               [pydicom.uid.DeflatedExplicitVRLittleEndian])
      assoc = ae.associate("127.0.0.1", node.ports.dicom, ae_title="CXR_EDGE")
      assert assoc.is_established
      path = tmp_path / "bomb.dcm"
      path.write_bytes(bomb)
      try:
        status = assoc.send_c_store(str(path)).Status
      finally:
        assoc.release()
      assert status == 0x0000
      assert node.wait_idle(120)
  finally:
    pacs.stop()
  (sr,) = pacs.reports()
  assert report.describe(sr)["comments"][0].startswith("NOT ANALYSED: decompression-bomb")


# The review page ---------------------------------------------------------------------

def _raw_get(port, path, host, host_ip="127.0.0.1"):
  connection = http.client.HTTPConnection(host_ip, port, timeout=30)
  connection.putrequest("GET", path, skip_host=True)
  connection.putheader("Host", host)
  connection.endheaders()
  response = connection.getresponse()
  return response.status, dict(response.headers), response.read()


def test_the_loopback_page_answers_only_to_its_loopback_name(released_model, tmp_path):
  with running_node(released_model, tmp_path / "spool", http_port=0) as node:
    port = node.ports.http
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "127.0.0.1"):
      assert _raw_get(port, "/", host)[0] == 200
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}",
                 ""):
      status, _, body = _raw_get(port, "/", host)
      assert status == 421 and b"loopback" in body


def test_the_token_redirect_goes_only_to_the_pages_own_paths(released_model, tmp_path):
  token_file = tmp_path / "token"
  token_file.write_text("a-long-enough-secret-token\n")
  with running_node(released_model, tmp_path / "spool", http_port=0,
                    http_host="127.0.0.2", http_token_file=str(token_file)) as node:
    port = node.ports.http
    for path, location in (("/\\evil.example/", "/"), ("//evil.example/", "/"),
                           ("/film/1.2.3", "/film/1.2.3"), ("/", "/")):
      status, headers, _ = _raw_get(port, f"{path}?token=a-long-enough-secret-token",
                                    f"127.0.0.2:{port}", "127.0.0.2")
      assert (status, headers["Location"]) == (303, location), path


def test_a_slow_http_client_is_cut_off(released_model, tmp_path):
  with running_node(released_model, tmp_path / "spool", http_port=0,
                    http_timeout=0.3) as node:
    s = socket.create_connection(("127.0.0.1", node.ports.http), timeout=10)
    try:
      start = time.monotonic()
      s.sendall(b"GET / HTTP/1.1\r\n")
      closed = False
      while time.monotonic() - start < 5 and not closed:
        try:
          s.sendall(b"X")  # a header a byte at a time, each well within the timeout
        except OSError:
          closed = True
          break
        s.settimeout(0.1)
        try:
          closed = s.recv(1024) == b""
        except socket.timeout:
          pass
        except OSError:
          closed = True
      assert closed and time.monotonic() - start < 3
    finally:
      s.close()


def test_previews_are_rendered_once_one_at_a_time(released_model, tmp_path, monkeypatch):
  rendering, renders, overlap = threading.Lock(), [], []
  real = review.film_preview

  def counted(path):
    if not rendering.acquire(blocking=False):
      overlap.append(path)
    else:
      try:
        renders.append(path)
        time.sleep(0.2)  # a large film: others ask meanwhile
        return real(path)
      finally:
        rendering.release()
    return real(path)

  monkeypatch.setattr(review, "film_preview", counted)
  with running_node(released_model, tmp_path / "spool", http_port=0) as node:
    films = [dicom_files.study_film(78), dicom_files.study_film(79)]
    assert send(node.ports.dicom, films) == [0x0000] * 2
    assert node.wait_idle(120)
    uids = [str(pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID) for f in films]
    results = []

    def get(uid):
      status, _, png = _raw_get(node.ports.http, f"/film/{uid}.png",
                                f"127.0.0.1:{node.ports.http}")
      results.append((status, png[:4]))

    threads = [threading.Thread(target=get, args=(uids[k % 2],)) for k in range(6)]
    for t in threads:
      t.start()
    for t in threads:
      t.join(60)
  assert results == [(200, b"\x89PNG")] * 6
  assert not overlap and sorted(os.path.basename(p) for p in renders) == sorted(
      u + ".dcm" for u in uids)
  assert sorted(os.listdir(tmp_path / "spool" / "previews")) == sorted(u + ".png" for u in uids)


# Forwarding says why; the loop breaker skips only our own objects ------------------------

def test_an_outage_says_why(released_model, tmp_path):
  node = _node(released_model, tmp_path / "spool", forward="PACS@name.invalid:4242")
  try:
    node.process(_queue(node.spool, dicom_files.study_film(80)))
    with pytest.raises(dicom.DestinationUnavailable, match="name.invalid does not resolve"):
      node.forwarder.send_pending()
  finally:
    node.stop()
  with socket.socket() as s:  # a port nobody listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  node = _node(released_model, tmp_path / "spool2", forward=f"PACS@127.0.0.1:{port}")
  try:
    node.process(_queue(node.spool, dicom_files.study_film(80)))
    with pytest.raises(dicom.DestinationUnavailable,
                       match=f"cannot connect to 127.0.0.1:{port} .Connection refused"):
      node.forwarder.send_pending()
  finally:
    node.stop()


def test_a_rejected_association_says_why(released_model, tmp_path):
  from pynetdicom import AE  # pylint: disable=g-import-not-at-top
  ae = AE(ae_title="PACS")
  ae.require_calling_aet = ["ONLY_THIS"]
  for cls in dicom.REPORT_CLASSES:
    ae.add_supported_context(cls)
  server = ae.start_server(("127.0.0.1", 0), block=False)
  node = _node(released_model, tmp_path / "spool",
               forward=f"PACS@127.0.0.1:{server.server_address[1]}")
  try:
    node.process(_queue(node.spool, dicom_files.study_film(81)))
    with pytest.raises(dicom.DestinationUnavailable, match="it rejected the association "
                       "permanently: our calling AE title is not recognised"):
      node.forwarder.send_pending()
  finally:
    node.stop()
    server.shutdown()


def test_a_modality_film_naming_cxr_edge_as_manufacturer_is_read(released_model, tmp_path):
  film_ = dicom_files.study_film(82, Manufacturer=report.MANUFACTURER)
  with running_node(released_model, tmp_path / "spool") as node:
    assert send(node.ports.dicom, [film_]) == [0x0000]
    assert node.wait_idle(120)
  (line,) = audit(tmp_path / "spool")
  assert line["prediction"] in ("NORMAL", "PNEUMONIA") and line["error"] is None
  own = pydicom.Dataset()
  own.Manufacturer, own.SeriesDescription = report.MANUFACTURER, report.SC_SERIES_DESCRIPTION
  own.SOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
  assert report.is_own_output(own)
  own.SeriesDescription = "PA chest"
  assert not report.is_own_output(own)



# Memory, measured on the node as a process ----------------------------------------------

def _write_deflate_bomb(path, inflated_bytes: int, uid: str) -> None:
  """A deflated DX film whose pixel data inflates to `inflated_bytes` zeros, written in
  chunks (the test never holds it inflated)."""
  ds = pydicom.dcmread(io.BytesIO(dicom_files.study_film(83)))
  del ds.PixelData
  ds.Rows = ds.Columns = int((inflated_bytes / 2) ** 0.5)
  ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
  header = pydicom.filebase.DicomBytesIO()
  header.is_little_endian, header.is_implicit_VR = True, False
  pydicom.filewriter.write_dataset(header, ds)
  meta = pydicom.dataset.FileMetaDataset(ds.file_meta)
  meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
  deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
  length = ds.Rows * ds.Columns * 2
  with open(path, "wb") as f:
    f.write(b"\0" * 128 + b"DICM")
    pydicom.filewriter.write_file_meta_info(f, meta)
    f.write(deflate.compress(header.getvalue() + b"\xe0\x7f\x10\x00OW\0\0"
                            + length.to_bytes(4, "little")))
    zeros = bytes(1 << 20)
    for start in range(0, length, len(zeros)):
      f.write(deflate.compress(zeros[:min(len(zeros), length - start)]))
    f.write(deflate.flush())


def _peak_rss_mb(pid: int) -> float:
  with open(f"/proc/{pid}/status", encoding="ascii") as f:
    return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_two_deflate_bombs_at_once_leave_the_node_within_its_memory(released_model,
                                                                    tmp_path):
  from pynetdicom import AE, _config, sop_class  # pylint: disable=g-import-not-at-top
  from tests.node_crash_test import start_node  # pylint: disable=g-import-not-at-top
  bombs = [tmp_path / "bomb1.dcm", tmp_path / "bomb2.dcm"]
  for k, path in enumerate(bombs):
    _write_deflate_bomb(path, 1 << 30, f"2.25.838{k}")  # 1 GiB inflated
    assert os.path.getsize(path) < 2 << 20
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  pacs = Pacs().start()
  process = start_node(released_model, str(tmp_path / "spool"), port, pacs.address)
  saved = _config.STORE_SEND_CHUNKED_DATASET
  _config.STORE_SEND_CHUNKED_DATASET = True  # the sender sends the file's bytes as they are
  try:
    baseline = _peak_rss_mb(process.pid)
    statuses = []

    def send_bomb(path):
      ae = AE(ae_title="XRAY1")
      ae.add_requested_context(sop_class.DigitalXRayImageStorageForPresentation,
                               [pydicom.uid.DeflatedExplicitVRLittleEndian])
      assoc = ae.associate("127.0.0.1", port, ae_title="CXR_EDGE")
      try:
        statuses.append(assoc.send_c_store(str(path)).Status)
      finally:
        assoc.release()

    threads = [threading.Thread(target=send_bomb, args=(path,)) for path in bombs]
    for t in threads:
      t.start()
    for t in threads:
      t.join(300)
    until(lambda: len(pacs.reports()) >= 2, 300, poll=0.2)
    peak = _peak_rss_mb(process.pid)
  finally:
    _config.STORE_SEND_CHUNKED_DATASET = saved
    process.terminate()
    process.wait(60)
    pacs.stop()
  assert statuses == [0x0000, 0x0000]
  comments = [report.describe(r)["comments"][0] for r in pacs.reports()]
  assert len(comments) == 2, comments
  assert all(c.startswith("NOT ANALYSED: decompression-bomb size") for c in comments)
  # Each bomb inflated whole took the receiver past 1 GiB; headers only stay far below.
  print(f"node peak memory: {baseline:.0f} MB before, {peak:.0f} MB after two 1 GiB bombs")
  assert peak - baseline < 300, (baseline, peak)


# Triage on the review page ----------------------------------------------------------------

@pytest.mark.parametrize("dicom, shown", [
    ("Smith^Amy", "Smith, Amy"), ("Smith^Amy^Jane^Dr^PhD", "Smith, Dr Amy Jane, PhD"),
    ("Smith", "Smith"), ("Yamada^Tarou=山田^太郎=やまだ^たろう", "Yamada, Tarou"),
    ("=山田^太郎", "山田, 太郎"), ("", ""), (None, ""), ("^Amy", "Amy")])
def test_names_read_as_people_read_them(dicom, shown):
  assert review.person_name(dicom) == shown


def test_flagged_films_are_marked_and_filtered_never_reordered():
  records = [{"sop_instance_uid": f"1.2.{k}", "received_ns": 10 - k,
              "prediction": ("PNEUMONIA" if k % 2 else "NORMAL"), "p_pneumonia": 0.5,
              "threshold": 0.375} for k in range(4)]
  page = review.worklist(records, 0, 0).decode()
  assert [page.index(f"/film/1.2.{k}") for k in range(4)] == sorted(
      page.index(f"/film/1.2.{k}") for k in range(4))  # as received, whatever the finding
  assert page.count('<tr class="flagged">') == 2 and "Show flagged films only" in page
  flagged = review.worklist(records, 0, 0, flagged_only=True).decode()
  assert "/film/1.2.1" in flagged and "/film/1.2.3" in flagged
  assert "/film/1.2.0" not in flagged and "Show all films" in flagged


def test_status_json_tells_a_monitor_what_waits_and_for_how_long(released_model, tmp_path):
  pacs = Pacs().start()
  address = pacs.address
  pacs.stop()  # down: the report waits
  with running_node(released_model, tmp_path / "spool", http_port=0,
                    forward=address) as node:
    assert send(node.ports.dicom, [dicom_files.study_film(87)]) == [0x0000]
    # Its report is queued for the PACS before the film leaves the queue: both, first.
    assert until(lambda: node.spool.outbox() and not node.spool.pending(), 60)
    status, headers, body = _raw_get(node.ports.http, "/status.json",
                                     f"127.0.0.1:{node.ports.http}")
    page = _raw_get(node.ports.http, "/", f"127.0.0.1:{node.ports.http}")[2].decode()
  import json  # pylint: disable=g-import-not-at-top
  found = json.loads(body)
  assert status == 200 and headers["Content-Type"] == "application/json"
  assert found["reports_waiting_for_the_pacs"] == 1 and found["forwarding"] is True
  assert 0 <= found["oldest_report_waiting_seconds"] < 120
  assert found["films_waiting_to_be_read"] == 0 and found["dead_letters"] == 0
  # The released model was not calibrated on this site's films: the page says so.
  assert review.UNCALIBRATED in page.replace("&#x27;", "'")


def test_a_film_redone_after_a_crash_sends_its_new_report_not_quarantine(
    released_model, tmp_path, monkeypatch):
  pacs = Pacs().start()
  node = _node(released_model, tmp_path / "spool", forward=pacs.address)
  try:
    uid = node.process(_queue(node.spool, dicom_files.study_film(88)))["sop_instance_uid"]
    # A crash after its report was queued, before the film left the queue.
    os.replace(node.spool.path("films", uid + ".dcm"), node.spool.path("incoming", uid + ".dcm"))
    os.unlink(node.spool.path("results", uid + ".json"))
    # At restart the forwarder may run before the worker: it leaves the report alone.
    assert node.forwarder.send_pending() == 0 and len(node.spool.outbox()) == 1
    real = report.structured_report

    def redone(*args):  # the redo's report differs (its content time, a second later)
      sr = real(*args)
      sr.ContentTime = "000001"
      return sr

    monkeypatch.setattr(report, "structured_report", redone)
    node.process_pending()
    assert node.forwarder.send_pending() == 1
  finally:
    node.stop()
    pacs.stop()
  (sr,) = pacs.reports()
  assert sr.ContentTime == "000001" and not node.spool.quarantined()
